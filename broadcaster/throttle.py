"""When to run a board's next read (a snapshot, the rank feed): leading and trailing edge.

``Throttle`` is the timing, pure: it is told the time and answers delays.
``BoardSchedule`` is the thin asyncio around it: a throttle per board, the
timers it asks for, and the task of each run. The snapshots and the rank
feed each keep one ``BoardSchedule`` with their own read as its job, so
both follow the same schedule by construction.

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

import asyncio
import time
from collections.abc import Awaitable, Callable


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


class BoardSchedule:
    """Runs ``job(board)`` for each board on its own ``Throttle``'s schedule.

    ``job`` is the read and fan-out of one board. It handles the errors it
    expects itself (a Redis error is logged and the board waits for its next
    change): whatever it raises, the run counts as done for the throttle, so a
    failed run never leaves the board without its next one. Call ``change``
    from the event loop's thread; ``forget`` a board when nobody follows it
    any more, and a run scheduled for it then does nothing.
    """

    def __init__(self, *, interval_s: float, job: Callable[[str], Awaitable[None]]) -> None:
        self.interval_s = interval_s
        self.job = job
        self.throttles: dict[str, Throttle] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # strong references while they run

    def change(self, board: str) -> None:
        """``board`` changed: run the job now, at the end of the interval, or not
        at all when a run already scheduled will see this change."""
        throttle = self.throttles.setdefault(board, Throttle(self.interval_s))
        delay = throttle.on_change(time.monotonic())
        if delay is not None:
            asyncio.get_running_loop().call_later(delay, self._spawn, board)

    def forget(self, board: str) -> None:
        """Nobody follows ``board`` any more: drop its throttle (any name can be
        asked for, so per-board state lives only while it is followed)."""
        self.throttles.pop(board, None)

    def _spawn(self, board: str) -> None:
        task = asyncio.create_task(self._run(board))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, board: str) -> None:
        throttle = self.throttles.get(board)
        if throttle is None:  # forgotten while the run was scheduled
            return
        throttle.on_read_start()
        try:
            await self.job(board)
        finally:
            again = throttle.on_sent(time.monotonic())
            if again is not None:
                asyncio.get_running_loop().call_later(again, self._spawn, board)
