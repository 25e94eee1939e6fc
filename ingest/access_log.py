"""The access log's write path: one JSON line per request, cheaply.

The lines have the shape of every other log line (``scoreboard.logs``: ``ts``,
``level``, ``logger``, ``message``, ``request_id``, then the fields) but skip
the ``logging`` machinery, which cost about a tenth of an increment's CPU
(a LogRecord, a formatter walking its attributes, a lock and a flush, which
is a write system call, per request). Lines go into stderr's buffer and are
flushed at most ``FLUSH_EVERY_S`` after the first unflushed one, so a line
reaches the log within that time and a burst of requests costs one write.
They share that buffer with the ``logging`` handler (which writes through
``sys.stderr``, a text layer over the same buffer), so lines stay in order.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, BinaryIO

import orjson

FLUSH_EVERY_S = 0.1


class AccessLog:
    def __init__(self, stream: BinaryIO | None = None) -> None:
        self.stream: BinaryIO = stream if stream is not None else sys.stderr.buffer
        self.flush_pending = False
        self._second = -1
        self._second_text = ""

    def _timestamp(self, now: float) -> str:
        """As ``scoreboard.logs`` writes it (ISO 8601, ms, UTC); the date and time
        part is formatted once a second."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((now - second) * 1000):03d}+00:00"

    def write(self, *, request_id: str, method: str, path: str, route: str, status: int,
              duration_ms: float, peer: Any) -> None:
        line = orjson.dumps({
            "ts": self._timestamp(time.time()), "level": "info", "logger": "ingest.access",
            "message": f"{method} {path} {status}", "request_id": request_id,
            "method": method, "path": path, "route": route, "status": status,
            "duration_ms": duration_ms, "peer": peer})
        self.stream.write(line + b"\n")
        if not self.flush_pending:
            self.flush_pending = True
            try:
                asyncio.get_running_loop().call_later(FLUSH_EVERY_S, self.flush)
            except RuntimeError:  # no loop (a test calling directly): flush now
                self.flush()

    def flush(self) -> None:
        self.flush_pending = False
        try:
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed at exit: nothing to do
            pass
