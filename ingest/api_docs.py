"""What every ingest endpoint does, keyed by ``"METHOD /path"`` as routed in
``ingest.app``: the one place the API is described.

``ingest.openapi`` joins this table with the app's routes into the OpenAPI
document served at ``/openapi.json``; a route without an entry here, or an
entry without a description, fails the build (and ``tests/test_openapi.py``).
Change an endpoint's contract here in the same commit as its handler.
"""

from __future__ import annotations

from typing import Any

from ingest.api_schemas import BOARD, USER_ID, Schema, ref

Operation = dict[str, Any]

JSON = "application/json"
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                               "schema": {"type": "integer"}}}


def answer(description: str, schema: str | None = None, *, media: str = JSON,
           headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    if schema is not None:
        response["content"] = {media: {"schema": ref(schema)}}
    elif media != JSON:
        response["content"] = {media: {"schema": {"type": "string"}}}
    if headers:
        response["headers"] = headers
    return response


def refusal(description: str, *, retry: bool = False) -> dict[str, Any]:
    return answer(description, "Error", headers=RETRY_AFTER if retry else None)


UNAVAILABLE = refusal("`unavailable`: Redis or Postgres did not answer; retry", retry=True)
BAD_BODY = {"400": refusal("`invalid_json`: the body is not JSON"),
            "413": refusal("`body_too_large`"),
            "422": refusal("`invalid_field`: a field is missing, unknown or invalid"
                           " (`field` names it)")}
NEEDS_TOKEN = {"401": refusal("`missing_token`, `invalid_token`, `token_expired` or"
                              " `token_revoked`")}
CLOSED = {"409": refusal("`board_closed`: the board takes no more increments")}
LIMITED = {"429": refusal("`rate_limited` (or `address_limited`)", retry=True)}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


def query(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


PATH_BOARD = {"name": "board", "in": "path", "required": True, "schema": BOARD}


def path_user() -> dict[str, Any]:
    return {"name": "user_id", "in": "path", "required": True, "schema": USER_ID}


BOARD_Q = query("board", BOARD, "board name (default `global`)")
LIMIT_Q = query("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
                "how many entries")
AS_OF_Q = query("as_of", {"type": "string", "format": "date-time",
                          "examples": ["2026-11-30T12:00:00Z"]},
                "ISO 8601 time with a zone: the board as it stood then (not in the future)")
RADIUS_Q = query("radius", {"type": "integer", "minimum": 0, "maximum": 50, "default": 5},
                 "entries on each side")
WINDOW_Q = query("window", {"enum": ["all_time", "daily", "weekly", "monthly", "season"],
                            "default": "all_time"},
                 "one of the board's windows; its current period unless `period` names one")
PERIOD_Q = query("period", {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$",
                            "examples": ["2026-12-02", "2026-W48", "2026-12", "s1"]},
                 "a period of `window` (`2026-12-02`, ISO week `2026-W48`, `2026-12`, a"
                 " season's name; `all` for all_time); an ended one is read from its"
                 " archive in Postgres")
WINDOWED = [WINDOW_Q, PERIOD_Q]
BOARD_READ = {"404": refusal("`board_not_found` (where boards are registered),"
                             " `window_not_found` (not a window of the board),"
                             " `period_not_found` (not begun, or no season running) or"
                             " `not_ranked`"),
              "422": refusal("`invalid_field`: a query parameter is invalid or unknown"),
              "503": UNAVAILABLE}
FROM_POSTGRES = {"X-Board-Source": {"description": "`redis`, or `postgres` when Redis was"
                                                   " unreachable (then `version` is null)",
                                    "schema": {"enum": ["redis", "postgres"]}}}


def body(schema: str, *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": ref(schema)}}}


OPERATIONS: dict[str, Operation] = {
    "POST /api/auth/register": {
        "tags": ["accounts"], "summary": "Register a player account",
        "description": "Creates a login. The `user_id` is chosen by the service.",
        "requestBody": body("Credentials"),
        "responses": {"201": answer("registered", "Registered"), **BAD_BODY,
                      "409": refusal("`username_taken`"), **LIMITED, "503": UNAVAILABLE}},
    "POST /api/auth/login": {
        "tags": ["accounts"], "summary": "Log in",
        "description": "An access token (Bearer, `expires_in` seconds) and a refresh token,"
                       " and the account's `user_id`. Attempts are limited per address.",
        "requestBody": body("Credentials"),
        "responses": {"200": answer("a new session", "Session"), **BAD_BODY,
                      "401": refusal("`invalid_credentials`"), **LIMITED, "503": UNAVAILABLE}},
    "POST /api/auth/refresh": {
        "tags": ["accounts"], "summary": "Swap a refresh token for a new session",
        "description": "The presented refresh token is spent; a spent one presented again"
                       " revokes its whole session (`refresh_token_reused`).",
        "requestBody": body("RefreshRequest"),
        "responses": {"200": answer("the next session", "Session"), **BAD_BODY,
                      "401": refusal("`invalid_refresh_token` or `refresh_token_reused`"),
                      **LIMITED, "503": UNAVAILABLE}},
    "POST /api/auth/logout": {
        "tags": ["accounts"], "summary": "Log out", "security": BEARER,
        "description": "Revokes the access token and its session's refresh tokens.",
        "responses": {"204": answer("logged out"), **NEEDS_TOKEN, "503": UNAVAILABLE}},
    "GET /.well-known/jwks.json": {
        "tags": ["accounts"], "summary": "Public keys of the access tokens",
        "description": "JWKS of the current and previous RS256 signing keys, for services"
                       " that verify access tokens themselves.",
        "responses": {"200": answer("the key set", "JWKS")}},
    "GET /api/me": {
        "tags": ["me"], "summary": "Who the access token belongs to", "security": BEARER,
        "description": "The caller's `user_id`, name and scopes.",
        "responses": {"200": answer("the caller", "Me"), **NEEDS_TOKEN,
                      "404": refusal("`user_not_found`: the account is gone"),
                      "503": UNAVAILABLE}},
    "GET /api/me/rank": {
        "tags": ["me"], "summary": "The caller's own entry on a board", "security": BEARER,
        "description": "As `/api/scores/users/{user_id}` for the caller.",
        "parameters": [BOARD_Q, *WINDOWED],
        "responses": {"200": answer("the caller's entry", "UserRank", headers=FROM_POSTGRES),
                      **NEEDS_TOKEN, **BOARD_READ}},
    "GET /api/me/around": {
        "tags": ["me"], "summary": "The entries around the caller", "security": BEARER,
        "description": "As `/api/scores/around/{user_id}` for the caller.",
        "parameters": [BOARD_Q, RADIUS_Q, *WINDOWED],
        "responses": {"200": answer("the neighbourhood", "Around", headers=FROM_POSTGRES),
                      **NEEDS_TOKEN, **BOARD_READ}},
    "POST /api/actions/token": {
        "tags": ["scores"], "summary": "Get a one-time action token", "security": BEARER,
        "description": "A token for one increment of one action on one board: valid 60 s,"
                       " once, for this user only. The body names the board and the action"
                       " (both optional; boards with server-defined actions).",
        "requestBody": body("ActionTokenRequest", required=False),
        "responses": {"200": answer("the token", "ActionToken"), **BAD_BODY, **NEEDS_TOKEN,
                      "403": refusal("`user_banned`"),
                      "404": refusal("`board_not_found`"),
                      **CLOSED,
                      **LIMITED, "503": UNAVAILABLE}},
    "POST /api/scores/increment": {
        "tags": ["scores"], "summary": "Spend an action token: one increment",
        "security": BEARER,
        "description": "Accepted once it is in the stream (`202`); the points come from the"
                       " token's action. The same token again (a retry after a lost answer,"
                       " even past its 60 s) answers the original `202` and `event_id`;"
                       " nothing is counted twice.",
        "requestBody": body("IncrementRequest"),
        "responses": {"202": answer("accepted", "Accepted"), **BAD_BODY, **NEEDS_TOKEN,
                      "403": refusal("`action_token_invalid`, `action_token_expired`,"
                                     " `action_token_used`, `action_token_foreign` or"
                                     " `user_banned`"),
                      "404": refusal("`board_not_found`"),
                      **CLOSED, **LIMITED,
                      "503": refusal("`unavailable`, or `overloaded` (the backlog is full)",
                                     retry=True)}},
    "POST /api/scores/batch": {
        "tags": ["scores"], "summary": "A game backend's increments (up to 1,000)",
        "security": BEARER,
        "description": "Needs scope `scores:write`. Each `event_id` counts once; a banned"
                       " player's increments are listed in `refused`, the rest accepted."
                       " A refusal of the whole request (401, 403, 404, 409, 422, 429)"
                       " writes nothing. On a Redis Cluster deployment the batch is"
                       " split by player shard, each part applied atomically: a 503 can"
                       " then come after some parts were accepted. Retry the same"
                       " batch with the same event ids: the parts already in are"
                       " answered as `duplicates`, so every increment counts once.",
        "requestBody": body("BatchRequest"),
        "responses": {"202": answer("accepted", "BatchResult"), **BAD_BODY, **NEEDS_TOKEN,
                      "403": refusal("`insufficient_scope`"),
                      "404": refusal("`board_not_found`"),
                      **CLOSED, **LIMITED,
                      "503": refusal("`unavailable`, or `overloaded` (the backlog is full)",
                                     retry=True)}},
    "GET /api/boards": {
        "tags": ["boards"], "summary": "The boards and their number of players",
        "description": "Every board that exists or has scores, with how many players are on"
                       " it (banned and shadow-banned players not counted), and the"
                       " definition of each registered one: its windows with their current"
                       " period and `next_reset_at`.",
        "responses": {"200": answer("the boards", "Boards", headers=FROM_POSTGRES),
                      "503": UNAVAILABLE}},
    "GET /api/boards/{board}": {
        "tags": ["boards"], "summary": "One board's definition",
        "description": "Title, actions, operator (`sum` or `best`), open or closed, timezone"
                       " and turnover hour, seasons, and each window's current period and"
                       " `next_reset_at` (null: never, or no season ahead).",
        "parameters": [PATH_BOARD],
        "responses": {"200": answer("the board", "BoardDefinition"),
                      "404": refusal("`board_not_found`"), "503": UNAVAILABLE}},
    "GET /api/boards/{board}/periods": {
        "tags": ["boards"], "summary": "A window's archived periods, newest first",
        "description": "Closed periods are frozen archives in Postgres (readable with"
                       " `period=` on every read after their Redis keys expire); each with"
                       " its number of players when archived and its top 3 as read now"
                       " (banned and shadow-banned players left out while their ban holds)."
                       " `current` is the running period.",
        "parameters": [PATH_BOARD, {**query("window", WINDOW_Q["schema"] | {"default": None},
                                            "the window"), "required": True},
                       query("limit", {"type": "integer", "minimum": 1, "maximum": 100,
                                       "default": 20}, "how many periods"),
                       query("before", {"type": "string", "format": "date-time"},
                             "only periods that ended before this time (the next page:"
                             " the last `ends_at` seen)")],
        "responses": {"200": answer("the periods", "Periods"),
                      "404": refusal("`board_not_found` or `window_not_found`"),
                      "422": refusal("`invalid_field`: a query parameter is invalid or"
                                     " unknown"), "503": UNAVAILABLE}},
    "GET /api/scores/top": {
        "tags": ["boards"], "summary": "The top of a board, now or at a past moment",
        "description": "Higher score first; ties by who reached the score first. Cached"
                       " `TOP_CACHE_MS` per process. With `as_of`: the board as it stood"
                       " at that moment, replayed from the `actions` log in Postgres"
                       " (`version` null, no cursor, `as_of` echoed in UTC); moderation as"
                       " it stands now (removed actions not counted, players banned now"
                       " left out). Only `board` and `limit` go with `as_of`.",
        "parameters": [BOARD_Q, LIMIT_Q, AS_OF_Q, *WINDOWED],
        "responses": {"200": answer("the top", "BoardPage", headers=FROM_POSTGRES),
                      **BOARD_READ,
                      "422": refusal("`invalid_field` (a query parameter is invalid or"
                                     " unknown, or `as_of` is not a time with a zone);"
                                     " `as_of_in_future`; `as_of_before_retention` (the"
                                     " actions of that time were dropped: RETENTION_MONTHS)")}},
    "GET /api/scores/page": {
        "tags": ["boards"], "summary": "Walk a whole board page by page",
        "description": "The page after `cursor` (a `next_cursor` from a previous page);"
                       " stable while scores change.",
        "parameters": [BOARD_Q, LIMIT_Q, query("cursor", {"type": "string"},
                                               "`next_cursor` of the previous page"),
                       *WINDOWED],
        "responses": {"200": answer("a page", "BoardPage", headers=FROM_POSTGRES),
                      **BOARD_READ}},
    "GET /api/scores/ranks": {
        "tags": ["boards"], "summary": "Ranks of a list of users (a friends list)",
        "description": "The listed users that are on the board, in board order.",
        "parameters": [BOARD_Q, {**query("user_ids", {"type": "string", "pattern":
                                                      "^[A-Za-z0-9_.:-]{1,64}"
                                                      "(,[A-Za-z0-9_.:-]{1,64}){0,99}$"},
                                         "comma-separated user ids, at most 100"),
                                 "required": True}, *WINDOWED],
        "responses": {"200": answer("their entries", "Ranks", headers=FROM_POSTGRES),
                      **BOARD_READ}},
    "GET /api/scores/users/{user_id}": {
        "tags": ["boards"], "summary": "One user's entry",
        "description": "With the user's own Bearer token, a shadow-banned user sees their"
                       " entry as before; everyone else gets `404 not_ranked`.",
        "parameters": [path_user(), BOARD_Q, *WINDOWED],
        "responses": {"200": answer("the entry", "UserRank", headers=FROM_POSTGRES),
                      "401": NEEDS_TOKEN["401"], **BOARD_READ}},
    "GET /api/scores/around/{user_id}": {
        "tags": ["boards"], "summary": "The entries around a user",
        "description": "Clamped at both ends of the board.",
        "parameters": [path_user(), BOARD_Q, RADIUS_Q, *WINDOWED],
        "responses": {"200": answer("the neighbourhood", "Around", headers=FROM_POSTGRES),
                      "401": NEEDS_TOKEN["401"], **BOARD_READ}},
    "GET /healthz": {
        "tags": ["operations"], "summary": "Liveness",
        "description": "200 while the process serves requests.",
        "responses": {"200": answer("alive", "Health")}},
    "GET /readyz": {
        "tags": ["operations"], "summary": "Readiness",
        "description": "200 when Redis and Postgres both answer, else 503 naming what is"
                       " down.",
        "responses": {"200": answer("ready", "Health"),
                      "503": answer("not ready", "NotReady", headers=RETRY_AFTER)}},
    "GET /metrics": {
        "tags": ["operations"], "summary": "Prometheus metrics",
        "description": "Prometheus text exposition (see the README's Metrics section).",
        "responses": {"200": answer("metrics", media="text/plain")}},
    "GET /openapi.json": {
        "tags": ["operations"], "summary": "This description",
        "description": "The OpenAPI 3.1 document, generated from the routes.",
        "responses": {"200": {"description": "OpenAPI 3.1",
                              "content": {JSON: {"schema": {"type": "object"}}}}}},
    "GET /docs": {
        "tags": ["operations"], "summary": "The API's docs page",
        "description": "A page rendering this description (no CDN: its scripts are served"
                       " by ingest itself).",
        "responses": {"200": answer("HTML", media="text/html")}},
    "GET /docs/{asset}": {
        "tags": ["operations"], "summary": "The docs page's scripts and styles",
        "description": "The files of the pip-installed Swagger UI the docs page loads.",
        "parameters": [{"name": "asset", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {"200": answer("the file", media="application/octet-stream"),
                      "404": refusal("`not_found`")}},
}


# The broadcaster's endpoints (another process, default port 8001), described in
# the document's text and its ``x-broadcaster`` section; tests/test_openapi.py
# checks this table against the broadcaster's routes like OPERATIONS against
# ingest's. Its messages are the ``Snapshot``, ``Subscribe`` and ``FeedError``
# schemas, and the rank feed's ``Watch``, ``Unwatch``, ``Unwatched``, ``Rank`` and
# ``Overtaken``.
BROADCASTER_ENDPOINTS: dict[str, str] = {
    "/ws": "WebSocket `GET /ws?board=global[&window=daily]`: a `Snapshot` on connect, then"
           " one whenever the board's top N changes; send `Subscribe` to switch boards or"
           " windows (a window's current period, followed across its resets), `Watch` to"
           " follow one player's rank and neighbours",
    "/sse": "Server-Sent Events `GET /sse?board=global[&window=daily]`: the same snapshots"
            " as `event: snapshot`, with `: keepalive` comments; `&watch=<user id>` adds that"
            " player's `event: rank` and `event: overtaken`",
    "/": "the spectator page (HTML)",
    "/spectator.js": "the spectator page's script",
    "/static": "`/static/<name>`: the page's scripts and styles, among them"
               " `scoreboard-client.js`, a small browser client of this API and the feed",
    "/healthz": "liveness: 200 `{status, spectators}`",
    "/readyz": "readiness: 200 when Redis answers, else 503 in the error envelope",
    "/metrics": "Prometheus text",
}
