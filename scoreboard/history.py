"""The board at a past moment and retention, as pure rules (no I/O).

``as_of`` is read from ``actions`` (the event log): the latest checkpoint at
or before the moment, plus a replay of the actions after it
(``scoreboard.history_reads``). Moderation is applied as it stands NOW, not
as it stood then: a removed action is gone from the log (and from every
checkpoint), and a player banned or shadow-banned today is left out of every
past ranking too, as they are left out of the live board. The history is
what the board would have shown with what is known today, so a cheater
caught later does not come back by looking at last week.

Checkpoints are taken on a grid of ``HISTORY_CHECKPOINT_HOURS`` from the
epoch (UTC), only up to a horizon below which every accepted increment is
known to be in Postgres (see :func:`checkpoint_horizon`). Retention drops
whole monthly partitions older than ``RETENTION_MONTHS`` after a checkpoint
at the dropped range's end is written, so ``as_of`` stays exact from there
on and refuses anything earlier.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from scoreboard.errors import RequestError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_as_of(raw: str, *, now: datetime, earliest: datetime | None) -> datetime:
    """The moment of an ``as_of`` parameter, or a 422 saying what is wrong with it.

    ISO 8601 with a time zone (``2026-11-30T12:00:00Z`` or ``+01:00``); not in
    the future; not before ``earliest`` (the retention floor, None: no floor).
    """
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise RequestError(422, "invalid_field", "as_of: must be an ISO 8601 time with a"
                           " time zone, e.g. 2026-11-30T12:00:00Z", field="as_of") from None
    if moment.tzinfo is None:
        raise RequestError(422, "invalid_field", "as_of: needs a time zone (Z or +hh:mm)",
                           field="as_of")
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        raise RequestError(422, "invalid_field", "as_of: out of the range of times",
                           field="as_of") from None
    if moment > now:
        raise RequestError(422, "as_of_in_future",
                           f"as_of: {moment.isoformat()} is after now ({now.isoformat()});"
                           " the board's future is not known", field="as_of")
    if earliest is not None and moment < earliest:
        raise RequestError(422, "as_of_before_retention",
                           f"as_of: actions before {earliest.isoformat()} are no longer kept"
                           " (RETENTION_MONTHS); ask for that time or later", field="as_of")
    return moment


def grid_floor(moment: datetime, interval: timedelta) -> datetime:
    """The latest grid time (multiples of ``interval`` from the epoch) at or before ``moment``."""
    steps = (moment - EPOCH) // interval
    return EPOCH + steps * interval


def due_checkpoints(*, latest: datetime | None, start: datetime, horizon: datetime,
                    interval: timedelta, limit: int) -> list[datetime]:
    """The checkpoints to write next, oldest first, at most ``limit``.

    After the ``latest`` one (None: none yet; then from the grid time at or
    before ``start``, the start of the oldest kept partition), every grid time
    up to ``horizon`` inclusive."""
    if latest is None:
        first = grid_floor(start, interval)
    else:
        first = grid_floor(latest, interval) + interval
    due: list[datetime] = []
    moment = first
    while moment <= horizon and len(due) < limit:
        if latest is None or moment > latest:
            due.append(moment)
        moment += interval
    return due


def checkpoint_horizon(*, now: datetime, acknowledged_before_ms: int | None,
                       lag: timedelta) -> datetime:
    """The latest moment a checkpoint may cover.

    Every stream entry older than ``acknowledged_before_ms`` (the oldest entry
    some consumer group has not acknowledged, pending or undelivered; None:
    none) is committed in Postgres; an action's ``created_at`` is its Redis
    accept time, at or just before its stream id. ``lag`` is a margin on top, so an
    entry still in flight is never left out of a checkpoint that is then
    never corrected."""
    horizon = now
    if acknowledged_before_ms is not None:
        horizon = min(horizon, datetime.fromtimestamp(acknowledged_before_ms / 1000, UTC))
    return horizon - lag


def retention_cutoff(now: datetime, months: int) -> datetime | None:
    """Partitions ending at or before this moment are dropped; None: keep everything.

    With ``months`` = N, the current month and the N before it are kept:
    on 2026-12-02 with N = 1, November and December stay, October goes."""
    if months <= 0:
        return None
    month_index = now.year * 12 + (now.month - 1) - months
    return datetime(month_index // 12, month_index % 12 + 1, 1, tzinfo=UTC)
