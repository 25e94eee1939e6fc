"""Wire encodings of one snapshot, built once and written to every spectator. Pure.

Also how every message names what it is about (``named``): the hub keys
spectators by a board or by a window's period (its scope), and a message
says it as board, window and period.

A server's WebSocket frames are never masked (RFC 6455, 5.1), so the frame
that carries a snapshot is the same bytes for every client: a header of 2 to
10 bytes and the JSON payload. Building it once per snapshot, instead of once
per client, is what keeps fan-out at the cost of one write per client.
"""

from __future__ import annotations

import struct

from scoreboard.windows import ALL_TIME, split_scope

OPCODE_TEXT = 0x1
OPCODE_CLOSE = 0x8
FIN = 0x80


def _frame(opcode: int, payload: bytes) -> bytes:
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", FIN | opcode, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", FIN | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", FIN | opcode, 127, length)
    return header + payload


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented text frame carrying ``payload`` (UTF-8 JSON)."""
    return _frame(OPCODE_TEXT, payload)


def close_frame(code: int, reason: str = "") -> bytes:
    """An unmasked close frame; the reason is cut to fit the 123 bytes allowed."""
    return _frame(OPCODE_CLOSE, struct.pack("!H", code) + reason.encode()[:123])


def sse_event(payload: bytes, event: str = "snapshot") -> bytes:
    """One Server-Sent Event. JSON from orjson holds no raw newline, so one
    ``data:`` line carries it whole."""
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"


def named(board: str) -> dict[str, str]:
    """The fields naming ``board`` in a message: ``{"board"}`` for a board itself
    (all_time), ``{"board", "window", "period"}`` for a window's period, whose
    ``board`` here is its scope (``board/window/period``, scoreboard/windows.py)."""
    name, window, period = split_scope(board)
    if window == ALL_TIME:
        return {"board": name}
    return {"board": name, "window": window, "period": period}
