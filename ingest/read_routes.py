"""Leaderboard reads: top, a user's rank, around a user, pages, ranks of a list.

Served from Redis; when Redis does not answer, from Postgres with the same
shape and order (``version`` is then null and ``X-Board-Source: postgres`` is
set). The top of a board is cached in the process for ``TOP_CACHE_MS``, so a
change is never hidden longer than that.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.exceptions
from starlette.requests import Request
from starlette.responses import Response

from ingest import history_routes
from ingest.bearer import authenticate, ensure_not_revoked, unauthorized
from ingest.http import JSONResponse
from ingest.state import IngestState, state_of
from ingest.validation import parse_board_query, parse_user_id
from scoreboard.board_reads import BoardReader, Page, Row
from scoreboard.boards_postgres import VISIBLE, PostgresBoards
from scoreboard.errors import RequestError
from scoreboard.ranking import encode_member, epoch_ms

T = TypeVar("T")
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
TOP_CACHE_ENTRIES = 1024


async def _read(state: IngestState, operation: Callable[[BoardReader], Awaitable[T]]
                ) -> tuple[T, str]:
    """``operation`` on Redis, or on Postgres if Redis is unreachable."""
    try:
        return await operation(state.boards), "redis"
    except REDIS_DOWN:
        fallback = BoardReader(PostgresBoards(state.pool), rank_mode=state.settings.rank_ties)
        return await operation(fallback), "postgres"


def respond(body: dict[str, Any], source: str) -> Response:
    return JSONResponse(body, headers={"X-Board-Source": source})


def not_ranked(user_id: str, board: str) -> RequestError:
    return RequestError(404, "not_ranked", f"user {user_id!r} has no score on board {board!r}")


async def top(request: Request) -> Response:
    if "as_of" in request.query_params:  # the past: from Postgres's event log
        return await history_routes.top_at(request)
    state = state_of(request)
    query = parse_board_query(request.query_params)
    key = (query.board, query.limit)
    cached = state.top_cache.get(key)
    if cached is not None and cached[0] > time.monotonic():
        return respond(cached[1], "redis")
    page, source = await _read(state, lambda reader: reader.top(query.board, query.limit))
    body = page.as_json()
    if source == "redis":
        if len(state.top_cache) >= TOP_CACHE_ENTRIES:  # any board name can be asked for
            state.top_cache.clear()
        state.top_cache[key] = (time.monotonic() + state.settings.top_cache_ms / 1000, body)
    return respond(body, source)


async def page(request: Request) -> Response:
    """Keyset pagination through a whole board: pass back ``next_cursor``."""
    state = state_of(request)
    query = parse_board_query(request.query_params)
    cursor = query.cursor

    async def read(reader: BoardReader) -> Page:
        if cursor is None:
            return await reader.top(query.board, query.limit)
        return await reader.after(query.board, cursor, query.limit)

    result, source = await _read(state, read)
    return respond(result.as_json(), source)


SHADOW_ROW = """
SELECT s.score, s.reached_at, u.username FROM scores s JOIN users u USING (user_id)
WHERE s.board = $1 AND s.user_id = $2 AND EXISTS (
    SELECT 1 FROM user_restrictions r
    WHERE r.user_id = s.user_id AND r.kind = 'shadow_banned' AND r.lifted_at IS NULL
      AND (r.expires_at IS NULL OR r.expires_at > now()))
"""


async def _shadow_row(state: IngestState, board: str, user_id: str) -> Row | None:
    """A shadow-banned player's committed total on ``board`` as a board row; None
    for anyone else (Postgres holds the durable record of the shadow-ban)."""
    row = await state.pool.fetchrow(SHADOW_ROW, board, user_id)
    if row is None:
        return None
    return Row(total=row["score"], member=encode_member(epoch_ms(row["reached_at"]), user_id),
               username=row["username"])


async def own_view(state: IngestState, board: str, user_id: str, radius: int
                   ) -> tuple[Page | None, str]:
    """The entries around the caller themself. A shadow-banned player is off the
    board for everyone else; here they see their place as before, and must not
    notice anything."""

    async def read(reader: BoardReader) -> Page | None:
        found = await reader.around(board, user_id, radius)
        if found is not None:
            return found
        row = await _shadow_row(state, board, user_id)
        return None if row is None else await reader.as_if_present(board, row, radius)

    return await _read(state, read)


async def viewer(request: Request, state: IngestState) -> str | None:
    """The caller's user id when the request carries an access token (reads need
    none; with one, a player reading their own entry sees it as ``/api/me`` does)."""
    if "authorization" not in request.headers:
        return None
    return await reader_id(request, state)


async def reader_id(request: Request, state: IngestState) -> str:
    """The verified caller of a read. Revocation is asked of Redis, or, when Redis
    is down, of Postgres (the durable record), so reads keep working as they do
    without a token."""
    claims = authenticate(request, state)
    try:
        await ensure_not_revoked(state, claims)
    except REDIS_DOWN:
        if await state.pool.fetchval("SELECT 1 FROM revoked_tokens WHERE jti = $1",
                                     claims.jti):
            raise unauthorized("token_revoked", "access token has been revoked") from None
    return claims.sub


def rank_body(page: Page, user_id: str) -> dict[str, Any]:
    entry = next(e for e in page.entries if e.user_id == user_id)
    return {"board": page.board, "version": page.version, "user_id": user_id,
            "username": entry.username, "rank": entry.rank, "score": entry.score}


def around_body(page: Page, user_id: str) -> dict[str, Any]:
    body = page.as_json()
    body["user_id"] = user_id
    del body["next_cursor"]
    return body


async def user(request: Request) -> Response:
    state = state_of(request)
    user_id = parse_user_id(request.path_params["user_id"])
    query = parse_board_query(request.query_params)
    if await viewer(request, state) == user_id:
        result, source = await own_view(state, query.board, user_id, 0)
    else:
        result, source = await _read(state, lambda reader: reader.user(query.board, user_id))
    if result is None or not result.entries:
        raise not_ranked(user_id, query.board)
    return respond(rank_body(result, user_id), source)


async def around(request: Request) -> Response:
    state = state_of(request)
    user_id = parse_user_id(request.path_params["user_id"])
    query = parse_board_query(request.query_params)
    if await viewer(request, state) == user_id:
        result, source = await own_view(state, query.board, user_id, query.radius)
    else:
        result, source = await _read(
            state, lambda reader: reader.around(query.board, user_id, query.radius))
    if result is None:
        raise not_ranked(user_id, query.board)
    return respond(around_body(result, user_id), source)


async def ranks(request: Request) -> Response:
    """The ranks of a list of users (a friends list): ``?user_ids=a,b,c``."""
    state = state_of(request)
    query = parse_board_query(request.query_params)
    if not query.user_ids:
        raise RequestError(422, "invalid_field", "user_ids: is required", field="user_ids")
    result, source = await _read(state, lambda reader: reader.ranks_of(query.board,
                                                                        query.user_ids))
    body = result.as_json()
    del body["next_cursor"]
    return respond(body, source)


BOARD_NAMES = f"""
SELECT board, count(*) AS size FROM scores WHERE {VISIBLE} GROUP BY board
UNION ALL
SELECT board, 0 FROM boards b WHERE NOT EXISTS (SELECT 1 FROM scores s WHERE s.board = b.board)
ORDER BY board
"""


async def boards(request: Request) -> Response:
    """The boards and how many players each has (a spectator page's board picker)."""
    state = state_of(request)
    try:
        names = sorted(_text(name) for name in await state.redis.smembers(state.keys.boards))
        async with state.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcard(state.keys.board(name))
            sizes = await pipe.execute()
        listed, source = [{"board": n, "size": int(s)} for n, s in zip(names, sizes,
                                                                        strict=True)], "redis"
        known = {entry["board"] for entry in listed}
        listed += [{"board": row["board"], "size": 0} for row in await state.pool.fetch(
            "SELECT board FROM boards ORDER BY board") if row["board"] not in known]
    except REDIS_DOWN:
        rows = await state.pool.fetch(BOARD_NAMES)
        listed, source = [{"board": r["board"], "size": r["size"]} for r in rows], "postgres"
    return respond({"boards": sorted(listed, key=lambda entry: entry["board"])}, source)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
