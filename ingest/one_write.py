"""uvicorn's httptools protocol, with each answer written in one system call.

Why: uvicorn writes an answer's status line and headers, then its body, as two
``transport.write`` calls, i.e. two ``send`` system calls and two loopback
segments. Profiled under ``make bench-ingest``, those two calls were 17.6% of
ingest's samples for an increment, the largest single cost on its path; in an
alternating A/B of the bare Starlette route (BENCHMARKS.md, "One write per
answer"), writing both in one call cut the server's CPU per request by about a
fifth.

:class:`OneWriteTransport` stands between the protocol and the socket's
transport: what is written during one turn of the event loop is joined and
sent once, at the end of the turn (``call_soon``), and before a ``close``. An
answer's headers and body are written in the same turn (nothing awaits between
them), so each answer is one ``send``; answers to pipelined requests answered
in one turn go together. The order of bytes on the connection is unchanged, and
no write waits longer than the turn it was made in. Everything else (flow
control, ``is_closing``, ``abort``, a WebSocket upgrade's ``set_protocol``)
goes to the real transport as it is.

``python -m ingest`` (``ingest.__main__``) serves ingest with
:class:`OneWriteHttpTools`; ``uvicorn --factory ingest.app:create_app`` still
works, with uvicorn's own two writes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class OneWriteTransport:
    """A transport whose writes of one event-loop turn go out as one."""

    __slots__ = ("_loop", "_pending", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Send what this turn wrote (a closed connection's pending bytes are dropped,
        as the transport itself would drop them)."""
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteHttpTools(HttpToolsProtocol):
    """uvicorn's ``httptools`` protocol over a :class:`OneWriteTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(OneWriteTransport(transport, self.loop))  # type: ignore[arg-type]
