"""``GET /api/scores/top?as_of=...``: the top of a board at a past moment.

Read from Postgres (the event log and its checkpoints,
``scoreboard.history_reads``), never from Redis: the ZSETs hold only the
present. Only ``board`` and ``limit`` go with ``as_of``; the answer is a
board page with ``version`` null, no cursor, and the moment asked for in
``as_of`` (UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from ingest.board_cache import board_not_found
from ingest.http import JSONResponse
from ingest.state import state_of
from ingest.validation import invalid, parse_board_query
from scoreboard.history import parse_as_of
from scoreboard.history_reads import board_exists, earliest_as_of, top_as_of

WITH_AS_OF = {"board", "limit", "as_of"}


async def top_at(request: Request) -> Response:
    state = state_of(request)
    params = dict(request.query_params)
    extra = sorted(set(params) - WITH_AS_OF)
    if extra:
        raise invalid(extra[0], "cannot be combined with as_of (only board and limit can)")
    raw_as_of = params.pop("as_of")
    query = parse_board_query(params)
    moment = parse_as_of(raw_as_of, now=datetime.now(UTC),
                         earliest=await earliest_as_of(state.pool))
    if not await board_exists(state.pool, query.board):
        raise board_not_found(query.board)
    page = await top_as_of(state.pool, query.board, moment, query.limit,
                           rank_mode=state.settings.rank_ties)
    body = page.as_json()
    body["as_of"] = moment.isoformat().replace("+00:00", "Z")
    return JSONResponse(body, headers={"X-Board-Source": "postgres"})
