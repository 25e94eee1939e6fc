"""Dropping the partitions of ``actions`` older than ``RETENTION_MONTHS``.

For each whole monthly partition that ends at or before the cutoff, oldest
first: a checkpoint at the partition's end is written (from the previous
checkpoint and the partition's own rows), then, in one transaction, the
retention floor moves to that end and the partition is detached and dropped.
``as_of`` at or after the floor stays exact (it starts from that checkpoint
or a later one); earlier moments are refused with ``as_of_before_retention``.
Checkpoints before the floor can no longer be replayed from, and are deleted.

What stays: ``scores`` (the live all-time totals) and ``counted_events``
(the durable dedup record: an event of a dropped month still counts once).
Killed half-way, a run leaves a checkpoint or a floor a step ahead, never a
dropped partition without its checkpoint; the next run carries on.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from scoreboard.history_checkpoints import build_checkpoint

logger = logging.getLogger(__name__)

DROP_LOCK_TIMEOUT = "5s"  # detaching waits for running writes; never queue them for long


async def drop_expired_partitions(pool: Any, cutoff: datetime) -> list[str]:
    """Drop every partition ending at or before ``cutoff``; returns their names."""
    dropped: list[str] = []
    async with pool.acquire() as connection:
        expired = await connection.fetch(
            "SELECT name, upper_bound FROM actions_partitions() WHERE upper_bound <= $1"
            " ORDER BY lower_bound", cutoff)
        for partition in expired:
            end: datetime = partition["upper_bound"]
            await build_checkpoint(connection, end)
            async with connection.transaction():
                await connection.execute(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'")
                await connection.execute(
                    "UPDATE history_floor SET earliest = GREATEST(earliest, $1)", end)
                # The name comes from the catalog (actions_yYYYYmMM), never from input.
                await connection.execute(
                    f'ALTER TABLE actions DETACH PARTITION "{partition["name"]}"')
                await connection.execute(f'DROP TABLE "{partition["name"]}"')
            await connection.execute("DELETE FROM history_checkpoints WHERE at < $1", end)
            logger.info("retention: dropped %s (actions before %s)", partition["name"],
                        end.isoformat())
            dropped.append(partition["name"])
    return dropped
