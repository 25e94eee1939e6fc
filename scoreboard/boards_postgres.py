"""Boards read from Postgres ``scores``: the fallback when Redis is unreachable.

Same order as Redis (score desc, reached_at, user_id; the ``scores_rank``
index serves it), so the same pages and ranks, without a version. Banned and
shadow-banned players are left out, as they are off the Redis boards: nobody
sees them on a board, whichever store answers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from scoreboard.board_reads import Row, Slice
from scoreboard.ranking import decode_member, encode_member, epoch_ms

# The players on the boards: nobody with an active ban or shadow-ban.
VISIBLE = """NOT EXISTS (
    SELECT 1 FROM user_restrictions r
    WHERE r.user_id = scores.user_id AND r.kind IN ('banned', 'shadow_banned')
      AND r.lifted_at IS NULL AND (r.expires_at IS NULL OR r.expires_at > now()))"""

SLICE = f"""
SELECT scores.user_id, scores.score, scores.reached_at, u.username
FROM scores JOIN users u USING (user_id)
WHERE scores.board = $1 AND {VISIBLE}
ORDER BY scores.score DESC, scores.reached_at, scores.user_id
OFFSET $2 LIMIT $3
"""
SIZE_AND_HIGHER = f"""
SELECT count(*) AS size, count(*) FILTER (WHERE score > $2) AS higher
FROM scores WHERE board = $1 AND {VISIBLE}
"""
# Entries strictly before (score, reached_at, user_id) in board order.
BEFORE = f"""
SELECT count(*) FROM scores
WHERE board = $1 AND (score > $2 OR (score = $2 AND (reached_at, user_id) < ($3, $4)))
  AND {VISIBLE}
"""
ENTRY = f"SELECT score, reached_at FROM scores WHERE board = $1 AND user_id = $2 AND {VISIBLE}"


class PostgresBoards:
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def slice(self, board: str, start: int, count: int) -> Slice:
        async with self.pool.acquire() as connection, connection.transaction(
                isolation="repeatable_read", readonly=True):
            rows = await connection.fetch(SLICE, board, start, count)
            first = rows[0]["score"] if rows else 0
            counts = await connection.fetchrow(SIZE_AND_HIGHER, board, first)
        return Slice(version=None, size=counts["size"], start=start,
                     higher_than_first=counts["higher"] if rows else 0,
                     rows=[Row(total=r["score"],
                               member=encode_member(epoch_ms(r["reached_at"]), r["user_id"]),
                               username=r["username"]) for r in rows])

    async def position(self, board: str, user_id: str) -> int | None:
        async with self.pool.acquire() as connection:
            entry = await connection.fetchrow(ENTRY, board, user_id)
            if entry is None:
                return None
            before: int = await connection.fetchval(BEFORE, board, entry["score"],
                                                    entry["reached_at"], user_id)
        return before

    async def position_after(self, board: str, total: int, member: str) -> int:
        reached_ms, user_id = decode_member(member)
        reached = datetime.fromtimestamp(reached_ms / 1000, UTC)
        before: int = await self.pool.fetchval(BEFORE, board, total, reached, user_id)
        # the cursor's own entry, if it is still there unchanged, is not repeated
        exists = await self.pool.fetchval(
            "SELECT 1 FROM scores WHERE board = $1 AND user_id = $2 AND score = $3"
            f" AND reached_at = $4 AND {VISIBLE}", board, user_id, total, reached)
        return before + (1 if exists else 0)
