"""Request bodies to typed values, or a 422 naming the field. Pure functions.

Unknown fields are refused too: a misspelt ``"point"`` should fail loudly, not
silently count as the default of 1.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scoreboard.board_defs import ACTION_PATTERN, ACTION_RULE
from scoreboard.errors import RequestError
from scoreboard.names import BOARD_PATTERN, BOARD_RULE, DEFAULT_BOARD, ID_PATTERN
from scoreboard.ranking import decode_cursor
from scoreboard.script_calls import BatchItem
from scoreboard.windows import ALL_TIME, PERIOD_PATTERN, WINDOW_NAMES

EVENT_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
USERNAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{3,32}")
DISPLAY_NAME_MAX = 64
PASSWORD_MIN, PASSWORD_MAX = 8, 128


def invalid(field: str, message: str) -> RequestError:
    return RequestError(422, "invalid_field", f"{field}: {message}", field=field)


def _object(body: Any, allowed: set[str], where: str = "body") -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise invalid(where, "must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        prefix = "" if where == "body" else f"{where}."
        raise invalid(f"{prefix}{unknown[0]}", "unknown field")
    return body


def _string(body: Mapping[str, Any], field: str, pattern: re.Pattern[str], rule: str,
            *, name: str | None = None, default: str | None = None) -> str:
    value = body.get(field, default)
    label = name or field
    if value is None:
        raise invalid(label, "is required")
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise invalid(label, rule)
    return value


def _points(body: Mapping[str, Any], field: str, maximum: int, *, default: int | None,
            name: str | None = None) -> int:
    value = body.get(field, default)
    label = name or field
    if value is None:
        raise invalid(label, "is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(label, "must be an integer")
    if not 1 <= value <= maximum:
        raise invalid(label, f"must be between 1 and {maximum}")
    return value


# Characters that reorder the text around them: embeddings, overrides and isolates
# (U+202A-U+202E, U+2066-U+2069) and the marks U+200E, U+200F, U+061C.
BIDI_CONTROLS = frozenset([*map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A)),
                           "\u200e", "\u200f", "\u061c"])


def _display_name(value: Any, label: str) -> str:
    """Refused, not normalised: a name with C0/C1 controls (category Cc: U+0000-U+001F,
    U+007F-U+009F) or bidi controls is a crafted one, and silently changing it would
    show spectators something the backend never sent."""
    if not isinstance(value, str) or not value.strip() or len(value) > DISPLAY_NAME_MAX:
        raise invalid(label,
                      f"must be a non-empty string of at most {DISPLAY_NAME_MAX} characters")
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise invalid(label, "must not contain control characters")
    if any(ch in BIDI_CONTROLS for ch in value):
        raise invalid(label, "must not contain bidirectional control characters")
    return value


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


def parse_credentials(body: Any) -> Credentials:
    fields = _object(body, {"username", "password"})
    username = _string(fields, "username", USERNAME_PATTERN,
                       "must be 3 to 32 letters, digits, '_', '.' or '-'")
    password = fields.get("password")
    if password is None:
        raise invalid("password", "is required")
    if not isinstance(password, str) or not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise invalid("password",
                      f"must be a string of {PASSWORD_MIN} to {PASSWORD_MAX} characters")
    return Credentials(username=username, password=password)


def parse_refresh(body: Any) -> str:
    fields = _object(body, {"refresh_token"})
    token = fields.get("refresh_token")
    if token is None:
        raise invalid("refresh_token", "is required")
    if not isinstance(token, str) or not 1 <= len(token) <= 256:
        raise invalid("refresh_token", "must be a string of at most 256 characters")
    return token


@dataclass(frozen=True)
class ActionTokenRequest:
    board: str
    action: str | None  # None: the board's first action


def parse_action_token_request(body: Any) -> ActionTokenRequest:
    """``{board?, action?}``; an empty body is ``{}`` (the default board and action)."""
    fields = _object({} if body is None else body, {"board", "action"})
    action = fields.get("action")
    if action is not None and (not isinstance(action, str)
                               or not ACTION_PATTERN.fullmatch(action)):
        raise invalid("action", ACTION_RULE)
    return ActionTokenRequest(
        board=_string(fields, "board", BOARD_PATTERN, BOARD_RULE, default=DEFAULT_BOARD),
        action=action)


@dataclass(frozen=True)
class IncrementRequest:
    """The action token decides board and points; ``points`` / ``board``, when a
    client still sends them, must agree with it (checked by the route)."""

    action_token: str
    points: int | None
    board: str | None


def parse_increment(body: Any, *, max_points: int) -> IncrementRequest:
    fields = _object(body, {"action_token", "points", "board"})
    token = fields.get("action_token")
    if token is None:
        raise invalid("action_token", "is required")
    if not isinstance(token, str) or not token:
        raise invalid("action_token", "must be a non-empty string")
    return IncrementRequest(
        action_token=token,
        points=(None if fields.get("points") is None
                else _points(fields, "points", max_points, default=None)),
        board=(None if fields.get("board") is None
               else _string(fields, "board", BOARD_PATTERN, BOARD_RULE)))


# One increment of a batch: the script's own item (its fields: user_id, points,
# event_id, board, username; username empty: keep the known display name).
BatchIncrement = BatchItem
BATCH_FIELDS = frozenset({"user_id", "points", "event_id", "board", "username"})


def parse_batch(body: Any, *, max_points: int, max_increments: int) -> list[BatchIncrement]:
    """The batch's increments. An item that is plainly valid (the usual one) is
    taken by one test of each field; any other goes through the field checks that
    name what is wrong (a batch of a thousand made that a measurable share of its
    CPU per increment)."""
    fields = _object(body, {"increments"})
    items = fields.get("increments")
    if items is None:
        raise invalid("increments", "is required")
    if not isinstance(items, list) or not items:
        raise invalid("increments", "must be a non-empty array")
    if len(items) > max_increments:
        raise invalid("increments", f"must hold at most {max_increments} increments")
    parsed = []
    id_ok, event_ok, board_ok = (ID_PATTERN.fullmatch, EVENT_ID_PATTERN.fullmatch,
                                 BOARD_PATTERN.fullmatch)
    for index, item in enumerate(items):
        if type(item) is dict and item.keys() <= BATCH_FIELDS:
            user_id, points, event_id = item.get("user_id"), item.get("points"), item.get(
                "event_id")
            board, username = item.get("board", DEFAULT_BOARD), item.get("username")
            if (type(user_id) is str and id_ok(user_id) and type(points) is int
                    and 1 <= points <= max_points and type(event_id) is str
                    and event_ok(event_id) and type(board) is str and board_ok(board)
                    and username is None):
                parsed.append(BatchItem(event_id=event_id, user_id=user_id, board=board,
                                        points=points, username=""))
                continue
        parsed.append(_batch_item(item, index, max_points))
    return parsed


def _batch_item(item: Any, index: int, max_points: int) -> BatchIncrement:
    where = f"increments[{index}]"
    entry = _object(item, set(BATCH_FIELDS), where)
    username = entry.get("username")
    return BatchItem(
        user_id=_string(entry, "user_id", ID_PATTERN,
                        "must be 1 to 64 letters, digits, '_', '.', ':' or '-'",
                        name=f"{where}.user_id"),
        points=_points(entry, "points", max_points, default=None, name=f"{where}.points"),
        event_id=_string(entry, "event_id", EVENT_ID_PATTERN,
                         "must be 1 to 128 letters, digits, '_', '.', ':' or '-'",
                         name=f"{where}.event_id"),
        board=_string(entry, "board", BOARD_PATTERN,
                      "must be 1 to 64 letters, digits, '_', '.', ':' or '-'",
                      name=f"{where}.board", default=DEFAULT_BOARD),
        username="" if username is None else _display_name(username, f"{where}.username"),
    )


@dataclass(frozen=True)
class BoardQuery:
    board: str
    limit: int
    radius: int
    cursor: tuple[int, str] | None
    user_ids: list[str]
    window: str = "all_time"
    period: str | None = None  # None: the window's current period


def _query_int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise invalid(name, f"must be an integer from {low} to {high}")
    return int(raw)


def parse_board_query(params: Mapping[str, str], *, max_limit: int = 100,
                      max_radius: int = 50, max_users: int = 100) -> BoardQuery:
    """The query string of the read endpoints (unknown parameters are refused)."""
    unknown = sorted(set(params) - {"board", "limit", "radius", "cursor", "user_ids", "window",
                                    "period"})
    if unknown:
        raise invalid(unknown[0], "unknown parameter")
    board = params.get("board", DEFAULT_BOARD)
    if not BOARD_PATTERN.fullmatch(board):
        raise invalid("board", "must be 1 to 64 letters, digits, '_', '.', ':' or '-'")
    cursor = None
    if "cursor" in params:
        try:
            cursor = decode_cursor(params["cursor"])
        except ValueError:
            raise invalid("cursor", "is not a cursor this service returned") from None
    user_ids = [u for u in params.get("user_ids", "").split(",") if u]
    if len(user_ids) > max_users:
        raise invalid("user_ids", f"must list at most {max_users} user ids")
    for user_id in user_ids:
        if not ID_PATTERN.fullmatch(user_id):
            raise invalid("user_ids", f"{user_id[:70]!r} is not a valid user id")
    window = params.get("window", ALL_TIME)
    if window not in WINDOW_NAMES:
        raise invalid("window", f"must be one of {', '.join(WINDOW_NAMES)}")
    period = params.get("period")
    if period is not None and not PERIOD_PATTERN.fullmatch(period):
        raise invalid("period", "must be a period id (like 2026-12-02, 2026-W48, 2026-12 or a "
                                "season's name)")
    return BoardQuery(board=board, limit=_query_int(params, "limit", 10, 1, max_limit),
                      radius=_query_int(params, "radius", 5, 0, max_radius), cursor=cursor,
                      user_ids=user_ids, window=window, period=period)


def parse_user_id(value: str) -> str:
    if not ID_PATTERN.fullmatch(value):
        raise invalid("user_id", "must be 1 to 64 letters, digits, '_', '.', ':' or '-'")
    return value
