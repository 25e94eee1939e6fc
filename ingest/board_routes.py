"""The board registry over HTTP: ``GET /api/boards``, ``GET /api/boards/{id}`` and
``GET /api/boards/{id}/periods`` (a window's archived periods with their winners).

Definitions come from ingest's copy of the board HASH (no Postgres); sizes
from Redis (or Postgres when Redis is down); archives from Postgres, the only
place they live once their Redis keys expire.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ingest.board_cache import board_not_found
from ingest.read_routes import redis_down, respond
from ingest.state import state_of
from ingest.validation import invalid
from scoreboard.admin_boards import describe, window_json
from scoreboard.boards_postgres import VISIBLE
from scoreboard.errors import RequestError
from scoreboard.names import BOARD_PATTERN
from scoreboard.windows import SCOPE_SEPARATOR, WINDOW_NAMES

# Scopes of windows' periods ("<board>/<window>/<period>") are not boards.
BOARD_NAMES = f"""
SELECT board, count(*) AS size FROM scores WHERE {VISIBLE} AND strpos(board, '/') = 0
GROUP BY board
UNION ALL
SELECT board, 0 FROM boards b WHERE NOT EXISTS (SELECT 1 FROM scores s WHERE s.board = b.board)
ORDER BY board
"""

# Newest first; each with its top 3 as it is read now (banned and shadow-banned
# players left out while their ban holds, as on live boards).
PERIODS = f"""
SELECT p.period, p.starts_at, p.ends_at, p.players, p.archived_at,
       COALESCE((SELECT jsonb_agg(jsonb_build_object('user_id', w.user_id, 'username', w.username,
                                                     'score', w.score) ORDER BY w.position)
                 FROM (SELECT scores.user_id, u.username, scores.score,
                              row_number() OVER (ORDER BY scores.score DESC, scores.reached_at,
                                                 scores.user_id) AS position
                       FROM scores JOIN users u USING (user_id)
                       WHERE scores.board = p.scope AND {VISIBLE}
                       ORDER BY scores.score DESC, scores.reached_at, scores.user_id
                       LIMIT 3) w), '[]'::jsonb) AS winners
FROM board_periods p
WHERE p.board = $1 AND p.window_name = $2 AND ($3::timestamptz IS NULL OR p.ends_at < $3)
ORDER BY p.ends_at DESC
LIMIT $4
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _sizes(request: Request) -> tuple[dict[str, int], str]:
    state = state_of(request)
    try:
        names = sorted(n for n in (_text(name) for name in
                                   await state.redis.smembers(state.keys.boards))
                       if SCOPE_SEPARATOR not in n)
        async with state.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcard(state.keys.board(name))
            sizes = await pipe.execute()
        found = {n: int(s) for n, s in zip(names, sizes, strict=True)}
        for row in await state.pool.fetch("SELECT board FROM boards ORDER BY board"):
            found.setdefault(row["board"], 0)
        return found, "redis"
    except Exception as exc:
        if not redis_down(exc):
            raise
        rows = await state.pool.fetch(BOARD_NAMES)
        return {r["board"]: r["size"] for r in rows}, "postgres"


async def boards(request: Request) -> Response:
    """The boards, how many players each has, and their definitions with each
    window's current period and next reset (a spectator page's board picker)."""
    state = state_of(request)
    sizes, source = await _sizes(request)
    now = datetime.now(UTC)
    listed = []
    for name in sorted(sizes):
        entry: dict[str, Any] = {"board": name, "size": sizes[name]}
        known = state.board_cache.known.get(name)
        if known is not None:
            entry.update(describe(known, now))
        listed.append(entry)
    return respond({"boards": listed}, source)


async def _definition(request: Request) -> Any:
    name = request.path_params["board"]
    if not BOARD_PATTERN.fullmatch(name):
        raise board_not_found(name)
    return await state_of(request).board_cache.get(name)


async def board(request: Request) -> Response:
    """One board's definition, windows, current periods and next resets."""
    found = await _definition(request)
    return respond(describe(found), "redis")


async def periods(request: Request) -> Response:
    """``?window=weekly[&before=ISO time][&limit=20]``: the window's archived (closed)
    periods, newest first, each with its winners; ``current`` is the running one."""
    found = await _definition(request)
    params = request.query_params
    unknown = sorted(set(params) - {"window", "limit", "before"})
    if unknown:
        raise invalid(unknown[0], "unknown parameter")
    window = params.get("window", "")
    if window not in WINDOW_NAMES:
        raise invalid("window", f"is required, one of {', '.join(WINDOW_NAMES)}")
    if window not in found.spec.windows:
        raise RequestError(404, "window_not_found",
                           f"board {found.board!r} has no {window} window", field="window")
    raw_limit = params.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
        raise invalid("limit", "must be an integer from 1 to 100")
    before = None
    if "before" in params:
        try:
            before = datetime.fromisoformat(params["before"].replace("Z", "+00:00"))
        except ValueError:
            raise invalid("before", "must be an ISO 8601 time") from None
        if before.tzinfo is None:
            raise invalid("before", "must carry a UTC offset")
    rows = await state_of(request).pool.fetch(PERIODS, found.board, window, before,
                                              int(raw_limit), timeout=10)
    listed = [{"period": r["period"], "starts_at": _iso(r["starts_at"]),
               "ends_at": _iso(r["ends_at"]), "players": r["players"],
               "archived_at": _iso(r["archived_at"]), "winners": r["winners"]} for r in rows]
    body = {"board": found.board, **window_json(found.spec, window, datetime.now(UTC)),
            "periods": listed}
    return respond(body, "postgres")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
