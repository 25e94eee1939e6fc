"""Period math (scoreboard/windows.py): ids, bounds, next reset, DST, boundaries.

Pure: no server.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from scoreboard.windows import (
    Period,
    Season,
    WindowSpec,
    check_spec,
    parse_season,
    scope,
    split_scope,
)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def at(spec: WindowSpec, window: str, moment: datetime) -> Period:
    found = spec.period_at(window, moment)
    assert found is not None
    return found


BERLIN = WindowSpec(windows=("all_time", "daily", "weekly", "monthly"), timezone="Europe/Berlin")


def test_period_ids_in_the_boards_timezone() -> None:
    moment = utc("2026-11-30T22:59:59")  # 23:59:59 in Berlin (CET), a Monday
    assert at(BERLIN, "daily", moment).period == "2026-11-30"
    assert at(BERLIN, "weekly", moment).period == "2026-W49"
    assert at(BERLIN, "monthly", moment).period == "2026-11"
    after = moment + timedelta(seconds=1)  # midnight in Berlin
    assert at(BERLIN, "daily", after).period == "2026-12-01"
    assert at(BERLIN, "monthly", after).period == "2026-12"
    assert at(BERLIN, "all_time", after).period == "all"


def test_bounds_and_next_reset() -> None:
    week = BERLIN.period_named("weekly", "2026-W48")
    assert week.starts_at == utc("2026-11-22T23:00:00")  # Monday 23 Nov 00:00 CET
    assert week.ends_at == utc("2026-11-29T23:00:00")
    assert BERLIN.next_reset_at("daily", utc("2026-12-02T10:00:00")) == utc("2026-12-02T23:00:00")
    assert BERLIN.next_reset_at("all_time", utc("2026-12-02T10:00:00")) is None
    december = BERLIN.period_named("monthly", "2026-12")
    assert december.ends_at == utc("2026-12-31T23:00:00")
    previous = BERLIN.previous(december)
    assert previous is not None and previous.period == "2026-11"


def test_iso_weeks_across_the_year() -> None:
    utc_board = WindowSpec(windows=("weekly",))
    assert at(utc_board, "weekly", utc("2026-12-31T12:00:00")).period == "2026-W53"
    assert at(utc_board, "weekly", utc("2027-01-04T00:00:00")).period == "2027-W01"
    assert at(utc_board, "weekly", utc("2025-12-29T00:00:00")).period == "2026-W01"


def test_turnover_hour() -> None:
    board = WindowSpec(windows=("daily",), timezone="America/New_York", turnover_hour=6)
    # 05:59 EST on 2 Dec is still 1 Dec's period; 06:00 starts 2 Dec's.
    assert at(board, "daily", utc("2026-12-02T10:59:59")).period == "2026-12-01"
    assert at(board, "daily", utc("2026-12-02T11:00:00")).period == "2026-12-02"
    assert board.period_named("daily", "2026-12-02").starts_at == utc("2026-12-02T11:00:00")


@pytest.mark.parametrize("timezone", ["Europe/Berlin", "America/New_York", "Australia/Sydney",
                                      "Asia/Kolkata", "UTC"])
@pytest.mark.parametrize("hour", [0, 1, 2, 3, 23])
@pytest.mark.parametrize("around", ["2026-03-08", "2026-03-29", "2026-04-05", "2026-10-04",
                                    "2026-10-25", "2026-11-01"])
def test_every_instant_is_inside_its_period_across_dst(timezone: str, hour: int,
                                                       around: str) -> None:
    """Around each DST change (both directions, both hemispheres), every instant
    (every 10 minutes over three days) lies within the bounds of its period, and
    periods follow each other without a gap."""
    board = WindowSpec(windows=("daily", "weekly", "monthly"), timezone=timezone,
                       turnover_hour=hour)
    start = utc(f"{around}T00:00:00") - timedelta(days=1)
    for window in ("daily", "weekly", "monthly"):
        moment = start
        while moment < start + timedelta(days=3):
            period = board.period_at(window, moment)
            assert period is not None and period.contains(moment), (window, moment, period)
            assert board.period_named(window, period.period) == period
            assert period.ends_at is not None
            following = board.period_at(window, period.ends_at)
            assert following is not None and following.starts_at == period.ends_at
            moment += timedelta(minutes=10)


def test_a_dst_day_is_23_or_25_hours() -> None:
    board = WindowSpec(windows=("daily",), timezone="Europe/Berlin")
    spring = board.period_named("daily", "2026-03-29")
    autumn = board.period_named("daily", "2026-10-25")
    assert spring.ends_at and spring.starts_at and autumn.ends_at and autumn.starts_at
    assert spring.ends_at - spring.starts_at == timedelta(hours=23)
    assert autumn.ends_at - autumn.starts_at == timedelta(hours=25)


def test_seasons() -> None:
    spec = check_spec(["all_time"], "UTC", 0, [
        parse_season("s2=2026-12-01T00:00:00Z/2027-03-01T00:00:00Z"),
        parse_season("s1=2026-09-01T00:00:00Z/2026-12-01T00:00:00Z")])
    assert spec.windows == ("all_time", "season")
    assert [s.name for s in spec.seasons] == ["s1", "s2"]
    assert at(spec, "season", utc("2026-11-30T23:59:59")).period == "s1"
    assert at(spec, "season", utc("2026-12-01T00:00:00")).period == "s2"
    assert spec.period_at("season", utc("2027-03-01T00:00:00")) is None
    assert spec.next_reset_at("season", utc("2026-08-01T00:00:00")) == utc("2026-09-01T00:00:00")
    first = spec.previous(spec.period_named("season", "s2"))
    assert first is not None and first.period == "s1"
    closed = spec.closed_periods("season", since=utc("2026-01-01T00:00:00"),
                                 until=utc("2027-06-01T00:00:00"))
    assert [p.period for p in closed] == ["s1", "s2"]


def test_closed_periods_between_two_instants() -> None:
    board = WindowSpec(windows=("daily",))
    closed = board.closed_periods("daily", since=utc("2026-12-01T12:00:00"),
                                  until=utc("2026-12-04T00:00:00"))
    assert [p.period for p in closed] == ["2026-12-01", "2026-12-02", "2026-12-03"]


@pytest.mark.parametrize(("windows", "timezone", "hour", "seasons", "message"), [
    (["hourly"], "UTC", 0, [], "unknown window"),
    (["daily"], "Mars/Olympus", 0, [], "IANA"),
    (["daily"], "UTC", 24, [], "turnover hour"),
    (["season"], "UTC", 0, [], "at least one season"),
    (["all_time"], "UTC", 0, ["a=2026-01-01T00:00:00Z/2026-03-01T00:00:00Z",
                              "b=2026-02-01T00:00:00Z/2026-04-01T00:00:00Z"], "overlap"),
])
def test_refused_specs(windows: list[str], timezone: str, hour: int, seasons: list[str],
                       message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_spec(windows, timezone, hour, [parse_season(s) for s in seasons])


@pytest.mark.parametrize("spec", ["s1", "s1=2026-01-01", "S1=2026-01-01T00:00Z/2026-02-01T00:00Z",
                                  "s1=2026-02-01T00:00:00Z/2026-01-01T00:00:00Z",
                                  "s1=2026-01-01T00:00:00/2026-02-01T00:00:00Z"])
def test_refused_seasons(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_season(spec)


@pytest.mark.parametrize(("window", "period"), [("daily", "2026-13-01"), ("weekly", "2026-W54"),
                                                ("weekly", "2026-48"), ("monthly", "2026-1"),
                                                ("all_time", "2026"), ("season", "nope")])
def test_refused_period_ids(window: str, period: str) -> None:
    spec = WindowSpec(windows=("all_time", "daily", "weekly", "monthly", "season"),
                      seasons=(Season("s1", utc("2026-01-01T00:00:00"),
                                      utc("2026-02-01T00:00:00")),))
    with pytest.raises(ValueError):
        spec.period_named(window, period)


def test_scope_names() -> None:
    assert scope("arena", "all_time", "all") == "arena"
    assert scope("arena", "weekly", "2026-W48") == "arena/weekly/2026-W48"
    assert split_scope("arena/weekly/2026-W48") == ("arena", "weekly", "2026-W48")
    assert split_scope("arena:x") == ("arena:x", "all_time", "all")
