"""Board windows and their periods, as pure functions (no I/O, no clock).

A board counts every increment in each of its windows: ``all_time`` (one
period, ``all``), ``daily``, ``weekly``, ``monthly`` and ``season`` (named
seasons, each with a start and an end). A period is identified by a string:

| window    | period id     | spans (in the board's timezone, from its turnover hour) |
| ---       | ---           | ---                                                     |
| all_time  | ``all``       | forever                                                 |
| daily     | ``2026-12-02``| that day, hour H to hour H of the next day              |
| weekly    | ``2026-W48``  | the ISO week: Monday hour H to the next Monday hour H   |
| monthly   | ``2026-12``   | the 1st hour H to the next month's 1st hour H           |
| season    | its name      | its start (inclusive) to its end (exclusive), UTC instants |

How an instant finds its period: take its wall time in the board's timezone,
go back H hours (wall-clock arithmetic), and take the date of that. A
period's start is the wall time "date, H:00" in the timezone, read with
``fold=0`` (the first of two, when the clocks go back; the moment after the
gap, when they go forward). These two rules agree across every DST change
(tests/test_windows.py checks instants around the transitions): an instant
is inside the bounds of the period it is given.

A board's windows, scope names and what the worker needs per entry are built
from a :class:`WindowSpec` here too, so that ingest, the worker and the
broadcaster agree on them without talking to each other.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ALL_TIME = "all_time"
CALENDAR_WINDOWS = ("daily", "weekly", "monthly")
SEASON = "season"
WINDOW_NAMES = (ALL_TIME, *CALENDAR_WINDOWS, SEASON)
ALL_TIME_PERIOD = "all"
OPERATORS = ("sum", "best")
SEASON_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
PERIOD_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")  # every window's ids
SEASON_RULE = "must be 1 to 32 lowercase letters, digits, '_', '.' or '-' (first a letter or digit)"
# Board names never contain '/', so a scope name cannot be a board's name.
SCOPE_SEPARATOR = "/"

DAILY_ID = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
WEEKLY_ID = re.compile(r"(\d{4})-W(\d{2})")
MONTHLY_ID = re.compile(r"(\d{4})-(\d{2})")


@dataclass(frozen=True)
class Season:
    name: str
    starts_at: datetime  # aware, inclusive
    ends_at: datetime  # aware, exclusive


@dataclass(frozen=True)
class Period:
    """One period of a window: its id and bounds (None: unbounded)."""

    window: str
    period: str
    starts_at: datetime | None
    ends_at: datetime | None

    def contains(self, moment: datetime) -> bool:
        return ((self.starts_at is None or self.starts_at <= moment)
                and (self.ends_at is None or moment < self.ends_at))

    def as_json(self) -> dict[str, str | None]:
        return {"period": self.period,
                "starts_at": None if self.starts_at is None else iso(self.starts_at),
                "ends_at": None if self.ends_at is None else iso(self.ends_at)}


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def zone(name: str) -> ZoneInfo:
    """The timezone ``name`` (IANA); ``ValueError`` for an unknown one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone {name!r} is not an IANA timezone name") from None


def _shifted_date(moment: datetime, tz: ZoneInfo, hour: int) -> date:
    wall = moment.astimezone(tz).replace(tzinfo=None)
    return (wall - timedelta(hours=hour)).date()


def _start_of(day: date, tz: ZoneInfo, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=tz, fold=0).astimezone(UTC)


def _first_day(window: str, day: date) -> date:
    if window == "weekly":
        return day - timedelta(days=day.weekday())
    if window == "monthly":
        return day.replace(day=1)
    return day


def _next_first_day(window: str, first: date) -> date:
    if window == "daily":
        return first + timedelta(days=1)
    if window == "weekly":
        return first + timedelta(days=7)
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def _period_id(window: str, first: date) -> str:
    if window == "daily":
        return first.isoformat()
    if window == "weekly":
        year, week, _ = first.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{first.year:04d}-{first.month:02d}"


def _calendar_period(window: str, first: date, tz: ZoneInfo, hour: int) -> Period:
    return Period(window=window, period=_period_id(window, first),
                  starts_at=_start_of(first, tz, hour),
                  ends_at=_start_of(_next_first_day(window, first), tz, hour))


def parse_first_day(window: str, period: str) -> date:
    """The first local day of a calendar period id; ``ValueError`` if malformed."""
    try:
        if window == "daily" and (m := DAILY_ID.fullmatch(period)):
            return date(int(m[1]), int(m[2]), int(m[3]))
        if window == "weekly" and (m := WEEKLY_ID.fullmatch(period)):
            return date.fromisocalendar(int(m[1]), int(m[2]), 1)
        if window == "monthly" and (m := MONTHLY_ID.fullmatch(period)):
            return date(int(m[1]), int(m[2]), 1)
    except ValueError:
        pass
    example = {"daily": "2026-12-02", "weekly": "2026-W48", "monthly": "2026-12"}[window]
    raise ValueError(f"{period!r} is not a {window} period (like {example})")


@dataclass(frozen=True)
class WindowSpec:
    """The time side of a board: its windows, timezone, turnover hour, seasons."""

    windows: tuple[str, ...] = (ALL_TIME,)
    timezone: str = "UTC"
    turnover_hour: int = 0
    seasons: tuple[Season, ...] = ()

    @property
    def tz(self) -> ZoneInfo:
        return zone(self.timezone)

    @property
    def only_all_time(self) -> bool:
        return self.windows == (ALL_TIME,)

    def period_at(self, window: str, moment: datetime) -> Period | None:
        """The period of ``window`` that contains ``moment`` (None: between seasons)."""
        if window == ALL_TIME:
            return Period(window=ALL_TIME, period=ALL_TIME_PERIOD, starts_at=None, ends_at=None)
        if window == SEASON:
            for season in self.seasons:
                if season.starts_at <= moment < season.ends_at:
                    return _season_period(season)
            return None
        first = _first_day(window, _shifted_date(moment, self.tz, self.turnover_hour))
        return _calendar_period(window, first, self.tz, self.turnover_hour)

    def period_named(self, window: str, period: str) -> Period:
        """The period ``period`` of ``window``; ``ValueError`` if there is none such."""
        if window == ALL_TIME:
            if period != ALL_TIME_PERIOD:
                raise ValueError(f"the all_time window has one period, {ALL_TIME_PERIOD!r}")
            return Period(window=ALL_TIME, period=ALL_TIME_PERIOD, starts_at=None, ends_at=None)
        if window == SEASON:
            for season in self.seasons:
                if season.name == period:
                    return _season_period(season)
            raise ValueError(f"{period!r} is not a season of this board")
        return _calendar_period(window, parse_first_day(window, period), self.tz,
                                self.turnover_hour)

    def next_reset_at(self, window: str, moment: datetime) -> datetime | None:
        """When the period after ``moment``'s starts (None: never, or no season ahead)."""
        current = self.period_at(window, moment)
        if current is not None:
            return current.ends_at
        if window == SEASON:
            ahead = [s.starts_at for s in self.seasons if s.starts_at > moment]
            return min(ahead) if ahead else None
        return None

    def previous(self, period: Period) -> Period | None:
        """The period just before ``period`` (None for all_time and the first season)."""
        if period.window == ALL_TIME or period.starts_at is None:
            return None
        if period.window == SEASON:
            earlier = [s for s in self.seasons if s.ends_at <= period.starts_at]
            return _season_period(max(earlier, key=lambda s: s.ends_at)) if earlier else None
        return self.period_at(period.window, period.starts_at - timedelta(microseconds=1))

    def closed_periods(self, window: str, *, since: datetime, until: datetime,
                       limit: int = 1000) -> list[Period]:
        """Periods of ``window`` that ended in ``(since, until]``, oldest first (at most
        ``limit``: a job that was down for long catches up over several runs)."""
        if window == ALL_TIME:
            return []
        if window == SEASON:
            return sorted((_season_period(s) for s in self.seasons
                           if since < s.ends_at <= until), key=lambda p: p.period)[:limit]
        found: list[Period] = []
        period = self.period_at(window, since)
        while period is not None and period.ends_at is not None and len(found) < limit:
            if period.ends_at > until:
                break
            if period.ends_at > since:
                found.append(period)
            period = self.period_at(window, period.ends_at)
        return found

    def open_periods(self, moment: datetime) -> list[Period]:
        """The period of each window that contains ``moment`` (the worker's fan-out)."""
        found = []
        for window in self.windows:
            period = self.period_at(window, moment)
            if period is not None:
                found.append(period)
        return found


def _season_period(season: Season) -> Period:
    return Period(window=SEASON, period=season.name, starts_at=season.starts_at,
                  ends_at=season.ends_at)


def scope(board: str, window: str, period: str) -> str:
    """The name a window's period is stored under (Redis keys, ``scores.board``,
    change notices). The all_time window is the board itself, as before windows."""
    if window == ALL_TIME:
        return board
    return SCOPE_SEPARATOR.join((board, window, period))


def split_scope(name: str) -> tuple[str, str, str]:
    """``scope``'s inverse: (board, window, period)."""
    if SCOPE_SEPARATOR not in name:
        return name, ALL_TIME, ALL_TIME_PERIOD
    board, window, period = name.split(SCOPE_SEPARATOR, 2)
    return board, window, period


def parse_windows(names: Sequence[str]) -> tuple[str, ...]:
    """Window names in their canonical order; ``ValueError`` for an unknown one."""
    unknown = [n for n in names if n not in WINDOW_NAMES]
    if unknown:
        raise ValueError(f"unknown window {unknown[0]!r} (windows: {', '.join(WINDOW_NAMES)})")
    chosen = tuple(n for n in WINDOW_NAMES if n in names)
    return chosen or (ALL_TIME,)


def parse_instant(text: str) -> datetime:
    """An ISO 8601 instant with an offset (``2026-12-01T00:00:00Z``)."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset (add Z or +HH:MM)")
    return moment.astimezone(UTC)


def parse_season(spec: str) -> Season:
    """``NAME=START/END`` (ISO 8601 instants) to a season; ``ValueError`` if not."""
    name, sep, span = spec.partition("=")
    start_text, slash, end_text = span.partition("/")
    if not sep or not slash:
        raise ValueError(f"{spec!r}: a season is NAME=START/END (ISO 8601 times)")
    if not SEASON_PATTERN.fullmatch(name):
        raise ValueError(f"{spec!r}: a season's name {SEASON_RULE}")
    starts, ends = parse_instant(start_text), parse_instant(end_text)
    if ends <= starts:
        raise ValueError(f"{spec!r}: a season ends after it starts")
    return Season(name=name, starts_at=starts, ends_at=ends)


def check_spec(windows: Sequence[str], timezone: str, turnover_hour: int,
               seasons: Sequence[Season]) -> WindowSpec:
    """A checked :class:`WindowSpec`; ``ValueError`` says what is wrong."""
    chosen = parse_windows(windows)
    zone(timezone)
    if not 0 <= turnover_hour <= 23:
        raise ValueError("the turnover hour is from 0 to 23")
    ordered = tuple(sorted(seasons, key=lambda s: s.starts_at))
    names = [s.name for s in ordered]
    if len(set(names)) != len(names):
        raise ValueError("two seasons have the same name")
    for earlier, later in itertools.pairwise(ordered):
        if later.starts_at < earlier.ends_at:
            raise ValueError(f"seasons {earlier.name!r} and {later.name!r} overlap")
    if ordered and SEASON not in chosen:
        chosen = parse_windows([*chosen, SEASON])
    if SEASON in chosen and not ordered:
        raise ValueError("the season window needs at least one season (--season)")
    return WindowSpec(windows=chosen, timezone=timezone, turnover_hour=turnover_hour,
                      seasons=ordered)


@dataclass(frozen=True)
class Target:
    """What a read or a subscription names: a board, one of its windows, a period."""

    board: str
    window: str
    period: str
    scope: str  # where it is stored (see :func:`scope`)
    closed: bool  # the period has ended: read it from Postgres, it changes no more
    bounds: Period

    def label(self, body: dict[str, object]) -> dict[str, object]:
        """A read's JSON body naming the board (not the scope), and the window and
        period when they are not all_time (bodies of all_time reads are as before)."""
        body["board"] = self.board
        if self.window != ALL_TIME:
            body["window"] = self.window
            body["period"] = self.period
        return body


class TargetError(ValueError):
    """Why a window or period cannot be read: ``code`` and ``field`` for the reply."""

    def __init__(self, code: str, field: str, detail: str) -> None:
        super().__init__(code, field, detail)
        self.code = code
        self.field = field
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


def all_time_target(board: str) -> Target:
    return Target(board=board, window=ALL_TIME, period=ALL_TIME_PERIOD, scope=board,
                  closed=False, bounds=Period(ALL_TIME, ALL_TIME_PERIOD, None, None))


def resolve_target(board: str, spec: WindowSpec, window: str, period: str | None,
                   now: datetime) -> Target:
    """The target of ``window`` (and ``period``, None: the current one) of a board
    with ``spec``; :class:`TargetError` when the board has no such window, the period
    id is malformed (``invalid_field``), or the period has not begun."""
    if window not in spec.windows:
        raise TargetError("window_not_found", "window",
                          f"board {board!r} has no {window} window (its windows: "
                          f"{', '.join(spec.windows)})")
    if period is None:
        found = spec.period_at(window, now)
        if found is None:
            raise TargetError("period_not_found", "period",
                              f"no {window} period of board {board!r} is running now")
    else:
        try:
            found = spec.period_named(window, period)
        except ValueError as exc:
            raise TargetError("invalid_field", "period", f"period: {exc}") from None
        if found.starts_at is not None and found.starts_at > now:
            raise TargetError("period_not_found", "period",
                              f"period {period!r} of board {board!r} has not begun")
    closed = found.ends_at is not None and found.ends_at <= now
    return Target(board=board, window=window, period=found.period,
                  scope=scope(board, window, found.period), closed=closed, bounds=found)
