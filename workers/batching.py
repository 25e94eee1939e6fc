"""Pure helpers of the consumer: entries to rows, months, backoff.

Nothing here does I/O, so each rule is unit-tested without a server.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from scoreboard.stream_entry import StreamEntry, parse_entry

MS_PER_DAY = 86_400_000


def entry_time(entry: StreamEntry) -> datetime:
    """The action's time: the acceptance time in the entry, never the worker's clock."""
    return datetime.fromtimestamp(entry.ts_ms / 1000, UTC)


def months_of(entries: Iterable[StreamEntry]) -> set[date]:
    """First days of the months the entries' rows fall in (their partitions).

    Per distinct UTC day, not per entry: a batch is a few days at most, and a
    datetime per entry cost the worker about 1 ms per 1,000 entries."""
    days = {e.ts_ms // MS_PER_DAY for e in entries}
    return {datetime.fromtimestamp(day * (MS_PER_DAY // 1000), UTC).date().replace(day=1)
            for day in days}


@dataclass(frozen=True)
class ParsedBatch:
    entries: list[StreamEntry]
    malformed: list[tuple[str, dict[str, str], str]]  # stream id, fields, why


def parse_batch(raw: Sequence[tuple[str, dict[str, str] | None]]) -> ParsedBatch:
    """Split what XREADGROUP returned into entries and malformed ones (with why).

    An entry deleted from the stream while pending comes back without fields;
    it is reported malformed so that it is acknowledged rather than retried.
    """
    entries: list[StreamEntry] = []
    malformed: list[tuple[str, dict[str, str], str]] = []
    for stream_id, fields in raw:
        if not fields:
            malformed.append((stream_id, {}, "entry no longer in the stream"))
            continue
        try:
            entries.append(parse_entry(stream_id, fields))
        except ValueError as exc:
            malformed.append((stream_id, fields, f"malformed: {exc}"))
    return ParsedBatch(entries=entries, malformed=malformed)


def backoff_s(attempt: int, *, base_s: float = 0.1, cap_s: float = 5.0) -> float:
    """Capped exponential delay before retry ``attempt`` (1-based)."""
    return min(cap_s, base_s * 2.0 ** max(0, attempt - 1))
