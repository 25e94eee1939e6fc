"""Backpressure: refuse writes while the workers' backlog is over ``MAX_BACKLOG``.

The backlog is what the consumer group has not acknowledged: entries delivered
and pending, plus entries not delivered yet. A task of the lifespan measures it
every ``BACKLOG_CHECK_MS`` and the write endpoints read the last measure, so a
request pays nothing for it (an in-process flag, no Redis call). While it is
over the maximum, increments and batches get 503 ``overloaded`` with
``Retry-After``; reads and action tokens keep working; writes resume by
themselves once a measure is back under the maximum. Between two measures the
stream can pass the maximum by what the ingest processes accept in one period
(at 30,000/s and 200 ms: 6,000 entries); the embedded Redis's ``maxmemory``
with ``noeviction`` is the hard stop behind it.

Measuring (one XINFO GROUPS, plus on Redis 6.2 one or two XRANGE pages): Redis
7 reports the group's ``lag``; Redis 6.2 (the embedded default) does not, so the
entries after the group's last-delivered id are counted, exactly up to
``COUNT_CAP``. Past that, the workers are behind and the measure is ``XLEN``
after trimming what every group has acknowledged (scoreboard.stream_trim; the
worker's trim job runs only once a minute, and a minute of acknowledged entries
at full speed is more than ``MAX_BACKLOG``: left in, they refused writes while
the workers were keeping up). What stays above the true backlog is only the
acknowledged entries newer than the oldest pending one, so writes may be refused
a little early, never late. With no consumer group yet (no worker ever
started), every entry is backlog.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.exceptions
from redis.exceptions import RedisClusterException, RedisError

from scoreboard.errors import RequestError
from scoreboard.stream_trim import trim_acknowledged

logger = logging.getLogger(__name__)

COUNT_CAP = 2000
RETRY_AFTER_OVERLOADED_S = 2


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def measure_backlog(client: Any, stream: str, group: str) -> int:
    """Entries of ``stream`` that ``group`` has not acknowledged (see the module doc)."""
    try:
        groups = await client.xinfo_groups(stream)
    except redis.exceptions.ResponseError:  # no stream yet
        return 0
    found = next((g for g in groups if _text(g["name"]) == group), None)
    if found is None:
        return int(await client.xlen(stream))
    pending = int(found["pending"])
    lag = found.get("lag")
    if lag is not None:
        return pending + int(lag)
    return await count_without_lag(client, stream, found, pending)


async def count_without_lag(client: Any, stream: str, group: dict[str, Any],
                            pending: int) -> int:
    """The backlog on a Redis whose XINFO GROUPS has no ``lag`` (6.2)."""
    start, counted = f"({_text(group['last-delivered-id'])}", 0
    while counted < COUNT_CAP:
        entries = await client.xrange(stream, min=start, max="+", count=1000)
        counted += len(entries)
        if len(entries) < 1000:
            return pending + counted
        start = f"({_text(entries[-1][0])}"
    await trim_acknowledged(client, stream)
    return max(pending + counted, int(await client.xlen(stream)))


class Backpressure:
    """The last measured backlog and the decision the write endpoints take from it."""

    def __init__(self, client: Any, *, streams: list[str], group: str,
                 max_backlog: int) -> None:
        """``streams``: every shard's stream (one unsharded); the backlog is their sum."""
        self.client = client
        self.streams = streams
        self.group = group
        self.max_backlog = max_backlog
        self.backlog = 0

    @property
    def overloaded(self) -> bool:
        return self.backlog > self.max_backlog

    def check(self) -> None:
        """Raise 503 ``overloaded`` while the last measure is over the maximum."""
        if self.backlog > self.max_backlog:
            raise RequestError(503, "overloaded",
                               f"{self.backlog} increments are waiting to be persisted "
                               f"(maximum {self.max_backlog}); retry shortly",
                               retry_after_s=RETRY_AFTER_OVERLOADED_S)

    async def measure_forever(self, every_s: float) -> None:
        while True:
            try:
                self.backlog = sum([await measure_backlog(self.client, stream, self.group)
                                    for stream in self.streams])
            except (OSError, RedisError, RedisClusterException):  # the latter: no cluster node
                logger.warning("backlog not measured", exc_info=True)
            await asyncio.sleep(every_s)
