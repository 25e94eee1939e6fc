"""The top of a board as it stood at a past moment, from the event log.

The latest checkpoint at or before the moment, plus the actions from the
checkpoint up to and including the moment, summed per user; the order is the
live board's (scoreboard/ranking.py): score first, then who reached it first
(the newest counted action's time, in milliseconds as the board stores it),
then user id. Players banned or shadow-banned NOW are left out, as on the
live board (scoreboard/history.py says why). The answer has the shape of a
board page, with ``version`` null (Postgres has no revision) and no cursor.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from scoreboard.board_reads import Page
from scoreboard.ranking import Entry, ranks

CHECKPOINT = "SELECT max(at) FROM history_checkpoints WHERE at <= $1"

# $1 board, $2 the moment, $3 the checkpoint (NULL: none, replay everything), $4 limit.
TOP_AS_OF = """
WITH replayed AS (
    SELECT user_id, sum(points) AS total, max(created_at) AS reached_at
    FROM actions
    WHERE board = $1 AND created_at >= COALESCE($3, '-infinity'::timestamptz)
      AND created_at <= $2
    GROUP BY user_id
), merged AS (
    SELECT user_id, COALESCE(c.total, 0) + COALESCE(r.total, 0) AS total,
           GREATEST(c.reached_at, r.reached_at) AS reached_at
    FROM (SELECT user_id, total, reached_at FROM history_checkpoint_totals
          WHERE at = $3 AND board = $1) AS c
    FULL JOIN replayed AS r USING (user_id)
), visible AS (
    SELECT * FROM merged m WHERE m.total > 0 AND NOT EXISTS (
        SELECT 1 FROM user_restrictions r
        WHERE r.user_id = m.user_id AND r.kind IN ('banned', 'shadow_banned')
          AND r.lifted_at IS NULL AND (r.expires_at IS NULL OR r.expires_at > now()))
), ordered AS (
    SELECT user_id, total, date_trunc('milliseconds', reached_at) AS reached_ms,
           count(*) OVER () AS size
    FROM visible
    ORDER BY total DESC, reached_ms, user_id
    LIMIT $4
)
SELECT o.user_id, o.total, o.size, COALESCE(u.username, o.user_id) AS username
FROM ordered o LEFT JOIN users u USING (user_id)
ORDER BY o.total DESC, o.reached_ms, o.user_id
"""
READ_TIMEOUT_S = 60


async def earliest_as_of(pool: Any) -> datetime | None:
    """The retention floor: ``as_of`` before it is refused (None: nothing dropped)."""
    earliest: datetime | None = await pool.fetchval("SELECT earliest FROM history_floor")
    return earliest


async def board_exists(pool: Any, board: str) -> bool:
    return bool(await pool.fetchval("SELECT 1 FROM boards WHERE board = $1", board))


async def top_as_of(pool: Any, board: str, moment: datetime, limit: int, *,
                    rank_mode: str) -> Page:
    """The first ``limit`` entries of ``board`` as it stood at ``moment`` (inclusive)."""
    async with pool.acquire() as connection, connection.transaction(
            isolation="repeatable_read", readonly=True):
        checkpoint = await connection.fetchval(CHECKPOINT, moment)
        rows = await connection.fetch(TOP_AS_OF, board, moment, checkpoint, limit,
                                      timeout=READ_TIMEOUT_S)
    totals = [row["total"] for row in rows]
    rank_list = ranks(totals, first_position=0, first_competition_rank=1, mode=rank_mode)
    entries = [Entry(rank=rank, user_id=row["user_id"], username=row["username"],
                     score=row["total"]) for rank, row in zip(rank_list, rows, strict=True)]
    return Page(board=board, version=None, size=rows[0]["size"] if rows else 0,
                entries=entries, next_cursor=None)
