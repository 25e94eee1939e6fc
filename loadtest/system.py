"""Starting the system under test for the benchmarks: Redis and Postgres (embedded
or given, loopback only), a fresh migrated database, development keys and a fresh
key prefix; and removing what a run left on servers that outlive it. Also a
worker process of the system under test, with or without its metrics port.

Shared by ``loadtest.bench_ingest``, ``loadtest.bench_broadcaster`` and
``loadtest.bench_e2e``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import redis

from loadtest import BenchError
from scoreboard.cli import with_database
from scoreboard.embedded import EmbeddedPostgres, EmbeddedRedis
from scoreboard.keys import Keys
from scoreboard.migrate import ensure_database, migrate
from scoreboard.settings import load_settings
from scoreboard.signing_keys import load_action_keys, load_jwt_keys

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
PROJECT_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Backing:
    redis_url: str
    admin_database_url: str
    database_name: str
    key_prefix: str
    keys_dir: Path
    redis_embedded: bool
    database_embedded: bool

    @property
    def database_url(self) -> str:
        return with_database(self.admin_database_url, self.database_name)


def require_loopback(name: str, url: str) -> None:
    """A benchmark floods its target: refuse anything that is not this machine."""
    if urlsplit(url).hostname not in LOOPBACK_HOSTS:
        raise BenchError(f"{name} must point at 127.0.0.1 (the benchmark floods it): {url!r}")


def start_backing(stack: contextlib.ExitStack, root: Path, *,
                  durable_postgres: bool = False) -> Backing:
    """Redis and Postgres (embedded in ``root`` unless given), a fresh database
    (migrated), development keys in ``root`` and a fresh key prefix.

    ``durable_postgres`` keeps fsync and synchronous commit on in the embedded
    Postgres: needed when a figure includes worker commits; off by default
    because ingest's hot path never touches Postgres."""
    redis_url = os.environ.get("REDIS_URL") or None
    admin_url = os.environ.get("DATABASE_URL") or None
    if redis_url is None:
        embedded_redis = EmbeddedRedis(root / "redis")  # AOF everysec, as in production
        redis_url = embedded_redis.start()
        stack.callback(embedded_redis.stop)
    else:
        require_loopback("REDIS_URL", redis_url)
    if admin_url is None:
        embedded_pg = EmbeddedPostgres(root / "postgres", durable=durable_postgres)
        admin_url = embedded_pg.start()
        stack.callback(embedded_pg.stop)
    else:
        require_loopback("DATABASE_URL", admin_url)
    run_id = secrets.token_hex(4)
    backing = Backing(redis_url=redis_url, admin_database_url=admin_url,
                      database_name=f"bench_{run_id}", key_prefix=f"bench_{run_id}",
                      keys_dir=root / "keys", redis_embedded=not os.environ.get("REDIS_URL"),
                      database_embedded=not os.environ.get("DATABASE_URL"))
    asyncio.run(ensure_database(admin_url, backing.database_name))
    if not backing.database_embedded:
        stack.callback(lambda: asyncio.run(drop_database(admin_url, backing.database_name)))
    asyncio.run(migrate(backing.database_url))
    load_jwt_keys(backing.keys_dir / "jwt", create=True)
    load_action_keys(backing.keys_dir / "action-token-keys", create=True)
    return backing


async def drop_database(admin_url: str, name: str) -> None:
    """Remove the run's database from a server that outlives it."""
    connection = await asyncpg.connect(admin_url, timeout=30)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def delete_keys(redis_url: str, prefixes: list[str]) -> None:
    """Remove the run's keys from a server that outlives it."""
    client = redis.Redis.from_url(redis_url)
    for prefix in prefixes:
        batch: list[bytes] = []
        for key in client.scan_iter(match="{" + prefix + "}*", count=10_000):
            batch.append(key)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    client.close()


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
    """SIGTERM (the process drains and closes its pools), then SIGKILL after ``timeout_s``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def worker_process(env: dict[str, str], log_path: Path, client: Any, keys: Keys, *,
                   name: str = "bench-worker", metrics_port: int = 0) -> Iterator[int]:
    """ONE worker (``arq workers.main.WorkerSettings``, as the Procfile runs it), ready
    once its consumer is registered in the group; yields its pid.

    ``client`` is a sync Redis client of the run's server. ``metrics_port`` 0 (the
    default) serves no metrics: another worker on this host may hold the usual port.
    On exit: SIGTERM, which lets the consumer finish its batch (arq's on_shutdown
    allows 30 s), then SIGKILL after 40 s."""
    group = load_settings(env).consumer_group
    with log_path.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "arq", "workers.main.WorkerSettings"],
                                   cwd=PROJECT_DIR, stdout=log, stderr=subprocess.STDOUT,
                                   env={**env, "CONSUMER_NAME": name,
                                        "WORKER_METRICS_HOST": "127.0.0.1",
                                        "WORKER_METRICS_PORT": str(metrics_port)})
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the worker did not start; its log:\n"
                                 f"{log_path.read_text()[-3000:]}")
            with contextlib.suppress(redis.ResponseError):
                consumers = client.xinfo_consumers(keys.stream, group)
                if name in {c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                            for c in consumers}:
                    break
            time.sleep(0.1)
        yield process.pid
    finally:
        stop_process(process, timeout_s=40)
