"""The program of a spectator client process: many WebSocket spectators in one process.

``python -m loadtest.harness.spectator_client WS_URL [--client raw|websockets]
[--keep]`` holds a :class:`Crowd` and takes one JSON command per stdin line,
answering one JSON reply per stdout line:
``{"op": "connect", "count", "parallel", "deadline_s"}`` (with ``"watch_players": W,
"watch_offset", "epoch_ms"``: spectator i also watches ``watched_{(offset + i) % W}``,
see below), ``{"op": "start"}``
(count from now on), ``{"op": "stop"}`` (reply with what was counted) and
``{"op": "close"}``. The orchestrator drives it through
``loadtest.harness.spectators`` (its handle and the benchmark's sequence);
``loadtest.e2e_spectators`` speaks the same protocol.

The spectators use a minimal WebSocket client written on ``asyncio.Protocol``
(``raw``: the handshake, unmasked server frames, pong and close answers; it
reads ``ts`` without decoding the JSON), because on 2 cores every client µs
is taken from the server: measured at 1,000 spectators, the ``websockets``
library's asyncio client cost about 49 µs of CPU per message received, this
one about 24 µs. ``websockets`` runs the library's client, for comparison.

Watching spectators (the rank feed part of the broadcaster benchmark) put
``&watch=<user id>`` in their URL and send ``{"type": "watch", "user_id"}``
once upgraded (a server uses whichever it understands). Rank messages are
counted apart, and their freshness binned: the benchmark's writer sets each
watched player's total to ``(ms since epoch_ms) * 1000 + index``, so the
receipt time minus the write time is read from the score without decoding the
JSON (a rank message's own ``score`` is its first).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import resource
import signal
import sys
import time
from collections import Counter
from typing import Any, cast
from urllib.parse import urlsplit

import orjson
import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from loadtest.harness.figures import BIN_PER_MS

CONNECT_TIMEOUT_S = 60


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Spectator:
    """One WebSocket client; ``first`` resolves on its first snapshot."""

    def __init__(self, crowd: Crowd, index: int) -> None:
        self.crowd = crowd
        self.index = index
        self.first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.in_window = 0
        self.close_code: int | None = None

    def closed(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
            self.crowd.on_closed(code)
        if not self.first.done():
            self.first.set_exception(ConnectionError(f"closed with {code} before a snapshot"))

    async def close(self) -> None:
        raise NotImplementedError


class RawSpectator(Spectator, asyncio.Protocol):
    """A minimal RFC 6455 client: enough for a server that sends unfragmented text
    frames, pings and a close; costs a few µs per message."""

    def __init__(self, crowd: Crowd, index: int, host: str, path: str,
                 watch: str | None = None) -> None:
        super().__init__(crowd, index)
        self.watch = watch
        key = base64.b64encode(os.urandom(16)).decode()
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        self.buffer = bytearray()
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now_ms = time.time() * 1000
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status_line = bytes(buffer[:buffer.find(b"\r\n")])
            if b" 101 " not in status_line:
                self.closed(int(status_line.split()[1]) if len(status_line.split()) > 1 else 0)
                self._abort()
                return
            del buffer[:end + 4]
            self.upgraded = True
            if self.watch is not None:
                self._send(0x1, orjson.dumps({"type": "watch", "user_id": self.watch}))
        position, size = 0, len(buffer)
        while size - position >= 2:
            length, header = buffer[position + 1] & 0x7F, 2
            if length == 126:
                if size - position < 4:
                    break
                length, header = int.from_bytes(buffer[position + 2:position + 4]), 4
            elif length == 127:
                if size - position < 10:
                    break
                length, header = int.from_bytes(buffer[position + 2:position + 10]), 10
            if size - position < header + length:
                break
            opcode = buffer[position] & 0x0F
            payload = bytes(buffer[position + header:position + header + length])
            position += header + length
            if opcode == 0x1:
                self.crowd.on_snapshot(self, payload, now_ms)
            elif opcode == 0x9:  # ping: answer at once, as a browser does
                self._send(0xA, payload)
            elif opcode == 0x8:
                self._send(0x8, payload[:2])
                self.closed(int.from_bytes(payload[:2]) if len(payload) >= 2 else 1005)
                self._abort()
                return
        del buffer[:position]

    def _send(self, opcode: int, payload: bytes) -> None:
        """A masked (client) frame; only ever a short one here (< 126 bytes)."""
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed(1006)

    async def close(self) -> None:
        self._send(0x8, (1000).to_bytes(2))
        self._abort()


class LibrarySpectator(Spectator):
    """The same client on the ``websockets`` library (``--client websockets``)."""

    connection: ClientConnection
    reader: asyncio.Task[None]

    async def open(self, url: str, watch: str | None = None) -> None:
        self.connection = await connect(url, compression=None, ping_interval=None,
                                        max_size=2**20, open_timeout=CONNECT_TIMEOUT_S)
        self.reader = asyncio.create_task(self._read())
        if watch is not None:
            await self.connection.send(orjson.dumps({"type": "watch", "user_id": watch}))

    async def _read(self) -> None:
        try:
            async for message in self.connection:
                now_ms = time.time() * 1000
                self.crowd.on_snapshot(self, message.encode() if isinstance(message, str)
                                       else message, now_ms)
        except ConnectionClosed:
            pass
        self.closed(self.connection.close_code or 1006)

    async def close(self) -> None:
        await self.connection.close()
        await self.reader


class Crowd:
    """One client process's spectators, and what they saw in the current window."""

    def __init__(self, url: str, kind: str, keep: bool) -> None:
        self.url = url
        self.kind = kind
        self.keep = keep
        self.spectators: list[Spectator] = []
        self.counting = False
        self.window_started = 0.0
        self.bins: dict[int, int] = {}
        self.kept: list[tuple[int, float, str]] = []
        self.closed_in_window: Counter[int] = Counter()
        self.watch_players, self.watch_offset, self.epoch_ms = 0, 0, 0
        self.ranks = 0
        self.fresh_bins: dict[int, int] = {}

    def on_snapshot(self, spectator: Spectator, payload: bytes, now_ms: float) -> None:
        if not spectator.first.done():
            spectator.first.set_result(None)
        if not self.counting:
            return
        spectator.in_window += 1
        start = payload.find(b'"ts":') + 5
        latency_bin = int((now_ms - int(payload[start:payload.find(b",", start)])) * BIN_PER_MS)
        self.bins[latency_bin] = self.bins.get(latency_bin, 0) + 1
        if payload.startswith(b'{"type":"rank"'):
            self.ranks += 1
            start = payload.find(b'"score":') + 8
            written_ms = self.epoch_ms + int(payload[start:payload.find(b",", start)]) // 1000
            fresh_bin = int((now_ms - written_ms) * BIN_PER_MS)
            self.fresh_bins[fresh_bin] = self.fresh_bins.get(fresh_bin, 0) + 1
        if self.keep:
            self.kept.append((spectator.index, now_ms, payload.decode()))

    def on_closed(self, code: int) -> None:
        if self.counting:
            self.closed_in_window[code] += 1

    async def _open(self, index: int) -> Spectator:
        watch, url = None, self.url
        if self.watch_players:
            watch = f"watched_{(self.watch_offset + index) % self.watch_players}"
            url += ("&" if "?" in url else "?") + f"watch={watch}"
        if self.kind == "websockets":
            library = LibrarySpectator(self, index)
            await library.open(url, watch)
            await library.first
            return library
        parts = urlsplit(url)
        path = parts.path + ("?" + parts.query if parts.query else "")
        raw = RawSpectator(self, index, parts.netloc, path, watch)
        await asyncio.get_running_loop().create_connection(
            lambda: raw, parts.hostname or "127.0.0.1", parts.port or 80)
        try:
            await raw.first
        except BaseException:
            raw._abort()
            raise
        return raw

    async def connect(self, count: int, parallel: int,
                      deadline_s: float = CONNECT_TIMEOUT_S) -> dict[str, Any]:
        """Open ``count`` spectators, ``parallel`` handshakes at a time; those not
        connected within ``deadline_s`` are given up and counted as failures."""
        semaphore, failures = asyncio.Semaphore(parallel), Counter[str]()
        started, first_index = time.perf_counter(), len(self.spectators)

        async def one(index: int) -> None:
            async with semaphore:
                try:
                    spectator = await asyncio.wait_for(self._open(index), CONNECT_TIMEOUT_S)
                except Exception as exc:  # any failure is counted and reported, not fatal
                    failures[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
                    return
                self.spectators.append(spectator)

        attempts = [asyncio.create_task(one(first_index + i)) for i in range(count)]
        _, late = await asyncio.wait(attempts, timeout=deadline_s)
        for attempt in late:
            attempt.cancel()
        if late:
            failures[f"not connected within {deadline_s:g} s"] += len(late)
            await asyncio.wait(late)
        return {"connected": len(self.spectators), "failures": dict(failures),
                "seconds": time.perf_counter() - started}

    def start(self) -> dict[str, Any]:
        for spectator in self.spectators:
            spectator.in_window = 0
        self.bins, self.kept, self.closed_in_window = {}, [], Counter()
        self.ranks, self.fresh_bins = 0, {}
        self.counting, self.window_started = True, time.perf_counter()
        return {"ok": True}

    def stop(self) -> dict[str, Any]:
        self.counting = False
        return {"seconds": time.perf_counter() - self.window_started,
                "per_client": [s.in_window for s in self.spectators],
                "bins": {str(k): v for k, v in self.bins.items()},
                "closed": {str(k): v for k, v in self.closed_in_window.items()},
                "open": sum(1 for s in self.spectators if s.close_code is None),
                "kept": self.kept, "ranks": self.ranks,
                "fresh_bins": {str(k): v for k, v in self.fresh_bins.items()}}

    async def close(self) -> dict[str, Any]:
        await asyncio.gather(*(s.close() for s in self.spectators if s.close_code is None),
                             return_exceptions=True)
        await asyncio.sleep(0.2)  # let the close frames go out
        return {"ok": True}


async def serve_commands(url: str, kind: str, keep: bool) -> int:
    """The client process: one JSON command per stdin line, one JSON reply per stdout line."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    crowd = Crowd(url, kind, keep)
    while line := await reader.readline():
        command: dict[str, Any] = orjson.loads(line)
        if command["op"] == "connect":
            crowd.watch_players = command.get("watch_players", 0)
            crowd.watch_offset = command.get("watch_offset", 0)
            crowd.epoch_ms = command.get("epoch_ms", 0)
            reply = await crowd.connect(command["count"], command["parallel"],
                                        command["deadline_s"])
        elif command["op"] == "start":
            reply = crowd.start()
        elif command["op"] == "stop":
            reply = crowd.stop()
        else:
            reply = await crowd.close()
        sys.stdout.buffer.write(orjson.dumps(reply) + b"\n")
        sys.stdout.buffer.flush()
        if command["op"] == "close":
            break
    return 0


def main(argv: list[str] | None = None) -> int:
    """A client process: its spectators watch ``url``; the orchestrator stops it."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.harness.spectator_client")
    parser.add_argument("url")
    parser.add_argument("--client", choices=("raw", "websockets"), default="raw")
    parser.add_argument("--keep", action="store_true",
                        help="keep every message received in the window, for the reply")
    args = parser.parse_args(argv)
    raise_fd_limit()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator stops us
    return uvloop.run(serve_commands(args.url, args.client, args.keep))


if __name__ == "__main__":
    sys.exit(main())
