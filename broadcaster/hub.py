"""Fan-out: one encoded snapshot handed to every spectator of a board.

``publish`` never awaits a client: it drops the same bytes into each
subscriber's one-slot mailbox (a newer snapshot replaces an unsent older one,
so a slow client skips states but always gets the latest) and returns. Each
subscriber's own sender delivers from its mailbox; a send that does not
complete within the send timeout means the client cannot keep up, and it is
disconnected. Nothing is ever buffered without bound.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Gauge

CONNECTIONS = Gauge("scoreboard_spectators", "Connected spectators", ["transport"])
SNAPSHOTS_SENT = Counter("scoreboard_snapshots_sent_total", "Snapshots delivered to clients")
SNAPSHOTS_BUILT = Counter("scoreboard_snapshots_built_total", "Snapshots encoded and fanned out")
DROPPED = Counter("scoreboard_spectators_dropped_total", "Spectators disconnected", ["reason"])


class Subscriber:
    """One spectator: a mailbox of the latest unsent snapshot, and how to send it."""

    def __init__(self, *, address: str, transport: str,
                 send: Callable[[str], Awaitable[None]]) -> None:
        self.address = address
        self.transport = transport
        self.board = ""
        self._send = send
        self._latest: str | None = None
        self._wake = asyncio.Event()  # set by a new snapshot, or by closing
        self.closed = False

    def offer(self, payload: str) -> None:
        self._latest = payload
        self._wake.set()

    def shut(self) -> None:
        self.closed = True
        self._wake.set()

    async def next_payload(self) -> str | None:
        """The latest snapshot to send, or None once closed. One event, no task:
        this runs once per message per spectator."""
        while self._latest is None:
            if self.closed:
                return None
            self._wake.clear()
            await self._wake.wait()
        payload, self._latest = self._latest, None
        return payload

    async def deliver(self, timeout_s: float) -> None:
        """Send from the mailbox until closed; raises TimeoutError on a stuck client."""
        while (payload := await self.next_payload()) is not None:
            async with asyncio.timeout(timeout_s):
                await self._send(payload)
            SNAPSHOTS_SENT.inc()


class Hub:
    def __init__(self, *, max_per_address: int,
                 on_board_empty: Callable[[str], None] | None = None) -> None:
        self.max_per_address = max_per_address
        self.on_board_empty = on_board_empty
        self.boards: dict[str, set[Subscriber]] = defaultdict(set)
        self.per_address: dict[str, int] = defaultdict(int)

    def admit(self, address: str) -> bool:
        """Reserve a connection slot for ``address``; False when it has too many."""
        if self.per_address[address] >= self.max_per_address:
            return False
        self.per_address[address] += 1
        return True

    def release(self, address: str) -> None:
        self.per_address[address] -= 1
        if self.per_address[address] <= 0:
            del self.per_address[address]

    def join(self, subscriber: Subscriber, board: str) -> None:
        if subscriber.board:
            self.leave(subscriber)
        else:
            CONNECTIONS.labels(subscriber.transport).inc()
        subscriber.board = board
        self.boards[board].add(subscriber)

    def leave(self, subscriber: Subscriber) -> None:
        members = self.boards.get(subscriber.board)
        if members is not None:
            members.discard(subscriber)
            if not members:
                del self.boards[subscriber.board]
                if self.on_board_empty is not None:
                    self.on_board_empty(subscriber.board)

    def close(self, subscriber: Subscriber) -> None:
        if subscriber.board:
            self.leave(subscriber)
            CONNECTIONS.labels(subscriber.transport).dec()
            subscriber.board = ""
        subscriber.shut()

    def publish(self, board: str, payload: str) -> int:
        """Hand ``payload`` to every subscriber of ``board``; never waits on a client."""
        members = self.boards.get(board, ())
        for subscriber in members:
            subscriber.offer(payload)
        SNAPSHOTS_BUILT.inc()
        return len(members)
