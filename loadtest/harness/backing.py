"""Redis and Postgres for a benchmark: embedded, or given (loopback only).

Embedded servers are started in the run's temporary folder and stopped at the
end. Given ones (``REDIS_URL`` / ``DATABASE_URL``) get a fresh database and
key prefix, removed at the end. Either way every database is migrated, and
development keys are made in the run's folder. Also: keeping Redis's forks
(AOF rewrites) out of a measured window, and describing the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import redis

from loadtest import BenchError
from scoreboard.db import with_database
from scoreboard.embedded import EmbeddedPostgres, EmbeddedRedis
from scoreboard.migrate import ensure_database, migrate
from scoreboard.signing_keys import load_action_keys, load_jwt_keys

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Servers:
    """Where Redis and Postgres are, and whether this run started them."""

    redis_url: str
    admin_database_url: str
    redis_embedded: bool
    database_embedded: bool

    @property
    def embedded(self) -> str:
        """What was started here, for a report: "redis and postgres", ..., "none"."""
        started = [name for name, ours in (("redis", self.redis_embedded),
                                           ("postgres", self.database_embedded)) if ours]
        return " and ".join(started) or "none"


@dataclass(frozen=True)
class Backing(Servers):
    """The servers, plus the run's database, key prefix and signing keys."""

    database_name: str
    key_prefix: str
    keys_dir: Path

    @property
    def database_url(self) -> str:
        return with_database(self.admin_database_url, self.database_name)

    def env(self) -> dict[str, str]:
        """The variables that point a process of the system under test at this run
        (servers, names, keys; this Python's folder first on PATH)."""
        return {"REDIS_URL": self.redis_url, "DATABASE_URL": self.database_url,
                "KEY_PREFIX": self.key_prefix, "JWT_KEYS_DIR": str(self.keys_dir / "jwt"),
                "ACTION_KEYS_FILE": str(self.keys_dir / "action-token-keys"),
                "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                         os.environ.get("PATH", "")])}


def require_loopback(name: str, url: str) -> None:
    """A benchmark floods its target: refuse anything that is not this machine."""
    if urlsplit(url).hostname not in LOOPBACK_HOSTS:
        raise BenchError(f"{name} must point at 127.0.0.1 (the benchmark floods it): {url!r}")


def start_servers(stack: contextlib.ExitStack, root: Path, *,
                  durable_postgres: bool = False) -> Servers:
    """Redis and Postgres: embedded in ``root`` (stopped by ``stack``) unless given.

    ``durable_postgres`` keeps fsync and synchronous commit on in the embedded
    Postgres: needed when a figure includes worker commits; off by default
    because ingest's hot path never touches Postgres."""
    redis_url = os.environ.get("REDIS_URL") or None
    admin_url = os.environ.get("DATABASE_URL") or None
    redis_embedded, database_embedded = redis_url is None, admin_url is None
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
    return Servers(redis_url=redis_url, admin_database_url=admin_url,
                   redis_embedded=redis_embedded,
                   database_embedded=database_embedded)


def fresh_database(stack: contextlib.ExitStack, servers: Servers, name: str) -> str:
    """A new migrated database ``name``; dropped at the end on a given server.
    Returns its URL."""
    asyncio.run(ensure_database(servers.admin_database_url, name))
    if not servers.database_embedded:
        stack.callback(lambda: asyncio.run(drop_database(servers.admin_database_url, name)))
    url = with_database(servers.admin_database_url, name)
    asyncio.run(migrate(url))
    return url


def fresh_prefixes(stack: contextlib.ExitStack, servers: Servers,
                   prefixes: Sequence[str]) -> None:
    """On a given Redis, delete the keys of ``prefixes`` at the end."""
    if not servers.redis_embedded:
        stack.callback(delete_keys, servers.redis_url, list(prefixes))


def start_backing(stack: contextlib.ExitStack, root: Path, *, durable_postgres: bool = False,
                  other_prefixes: Sequence[str] = (), database_name: str | None = None
                  ) -> Backing:
    """Redis and Postgres (see :func:`start_servers`), a fresh migrated database,
    development keys in ``root`` and a fresh key prefix; on given servers the
    database and the keys of the prefix (and of ``key_prefix + s`` for each
    ``s`` in ``other_prefixes``) are removed at the end. ``database_name``
    names the database instead (kept if it exists, migrated): with a ``root``
    that outlives the run, a benchmark can reuse the data it loaded before."""
    servers = start_servers(stack, root, durable_postgres=durable_postgres)
    run_id = secrets.token_hex(4)
    backing = Backing(**vars(servers), database_name=database_name or f"bench_{run_id}",
                      key_prefix=f"bench_{run_id}", keys_dir=root / "keys")
    fresh_prefixes(stack, servers, [backing.key_prefix,
                                    *(backing.key_prefix + s for s in other_prefixes)])
    fresh_database(stack, servers, backing.database_name)
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
    try:
        for prefix in prefixes:
            found = list(client.scan_iter(match="{" + prefix + "}*", count=10_000))
            for start in range(0, len(found), 1000):
                client.unlink(*found[start:start + 1000])
    finally:
        client.close()


# --- Redis's forks and what the servers are ------------------------------------------------


def wait_for_no_fork(client: Any, timeout_s: float = 120) -> None:
    """Wait out a running (or scheduled) AOF rewrite or RDB save: its child would
    share the cores with the figure."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        persistence = client.info("persistence")
        if not any(int(persistence.get(name, 0)) for name in (
                "aof_rewrite_in_progress", "aof_rewrite_scheduled", "rdb_bgsave_in_progress")):
            return
        time.sleep(0.2)
    raise BenchError(f"Redis was still rewriting its AOF / saving after {timeout_s:g} s")


def settle_redis(client: Any, *, rewrite: bool) -> None:
    """Keep AOF rewrites (a fork) out of the measured window.

    Redis rewrites on its own once the AOF has doubled (and passed 64 MB): a
    prefill can trigger one a moment later, inside the window. So: wait out any
    rewrite, and with ``rewrite`` (a server this run owns, or keys this run set)
    and AOF on, rewrite it now and wait. The window's own writes can still
    double the AOF and trigger a rewrite inside it, as in production; the
    reports say when a fork happened in a window."""
    time.sleep(0.2)  # serverCron (10 Hz) schedules an automatic rewrite
    wait_for_no_fork(client)
    if rewrite and int(client.info("persistence").get("aof_enabled", 0)):
        client.execute_command("BGREWRITEAOF")
        time.sleep(0.2)
        wait_for_no_fork(client)


async def postmaster_pid(database_url: str) -> int | None:
    """The server's postmaster pid, when its data folder is readable from here."""
    connection = await asyncpg.connect(database_url, timeout=30)
    try:
        data_dir = await connection.fetchval("SHOW data_directory")
    finally:
        await connection.close()
    with contextlib.suppress(OSError, ValueError):
        return int((Path(data_dir) / "postmaster.pid").read_text().split()[0])
    return None


def server_line(client: Any, admin_url: str) -> str:
    """Versions and durability settings of both servers, for a report."""
    async def settings() -> tuple[str, str, str]:
        connection = await asyncpg.connect(admin_url, timeout=30)
        try:
            return (await connection.fetchval("SHOW server_version"),
                    await connection.fetchval("SHOW fsync"),
                    await connection.fetchval("SHOW synchronous_commit"))
        finally:
            await connection.close()

    version, fsync, sync_commit = asyncio.run(settings())
    redis_version = client.info()["redis_version"]
    aof = client.config_get("appendonly")["appendonly"]
    aof_fsync = client.config_get("appendfsync")["appendfsync"]
    return (f"redis {redis_version} (appendonly {aof}, appendfsync {aof_fsync}), postgres "
            f"{version.split()[0]} (fsync {fsync}, synchronous_commit {sync_commit})")
