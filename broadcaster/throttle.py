"""When to send a board's next snapshot: leading and trailing edge. Pure.

A change after a quiet period (at least one interval since the last send)
goes out at once (leading edge). Changes during an interval are coalesced
into one send at the end of it (trailing edge), built from the state at that
moment, so the last state of a burst always goes out. A burst of changes over
``d`` seconds therefore costs at most ``d / interval + 2`` snapshots.
"""

from __future__ import annotations


class Throttle:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.last_sent_at: float | None = None
        self.scheduled_at: float | None = None

    def on_change(self, now: float) -> float | None:
        """A change was noticed at ``now``: the delay before building a snapshot,
        or None when a send is already scheduled (this change rides on it)."""
        if self.scheduled_at is not None:
            return None
        if self.last_sent_at is None or now - self.last_sent_at >= self.interval_s:
            self.scheduled_at = now
            return 0.0
        self.scheduled_at = self.last_sent_at + self.interval_s
        return self.scheduled_at - now

    def on_sent(self, now: float) -> None:
        """The scheduled snapshot was built (and sent if it differed) at ``now``."""
        self.last_sent_at = now
        self.scheduled_at = None
