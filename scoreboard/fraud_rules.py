"""The fraud rules' arithmetic, as pure functions (docs/fraud.md has the rules).

Where each rule runs: rapid actions and token manipulation inline in the Lua
scripts (counters in Redis, decided atomically with the request); rate-limit
hammering in one extra script call on ingest's 429 path; unusual time, points
per action, cadence regularity and farms per batch in the worker; score
velocity as an hourly arq job over Postgres. This module holds the parts that
are plain arithmetic, so each is unit-tested without a server.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
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


def interval_cv(times_ms: Sequence[int]) -> float | None:
    """Coefficient of variation (population standard deviation over the mean) of
    the gaps between consecutive ``times_ms`` (ascending); None when there are
    fewer than two gaps or they average zero."""
    gaps = [later - earlier for earlier, later in itertools.pairwise(times_ms)]
    if len(gaps) < 2:
        return None
    mean = sum(gaps) / len(gaps)
    if mean <= 0:
        return None
    variance = sum((g - mean) ** 2 for g in gaps) / len(gaps)
    return math.sqrt(variance) / mean


def lattice_cv(times_ms: Sequence[int], *, max_multiple: int) -> float | None:
    """The CV of the gaps between consecutive ``times_ms`` once each gap is divided
    by the whole number of periods it spans, the period being the shortest gap:
    a timer that ticks every p seconds, some of whose ticks the rate limiter
    refused, has accepts at gaps of p and 2p (CV 0.3 as plain gaps) that are all
    one period here. With every gap under 1.5 times the shortest (a steady
    human's 13-15 s), it is :func:`interval_cv` itself. None when a gap spans more
    than ``max_multiple`` periods (a pause is not a missed tick), when there are
    fewer than two gaps, or when the shortest gap is zero."""
    gaps = [later - earlier for earlier, later in itertools.pairwise(times_ms)]
    if len(gaps) < 2:
        return None
    shortest = min(gaps)
    if shortest <= 0:
        return None
    multiples = [max(1, round(gap / shortest)) for gap in gaps]
    if max(multiples) > max_multiple:
        return None
    periods = [gap / n for gap, n in zip(gaps, multiples, strict=True)]
    mean = sum(periods) / len(periods)
    variance = sum((p - mean) ** 2 for p in periods) / len(periods)
    return math.sqrt(variance) / mean


def regular_cadence(times_ms: Sequence[int], *, actions: int, window_ms: int,
                    max_cv: float, max_multiple: int = 1) -> float | None:
    """The cadence-regularity rule: the CV of the gaps between the user's last
    ``actions`` accepted actions (``times_ms`` ascending, possibly more), when it
    is below ``max_cv``; None when the rule does not fire. With ``max_multiple``
    above 1 the gaps are first reduced to whole periods (:func:`lattice_cv`), so a
    timer whose ticks the limiter sometimes refuses is still a timer.

    It only judges ``actions`` actions that all fall within ``window_ms`` of the
    newest, so a player who comes back at the same time every day is not "regular".
    """
    if actions < 3 or len(times_ms) < actions:
        return None
    last = list(times_ms[-actions:])
    if last[-1] - last[0] > window_ms:
        return None
    cv = lattice_cv(last, max_multiple=max(1, max_multiple))
    return cv if cv is not None and cv < max_cv else None


def top_action_run(run: int, *, threshold: int) -> int | None:
    """The top-action rule: ``run`` accepts in a row, each worth its board's most
    points (on a board with more than one price), flag the user once ``run``
    reaches ``threshold``; None when it does not fire. A slow bot's tell within an
    hour: a human takes the jackpot when the game gives it (2% of the simulator's
    honest actions; 30 in a row at 2% is about 1e-51, and even a player who gets
    the top action half the time makes 30 in a row about once in a billion
    attempts), a bot claims it every time."""
    if threshold <= 0 or run < threshold:
        return None
    return run


def farm_accounts(last_seen_ms: Mapping[str, int], counts: Mapping[str, int], *, now_ms: int,
                  window_ms: int, min_accounts: int, busy_actions: int,
                  busy_share: float) -> list[str]:
    """The farm rule, judged by what an address's accounts do, not how many there
    are: of the accounts seen accepted from one address within ``window_ms``
    before ``now_ms`` (``last_seen_ms``: account -> its latest accept there), the
    busy ones (``counts``: at least ``busy_actions`` accepts in the current
    window, a pace a person keeps up for minutes, not for hours) when there are
    at least ``min_accounts`` of them AND they make at least ``busy_share`` of the
    address's active accounts. A campus or carrier NAT mixes every kind of player,
    so its busy share stays low; a farm's accounts are all busy. Returns the busy
    accounts (sorted), else an empty list."""
    if min_accounts <= 0:
        return []
    recent = [user for user, seen in last_seen_ms.items() if seen > now_ms - window_ms]
    busy = sorted(user for user in recent if counts.get(user, 0) >= busy_actions)
    if len(busy) < min_accounts or len(busy) < busy_share * len(recent):
        return []
    return busy


def tireless(hours: Sequence[int], *, span: int, threshold: int) -> int | None:
    """The tireless rule: the number of distinct hours with an accept among the
    last ``span`` hours before the newest of ``hours``, when it reaches
    ``threshold``; None when the rule does not fire. People sleep: a bot at a
    human pace does not (the slow cheater's tell, whatever its jitter)."""
    if threshold <= 0 or not hours:
        return None
    newest = max(hours)
    active = len({hour for hour in hours if hour > newest - span})
    return active if active >= threshold else None


# The automatic ladder: rung -> restriction. A rule that fires makes an offence;
# offences of the offence window climb it one rung each.
LADDER = ("flagged", "banned", "banned")


def ladder_step(prior_offences: int, *, flag_s: int,
                temp_ban_s: int) -> tuple[str, int, int | None]:
    """What a new offence does, given the user's ``prior_offences`` still counted
    (within the offence window, not undone on appeal): (kind, rung from 1, duration
    in seconds or None for good). First a flag, then a temporary ban, then a ban."""
    rung = min(prior_offences + 1, len(LADDER))
    kind = LADDER[rung - 1]
    duration = flag_s if rung == 1 else temp_ban_s if rung == 2 else None
    return kind, rung, duration
