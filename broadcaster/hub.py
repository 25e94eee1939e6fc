"""Fan-out: one encoded snapshot handed to every spectator of a board.

``publish`` never awaits a client. It hands the same ``Snapshot`` (bytes
encoded once) to each spectator's ``offer``, which for a WebSocket is one
write of the pre-built frame to the socket, and for SSE a one-slot mailbox.
A spectator that cannot take it now keeps only the newest snapshot and is
disconnected when it stays stuck past the send timeout, so nothing is ever
buffered without bound.

The hub also counts connections per client address, so one address cannot
hold every slot of the process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from prometheus_client import Counter, Gauge

if TYPE_CHECKING:
    from broadcaster.snapshots import Snapshot

CONNECTIONS = Gauge("scoreboard_spectators", "Connected spectators", ["transport"],
                    multiprocess_mode="livesum")  # several processes: one sum
SNAPSHOTS_SENT = Counter("scoreboard_snapshots_sent_total", "Snapshots handed to clients")
SNAPSHOTS_BUILT = Counter("scoreboard_snapshots_built_total", "Snapshots encoded and fanned out")
SNAPSHOTS_SKIPPED = Counter("scoreboard_snapshots_skipped_total",
                            "Snapshots a slow client skipped (a newer one replaced them)")
DROPPED = Counter("scoreboard_spectators_dropped_total", "Spectators disconnected", ["reason"])


class Spectator(Protocol):
    """What the hub needs of a connection, whatever its transport."""

    board: str
    kind: str  # "websocket" or "sse", the label of its metrics
    version_sent: int  # of its current board (a period's rollover starts it again)

    def offer(self, snapshot: Snapshot) -> None:
        """Take ``snapshot`` now, or keep it as the newest unsent one; never waits."""

    def shut(self) -> None:
        """The server is done with this spectator: end its connection."""


class Hub:
    def __init__(self, *, max_per_address: int) -> None:
        self.max_per_address = max_per_address
        self.boards: dict[str, set[Spectator]] = {}
        self.per_address: dict[str, int] = {}  # open connections; absent is none
        # Called with a board's name when its last spectator leaves.
        self.on_board_empty: list[Callable[[str], None]] = []

    def admit(self, address: str) -> bool:
        """Reserve a connection slot for ``address``; False when it has too many.
        Every True must be paired with one ``release``."""
        held = self.per_address.get(address, 0)
        if held >= self.max_per_address:
            return False
        self.per_address[address] = held + 1
        return True

    def release(self, address: str) -> None:
        held = self.per_address.pop(address) - 1
        if held > 0:
            self.per_address[address] = held

    def join(self, spectator: Spectator, board: str) -> None:
        if spectator.board:
            self._leave(spectator)
        else:
            CONNECTIONS.labels(spectator.kind).inc()
        spectator.board = board
        self.boards.setdefault(board, set()).add(spectator)

    def _leave(self, spectator: Spectator) -> None:
        members = self.boards.get(spectator.board)
        if members is not None:
            members.discard(spectator)
            if not members:
                del self.boards[spectator.board]
                for forget in self.on_board_empty:
                    forget(spectator.board)

    def leave(self, spectator: Spectator) -> None:
        """``spectator`` is gone: it no longer counts on its board."""
        if spectator.board:
            self._leave(spectator)
            CONNECTIONS.labels(spectator.kind).dec()
            spectator.board = ""

    def spectators(self) -> int:
        return sum(len(members) for members in self.boards.values())

    def close_all(self) -> None:
        for spectator in [s for members in self.boards.values() for s in members]:
            spectator.shut()
            self.leave(spectator)

    def publish(self, snapshot: Snapshot) -> int:
        """Hand ``snapshot`` to every spectator of its board; never waits on a client."""
        members = self.boards.get(snapshot.board, ())
        for spectator in members:
            spectator.offer(snapshot)
        SNAPSHOTS_BUILT.inc()
        SNAPSHOTS_SENT.inc(len(members))
        return len(members)

