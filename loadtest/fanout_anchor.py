"""The fan-out floor: a bare server that writes one pre-encoded frame to every socket.

    python -m loadtest.fanout_anchor --port P [--interval-ms 100] [--players 10]
                                     [--epoch-ms E]

What one Python process on uvloop can do at best for this job, measured in
the same run as the broadcaster and driven by the same clients: accept a
WebSocket handshake with no checks, send the latest frame at once, then every
interval build one snapshot message of the broadcaster's shape (the same
board, players, ``ts`` and size) and ``transport.write`` the same frame to
every socket. No Redis, no throttle, no slow-client handling, no pings. It
answers ``GET /healthz`` with 200 so the benchmark can wait for it.

It is also the floor of the rank feed: a socket whose handshake asks
``watch=watched_<k>`` gets, every interval, a rank message of
the broadcaster's shape for player k (built once per player and interval,
written to each of its watchers), its score ``(ms since E) * 1000 + k`` as the
benchmark's writer sets it (E: ``--epoch-ms``), so the clients time both servers the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import random
import struct
import time
from typing import cast
from urllib.parse import parse_qs, urlsplit

import orjson
import uvloop

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Anchor:
    def __init__(self, board: str, players: int, epoch_ms: int = 0) -> None:
        self.board = board
        self.players = players
        self.epoch_ms = epoch_ms
        self.version = 0
        self.sockets: set[asyncio.Transport] = set()
        self.watchers: dict[int, set[asyncio.Transport]] = {}  # watched player -> sockets
        self.frame = self.build()

    def rank_frame(self, player: int, ts: int) -> bytes:
        """A rank message of the broadcaster's shape for ``watched_<player>``."""
        score = (ts - self.epoch_ms) * 1000 + player

        def neighbour(other: int) -> dict[str, object]:
            return {"rank": other + 1, "user_id": f"watched_{other}",
                    "username": f"watched {other}", "score": score - player + other}

        payload = orjson.dumps({
            "type": "rank", "board": self.board, "version": self.version, "ts": ts,
            "user_id": f"watched_{player}", "username": f"watched {player}",
            "rank": player + 1, "score": score, "above": neighbour(player + 1),
            "below": neighbour(max(player - 1, 0))})
        return _header(len(payload)) + payload

    def build(self) -> bytes:
        """One snapshot frame: the broadcaster's message shape, a fresh ts."""
        self.version += 1
        scores = sorted((random.randint(1, 10_000) for _ in range(self.players)), reverse=True)
        entries = [{"rank": rank, "user_id": f"spectated_{rank - 1}",
                    "username": f"player {rank - 1}", "score": score}
                   for rank, score in enumerate(scores, start=1)]
        payload = orjson.dumps({"type": "snapshot", "board": self.board,
                                "version": self.version, "ts": int(time.time() * 1000),
                                "entries": entries})
        return _header(len(payload)) + payload

    async def tick(self, interval_s: float) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += interval_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            frame = self.frame = self.build()
            for transport in self.sockets:
                transport.write(frame)
            ts = int(time.time() * 1000)
            for player, watchers in self.watchers.items():
                rank = self.rank_frame(player, ts)
                for transport in watchers:
                    transport.write(rank)


def _header(length: int) -> bytes:
    return (struct.pack("!BB", 0x81, length) if length < 126
            else struct.pack("!BBH", 0x81, 126, length))


class AnchorConnection(asyncio.Protocol):
    def __init__(self, anchor: Anchor) -> None:
        self.anchor = anchor
        self.transport: asyncio.Transport | None = None
        self.request = b""
        self.upgraded = False
        self.watched: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.upgraded or self.transport is None:
            return  # pongs and close frames: nothing to do at the floor
        self.request += data
        if b"\r\n\r\n" not in self.request:
            return
        head = self.request.decode("latin-1")
        if head.startswith("GET /healthz"):
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                 b"Connection: close\r\n\r\nok")
            self.transport.close()
            return
        key = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                   if line.lower().startswith("sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        self.transport.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                              ).encode() + self.anchor.frame)
        self.upgraded = True
        self.anchor.sockets.add(self.transport)
        watch = parse_qs(urlsplit(head.split(" ", 2)[1]).query).get("watch")
        if watch and watch[0].startswith("watched_"):
            self.watched = int(watch[0].removeprefix("watched_"))
            self.anchor.watchers.setdefault(self.watched, set()).add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.anchor.sockets.discard(self.transport)
            if self.watched is not None:
                self.anchor.watchers.get(self.watched, set()).discard(self.transport)


async def serve(port: int, interval_s: float, board: str, players: int, epoch_ms: int) -> None:
    anchor = Anchor(board, players, epoch_ms)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: AnchorConnection(anchor), "127.0.0.1", port,
                                      backlog=4096)
    async with server:
        await anchor.tick(interval_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval-ms", type=float, default=100)
    parser.add_argument("--board", default="spectated")
    parser.add_argument("--players", type=int, default=10)
    parser.add_argument("--epoch-ms", type=int, default=0,
                        help="rank messages' scores count ms from here (see above)")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.interval_ms / 1000, args.board, args.players,
                     args.epoch_ms))


if __name__ == "__main__":
    main()
