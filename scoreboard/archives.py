"""Closing windows' periods: the archive of each ended period, frozen in Postgres.

A period's totals are ``scores`` rows under its scope (scoreboard/windows.py);
the worker writes them while entries accepted in the period arrive. Once the
period has ended and ``PERIOD_ARCHIVE_GRACE_S`` has passed (time for entries
accepted before the end to be persisted), :func:`archive_periods` records it
in ``board_periods``. From then on:

- the period is frozen: the worker writes no more to it (workers/window_fanout.py),
  ``remove-action`` and reconciliation leave it alone;
- its Redis keys expire after ``PERIOD_KEY_TTL_S`` and it leaves the set of
  boards; reads of any ended period come from Postgres (ingest/read_routes.py);
- bans and shadow-bans are read-time filters, so a banned player is left out of
  archived periods (and their winners) while the ban holds, and back once it is
  lifted; their frozen totals are not changed.

Safe to run on several workers at once (``ON CONFLICT DO NOTHING``) and to be
interrupted (what was not recorded is recorded by the next run).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from scoreboard.board_defs import SELECT_BOARDS, row_definition
from scoreboard.keys import Keys
from scoreboard.redis_clients import is_cluster
from scoreboard.windows import ALL_TIME, Period, scope

logger = logging.getLogger(__name__)

MAX_LOOKBACK = timedelta(days=400)

RECORD = """
INSERT INTO board_periods (scope, board, window_name, period, starts_at, ends_at, players)
SELECT $1, $2, $3, $4, $5, $6, (SELECT count(*) FROM scores WHERE board = $1)
ON CONFLICT (scope) DO NOTHING
"""
LAST_ARCHIVED = "SELECT max(ends_at) FROM board_periods WHERE board = $1 AND window_name = $2"

# Scopes not frozen: every board and the periods not archived yet (what
# reconciliation and lifting a ban may write to Redis).
NOT_ARCHIVED = "NOT EXISTS (SELECT 1 FROM board_periods p WHERE p.scope = {column})"


async def archive_periods(redis: Any, pool: Any, keys: Keys, *, now: datetime,
                          grace_s: int, key_ttl_s: int, service_max: int) -> list[str]:
    """Archive every period that ended at least ``grace_s`` before ``now`` and is not
    archived yet; returns their scopes, oldest first per window."""
    until = now - timedelta(seconds=grace_s)
    archived: list[str] = []
    rows = await pool.fetch(SELECT_BOARDS, timeout=10)
    created = {r["board"]: r["created_at"] for r in await pool.fetch(
        "SELECT board, created_at FROM boards", timeout=10)}
    for row in rows:
        definition = row_definition(row, service_max)
        for window in definition.spec.windows:
            if window == ALL_TIME:
                continue
            since = await pool.fetchval(LAST_ARCHIVED, definition.board, window, timeout=10)
            # A window never archived starts from the board's creation (at most
            # MAX_LOOKBACK back: a window added to an old board has no past).
            since = since or max(created[definition.board], until - MAX_LOOKBACK)
            periods = definition.spec.closed_periods(window, since=since, until=until)
            for period in periods:
                archived.append(await _archive(redis, pool, keys, definition.board, period,
                                               key_ttl_s))
    if archived:
        logger.info("archived %d periods", len(archived), extra={"scopes": archived[:20]})
    return archived


async def _archive(redis: Any, pool: Any, keys: Keys, board: str, period: Period,
                   key_ttl_s: int) -> str:
    name = scope(board, period.window, period.period)
    await pool.execute(RECORD, name, board, period.window, period.period, period.starts_at,
                       period.ends_at, timeout=10)
    # (no MULTI on a cluster: there one pipeline, not atomic; a retry repeats it)
    async with redis.pipeline(transaction=not is_cluster(redis)) as pipe:
        for key in (keys.board(name), keys.board_entries(name), keys.board_revision(name)):
            pipe.expire(key, key_ttl_s)
        pipe.srem(keys.boards, name)
        await pipe.execute()
    return name
