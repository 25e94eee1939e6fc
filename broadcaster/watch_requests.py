"""What a spectator may ask of the rank feed, and the answer when it may not. Pure.

``{"type": "watch", "user_id": "..."}`` and ``{"type": "unwatch", "user_id":
"..."}`` on ``/ws``; ``?watch=<user id>`` (repeatable) on ``/sse``. Every
refusal is a message in the WebSocket error format (``{"type": "error",
"code", "message"}``, plus the ``user_id`` it is about) or, on ``/sse``, an
HTTP answer in the service's error envelope; the connection stays as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs

import orjson

from broadcaster.admission import Refusal
from broadcaster.frames import named, text_frame
from scoreboard.names import ID_PATTERN

USER_ID_RULE = "must be 1 to 64 letters, digits, '_', '.', ':' or '-'"


@dataclass(frozen=True)
class WatchRequest:
    action: str  # "watch" or "unwatch"
    user_id: str


def parse_watch(message: bytes) -> WatchRequest | Refusal | None:
    """A watch or unwatch request, a refusal of a malformed one, or None when the
    message is something else."""
    try:
        parsed = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    action = parsed.get("type")
    if action not in ("watch", "unwatch"):
        return None
    user_id = parsed.get("user_id")
    if not isinstance(user_id, str) or not ID_PATTERN.fullmatch(user_id):
        return Refusal(422, "invalid_field", f"user_id: {USER_ID_RULE}")
    return WatchRequest(str(action), user_id)


def watches_of(query_string: str, limit: int) -> list[str] | Refusal:
    """The ``watch`` query parameters of ``/sse`` (each a user id), or a refusal."""
    user_ids = list(dict.fromkeys(parse_qs(query_string, keep_blank_values=True).get("watch",
                                                                                      [])))
    for user_id in user_ids:
        if not ID_PATTERN.fullmatch(user_id):
            return Refusal(422, "invalid_field", f"watch: {USER_ID_RULE}")
    if len(user_ids) > limit:
        return too_many(limit)
    return user_ids


def too_many(limit: int) -> Refusal:
    return Refusal(422, "too_many_watches",
                   f"at most {limit} players can be watched at once; unwatch one first")


def unknown_user(user_id: str) -> Refusal:
    return Refusal(404, "unknown_user",
                   f"no player {user_id!r} (a player is known once they have scored)")


def not_watching(user_id: str) -> Refusal:
    return Refusal(422, "not_watching", f"player {user_id!r} is not being watched here")


UNAVAILABLE = Refusal(503, "unavailable", "the board cannot be read right now", 1)


def error_frame(refusal: Refusal, user_id: str | None = None) -> bytes:
    """A refusal as a WebSocket error message (the connection stays open)."""
    body: dict[str, object] = {"type": "error", "code": refusal.code, "message": refusal.message}
    if user_id is not None:
        body["user_id"] = user_id
    return text_frame(orjson.dumps(body))


def unwatched_frame(board: str, user_id: str, window: str = "") -> bytes:
    """The acknowledgement of an unwatch: nothing more comes for that player. ``board``
    as the connection follows it: a board, or a window's period (its scope); or,
    with ``window``, the board and window named at the handshake while that
    window's period is still being looked up (no period to name yet)."""
    where = {"board": board, "window": window} if window else named(board)
    return text_frame(orjson.dumps({"type": "unwatched", **where, "user_id": user_id}))
