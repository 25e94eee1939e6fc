"""Board writes: the Redis side of a persisted batch, and rebuilding a board from
Postgres (the counterpart of ``scoreboard.board_reads``; moved from workers/ so
that the admin commands use it without importing a process package).

Boards are a projection of ``scores`` (order and encoding: scoreboard/ranking.py).
Totals are written with a compare-and-set on each score row's version
(``lua/lib/board.lua``; a worker's batch through ``lua/apply_batch.lua``,
reconcile and rebuild through ``lua/set_totals.lua``): replaying a batch, or
two workers racing with older and newer totals, can only leave the newest
total, and a total that goes down is applied like any other.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from scoreboard.keys import Keys
from scoreboard.lua import Scripts
from scoreboard.redis_clients import is_cluster, publish

PAGE_SIZE = 5_000


class BoardTotal(NamedTuple):
    """A (board, user)'s committed total. A tuple: a worker builds one per total of
    every batch, and a frozen dataclass took three times as long to make (about
    a tenth of the worker's CPU in a py-spy profile of ``make bench-worker``)."""

    board: str
    user_id: str
    score: int
    reached_at: datetime
    version: int
    username: str


SELECT_PAGE = """
SELECT s.user_id, s.score, s.reached_at, s.version, u.username
FROM scores s JOIN users u USING (user_id)
WHERE s.board = $1 AND ($2::text IS NULL OR s.user_id > $2)
ORDER BY s.user_id LIMIT $3
"""


async def _set_totals(pipe: Any, scripts: Scripts, keys: Keys, board: str,
                      totals: Sequence[BoardTotal], *, board_key: str | None = None,
                      entries_key: str | None = None) -> None:
    """Queue ``set_totals`` on ``pipe`` (awaiting only queues it; ``execute`` runs it)."""
    await scripts.set_totals(keys, board=board, totals=totals, board_key=board_key,
                             entries_key=entries_key, client=pipe)


async def _set_totals_sharded(redis: Any, scripts: Scripts, keys: Keys, board: str,
                              totals: Sequence[BoardTotal], *, board_key: str | None = None,
                              entries_key: str | None = None) -> None:
    """``set_totals`` run at once, the bans read first from the players' slots (a
    cluster pipeline has no MULTI and does not reload a script on NOSCRIPT): on a
    sharded deployment, or any call through a cluster client."""
    hidden = await hidden_users(redis, keys, [t.user_id for t in totals])
    await scripts.set_totals(keys, board=board, totals=totals, board_key=board_key,
                             entries_key=entries_key, hidden=hidden)


async def hidden_users(redis: Any, keys: Keys, user_ids: Sequence[str]) -> list[bool]:
    """Whether each user is banned or shadow-banned (sharded: read in each user's slot,
    one pipeline)."""
    async with redis.pipeline(transaction=False) as pipe:
        for user_id in user_ids:
            player = keys.player(user_id)
            pipe.exists(player.banned(user_id), player.shadow_banned(user_id))
        return [int(found) > 0 for found in await pipe.execute()]


async def apply_and_ack(redis: Any, scripts: Scripts, keys: Keys, *, group: str,
                        totals: Sequence[BoardTotal], ack_ids: Sequence[str],
                        traceparent: str = "", stream: str | None = None) -> None:
    """Set the totals, keep the username map, acknowledge, and announce, atomically.

    One script call, one round trip: either the boards move and the entries
    are acknowledged and the change is announced, or none of it happens and
    the entries are redelivered (and this runs again with the same totals).
    A ``traceparent`` (tracing on) rides along in the notices.

    Sharded (``keys.sharded``; ``stream``: the shard's stream the entries came
    from), the boards' slot and the stream's are different: the users' bans are
    read first (:func:`hidden_users`), the boards are set and the change announced
    in one call in the boards' slot, then the entries are acknowledged in the
    stream's. A crash between the two leaves the entries pending: redelivered,
    they are persisted as nothing new and set the same totals again (the
    versions make it a no-op), so exactly-once holds. What is given up: a ban
    set between the read and the board call does not take the user off the
    board in this call (the ban's own board update, or the next batch, does).
    """
    if not keys.sharded:
        await scripts.apply_batch(keys, group=group, totals=totals, ack_ids=ack_ids,
                                  traceparent=traceparent)
        return
    if ack_ids and stream is None:
        raise ValueError("sharded: the stream the entries came from is needed")
    hidden = await hidden_users(redis, keys, [t.user_id for t in totals])
    await scripts.apply_batch(keys, group=group, totals=totals, ack_ids=[],
                              traceparent=traceparent, hidden=hidden)
    if ack_ids and stream is not None:
        await redis.xack(stream, group, *ack_ids)


async def set_totals_in(redis: Any, scripts: Scripts, keys: Keys,
                        totals: Sequence[BoardTotal]) -> None:
    """Set ``totals`` on their boards (no acknowledgement, no announcement)."""
    if keys.sharded or is_cluster(redis):
        for board in sorted({t.board for t in totals}):
            await _set_totals_sharded(redis, scripts, keys, board,
                                      [t for t in totals if t.board == board])
        await redis.hset(keys.usernames, mapping={t.user_id: t.username for t in totals})
        return
    async with redis.pipeline(transaction=True) as pipe:
        for board in sorted({t.board for t in totals}):
            await _set_totals(pipe, scripts, keys, board, [t for t in totals if t.board == board])
        pipe.hset(keys.usernames, mapping={t.user_id: t.username for t in totals})
        await pipe.execute()


def _totals(board: str, rows: Sequence[Any]) -> list[BoardTotal]:
    return [BoardTotal(board=board, user_id=r["user_id"], score=r["score"],
                       reached_at=r["reached_at"], version=r["version"], username=r["username"])
            for r in rows]


async def reconcile_board(redis: Any, pool: Any, scripts: Scripts, keys: Keys,
                          board: str) -> int:
    """Bring every member of ``board`` to its Postgres total and version.

    Repairs a board that missed updates (a lost Redis write, a restored
    snapshot); the version check means it never undoes a newer total a
    worker set meanwhile. Returns how many rows were read.
    """
    after: str | None = None
    seen = 0
    while rows := await pool.fetch(SELECT_PAGE, board, after, PAGE_SIZE):
        one_by_one = keys.sharded or is_cluster(redis)
        if one_by_one:
            await _set_totals_sharded(redis, scripts, keys, board, _totals(board, rows))
        async with redis.pipeline(transaction=False) as pipe:
            if not one_by_one:
                await _set_totals(pipe, scripts, keys, board, _totals(board, rows))
            pipe.hset(keys.usernames, mapping={r["user_id"]: r["username"] for r in rows})
            pipe.sadd(keys.boards, board)
            await pipe.execute()
        seen += len(rows)
        after = rows[-1]["user_id"]
    return seen


async def rebuild_board(redis: Any, pool: Any, scripts: Scripts, keys: Keys, board: str) -> int:
    """Recompute ``board`` from Postgres into new keys and swap them in atomically.

    Spectators see the old board until the RENAME, then the new one; never an
    empty one. Totals committed while the copy was being built may have gone
    to the old keys (lost by the swap), so a reconcile pass follows the swap
    and applies them again. Returns the number of members.
    """
    staging_board, staging_entries = keys.board_staging(board, secrets.token_hex(4))
    after: str | None = None
    members = 0
    try:
        while rows := await pool.fetch(SELECT_PAGE, board, after, PAGE_SIZE):
            if keys.sharded or is_cluster(redis):
                await _set_totals_sharded(redis, scripts, keys, board, _totals(board, rows),
                                          board_key=staging_board, entries_key=staging_entries)
            else:
                async with redis.pipeline(transaction=False) as pipe:
                    await _set_totals(pipe, scripts, keys, board, _totals(board, rows),
                                      board_key=staging_board, entries_key=staging_entries)
                    await pipe.execute()
            members += len(rows)
            after = rows[-1]["user_id"]
        if is_cluster(redis):
            # No MULTI on a cluster, and its pipeline refuses RENAME and PUBLISH: the
            # same steps one by one (a spectator may, for a moment, see the new
            # ZSET with the old entries hash; the reconcile below repairs any gap).
            if members:
                await redis.rename(staging_board, keys.board(board))
                await redis.rename(staging_entries, keys.board_entries(board))
            else:
                await redis.delete(keys.board(board), keys.board_entries(board))
            await redis.incr(keys.board_revision(board))
            await publish(redis, keys.board_changes, board)
        else:
            async with redis.pipeline(transaction=True) as pipe:
                if members:
                    pipe.rename(staging_board, keys.board(board))
                    pipe.rename(staging_entries, keys.board_entries(board))
                else:
                    pipe.delete(keys.board(board), keys.board_entries(board))
                pipe.incr(keys.board_revision(board))
                pipe.publish(keys.board_changes, board)
                await pipe.execute()
    finally:
        await redis.delete(staging_board, staging_entries)
    await reconcile_board(redis, pool, scripts, keys, board)
    return members
