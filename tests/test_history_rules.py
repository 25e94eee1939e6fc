"""The pure rules of the history: as_of parsing, the checkpoint grid and
horizon, the retention cutoff. No server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from scoreboard.errors import RequestError
from scoreboard.history import (
    checkpoint_horizon,
    due_checkpoints,
    grid_floor,
    parse_as_of,
    retention_cutoff,
)
from scoreboard.settings import load_settings

NOW = datetime(2026, 12, 2, 6, 30, tzinfo=UTC)
HOUR = timedelta(hours=1)


def test_parse_as_of() -> None:
    assert parse_as_of("2026-11-30T12:00:00Z", now=NOW, earliest=None) == datetime(
        2026, 11, 30, 12, tzinfo=UTC)
    assert parse_as_of("2026-11-30T13:00:00+01:00", now=NOW, earliest=None) == datetime(
        2026, 11, 30, 12, tzinfo=UTC)
    floor = datetime(2026, 10, 1, tzinfo=UTC)
    assert parse_as_of("2026-10-01T00:00:00Z", now=NOW, earliest=floor) == floor


@pytest.mark.parametrize(("raw", "code"), [
    ("nonsense", "invalid_field"), ("2026-11-30T12:00:00", "invalid_field"),
    ("9999-12-31T23:59:59-05:00", "invalid_field"), ("2026-12-02T06:30:00.001Z",
                                                     "as_of_in_future"),
    ("2026-09-30T23:59:59Z", "as_of_before_retention")])
def test_parse_as_of_refusals(raw: str, code: str) -> None:
    with pytest.raises(RequestError) as refused:
        parse_as_of(raw, now=NOW, earliest=datetime(2026, 10, 1, tzinfo=UTC))
    assert refused.value.status == 422 and refused.value.code == code
    assert refused.value.field == "as_of"


def test_checkpoint_grid() -> None:
    assert grid_floor(datetime(2026, 11, 30, 17, 5, tzinfo=UTC), 24 * HOUR) == datetime(
        2026, 11, 30, tzinfo=UTC)
    assert grid_floor(datetime(2026, 11, 30, 17, 5, tzinfo=UTC), 6 * HOUR) == datetime(
        2026, 11, 30, 12, tzinfo=UTC)
    start = datetime(2026, 11, 29, 7, tzinfo=UTC)
    assert due_checkpoints(latest=None, start=start, horizon=NOW, interval=24 * HOUR,
                           limit=10) == [datetime(2026, 11, d, tzinfo=UTC) for d in (29, 30)] \
        + [datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 2, tzinfo=UTC)]
    assert due_checkpoints(latest=datetime(2026, 12, 1, tzinfo=UTC), start=start, horizon=NOW,
                           interval=24 * HOUR, limit=10) == [datetime(2026, 12, 2, tzinfo=UTC)]
    # a checkpoint off the grid (retention's, at a month's start) is continued on the grid
    assert due_checkpoints(latest=datetime(2026, 12, 1, 3, tzinfo=UTC), start=start,
                           horizon=NOW, interval=6 * HOUR, limit=2) == [
        datetime(2026, 12, 1, 6, tzinfo=UTC), datetime(2026, 12, 1, 12, tzinfo=UTC)]
    assert due_checkpoints(latest=None, start=start, horizon=start - HOUR, interval=HOUR,
                           limit=10) == []


def test_checkpoint_horizon() -> None:
    lag = timedelta(minutes=5)
    assert checkpoint_horizon(now=NOW, acknowledged_before_ms=None, lag=lag) == NOW - lag
    pending_ms = int((NOW - HOUR).timestamp() * 1000)
    assert checkpoint_horizon(now=NOW, acknowledged_before_ms=pending_ms, lag=lag) == \
        NOW - HOUR - lag


def test_retention_cutoff() -> None:
    assert retention_cutoff(NOW, 0) is None
    assert retention_cutoff(NOW, 1) == datetime(2026, 11, 1, tzinfo=UTC)
    assert retention_cutoff(NOW, 12) == datetime(2025, 12, 1, tzinfo=UTC)
    assert retention_cutoff(datetime(2027, 1, 15, tzinfo=UTC), 1) == datetime(
        2026, 12, 1, tzinfo=UTC)


@pytest.mark.parametrize("name", ["RETENTION_MONTHS", "HISTORY_CHECKPOINT_LAG_S"])
def test_negative_history_settings_are_refused(name: str) -> None:
    with pytest.raises(Exception, match=name):
        load_settings({name: "-1"})
    load_settings({name: "0"})


def test_checkpoint_hours_must_be_positive() -> None:
    with pytest.raises(Exception, match="HISTORY_CHECKPOINT_HOURS"):
        load_settings({"HISTORY_CHECKPOINT_HOURS": "0"})
