"""Marks for the chaos tests: where in a batch's life a worker was killed.

Off unless ``CHAOS_MARKER_FILE`` names a file. Then the consumer appends one
line per step of each batch it persists: ``committed <stream> <first id> <n>``
once Postgres has committed it, ``acked <stream> <first id> <n>`` once the
boards are set and it is acknowledged. The stream is named because on a
cluster a worker reads one stream per shard, and an id alone does not say
which. With ``CHAOS_HOLD_AFTER_COMMITS`` = k it writes
``holding <stream> <first id> <n>`` instead of ``committed`` for its k-th batch (each
consumer, one per shard's stream, counts its own) and
waits there, committed and not acknowledged, until it is killed: a test's
SIGKILL then lands exactly between the commit and the XACK, and the line
proves it did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from scoreboard.settings import Settings
from scoreboard.stream_entry import StreamEntry


@dataclass
class ChaosMarks:
    path: str
    hold_after_commits: int = 0
    commits: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> ChaosMarks | None:
        if not settings.chaos_marker_file:
            return None
        return cls(settings.chaos_marker_file, settings.chaos_hold_after_commits)

    def note(self, step: str, stream: str, entries: Sequence[StreamEntry]) -> None:
        # Written and closed at once: the line must be on disk before a SIGKILL.
        with open(self.path, "a") as marks:
            marks.write(f"{step} {stream} {entries[0].stream_id} {len(entries)}\n")

    async def committed(self, stream: str, entries: Sequence[StreamEntry]) -> None:
        """After the commit, before the boards and the XACK."""
        self.commits += 1
        if self.commits != self.hold_after_commits:
            self.note("committed", stream, entries)
            return
        self.note("holding", stream, entries)
        await asyncio.Event().wait()  # until killed

    def acked(self, stream: str, entries: Sequence[StreamEntry]) -> None:
        self.note("acked", stream, entries)
