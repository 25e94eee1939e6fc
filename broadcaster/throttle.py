"""When to send a board's next snapshot: leading and trailing edge. Pure.

A change after a quiet period (at least one interval since the last send)
goes out at once (leading edge). Changes during an interval are coalesced
into one send at the end of it (trailing edge), built from the state at that
moment, so the last state of a burst always goes out. A burst of changes over
``d`` seconds therefore costs at most ``d / interval + 2`` snapshots.

A change noticed while a snapshot is being read may or may not be in it, so
it earns one more send an interval later: no change is ever left waiting for
the next one, or for the revision poll.

Sends keep to their schedule: the next one is due an interval after the time
the last one was due, not after it ran. So neither the read's round trip nor
a busy event loop that runs a send late stretches the period, and a board
that keeps changing goes out 1 / interval times a second, not a little less.
"""

from __future__ import annotations


class Throttle:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.last_sent_at: float | None = None  # when the last send was due
        self.scheduled_at: float | None = None
        self.reading = False
        self.changed_while_reading = False

    def on_change(self, now: float) -> float | None:
        """A change was noticed at ``now``: the delay before building a snapshot,
        or None when a send is already scheduled (this change rides on it)."""
        if self.reading:
            self.changed_while_reading = True
            return None
        if self.scheduled_at is not None:
            return None
        if self.last_sent_at is None or now - self.last_sent_at >= self.interval_s:
            self.scheduled_at = now
            return 0.0
        self.scheduled_at = self.last_sent_at + self.interval_s
        return self.scheduled_at - now

    def on_read_start(self) -> None:
        """The scheduled snapshot starts reading the board now."""
        self.reading = True

    def on_sent(self, now: float) -> float | None:
        """The snapshot was built (and sent if it differed) at ``now``. Returns the
        delay of one more send when a change arrived during the read, else None."""
        self.last_sent_at = self.scheduled_at if self.scheduled_at is not None else now
        self.reading = False
        self.scheduled_at = None
        if not self.changed_while_reading:
            return None
        self.changed_while_reading = False
        self.scheduled_at = max(now, self.last_sent_at + self.interval_s)
        return self.scheduled_at - now
