"""The fraud rules' arithmetic, as pure functions (docs/fraud.md has the rules).

Where each rule runs: rapid actions and token manipulation inline in the Lua
scripts (counters in Redis, decided atomically with the request); unusual
time and points per action per batch in the worker; score velocity as an
hourly arq job over Postgres. This module holds the parts that are plain
arithmetic, so each is unit-tested without a server.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

SEVERITIES = ("low", "medium", "high", "critical")


def is_night(ts_ms: int, *, timezone: str, start_hour: int, end_hour: int) -> bool:
    """True when the action's local time falls in [start_hour, end_hour)."""
    local = datetime.fromtimestamp(ts_ms / 1000, UTC).astimezone(ZoneInfo(timezone))
    return start_hour <= local.hour < end_hour


def velocity_zscore(history: Sequence[int], current: int, *, min_history: int) -> float | None:
    """How many standard deviations ``current`` (points this hour) is above the
    user's own hourly history; None when the history is too short to judge.

    A flat history (every hour the same) gets a floor of one point of spread,
    so a steady player who doubles up once is not infinitely anomalous.
    """
    if len(history) < min_history:
        return None
    mean = sum(history) / len(history)
    variance = sum((h - mean) ** 2 for h in history) / len(history)
    spread = max(math.sqrt(variance), 1.0)
    return (current - mean) / spread


def over_board_max(points: int, board_max: int | None) -> bool:
    return board_max is not None and points > board_max
