"""The worker's Prometheus endpoint, and the gauges of the stream it keeps fresh.

The worker is no HTTP server, so prometheus_client's own HTTP server serves
its series on ``WORKER_METRICS_HOST:WORKER_METRICS_PORT`` (``0`` turns it
off): the consumer's counters and histograms (``workers.consumer``), the
shared ones (``scoreboard.metrics``) and these gauges, refreshed every
``REFRESH_EVERY_S`` by a task beside the consumer:

- ``scoreboard_stream_length{stream}``: XLEN of the increments stream and of
  the dead-letter stream;
- ``scoreboard_stream_pending{group}``: delivered to a consumer of the group,
  not yet acknowledged (XINFO GROUPS ``pending``);
- ``scoreboard_stream_lag{group}``: entries not yet delivered to the group at
  all, see :func:`undelivered_count`;
- ``scoreboard_stream_lag_seconds{group}``: age of the oldest of those;
- ``scoreboard_redis_up`` / ``scoreboard_postgres_up``: 1 when the last
  refresh reached the server (the "Redis down" alert);
- the Postgres pool gauges of ``scoreboard.metrics``.

Every worker process reports the same stream gauges (they describe Redis,
not the process): aggregate them with ``max``, never ``sum``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any
from wsgiref.simple_server import WSGIServer

import redis.exceptions
from prometheus_client import Gauge, start_http_server

from scoreboard.keys import Keys
from scoreboard.metrics import sample_pool
from scoreboard.stream_trim import stream_id_key

logger = logging.getLogger(__name__)

STREAM_LENGTH = Gauge("scoreboard_stream_length", "Entries in the stream (XLEN)", ["stream"],
                      multiprocess_mode="max")
PENDING = Gauge("scoreboard_stream_pending",
                "Entries delivered to the consumer group and not yet acknowledged", ["group"],
                multiprocess_mode="max")
LAG = Gauge("scoreboard_stream_lag", "Entries not yet delivered to the consumer group",
            ["group"], multiprocess_mode="max")
LAG_SECONDS = Gauge("scoreboard_stream_lag_seconds",
                    "Age of the oldest entry not yet delivered to the consumer group (0: none)",
                    ["group"], multiprocess_mode="max")
SHARD_LAG = Gauge("scoreboard_stream_shard_lag",
                  "Entries of one shard's stream not yet delivered to the consumer group "
                  "(sharded deployments)", ["group", "shard"], multiprocess_mode="max")
REDIS_UP = Gauge("scoreboard_redis_up", "1 when the worker's last metrics refresh reached Redis",
                 multiprocess_mode="min")
POSTGRES_UP = Gauge("scoreboard_postgres_up",
                    "1 when the worker's last metrics refresh reached Postgres",
                    multiprocess_mode="min")

REFRESH_EVERY_S = 5.0
LAG_PAGE = 1000
LAG_COUNT_CAP = 10_000
CHECK_TIMEOUT_S = 2.0
DOWN = (OSError, TimeoutError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


async def undelivered_count(redis: Any, stream: str, last_delivered_id: str, *,
                            pending: int, page: int = LAG_PAGE,
                            cap: int = LAG_COUNT_CAP) -> int:
    """Entries of ``stream`` after ``last_delivered_id``: what the group has not read.

    Works on Redis 6.2, whose XINFO GROUPS has no ``lag``: the entries after
    the last-delivered id are counted with exclusive XRANGE pages
    (``(id`` needs 6.2). Nothing after that id is ever trimmed (the stream is
    trimmed only below acknowledged entries), so the count is exact up to
    ``cap``. A caught-up group costs one empty XRANGE. Past ``cap`` counting
    stops and the answer is ``XLEN - pending``, an upper bound: the stream
    holds every undelivered entry, every pending one, and acknowledged ones
    not trimmed yet (at most about a minute of them, the trim job's period).
    """
    counted, start = 0, f"({last_delivered_id}"
    while counted < cap:
        entries = await redis.xrange(stream, min=start, max="+", count=page)
        counted += len(entries)
        if len(entries) < page:
            return counted
        start = f"({entries[-1][0]}"
    bound: int = await redis.xlen(stream) - pending
    return max(counted, bound)


async def oldest_undelivered_age_s(redis: Any, stream: str, last_delivered_id: str) -> float:
    """Seconds since the oldest entry after ``last_delivered_id`` was added (0 if none),
    by Redis's clock: an entry id starts with its creation time in ms."""
    first = await redis.xrange(stream, min=f"({last_delivered_id}", max="+", count=1)
    if not first:
        return 0.0
    seconds, microseconds = await redis.time()
    now_ms = int(seconds) * 1000 + int(microseconds) // 1000
    return max(0.0, (now_ms - stream_id_key(first[0][0])[0]) / 1000)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class WorkerMetrics:
    """The metrics endpoint and the refresh task of one worker process.

    Create with :meth:`start` in the worker's ``on_startup`` (after the Redis
    client and the pool) and :meth:`stop` it first thing in ``on_shutdown``.
    """

    def __init__(self, *, redis: Any, pool: Any, keys: Keys,
                 every_s: float = REFRESH_EVERY_S) -> None:
        self.redis = redis
        self.pool = pool
        self.keys = keys
        self.every_s = every_s
        self.server: WSGIServer | None = None
        self.server_thread: threading.Thread | None = None
        self.task: asyncio.Task[None] | None = None

    @classmethod
    def start(cls, *, redis: Any, pool: Any, keys: Keys, host: str, port: int,
              every_s: float = REFRESH_EVERY_S) -> WorkerMetrics:
        metrics = cls(redis=redis, pool=pool, keys=keys, every_s=every_s)
        metrics.serve(host, port)
        metrics.task = asyncio.create_task(metrics.run(), name="stream-metrics")
        return metrics

    def serve(self, host: str, port: int) -> None:
        """Serve the process's series on ``host:port`` (nothing when ``port`` is 0).

        A port already taken is logged, not fatal: persisting matters more
        than being scraped, and the scrape target shows as down (an alert)."""
        if port == 0:
            return
        try:
            self.server, self.server_thread = start_http_server(port, addr=host)
        except OSError as exc:
            logger.error("cannot serve worker metrics on %s:%d (%s); set WORKER_METRICS_PORT "
                         "to a free port, one per worker process on a host", host, port, exc)
            return
        logger.info("worker metrics on http://%s:%d/metrics", host, port)

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.every_s)

    async def refresh(self) -> None:
        """Read the streams, groups and pool into the gauges; never raises
        (a failed read leaves the last values and marks the server down)."""
        sample_pool(self.pool)
        try:
            await asyncio.wait_for(self._refresh_stream(), CHECK_TIMEOUT_S * 5)
            REDIS_UP.set(1)
        except DOWN as exc:
            REDIS_UP.set(0)
            logger.debug("metrics refresh: Redis unreachable: %r", exc)
        except Exception:  # a bug here must not stop the worker
            logger.exception("metrics refresh failed")
        try:
            await self.pool.fetchval("SELECT 1", timeout=CHECK_TIMEOUT_S)
            POSTGRES_UP.set(1)
        except Exception as exc:  # any failure to answer counts as down
            POSTGRES_UP.set(0)
            logger.debug("metrics refresh: Postgres unreachable: %r", exc)

    async def _refresh_stream(self) -> None:
        """Sharded, each shard's stream is read: the gauges above hold the sum over
        the shards (the oldest age for ``LAG_SECONDS``), ``SHARD_LAG`` each shard's."""
        lengths, dead = 0, 0
        pending_of: dict[str, int] = {}
        lag_of: dict[str, int] = {}
        age_of: dict[str, float] = {}
        for shard, keys in enumerate(self.keys.every_shard):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xlen(keys.stream)
                pipe.xlen(keys.dead_letters)
                counted = await pipe.execute()
            lengths, dead = lengths + int(counted[0]), dead + int(counted[1])
            try:
                groups = await self.redis.xinfo_groups(keys.stream)
            except redis.exceptions.ResponseError:  # no stream yet: no group either
                groups = []
            for group in groups:
                name, pending = _text(group["name"]), int(group["pending"])
                last_delivered = _text(group["last-delivered-id"])
                lag = group.get("lag")  # Redis 7; None there when it cannot tell
                if lag is None:
                    lag = await undelivered_count(self.redis, keys.stream, last_delivered,
                                                  pending=pending)
                age = await oldest_undelivered_age_s(self.redis, keys.stream, last_delivered)
                pending_of[name] = pending_of.get(name, 0) + pending
                lag_of[name] = lag_of.get(name, 0) + int(lag)
                age_of[name] = max(age_of.get(name, 0.0), age)
                if self.keys.sharded:
                    SHARD_LAG.labels(name, str(shard)).set(int(lag))
        STREAM_LENGTH.labels("increments").set(lengths)
        STREAM_LENGTH.labels("dead-letters").set(dead)
        for name, pending in pending_of.items():
            PENDING.labels(name).set(pending)
            LAG.labels(name).set(lag_of[name])
            LAG_SECONDS.labels(name).set(age_of[name])

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.server is not None:
            await asyncio.to_thread(self.server.shutdown)  # waits for its poll loop
            self.server.server_close()
