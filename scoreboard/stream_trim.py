"""Trimming the stream of what every consumer group has acknowledged.

Shared by the worker's trim job and ingest's backlog measure: on Redis 6.2
(no ``lag`` in XINFO GROUPS) ingest can count a large backlog only as
``XLEN - pending``, which is exact only once the acknowledged entries are
gone, so it trims them first. The trim point never passes an entry some group
still needs (pending, or not delivered yet), so any process may trim at any
time, several at once, from a view of the groups that is already stale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def stream_id_key(stream_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = stream_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def safe_trim_id(groups: Sequence[tuple[str, str | None]]) -> str | None:
    """The MINID below which every group has acknowledged every entry.

    ``groups`` holds, per consumer group, its last-delivered id and its oldest
    pending id (``None`` when nothing is pending). Entries after the
    last-delivered id are undelivered and kept; a pending entry is kept. With no
    group at all nothing is trimmed (no reader has taken anything yet).
    """
    if not groups:
        return None
    candidates = [oldest_pending or last_delivered for last_delivered, oldest_pending in groups]
    return min(candidates, key=stream_id_key)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def trim_acknowledged(redis: Any, stream: str) -> str | None:
    """Trim ``stream`` below the oldest entry some group still needs; return that
    MINID (None: no group, nothing trimmed)."""
    groups = []
    for group in await redis.xinfo_groups(stream):
        oldest = None
        if int(group["pending"]):
            summary = await redis.xpending(stream, group["name"])
            oldest = _text(summary["min"])
        groups.append((_text(group["last-delivered-id"]), oldest))
    min_id = safe_trim_id(groups)
    if min_id is not None:
        await redis.xtrim(stream, minid=min_id, approximate=False)
    return min_id
