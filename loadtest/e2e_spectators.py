"""The end-to-end benchmark's spectators, run as a process of their own.

    python -m loadtest.e2e_spectators      (driven by loadtest.bench_e2e over stdin/stdout)

One JSON command per stdin line, one JSON reply per stdout line (the protocol
of the harness's client processes, ``loadtest/harness/spectator_client.py``;
their handle, ``loadtest.harness.spectators.ClientProcess``, drives this one too):

- ``{"op": "connect", "mode": "websocket", "url": ws_url, "count": n, "parallel": p}``:
  n WebSocket spectators on the broadcaster, each holding its first snapshot;
  they are the harness's raw clients (a few µs per message, where
  the ``websockets`` library would take CPU the 2-core machine needs for the
  system under test);
- ``{"op": "connect", "mode": "redis", "redis_url": url, "channel": name}``:
  one Redis subscriber of ``channel`` instead (the baseline publishes there
  and has no WebSocket server);
- ``{"op": "start", "probes": {user_id: score}}``: from now on, note for
  each spectator the first receipt (``time.time()``, ms) of a message whose
  entries show a probe user at its score or above, i.e. the moment that
  spectator saw the probe's increment; also every message's age (receipt
  minus its ``ts``), whether versions only grew, and for each probe the ``ts``
  (when the server built it) of the first message showing it;
- ``{"op": "stop"}``: stop noting and reply with what was noted;
- ``{"op": "close"}``: disconnect and exit.

Identical payloads (one encoding per snapshot, sent to every spectator) are
decoded once.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as redis_asyncio
import uvloop

from loadtest.harness.spectator_client import Crowd, Spectator, raise_fd_limit

CACHE_SIZE = 256


@dataclass(frozen=True)
class Decoded:
    version: int | None
    ts: float | None
    probes: tuple[str, ...]  # probe users this message shows at their score
    entries: tuple[tuple[str, int], ...]


@dataclass
class Seen:
    """What one spectator saw while noting."""

    messages: int = 0
    version: int = -1
    regressions: int = 0
    first: dict[str, float] = field(default_factory=dict)  # probe user -> receipt ms
    last: tuple[tuple[str, int], ...] | None = None


class ProbeCrowd(Crowd):
    """The harness's crowd of raw WebSocket clients, noting probes."""

    def __init__(self, url: str) -> None:
        super().__init__(url, "raw", keep=False)
        self.probe_scores: dict[str, int] = {}
        self.cache: dict[bytes, Decoded] = {}
        self.seen: dict[int, Seen] = {}
        self.ages_ms: list[float] = []
        self.built_ms: dict[str, float] = {}  # probe user -> ts of the first message showing it
        self.subscriber: asyncio.Task[None] | None = None

    def on_snapshot(self, spectator: Spectator, payload: bytes, now_ms: float) -> None:
        if not spectator.first.done():
            spectator.first.set_result(None)
        if self.counting:
            self.note(spectator.index, payload, now_ms)

    def decode(self, payload: bytes) -> Decoded:
        decoded = self.cache.get(payload)
        if decoded is None:
            message = orjson.loads(payload)
            entries = tuple((str(e["user_id"]), int(e["score"]))
                            for e in message.get("entries", ()))
            decoded = Decoded(
                version=message.get("version"), ts=message.get("ts"),
                probes=tuple(user for user, score in entries
                             if score >= self.probe_scores.get(user, math.inf)),
                entries=entries)
            if len(self.cache) >= CACHE_SIZE:
                self.cache.clear()
            self.cache[payload] = decoded
            if decoded.ts is not None:
                for user in decoded.probes:
                    self.built_ms.setdefault(user, decoded.ts)
        return decoded

    def note(self, index: int, payload: bytes, now_ms: float) -> None:
        decoded = self.decode(payload)
        seen = self.seen.get(index)
        if seen is None:
            seen = self.seen[index] = Seen()
        seen.messages += 1
        if decoded.version is not None:
            if decoded.version < seen.version:
                seen.regressions += 1
            seen.version = decoded.version
        if decoded.ts is not None:
            self.ages_ms.append(now_ms - decoded.ts)
        for user in decoded.probes:
            if user not in seen.first:
                seen.first[user] = now_ms
        seen.last = decoded.entries

    async def subscribe(self, redis_url: str, channel: str) -> dict[str, Any]:
        """One Redis subscriber (spectator 0) of ``channel``."""
        client = redis_asyncio.Redis.from_url(redis_url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(channel)

        async def listen() -> None:
            try:
                async for message in pubsub.listen():
                    now_ms = time.time() * 1000
                    if self.counting and message.get("type") == "message":
                        self.note(0, bytes(message["data"]), now_ms)
            finally:
                await pubsub.aclose()
                await client.aclose()

        self.subscriber = asyncio.create_task(listen())
        return {"connected": 1, "failures": {}, "seconds": 0.0}

    def begin(self, probes: dict[str, int]) -> dict[str, Any]:
        self.probe_scores = {user: int(score) for user, score in probes.items()}
        self.cache.clear()
        self.seen, self.ages_ms, self.built_ms = {}, [], {}
        return self.start()

    def end(self) -> dict[str, Any]:
        window = self.stop()
        first: dict[str, list[float]] = {}
        for seen in self.seen.values():
            for user, at in seen.first.items():
                first.setdefault(user, []).append(at)
        lasts: dict[str, int] = {}
        for seen in self.seen.values():
            key = orjson.dumps(seen.last).decode()
            lasts[key] = lasts.get(key, 0) + 1
        return {"seconds": window["seconds"], "closed": window["closed"],
                "open": window["open"] if self.subscriber is None else 1,
                "spectators": len(self.spectators) if self.subscriber is None else 1,
                "messages": [seen.messages for seen in self.seen.values()],
                "regressions": sum(seen.regressions for seen in self.seen.values()),
                "first_seen_ms": first, "built_ms": self.built_ms, "ages_ms": self.ages_ms,
                "last_entries": lasts}

    async def finish(self) -> dict[str, Any]:
        if self.subscriber is not None:
            self.subscriber.cancel()
            await asyncio.gather(self.subscriber, return_exceptions=True)
            return {"ok": True}
        return await self.close()


async def serve() -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    crowd: ProbeCrowd | None = None
    while line := await reader.readline():
        command: dict[str, Any] = orjson.loads(line)
        op = command["op"]
        if op == "connect":
            if command["mode"] == "redis":
                crowd = ProbeCrowd("")
                reply = await crowd.subscribe(command["redis_url"], command["channel"])
            else:
                crowd = ProbeCrowd(command["url"])
                reply = await crowd.connect(command["count"], command["parallel"])
        elif crowd is None:
            reply = {"error": "connect first"}
        elif op == "start":
            reply = crowd.begin(command["probes"])
        elif op == "stop":
            reply = crowd.end()
        else:
            reply = await crowd.finish()
        sys.stdout.buffer.write(orjson.dumps(reply) + b"\n")
        sys.stdout.buffer.flush()
        if op == "close":
            break
    return 0


def main() -> int:
    raise_fd_limit()
    return uvloop.run(serve())


if __name__ == "__main__":
    sys.exit(main())
