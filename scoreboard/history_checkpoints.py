"""Writing the checkpoints ``as_of`` starts from (migration 009).

A checkpoint at ``at`` is the previous checkpoint's totals plus the actions
accepted in between, summed per (board, user): each build reads one
interval of ``actions`` (partition pruning and the BRIN index on
``created_at``), never the whole log. Builds hold an exclusive transaction
advisory lock that the delete trigger of ``actions`` takes shared, so a
removed action is either seen by the build or corrected in its result.
Called by the worker's scheduled job (``workers.jobs``), by retention before
it drops a partition, and by ``scoreboard history --checkpoint``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from scoreboard.history import checkpoint_horizon, due_checkpoints
from scoreboard.keys import Keys

logger = logging.getLogger(__name__)

LOCK = "SELECT pg_advisory_xact_lock(hashtext('history_checkpoints'))"
BUILD = """
INSERT INTO history_checkpoint_totals (at, board, user_id, total, reached_at)
SELECT $1, board, user_id, sum(total), max(reached_at) FROM (
    SELECT board, user_id, total, reached_at FROM history_checkpoint_totals WHERE at = $2
    UNION ALL
    SELECT board, user_id, sum(points), max(created_at) FROM actions
    WHERE created_at >= COALESCE($2, '-infinity'::timestamptz) AND created_at < $1
    GROUP BY board, user_id
) AS both_parts
GROUP BY board, user_id
"""
BUILD_TIMEOUT_S = 1800  # one interval of actions; minutes only at millions of actions an hour


def _ms(stream_id: str | bytes) -> int:
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    return int(text.partition("-")[0])


async def oldest_unacknowledged_ms(redis: Any, keys: Keys) -> int | None:
    """The time (ms) of the oldest stream entry some consumer group has not
    acknowledged: pending, or not delivered yet. None: every entry is."""
    oldest: list[int] = []
    for group in await redis.xinfo_groups(keys.stream):
        if int(group["pending"]):
            oldest.append(_ms((await redis.xpending(keys.stream, group["name"]))["min"]))
            continue
        last = group["last-delivered-id"]
        last = last.decode() if isinstance(last, bytes) else last
        undelivered = await redis.xrange(keys.stream, min="(" + last, count=1)
        if undelivered:
            oldest.append(_ms(undelivered[0][0]))
    return min(oldest, default=None)


async def committed_horizon(redis: Any, keys: Keys, *, now: datetime,
                            lag: timedelta) -> datetime:
    """The latest moment a checkpoint may cover now (``history.checkpoint_horizon``);
    sharded, the oldest unacknowledged entry of every shard's stream counts."""
    found = [await oldest_unacknowledged_ms(redis, shard)
             for shard in keys.every_shard if await redis.exists(shard.stream)]
    oldest = min((ms for ms in found if ms is not None), default=None)
    return checkpoint_horizon(now=now, acknowledged_before_ms=oldest, lag=lag)


async def build_checkpoint(connection: Any, at: datetime) -> int | None:
    """Write the checkpoint at ``at``; None if it exists already, else its number of rows."""
    async with connection.transaction():
        await connection.execute(LOCK)
        if await connection.fetchval("SELECT 1 FROM history_checkpoints WHERE at = $1", at):
            return None
        previous = await connection.fetchval(
            "SELECT max(at) FROM history_checkpoints WHERE at < $1", at)
        await connection.execute("INSERT INTO history_checkpoints (at, entries) VALUES ($1, 0)",
                                 at)
        status = await connection.execute(BUILD, at, previous, timeout=BUILD_TIMEOUT_S)
        entries = int(status.split()[-1])
        await connection.execute("UPDATE history_checkpoints SET entries = $2 WHERE at = $1",
                                 at, entries)
    logger.info("history checkpoint at %s: %d entries", at.isoformat(), entries)
    return entries


async def oldest_kept(connection: Any) -> datetime | None:
    """The start of the oldest partition of ``actions`` (None: no partition)."""
    found: datetime | None = await connection.fetchval(
        "SELECT min(lower_bound) FROM actions_partitions()")
    return found


async def write_due_checkpoints(pool: Any, *, horizon: datetime, interval: timedelta,
                                limit: int) -> list[datetime]:
    """Every checkpoint of the grid not yet written up to ``horizon`` (at most
    ``limit`` per call, oldest first, so a long history is caught up over runs)."""
    async with pool.acquire() as connection:
        latest = await connection.fetchval("SELECT max(at) FROM history_checkpoints")
        start = await oldest_kept(connection)
        if start is None:
            return []
        floor = await connection.fetchval("SELECT earliest FROM history_floor")
        if latest is None and floor is not None:
            start = max(start, floor)
        written = []
        for at in due_checkpoints(latest=latest, start=start, horizon=horizon,
                                  interval=interval, limit=limit):
            if await build_checkpoint(connection, at) is not None:
                written.append(at)
    return written
