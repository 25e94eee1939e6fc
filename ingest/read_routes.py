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

from ingest.http import JSONResponse
from ingest.state import IngestState, state_of
from ingest.validation import parse_board_query, parse_user_id
from scoreboard.board_reads import BoardReader, Page
from scoreboard.boards_postgres import PostgresBoards
from scoreboard.errors import RequestError
from scoreboard.ranking import Entry

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


def _respond(body: dict[str, Any], source: str) -> Response:
    return JSONResponse(body, headers={"X-Board-Source": source})


def _not_ranked(user_id: str, board: str) -> RequestError:
    return RequestError(404, "not_ranked", f"user {user_id!r} has no score on board {board!r}")


async def top(request: Request) -> Response:
    state = state_of(request)
    query = parse_board_query(request.query_params)
    key = (query.board, query.limit)
    cached = state.top_cache.get(key)
    if cached is not None and cached[0] > time.monotonic():
        return _respond(cached[1], "redis")
    page, source = await _read(state, lambda reader: reader.top(query.board, query.limit))
    body = page.as_json()
    if source == "redis":
        if len(state.top_cache) >= TOP_CACHE_ENTRIES:  # any board name can be asked for
            state.top_cache.clear()
        state.top_cache[key] = (time.monotonic() + state.settings.top_cache_ms / 1000, body)
    return _respond(body, source)


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
    return _respond(result.as_json(), source)


async def _shadow_view(state: IngestState, board: str, user_id: str) -> Page | None:
    """A shadow-banned user's own rank, as if they were still on the board: they
    are hidden from everyone else, and must not notice it here."""
    if not await state.redis.exists(state.keys.shadow_banned(user_id)):
        return None
    row = await state.pool.fetchrow(
        "SELECT s.score, u.username FROM scores s JOIN users u USING (user_id)"
        " WHERE s.board = $1 AND s.user_id = $2", board, user_id)
    if row is None:
        return None
    higher = await state.redis.zcount(state.keys.board(board), "-inf", f"({-row['score']}")
    version = await state.redis.get(state.keys.board_revision(board))
    return Page(board=board, version=int(version or 0), size=0, next_cursor=None, entries=[
        Entry(rank=int(higher) + 1, user_id=user_id, username=row["username"],
              score=row["score"])])


async def user(request: Request) -> Response:
    state = state_of(request)
    user_id = parse_user_id(request.path_params["user_id"])
    query = parse_board_query(request.query_params)
    result, source = await _read(state, lambda reader: reader.user(query.board, user_id))
    if (result is None or not result.entries) and source == "redis":
        result = await _shadow_view(state, query.board, user_id)
    if result is None or not result.entries:
        raise _not_ranked(user_id, query.board)
    entry = result.entries[0]
    return _respond({"board": query.board, "version": result.version, "user_id": user_id,
                     "username": entry.username, "rank": entry.rank, "score": entry.score},
                    source)


async def around(request: Request) -> Response:
    state = state_of(request)
    user_id = parse_user_id(request.path_params["user_id"])
    query = parse_board_query(request.query_params)
    result, source = await _read(
        state, lambda reader: reader.around(query.board, user_id, query.radius))
    if result is None:
        raise _not_ranked(user_id, query.board)
    body = result.as_json()
    body["user_id"] = user_id
    del body["next_cursor"]
    return _respond(body, source)


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
    return _respond(body, source)
