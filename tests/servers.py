"""Real servers for the tests: Redis, Postgres, and ingest processes.

Processes are started with the benchmark harness's commands and helpers
(``loadtest.harness.processes``), so tests and benchmarks run the system the same way.

With ``REDIS_URL`` / ``DATABASE_URL`` set the suite uses those servers (with a
fresh database and key prefix of its own); otherwise it starts the embedded
ones in a temporary folder. A server that cannot be reached fails the run.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis as redis_sync

from loadtest.harness.processes import (
    BROADCASTER_COMMAND,
    PROJECT_DIR,
    ingest_command,
    stop_process,
)
from loadtest.harness.processes import wait_ready as wait_until_ready
from scoreboard.embedded import free_port
from scoreboard.keys import Keys
from scoreboard.ranking import totals_by_user
from scoreboard.redis_clients import redis_client
from scoreboard.stream_entry import unpacked

__all__ = ["PROJECT_DIR", "Backing", "stop_process", "wait_until_ready"]


@dataclass(frozen=True)
class Backing:
    """Where the suite's Redis and Postgres are, and its run's names on them."""

    redis_url: str
    database_url: str
    admin_database_url: str
    key_prefix: str
    jwt_keys_dir: Path
    action_keys_file: Path
    # A Redis Cluster (``make test-cluster``): ``redis_url`` is one of its nodes.
    redis_cluster: bool = False
    redis_shards: int = 1
    arq_redis_url: str = ""  # arq's plain Redis beside a cluster ("": redis_url)

    @property
    def keys(self) -> Keys:
        return Keys(self.key_prefix, shards=self.redis_shards, cluster=self.redis_cluster)

    def keys_for(self, prefix: str) -> Keys:
        """The names processes started with ``env(KEY_PREFIX=prefix)`` use."""
        return Keys(prefix, shards=self.redis_shards, cluster=self.redis_cluster)

    def sync_redis(self, **options: Any) -> Any:
        """A sync client of the suite's Redis (a ``RedisCluster`` on a cluster)."""
        if self.redis_cluster:
            return redis_sync.RedisCluster.from_url(self.redis_url, **options)
        return redis_sync.Redis.from_url(self.redis_url, **options)

    def async_redis(self, **options: Any) -> Any:
        """An asyncio client of the suite's Redis, as the processes build theirs."""
        return redis_client(self.redis_url, cluster=self.redis_cluster, **options)

    def env(self, **overrides: str) -> dict[str, str]:
        """Environment for a process of the system under test."""
        env = {**os.environ, "REDIS_URL": self.redis_url, "DATABASE_URL": self.database_url,
               "REDIS_CLUSTER": "1" if self.redis_cluster else "0",
               "REDIS_SHARDS": str(self.redis_shards), "ARQ_REDIS_URL": self.arq_redis_url,
               "KEY_PREFIX": self.key_prefix, "JWT_KEYS_DIR": str(self.jwt_keys_dir),
               "ACTION_KEYS_FILE": str(self.action_keys_file),
               # Cheap hashes keep registration fast in tests; production keeps the default.
               "SCRYPT_N": "1024", "LOG_LEVEL": "WARNING",
               # The suite's prefixes share one database: a worker's reconcile would
               # copy every test's boards onto its own (tests call the job directly).
               "BOARD_RECONCILE_MINUTES": "0",
               "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                        os.environ.get("PATH", "")])}
        env.update(overrides)
        return env


@contextmanager
def ingest_server(env: Mapping[str, str], *, ready_path: str = "/readyz") -> Iterator[str]:
    """An ingest process (``python -m ingest``, as the Procfile runs it) on a free port;
    yields its URL."""
    port = free_port()
    process = subprocess.Popen(ingest_command(port), cwd=PROJECT_DIR, env=dict(env))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url + ready_path, process)
        yield url
    finally:
        stop_process(process)


@contextmanager
def broadcaster_server(env: Mapping[str, str], *, port: int | None = None,
                       log: Path | None = None) -> Iterator[str]:
    """A broadcaster process (``python -m broadcaster``, as the Procfile runs it) on
    ``port`` (a free one by default: pass one to restart on the same address); yields
    its base URL (http://...; the WebSocket is ws://.../ws). Its output goes to the
    test's own (pytest shows it with a failure) or, with ``log``, to that file."""
    port = port if port is not None else free_port()
    with open(log, "ab") if log is not None else nullcontext() as output:
        process = subprocess.Popen(BROADCASTER_COMMAND, cwd=PROJECT_DIR,
                                   env={**env, "BROADCASTER_HOST": "127.0.0.1",
                                        "BROADCASTER_PORT": str(port)},
                                   stdout=output, stderr=output)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(url + "/healthz", process)
            yield url
        finally:
            stop_process(process)


def fresh_name(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


# redis-py's sync client is typed as returning ``Awaitable | Any`` from every
# command (the stubs are shared with asyncio); tests hold it as ``Any``.
SyncRedis = Any


def board_totals(client: SyncRedis, keys: Keys, board: str) -> dict[str, int]:
    """A board in Redis as user id -> total."""
    return totals_by_user(client.zrange(keys.board(board), 0, -1, withscores=True))


def stream_entries(client: SyncRedis, keys: Keys) -> list[tuple[str, dict[str, str]]]:
    """Every entry of the increment streams (each shard's, in shard order), with its
    fields as separate ones (``unpacked``: the scripts write them packed)."""
    entries: list[tuple[str, dict[str, str]]] = []
    for stream in keys.streams:
        entries += [(stream_id, unpacked(fields)) for stream_id, fields in client.xrange(stream)]
    return entries


def stream_total(client: SyncRedis, keys: Keys) -> int:
    """Entries in the increment streams (every shard's)."""
    return sum(int(client.xlen(stream)) for stream in keys.streams)


def forget_marks(client: SyncRedis, prefix: str, event_ids: list[str]) -> int:
    """Remove ``event_ids``' idempotency marks from every window of ``prefix``
    (``Keys.event_marks``); returns how many were there."""
    return sum(int(client.srem(key, *event_ids)) for key in client.scan_iter(match=prefix + "*"))


def is_marked(client: SyncRedis, prefix: str, event_id: str) -> bool:
    """Whether ``event_id`` is marked in any window of ``prefix``."""
    return any(client.sismember(key, event_id) for key in client.scan_iter(match=prefix + "*"))


def user_total(client: SyncRedis, keys: Keys, board: str, user_id: str) -> int | None:
    return board_totals(client, keys, board).get(user_id)


def create_board(backing: Backing, board: str, actions: tuple[tuple[str, int], ...] = (
        ("play", 1),), *, max_points: int | None = None, key_prefix: str | None = None) -> str:
    """Create ``board`` as ``scoreboard admin create-board`` does (Postgres, then Redis
    under ``key_prefix``, the suite's by default); returns its name."""
    from scoreboard.board_defs import create_board as create
    from scoreboard.board_defs import definition
    from scoreboard.db import create_pool

    async def run() -> None:
        pool = await create_pool(backing.database_url, max_size=1)
        client = backing.async_redis()
        try:
            await create(pool, client, Keys(key_prefix or backing.key_prefix).board_definitions,
                         definition(board, actions, max_points, service_max=1000))
        finally:
            await client.aclose()
            await pool.close()

    import asyncio
    asyncio.run(run())
    return board
