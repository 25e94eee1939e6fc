"""Unit tests of the fraud rules' arithmetic (scoreboard/fraud_rules.py): no servers."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from scoreboard.errors import ConfigError
from scoreboard.fraud_rules import (
    farm_accounts,
    interval_cv,
    is_night,
    ladder_step,
    lattice_cv,
    over_board_max,
    regular_cadence,
    tireless,
    top_action_run,
    velocity_zscore,
)
from scoreboard.settings import load_settings


def ms(year: int, month: int, day: int, hour: int, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


# ------------------------------------------------------------------------- existing rules


def test_is_night_is_the_half_open_local_interval() -> None:
    def night(ts_ms: int, timezone: str = "UTC") -> bool:
        return is_night(ts_ms, timezone=timezone, start_hour=2, end_hour=5)

    assert not night(ms(2026, 11, 20, 1, 59))
    assert night(ms(2026, 11, 20, 2, 0))
    assert night(ms(2026, 11, 20, 4, 59))
    assert not night(ms(2026, 11, 20, 5, 0))
    assert night(ms(2026, 11, 19, 18), "Asia/Tokyo")  # 03:00 in Tokyo


def test_velocity_zscore_needs_history_and_floors_the_spread() -> None:
    assert velocity_zscore([10] * 5, 100, min_history=6) is None
    assert velocity_zscore([10] * 6, 14, min_history=6) == 4.0  # flat history: spread 1
    assert velocity_zscore([8, 12] * 3, 12, min_history=6) == pytest.approx(1.0)


def test_over_board_max() -> None:
    assert over_board_max(51, 50) and not over_board_max(50, 50)
    assert not over_board_max(10**6, None)


# ------------------------------------------------------------------------- cadence regularity


def test_interval_cv() -> None:
    assert interval_cv([0, 1000]) is None  # one gap: nothing to compare
    assert interval_cv([5, 5, 5]) is None  # gaps average zero
    assert interval_cv([0, 1000, 2000, 3000]) == 0.0
    # gaps 1000 and 3000: mean 2000, population std 1000
    assert interval_cv([0, 1000, 4000]) == pytest.approx(0.5)


def test_a_script_on_a_fixed_cadence_is_regular() -> None:
    times = [i * 12_000 + random.Random(i).randint(0, 15) for i in range(8)]  # ms of latency
    cv = regular_cadence(times, actions=8, window_ms=900_000, max_cv=0.003)
    assert cv is not None and cv < 0.002


def test_a_steady_human_grinder_is_not_regular() -> None:
    """Gaps of 13 to 15 s: the honest pattern closest to a script (see docs/fraud.md
    for the false-positive estimate behind the default threshold)."""
    rng = random.Random(7)
    flagged = 0
    for _ in range(2000):
        times = [0]
        for _ in range(7):
            times.append(times[-1] + rng.randint(13_000, 15_000))
        flagged += regular_cadence(times, actions=8, window_ms=900_000, max_cv=0.003) is not None
    assert flagged == 0


def test_cadence_needs_enough_actions_within_the_window() -> None:
    regular = [i * 10_000 for i in range(8)]
    assert regular_cadence(regular[:7], actions=8, window_ms=900_000, max_cv=0.003) is None
    assert regular_cadence(regular, actions=8, window_ms=69_999, max_cv=0.003) is None
    assert regular_cadence(regular, actions=8, window_ms=70_000, max_cv=0.003) == 0.0


def test_cadence_judges_only_the_last_actions() -> None:
    irregular_then_regular = [0, 1_000, 30_000] + [40_000 + i * 10_000 for i in range(8)]
    assert regular_cadence(irregular_then_regular, actions=8, window_ms=900_000,
                           max_cv=0.003) == 0.0
    assert regular_cadence(irregular_then_regular, actions=10, window_ms=900_000,
                           max_cv=0.003) is None


def test_a_daily_habit_is_not_a_cadence() -> None:
    """The same minute every day is regular, but spans far more than the window."""
    day = 86_400_000
    times = [i * day + 8 * 3_600_000 for i in range(8)]
    assert regular_cadence(times, actions=8, window_ms=900_000, max_cv=0.003) is None


def test_lattice_cv_sees_a_timer_through_the_ticks_the_limiter_refused() -> None:
    # a timer every 10 s (a few ms of latency), ticks 3 and 6 refused
    ticks = [0, 1, 2, 4, 5, 7, 8, 9]
    times = [t * 10_000 + (t * 7) % 5 for t in ticks]
    assert (interval_cv(times) or 0.0) > 0.2  # plain gaps: irregular
    assert lattice_cv(times, max_multiple=3) is not None
    assert (lattice_cv(times, max_multiple=3) or 1.0) < 0.001
    assert regular_cadence(times, actions=8, window_ms=900_000, max_cv=0.003) is None
    assert regular_cadence(times, actions=8, window_ms=900_000, max_cv=0.003,
                           max_multiple=3) is not None
    # a gap of four periods is a pause, not missed ticks
    paused = [t * 10_000 for t in (0, 1, 2, 6, 7, 8, 9, 10)]
    assert lattice_cv(paused, max_multiple=3) is None
    assert lattice_cv([0, 5, 5, 9], max_multiple=3) is None  # a zero gap
    assert lattice_cv([0, 1000], max_multiple=3) is None  # one gap


def test_lattice_cv_is_the_plain_cv_for_a_steady_human() -> None:
    rng = random.Random(14)
    for _ in range(200):
        times = [0]
        for _ in range(7):
            times.append(times[-1] + rng.randint(13_000, 15_000))
        assert lattice_cv(times, max_multiple=3) == pytest.approx(interval_cv(times))


def test_a_casual_player_is_not_a_lattice() -> None:
    """Gaps of 20-60 s can span up to three "periods" of the shortest: 20,000
    windows of them, none near the threshold (a Monte Carlo of 20 million found
    the lowest at 0.0079, where the threshold is 0.003)."""
    rng = random.Random(3)
    lowest = 1.0
    for _ in range(20_000):
        times = [0]
        for _ in range(7):
            times.append(times[-1] + rng.randint(20_000, 60_000))
        cv = lattice_cv(times, max_multiple=3)
        lowest = min(lowest, 1.0 if cv is None else cv)
    assert lowest > 0.003


def test_top_action_run() -> None:
    assert top_action_run(29, threshold=30) is None
    assert top_action_run(30, threshold=30) == 30
    assert top_action_run(500, threshold=0) is None  # off


# ------------------------------------------------------------------------- farms


def farm(seen: dict[str, int], counts: dict[str, int], now: int, *,
         min_accounts: int = 5) -> list[str]:
    """The farm rule at its defaults (10-minute window, 30 accepts, 80%)."""
    return farm_accounts(seen, counts, now_ms=now, window_ms=600_000, min_accounts=min_accounts,
                         busy_actions=30, busy_share=0.8)


def test_farm_is_five_busy_accounts_making_most_of_the_address() -> None:
    now = 1_000_000
    seen = {f"u{i}": now - i * 1000 for i in range(5)}
    busy = dict.fromkeys(seen, 40)
    assert farm(seen, busy, now) == ["u0", "u1", "u2", "u3", "u4"]
    assert farm(seen, busy, now, min_accounts=6) == []


def test_a_campus_of_many_accounts_is_not_a_farm_by_its_count() -> None:
    """500 accounts on one address, a fifth of them at a grinder's pace: not a farm."""
    now = 1_000_000
    seen = {f"u{i}": now - i for i in range(500)}
    counts = {f"u{i}": (40 if i % 5 == 0 else 12) for i in range(500)}
    assert farm(seen, counts, now) == []
    # the same address where nearly every account keeps a machine's pace is one
    counts = {f"u{i}": (40 if i % 10 else 12) for i in range(500)}
    assert len(farm(seen, counts, now)) == 450


def test_a_household_of_casual_players_is_not_a_farm() -> None:
    now = 1_000_000
    seen = {f"u{i}": now - i for i in range(6)}
    assert farm(seen, dict.fromkeys(seen, 15), now) == []


def test_farm_accounts_forgets_accounts_outside_the_window() -> None:
    now, window = 1_000_000, 600_000
    seen = {"a": now, "b": now - 100, "c": now - 599_999, "d": now - window, "e": 0}
    busy = dict.fromkeys(seen, 40)
    assert farm(seen, busy, now, min_accounts=3) == ["a", "b", "c"]
    assert farm(seen, busy, now, min_accounts=4) == []


def test_farm_rule_off_at_zero() -> None:
    assert farm({"a": 1}, {"a": 99}, 1, min_accounts=0) == []


# ------------------------------------------------------------------------- the ladder


def test_the_ladder_flags_then_bans_for_a_while_then_bans() -> None:
    rungs = [ladder_step(n, flag_s=3600, temp_ban_s=86400) for n in range(5)]
    assert rungs == [("flagged", 1, 3600), ("banned", 2, 86400), ("banned", 3, None),
                     ("banned", 3, None), ("banned", 3, None)]


# ------------------------------------------------------------------------- settings


def test_new_rule_settings_parse_and_can_be_turned_off() -> None:
    settings = load_settings({"RATE_REFUSALS_TO_FLAG": "0", "CADENCE_ACTIONS": "0",
                              "FARM_MIN_ACCOUNTS": "0", "CADENCE_MAX_CV": "0.01"})
    assert (settings.rate_refusals_to_flag, settings.cadence_actions,
            settings.farm_min_accounts, settings.cadence_max_cv) == (0, 0, 0, 0.01)
    defaults = load_settings({})
    assert (defaults.rate_refusals_to_flag, defaults.rate_refusal_window_s,
            defaults.cadence_actions, defaults.cadence_max_cv, defaults.cadence_window_s,
            defaults.farm_min_accounts, defaults.farm_window_s) == (20, 60, 8, 0.003, 900, 5, 600)


@pytest.mark.parametrize("env", [{"CADENCE_ACTIONS": "2"}, {"FARM_MIN_ACCOUNTS": "-1"},
                                 {"FARM_BUSY_SHARE": "0"}, {"FARM_BUSY_SHARE": "1.5"},
                                 {"TIRELESS_HOURS": "25"}, {"TIRELESS_HOURS": "-1"},
                                 {"TEMP_BAN_S": "0"}, {"OFFENCE_WINDOW_S": "0"},
                                 {"CADENCE_WINDOW_S": "0"}, {"RATE_REFUSAL_WINDOW_S": "0"}])
def test_new_rule_settings_refuse_nonsense(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_settings(env)


def test_tireless_counts_distinct_hours_of_the_last_day() -> None:
    assert tireless(list(range(100, 118)), span=24, threshold=18) == 18
    assert tireless(list(range(100, 117)), span=24, threshold=18) is None
    # hours older than the span before the newest do not count
    assert tireless([*range(70, 80), *range(100, 110)], span=24, threshold=18) is None
    assert tireless([1, 1, 1], span=24, threshold=0) is None
