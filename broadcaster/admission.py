"""Whether a spectator may connect, and the answer when not. Pure.

Both transports refuse before anything is sent: a foreign Origin (browsers
always send one, so a page of another site is refused; a client without
Origin, a bot or a game server, is let in), a board name that cannot exist,
and an address over its connection cap. A refusal is an HTTP answer in the
service's error envelope, so a browser, a bot and a proxy all see the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs

import orjson

from scoreboard.names import BOARD_PATTERN, BOARD_RULE, DEFAULT_BOARD
from scoreboard.windows import ALL_TIME, WINDOW_NAMES, TargetError

RETRY_AFTER_CAPPED_S = 5


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str
    retry_after_s: int | None = None

    def body(self) -> bytes:
        return orjson.dumps({"error": {"code": self.code, "message": self.message}})

    def headers(self) -> list[tuple[str, str]]:
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(self.body())))]
        if self.retry_after_s is not None:
            headers.append(("Retry-After", str(self.retry_after_s)))
        return headers


NOT_FOUND = Refusal(404, "not_found", "no WebSocket endpoint here; use /ws?board=<board>")
CAPPED = Refusal(429, "too_many_connections", "too many connections from this address",
                 RETRY_AFTER_CAPPED_S)


def board_of(query_string: str) -> str:
    """The ``board`` query parameter (the default board when absent)."""
    values = parse_qs(query_string, keep_blank_values=True).get("board")
    return values[0] if values else DEFAULT_BOARD


def window_of(query_string: str) -> str:
    """The ``window`` query parameter (``all_time`` when absent)."""
    values = parse_qs(query_string, keep_blank_values=True).get("window")
    return values[0] if values else ALL_TIME


def check_window(window: str) -> Refusal | None:
    if window in WINDOW_NAMES:
        return None
    return Refusal(422, "invalid_field", f"window: must be one of {', '.join(WINDOW_NAMES)}")


def window_refusal(error: TargetError) -> Refusal:
    """A window that cannot be followed: 404 (unknown board or window, no period now)."""
    return Refusal(404, error.code, error.detail)


def check_board(board: str) -> Refusal | None:
    if BOARD_PATTERN.fullmatch(board):
        return None
    return Refusal(422, "invalid_field", f"board: {BOARD_RULE}")


def check_origin(origin: str | None, allowed: frozenset[str] | None) -> Refusal | None:
    """``allowed`` None: any Origin is accepted."""
    if allowed is None or origin is None or origin in allowed:
        return None
    return Refusal(403, "origin_not_allowed", f"Origin {origin!r} may not open spectator feeds")
