"""The Redis side of a persisted batch, and rebuilding a board from Postgres.

Boards are a projection of ``scores``: the worker writes committed absolute
totals with ``ZADD GT``, so replaying a batch, or two workers racing with
older and newer totals, can only leave the newest (largest) total. Totals only
grow while increments are positive; an operation that lowers a total must go
through :func:`rebuild_board`.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from scoreboard.keys import Keys
from workers.persist import BoardTotal

REBUILD_PAGE = 10_000


async def apply_and_ack(redis: Any, keys: Keys, *, group: str, totals: Sequence[BoardTotal],
                        ack_ids: Sequence[str]) -> None:
    """Set the totals, keep the username map, acknowledge, and announce, atomically.

    One MULTI/EXEC: either the boards move and the entries are acknowledged
    and the change is announced, or none of it happens and the entries are
    redelivered (and this runs again with the same totals).
    """
    boards = sorted({t.board for t in totals})
    async with redis.pipeline(transaction=True) as pipe:
        for board in boards:
            pipe.zadd(keys.board(board), {t.user_id: t.score for t in totals if t.board == board},
                      gt=True)
        if totals:
            pipe.hset(keys.usernames, mapping={t.user_id: t.username for t in totals})
            pipe.sadd(keys.boards, *boards)
        for board in boards:
            pipe.incr(keys.board_revision(board))
        if ack_ids:
            pipe.xack(keys.stream, group, *ack_ids)
        for board in boards:
            pipe.publish(keys.board_changes, board)
        await pipe.execute()


async def _page_of_scores(pool: Any, board: str, after_user: str | None) -> list[Any]:
    rows: list[Any] = await pool.fetch(
        "SELECT s.user_id, s.score, u.username FROM scores s JOIN users u USING (user_id)"
        " WHERE s.board = $1 AND ($2::text IS NULL OR s.user_id > $2)"
        " ORDER BY s.user_id LIMIT $3", board, after_user, REBUILD_PAGE)
    return rows


async def reconcile_board(redis: Any, pool: Any, keys: Keys, board: str) -> int:
    """Raise every member of ``board`` to its Postgres total (``ZADD GT``).

    Repairs a board that missed updates (a lost Redis write, a restored
    snapshot) without ever lowering a score a concurrent worker just set.
    Returns how many rows were read.
    """
    after: str | None = None
    seen = 0
    while True:
        rows = await _page_of_scores(pool, board, after)
        if not rows:
            return seen
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.board(board), {r["user_id"]: r["score"] for r in rows}, gt=True)
            pipe.hset(keys.usernames, mapping={r["user_id"]: r["username"] for r in rows})
            pipe.sadd(keys.boards, board)
            await pipe.execute()
        seen += len(rows)
        after = rows[-1]["user_id"]


async def rebuild_board(redis: Any, pool: Any, keys: Keys, board: str) -> int:
    """Recompute ``board`` from Postgres into a new key and swap it in atomically.

    Spectators see the old board until the RENAME, then the new one; never an
    empty one. Totals committed while the copy was being built may have gone
    to the old key (lost by the swap), so a reconcile pass follows the swap
    and raises them again. Returns the number of members.
    """
    staging = keys.board_staging(board, secrets.token_hex(4))
    after: str | None = None
    members = 0
    try:
        while True:
            rows = await _page_of_scores(pool, board, after)
            if not rows:
                break
            await redis.zadd(staging, {r["user_id"]: r["score"] for r in rows})
            members += len(rows)
            after = rows[-1]["user_id"]
        async with redis.pipeline(transaction=True) as pipe:
            if members:
                pipe.rename(staging, keys.board(board))
            else:
                pipe.delete(keys.board(board))
            pipe.incr(keys.board_revision(board))
            pipe.publish(keys.board_changes, board)
            await pipe.execute()
    finally:
        await redis.delete(staging)
    await reconcile_board(redis, pool, keys, board)
    return members
