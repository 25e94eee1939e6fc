"""Removing an action from the windows of its board (``remove-action``).

The action counted on its board and in the period of each window that held its
accept time. Each of those scopes that is not archived gets its total computed
again from the ``actions`` left in the period (a sum, or for a ``best`` board
the best single result and when it was first reached); an archived period is
frozen and keeps the action (scoreboard/archives.py). The ``all_time`` total of
a ``sum`` board is corrected by ``scoreboard.moderation`` as before windows; a
``best`` board's is computed again here like a period's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from scoreboard.board_defs import BoardDefinition
from scoreboard.board_writes import BoardTotal
from scoreboard.windows import ALL_TIME, scope

SUM_IN = """
SELECT sum(points) AS score, max(created_at) AS reached_at FROM actions
WHERE user_id = $1 AND board = $2 AND ($3::timestamptz IS NULL OR created_at >= $3)
  AND ($4::timestamptz IS NULL OR created_at < $4)
"""
BEST_IN = """
SELECT points AS score, created_at AS reached_at FROM actions
WHERE user_id = $1 AND board = $2 AND ($3::timestamptz IS NULL OR created_at >= $3)
  AND ($4::timestamptz IS NULL OR created_at < $4)
ORDER BY points DESC, created_at LIMIT 1
"""
SET_TOTAL = """
UPDATE scores SET score = $3, reached_at = COALESCE($4, reached_at), version = version + 1
WHERE board = $1 AND user_id = $2 AND NOT EXISTS (SELECT 1 FROM board_periods p WHERE p.scope = $1)
RETURNING score, reached_at, version
"""


async def correct_scopes(connection: Any, definition: BoardDefinition, *, user_id: str,
                         username: str, accepted_at: datetime) -> list[BoardTotal]:
    """Recompute the user's totals in every scope of ``definition`` that counted an
    action accepted at ``accepted_at`` (already deleted); returns the new totals
    (score 0: nothing left there, the row is deleted and the board entry goes)."""
    totals: list[BoardTotal] = []
    best = definition.operator == "best"
    for period in definition.spec.open_periods(accepted_at):
        if period.window == ALL_TIME and not best:
            continue  # corrected by scoreboard.moderation as before windows
        where = scope(definition.board, period.window, period.period)
        found = await connection.fetchrow(BEST_IN if best else SUM_IN, user_id,
                                          definition.board, period.starts_at, period.ends_at)
        score = (found["score"] if found and found["score"] is not None else 0)
        reached = found["reached_at"] if found else None
        row = await connection.fetchrow(SET_TOTAL, where, user_id, score, reached)
        if row is None:  # archived (frozen), or never counted there
            continue
        totals.append(BoardTotal(board=where, user_id=user_id, score=row["score"],
                                 reached_at=row["reached_at"], version=row["version"],
                                 username=username))
        if row["score"] <= 0:
            await connection.execute("DELETE FROM scores WHERE board = $1 AND user_id = $2",
                                     where, user_id)
    return totals
