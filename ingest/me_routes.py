"""The caller's own account and place on a board: ``/api/me``, ``/api/me/rank``,
``/api/me/around``.

A player learns its ``user_id`` here (and from login), so it never has to be
copied from somewhere else before the rank and around reads. A shadow-banned
player sees itself on the board exactly as before (see
:func:`ingest.read_routes.own_view`); everyone else does not see it at all.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ingest.http import JSONResponse
from ingest.read_routes import (
    around_body,
    not_ranked,
    own_view,
    rank_body,
    reader_id,
    respond,
    target_of,
)
from ingest.state import state_of
from ingest.validation import parse_board_query
from scoreboard.errors import RequestError


async def _caller(request: Request) -> str:
    return await reader_id(request, state_of(request))


async def me(request: Request) -> Response:
    state = state_of(request)
    user_id = await _caller(request)
    row = await state.pool.fetchrow(
        "SELECT username, scopes, created_at FROM users WHERE user_id = $1", user_id)
    if row is None:
        raise RequestError(404, "user_not_found", "this access token's user no longer exists")
    return JSONResponse({"user_id": user_id, "username": row["username"],
                         "scopes": list(row["scopes"]),
                         "created_at": row["created_at"].isoformat()})


async def my_rank(request: Request) -> Response:
    user_id = await _caller(request)
    query = parse_board_query(request.query_params)
    target = await target_of(state_of(request), query)
    result, source = await own_view(state_of(request), target.scope, user_id, 0, target)
    if result is None or not result.entries:
        raise not_ranked(user_id, query.board)
    return respond(rank_body(result, user_id, target), source)


async def my_around(request: Request) -> Response:
    user_id = await _caller(request)
    query = parse_board_query(request.query_params)
    target = await target_of(state_of(request), query)
    result, source = await own_view(state_of(request), target.scope, user_id, query.radius,
                                    target)
    if result is None:
        raise not_ranked(user_id, query.board)
    return respond(around_body(result, user_id, target), source)
