"""Leaderboard reads: top, a user's rank, around a user, pages, ranks of a list.

Served from Redis; when Redis does not answer, from Postgres with the same
shape and order (``version`` is then null and ``X-Board-Source: postgres`` is
set). The top of a board is cached in the process for ``TOP_CACHE_MS``, so a
change is never hidden longer than that.

Every read takes ``window`` (default ``all_time``) and ``period`` (default: the
window's current one). A period that has ended is read from Postgres (its
``scores`` rows under the period's scope; its Redis keys expire once it is
archived), so an archive reads the same before and after that.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis.exceptions
from starlette.requests import Request
from starlette.responses import Response

from ingest import history_routes
from ingest.bearer import authenticate, ensure_not_revoked, unauthorized
from ingest.http import JSONResponse
from ingest.state import IngestState, state_of
from ingest.validation import BoardQuery, parse_board_query, parse_user_id
from scoreboard.board_reads import BoardReader, Page, Row
from scoreboard.boards_postgres import PostgresBoards
from scoreboard.errors import RequestError
from scoreboard.ranking import encode_member, epoch_ms
from scoreboard.redis_clients import cluster_unsettled
from scoreboard.windows import ALL_TIME, Target, TargetError, all_time_target, resolve_target

T = TypeVar("T")
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def redis_down(exc: BaseException) -> bool:
    """Redis did not answer, so a read falls back to Postgres: a connection error or
    timeout, or on a cluster the client's RedisClusterException while no node answers
    (not a RedisError, and not to be confused with a cross-slot bug, which is raised)."""
    return isinstance(exc, REDIS_DOWN) or cluster_unsettled(exc)
TOP_CACHE_ENTRIES = 1024


async def _read(state: IngestState, operation: Callable[[BoardReader], Awaitable[T]],
                target: Target | None = None) -> tuple[T, str]:
    """``operation`` on Redis, or on Postgres if Redis is unreachable or ``target``
    is a period that has ended."""
    fallback = BoardReader(PostgresBoards(state.pool), rank_mode=state.settings.rank_ties)
    if target is not None and target.closed:
        return await operation(fallback), "postgres"
    try:
        return await operation(state.boards), "redis"
    except Exception as exc:
        if not redis_down(exc):
            raise
        return await operation(fallback), "postgres"


async def target_of(state: IngestState, query: BoardQuery) -> Target:
    """The board, window and period a read names (see scoreboard.windows.resolve_target).
    An all_time read of the current period needs no look-up, as before windows."""
    if query.window == ALL_TIME and query.period is None:
        return all_time_target(query.board)
    definition = await state.board_cache.get(query.board)
    try:
        return resolve_target(query.board, definition.spec, query.window, query.period,
                              datetime.now(UTC))
    except TargetError as exc:
        status = 422 if exc.code == "invalid_field" else 404
        raise RequestError(status, exc.code, exc.detail, field=exc.field) from None


def respond(body: dict[str, Any], source: str) -> Response:
    return JSONResponse(body, headers={"X-Board-Source": source})


def not_ranked(user_id: str, board: str) -> RequestError:
    return RequestError(404, "not_ranked", f"user {user_id!r} has no score on board {board!r}")


async def top(request: Request) -> Response:
    if "as_of" in request.query_params:  # the past: from Postgres's event log
        return await history_routes.top_at(request)
    state = state_of(request)
    query = parse_board_query(request.query_params)
    target = await target_of(state, query)
    key = (target.scope, query.limit)
    cached = state.top_cache.get(key)
    if cached is not None and cached[0] > time.monotonic():
        return respond(cached[1], "redis")
    page, source = await _read(state, lambda reader: reader.top(target.scope, query.limit),
                               target)
    body = target.label(page.as_json())
    if source == "redis":
        if len(state.top_cache) >= TOP_CACHE_ENTRIES:  # any board name can be asked for
            state.top_cache.clear()
        state.top_cache[key] = (time.monotonic() + state.settings.top_cache_ms / 1000, body)
    return respond(body, source)


async def page(request: Request) -> Response:
    """Keyset pagination through a whole board: pass back ``next_cursor``."""
    state = state_of(request)
    query = parse_board_query(request.query_params)
    target = await target_of(state, query)
    cursor = query.cursor

    async def read(reader: BoardReader) -> Page:
        if cursor is None:
            return await reader.top(target.scope, query.limit)
        return await reader.after(target.scope, cursor, query.limit)

    result, source = await _read(state, read, target)
    return respond(target.label(result.as_json()), source)


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


async def own_view(state: IngestState, board: str, user_id: str, radius: int,
                   target: Target | None = None) -> tuple[Page | None, str]:
    """The entries around the caller themself. A shadow-banned player is off the
    board for everyone else; here they see their place as before, and must not
    notice anything."""

    async def read(reader: BoardReader) -> Page | None:
        found = await reader.around(board, user_id, radius)
        if found is not None:
            return found
        row = await _shadow_row(state, board, user_id)
        return None if row is None else await reader.as_if_present(board, row, radius)

    return await _read(state, read, target)


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
    except Exception as exc:
        if not redis_down(exc):
            raise
        if await state.pool.fetchval("SELECT 1 FROM revoked_tokens WHERE jti = $1",
                                     claims.jti):
            raise unauthorized("token_revoked", "access token has been revoked") from None
    return claims.sub


def rank_body(page: Page, user_id: str, target: Target) -> dict[str, Any]:
    entry = next(e for e in page.entries if e.user_id == user_id)
    return target.label({"board": page.board, "version": page.version, "user_id": user_id,
                         "username": entry.username, "rank": entry.rank,
                         "score": entry.score})


def around_body(page: Page, user_id: str, target: Target) -> dict[str, Any]:
    body = page.as_json()
    body["user_id"] = user_id
    del body["next_cursor"]
    return target.label(body)


async def user(request: Request) -> Response:
    state = state_of(request)
    user_id = parse_user_id(request.path_params["user_id"])
    query = parse_board_query(request.query_params)
    target = await target_of(state, query)
    if await viewer(request, state) == user_id:
        result, source = await own_view(state, target.scope, user_id, 0, target)
    else:
        result, source = await _read(state, lambda reader: reader.user(target.scope, user_id),
                                     target)
    if result is None or not result.entries:
        raise not_ranked(user_id, query.board)
    return respond(rank_body(result, user_id, target), source)


async def around(request: Request) -> Response:
    state = state_of(request)
    user_id = parse_user_id(request.path_params["user_id"])
    query = parse_board_query(request.query_params)
    target = await target_of(state, query)
    if await viewer(request, state) == user_id:
        result, source = await own_view(state, target.scope, user_id, query.radius, target)
    else:
        result, source = await _read(
            state, lambda reader: reader.around(target.scope, user_id, query.radius), target)
    if result is None:
        raise not_ranked(user_id, query.board)
    return respond(around_body(result, user_id, target), source)


async def ranks(request: Request) -> Response:
    """The ranks of a list of users (a friends list): ``?user_ids=a,b,c``."""
    state = state_of(request)
    query = parse_board_query(request.query_params)
    if not query.user_ids:
        raise RequestError(422, "invalid_field", "user_ids: is required", field="user_ids")
    target = await target_of(state, query)
    result, source = await _read(state, lambda reader: reader.ranks_of(target.scope,
                                                                        query.user_ids), target)
    body = result.as_json()
    del body["next_cursor"]
    return respond(target.label(body), source)
