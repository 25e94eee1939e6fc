"""uvicorn's WebSocket protocol, made to let go of a peer that does not read.

uvicorn's sans-I/O WebSocket protocol ends a connection with
``transport.close()`` on every path: a ping that gets no pong, the app
returning, a close handshake that times out. asyncio's ``close()`` first
flushes the write buffer; to a peer that has stopped reading it never
flushes, ``connection_lost`` never comes, and the connection (with its
buffer) lives forever. Here the transport is wrapped so that closing with
unsent data aborts instead: a spectator that cannot keep up is disconnected,
never buffered without bound. A peer with nothing pending still gets the
graceful close.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class _AbortWhenStuck:
    """A transport whose ``close()`` aborts when data is still waiting to be sent."""

    def __init__(self, transport: Any) -> None:  # asyncio's or uvloop's transport
        self._transport = transport

    def close(self) -> None:
        if self._transport.get_write_buffer_size() > 0:
            self._transport.abort()
        else:
            self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class SpectatorWebSocketProtocol(WebSocketsSansIOProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(_AbortWhenStuck(transport))  # type: ignore[arg-type]
