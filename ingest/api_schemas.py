"""JSON Schemas of ingest's bodies and answers, and of the live feed's messages
(OpenAPI 3.1 ``components.schemas``, plain JSON Schema 2020-12).

The shapes here are what the handlers write; ``tests/test_openapi.py`` runs
schemathesis against a real ingest to keep them so. Patterns mirror
``scoreboard.names`` and ``ingest.validation``.
"""

from __future__ import annotations

from typing import Any

from scoreboard.names import BOARD_PATTERN, ID_PATTERN

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict[str, Schema], *, required: list[str] | None = None,
        closed: bool = True, description: str | None = None) -> Schema:
    """An object schema; ``closed`` refuses other fields (request bodies do)."""
    schema: Schema = {"type": "object", "properties": properties,
                      "required": list(properties) if required is None else required}
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


BOARD: Schema = {"type": "string", "pattern": f"^{BOARD_PATTERN.pattern}$",
                 "description": "a board name", "examples": ["global"]}
USER_ID: Schema = {"type": "string", "pattern": f"^{ID_PATTERN.pattern}$",
                   "description": "opaque user id", "examples": ["u_3f2a9c0d1e4b5a6f"]}
VERSION: Schema = {"type": ["integer", "null"],
                   "description": "the board's revision (grows with every committed change);"
                                  " null when read from Postgres"}

WINDOW: Schema = {"enum": ["all_time", "daily", "weekly", "monthly", "season"]}
PERIOD_BOUNDS = obj({"period": {"type": "string"},
                     "starts_at": {"type": ["string", "null"], "format": "date-time"},
                     "ends_at": {"type": ["string", "null"], "format": "date-time"}},
                    closed=False)
WINDOW_STATE = obj({"window": WINDOW,
                    "current": {"anyOf": [PERIOD_BOUNDS, {"type": "null"}],
                                "description": "the running period (null: no season now)"},
                    "next_reset_at": {"type": ["string", "null"], "format": "date-time",
                                      "description": "when the next period starts"}},
                   closed=False)
DEFINITION: dict[str, Schema] = {
    "board": {"type": "string"}, "title": {"type": "string"},
    "actions": {"type": "object", "additionalProperties": {"type": "integer"}},
    "max_points": {"type": "integer"}, "operator": {"enum": ["sum", "best"]},
    "open": {"type": "boolean"}, "timezone": {"type": "string"},
    "turnover_hour": {"type": "integer", "minimum": 0, "maximum": 23},
    "seasons": {"type": "array", "items": obj({"name": {"type": "string"},
                                               "starts_at": {"type": "string"},
                                               "ends_at": {"type": "string"}}, closed=False)},
    "windows": {"type": "array", "items": WINDOW_STATE}}
WINDOWED_READ: dict[str, Schema] = {
    "window": {**WINDOW, "description": "present when not all_time"},
    "period": {"type": "string", "description": "present when window is"}}

ENTRY = obj({"rank": {"type": "integer", "minimum": 1}, "user_id": {"type": "string"},
             "username": {"type": "string"}, "score": {"type": "integer"}}, closed=False)
ENTRIES: Schema = {"type": "array", "items": ref("Entry")}

# The live feed's messages about a window's period (snapshots and the rank feed's).
FOLLOWED_WINDOW: dict[str, Schema] = {
    "window": {**WINDOW, "description": "present when a window is followed"},
    "period": {"type": "string", "description": "the window's current period; a new"
                                                " period starts its versions again"}}


SCHEMAS: dict[str, Schema] = {
    "Error": obj({"error": obj({
        "code": {"type": "string", "pattern": "^[a-z_]+$",
                 "description": "machine-readable reason, snake_case"},
        "message": {"type": "string", "description": "what went wrong, for a human"},
        "field": {"type": "string", "description": "the refused field (422 only)"}},
        required=["code", "message"], closed=False)}, closed=False,
        description="Every refusal: nothing was written."),
    "Credentials": obj({
        "username": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{3,32}$"},
        "password": {"type": "string", "minLength": 8, "maxLength": 128}}),
    "Registered": obj({"user_id": {"type": "string"}, "username": {"type": "string"}},
                      closed=False),
    "RefreshRequest": obj({"refresh_token": {"type": "string", "minLength": 1,
                                             "maxLength": 256}}),
    "Session": obj({
        "access_token": {"type": "string", "description": "RS256 JWT, the Bearer token"},
        "refresh_token": {"type": "string", "description": "opaque, one use (rotated)"},
        "token_type": {"const": "Bearer"},
        "expires_in": {"type": "integer", "description": "seconds the access token lives"},
        "user_id": {"type": "string", "description": "the logged-in user's id"}},
        closed=False),
    "Me": obj({"user_id": {"type": "string"}, "username": {"type": "string"},
               "scopes": {"type": "array", "items": {"type": "string"}},
               "created_at": {"type": "string", "format": "date-time"}}, closed=False),
    "JWKS": obj({"keys": {"type": "array", "items": {"type": "object"}}}, closed=False),
    "ActionTokenRequest": obj({
        "board": {**BOARD, "description": "the board the action counts on (default global)"},
        "action": {"type": "string", "pattern": "^[a-z0-9_.-]{1,32}$",
                   "description": "one of the board's actions (default: its first); an"
                                  " unknown one is 422"}},
        required=[]),
    "ActionToken": obj({
        "action_token": {"type": "string",
                         "description": "base64url(payload).hexsig, valid 60 s, one use,"
                                        " for this user only"},
        "expires_at": {"type": "number", "description": "Unix time, seconds"},
        "board": {"type": "string"}, "action": {"type": "string"},
        "points": {"type": "integer", "description": "what the action is worth"}},
        required=["action_token", "expires_at"], closed=False),
    "IncrementRequest": obj({
        "action_token": {"type": "string", "minLength": 1},
        "points": {"type": "integer", "minimum": 1,
                   "description": "optional; must agree with the token's action"},
        "board": {**BOARD, "description": "optional; must agree with the token's board"}},
        required=["action_token"]),
    "Accepted": obj({"event_id": {"type": "string"}, "status": {"const": "accepted"}},
                    closed=False),
    "BatchRequest": obj({"increments": {
        "type": "array", "minItems": 1, "items": obj({
            "user_id": USER_ID, "points": {"type": "integer", "minimum": 1},
            "event_id": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$",
                         "description": "the caller's idempotency key"},
            "board": BOARD,
            "username": {"type": "string", "minLength": 1, "maxLength": 64,
                         "description": "display name"}},
            required=["user_id", "points", "event_id"])}}),
    "BatchResult": obj({
        "accepted": {"type": "integer"}, "duplicates": {"type": "integer"},
        "refused": {"type": "array", "items": obj({"event_id": {"type": "string"},
                                                   "reason": {"type": "string"}},
                                                  closed=False)}}, closed=False),
    "Entry": ENTRY,
    "Boards": obj({"boards": {"type": "array", "items": obj({
        "board": {"type": "string"}, "size": {"type": "integer", "minimum": 0},
        **DEFINITION}, required=["board", "size"], closed=False)}}, closed=False),
    "BoardDefinition": obj(DEFINITION, closed=False),
    "Periods": obj({
        "board": {"type": "string"}, "window": WINDOW,
        "current": WINDOW_STATE["properties"]["current"],
        "next_reset_at": WINDOW_STATE["properties"]["next_reset_at"],
        "periods": {"type": "array", "items": obj({
            "period": {"type": "string"}, "starts_at": {"type": "string", "format": "date-time"},
            "ends_at": {"type": "string", "format": "date-time"},
            "archived_at": {"type": "string", "format": "date-time"},
            "players": {"type": "integer", "minimum": 0},
            "winners": {"type": "array", "maxItems": 3, "items": obj({
                "user_id": {"type": "string"}, "username": {"type": "string"},
                "score": {"type": "integer"}}, closed=False)}}, closed=False)}},
        closed=False),
    "BoardPage": obj({"board": {"type": "string"}, "version": VERSION,
                      "size": {"type": "integer", "description": "entries on the board"},
                      "entries": ENTRIES,
                      "next_cursor": {"type": ["string", "null"],
                                      "description": "pass as cursor= to /api/scores/page"},
                      "as_of": {"type": "string", "format": "date-time",
                                "description": "only with `as_of`: the moment, in UTC"},
                      **WINDOWED_READ},
                     required=["board", "version", "size", "entries", "next_cursor"],
                     closed=False),
    "Around": obj({"board": {"type": "string"}, "version": VERSION, "size": {"type": "integer"},
                   "user_id": {"type": "string"}, "entries": ENTRIES, **WINDOWED_READ},
                  required=["board", "version", "size", "user_id", "entries"], closed=False),
    "Ranks": obj({"board": {"type": "string"}, "version": VERSION, "size": {"type": "integer"},
                  "entries": ENTRIES, **WINDOWED_READ},
                 required=["board", "version", "size", "entries"], closed=False),
    "UserRank": obj({"board": {"type": "string"}, "version": VERSION,
                     "user_id": {"type": "string"}, "username": {"type": "string"},
                     "rank": {"type": "integer", "minimum": 1}, "score": {"type": "integer"},
                     **WINDOWED_READ},
                    required=["board", "version", "user_id", "username", "rank", "score"],
                    closed=False),
    "Health": obj({"status": {"const": "ok"}}, closed=False),
    "NotReady": obj({"status": {"const": "unavailable"},
                     "down": {"type": "array", "items": {"enum": ["redis", "postgres"]}}},
                    closed=False),
    # The live feed (broadcaster): described here, served on the broadcaster's port.
    "Snapshot": obj({
        "type": {"const": "snapshot"}, "board": {"type": "string"},
        "version": {"type": "integer", "description": "only grows"},
        "ts": {"type": "integer", "description": "server time in ms when it was built"},
        "entries": ENTRIES, **FOLLOWED_WINDOW},
        required=["type", "board", "version", "ts", "entries"], closed=False,
        description="Sent on connect and whenever the board's top N changes"
                    " (WebSocket text message, or SSE `event: snapshot`)."),
    "Subscribe": obj({"type": {"const": "subscribe"}, "board": BOARD,
                      "window": {**WINDOW, "default": "all_time"}},
                     required=["type", "board"],
                     description="Client -> server over WebSocket: switch boards, or follow"
                                 " a window's current period."),
    "FeedError": obj({"type": {"const": "error"}, "code": {"type": "string"},
                      "message": {"type": "string"},
                      "user_id": {"type": "string", "description": "the player a refused"
                                                                   " watch or unwatch named"}},
                     required=["type", "code", "message"], closed=False,
                     description="Server -> client over WebSocket: a client message was"
                                 " not understood or refused (`invalid_message`,"
                                 " `invalid_field`, `unknown_user`, `too_many_watches`,"
                                 " `not_watching`, `unavailable`); nothing changed."),
    # The personal rank feed.
    "Watch": obj({"type": {"const": "watch"}, "user_id": USER_ID},
                 description="Client -> server over WebSocket: follow one player on the current"
                             " board (and on the boards switched to), up to `WS_MAX_WATCHES`"
                             " at once. On /sse: `?watch=<user id>`, repeatable."),
    "Unwatch": obj({"type": {"const": "unwatch"}, "user_id": USER_ID},
                   description="Client -> server over WebSocket: stop following a player;"
                               " answered by `Unwatched`."),
    "Unwatched": obj({"type": {"const": "unwatched"}, "board": {"type": "string"},
                      **FOLLOWED_WINDOW, "user_id": {"type": "string"}}, closed=False,
                     description="Server -> client: nothing more comes for that player."),
    "Rank": obj({
        "type": {"const": "rank"}, "board": {"type": "string"}, **FOLLOWED_WINDOW,
        "version": {"type": "integer", "description": "the board's revision it was read at"},
        "ts": {"type": "integer", "description": "server time in ms when it was built"},
        "user_id": {"type": "string"}, "username": {"type": ["string", "null"]},
        "rank": {"type": ["integer", "null"], "description": "null: not on the board (never"
                 " scored here, banned or shadow-banned, as the board reads answer 404)"},
        "score": {"type": ["integer", "null"]},
        "above": {"oneOf": [ref("Entry"), {"type": "null"}]},
        "below": {"oneOf": [ref("Entry"), {"type": "null"}]}}, closed=False,
        description="Server -> client: a watched player's standing, on watch and whenever"
                    " their rank, score or the players right above and below change, at"
                    " most once per `SNAPSHOT_INTERVAL_MS` (WebSocket, or SSE `event: rank`)."),
    "Overtaken": obj({
        "type": {"const": "overtaken"}, "board": {"type": "string"}, **FOLLOWED_WINDOW,
        "version": {"type": "integer"}, "ts": {"type": "integer"},
        "user_id": {"type": "string", "description": "the watched player"},
        "rank": {"type": "integer", "description": "their rank now"},
        "by": ref("Entry")}, closed=False,
        description="Server -> client, right after the `Rank` it explains: a player passed"
                    " the watched one and is now right above them (SSE `event: overtaken`)."),
}
