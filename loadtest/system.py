"""Starting the system under test for the benchmarks: Redis and Postgres (embedded
or given, loopback only), a fresh migrated database, development keys and a fresh
key prefix; and removing what a run left on servers that outlive it.

Shared by ``loadtest.bench_ingest`` and ``loadtest.bench_broadcaster``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import redis

from loadtest import BenchError
from scoreboard.cli import with_database
from scoreboard.embedded import EmbeddedPostgres, EmbeddedRedis
from scoreboard.migrate import ensure_database, migrate
from scoreboard.signing_keys import load_action_keys, load_jwt_keys

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


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
