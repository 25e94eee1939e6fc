"""Unit tests of the GCRA limits (scoreboard/limits.py): no servers.

Times are explicit arguments, so long runs of arrivals are simulated without
waiting, and every case is deterministic.
"""

from __future__ import annotations

import bisect
import random

import pytest

from scoreboard.limits import Rate, gcra, retry_after_seconds


@pytest.mark.parametrize(("text", "expected"), [
    ("5/60", Rate(5, 60)),
    ("1/1", Rate(1, 1)),
    ("600000/60", Rate(600_000, 60)),
    (" 3 / 10 ", Rate(3, 10)),
])
def test_rate_parse_accepts_count_per_seconds(text: str, expected: Rate) -> None:
    rate = Rate.parse(text)
    assert rate == expected
    assert rate.as_args() == (expected.count, expected.period_s * 1000)


@pytest.mark.parametrize("text", ["", "5", "5/", "/60", "five/60", "5/sixty", "5.5/60",
                                  "5/60/2", "0/60", "5/0", "-5/60", "5/-60"])
def test_rate_parse_refuses_bad_input(text: str) -> None:
    with pytest.raises(ValueError, match="COUNT/SECONDS"):
        Rate.parse(text)


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Rate(0, 60)
    with pytest.raises(ValueError):
        Rate(5, 0)


def test_gcra_allows_a_burst_of_count_then_refuses_with_the_interval_as_retry() -> None:
    rate, now = Rate(5, 60), 1_000_000
    tat: float | None = None
    for n in range(5):
        decision = gcra(tat, now, rate)
        assert decision.allowed, n
        assert decision.retry_after_ms == 0
        tat = decision.new_tat_ms
    assert tat == now + 60_000
    refused = gcra(tat, now, rate)
    assert not refused.allowed
    assert refused.retry_after_ms == 12_000  # one emission interval, 60 s / 5
    assert refused.new_tat_ms == tat  # nothing to store
    later = gcra(tat, now + 11_999, rate)
    assert not later.allowed and later.retry_after_ms == 1


def test_gcra_allows_again_after_one_emission_interval() -> None:
    rate, now = Rate(5, 60), 0
    tat: float | None = None
    for _ in range(5):
        tat = gcra(tat, now, rate).new_tat_ms
    retry = gcra(tat, now, rate).retry_after_ms
    again = gcra(tat, now + retry, rate)
    assert again.allowed
    assert tat == 60_000 and retry == 12_000
    assert again.new_tat_ms == 72_000
    # exactly one fits: the next one waits a whole interval again
    assert gcra(again.new_tat_ms, now + retry, rate).retry_after_ms == 12_000


def test_gcra_idle_key_starts_from_now() -> None:
    rate = Rate(5, 60)
    stale = gcra(1_000, 500_000, rate)
    assert stale.allowed and stale.new_tat_ms == 500_000 + 12_000


def test_gcra_cost_counts_as_several_requests() -> None:
    rate, now = Rate(10, 10), 0
    first = gcra(None, now, rate, cost=4)
    assert first.allowed and first.new_tat_ms == 4_000
    second = gcra(first.new_tat_ms, now, rate, cost=6)
    assert second.allowed and second.new_tat_ms == 10_000
    refused = gcra(second.new_tat_ms, now, rate, cost=3)
    assert not refused.allowed
    assert refused.retry_after_ms == 3_000  # three intervals of 1 s
    assert gcra(second.new_tat_ms, now + 3_000, rate, cost=3).allowed


def test_gcra_cost_above_count_never_passes() -> None:
    rate = Rate(5, 60)
    assert not gcra(None, 0, rate, cost=6).allowed
    assert not gcra(None, 10**9, rate, cost=6).allowed


def test_gcra_rounds_the_new_tat_up_to_the_microsecond() -> None:
    rate = Rate(3, 1)  # interval 333.33... ms
    decision = gcra(None, 0, rate)
    assert decision.new_tat_ms == 333.334


def test_gcra_holds_rates_above_a_thousand_a_second() -> None:
    """Whole-millisecond state would cap every key at 1,000 a second."""
    rate = Rate(600_000, 60)  # 10,000 a second
    tat: float | None = None
    accepted = 0
    for now in range(0, 10_000):  # ten requests each millisecond for 10 s
        for _ in range(10):
            decision = gcra(tat, now, rate)
            if decision.allowed:
                tat, accepted = decision.new_tat_ms, accepted + 1
    # all 100,000 fit in the burst of 600,000; milliseconds rounded up would let
    # through 60,000 at once and then one a millisecond: about 70,000
    assert accepted == 100_000


def max_in_any_window(accepted_ms: list[int], window_ms: int) -> int:
    """The most accepted requests in any half-open window ``[t, t + window_ms)``."""
    return max(bisect.bisect_left(accepted_ms, t + window_ms) - i
               for i, t in enumerate(accepted_ms))


def simulate(rate: Rate, arrivals_ms: list[int]) -> list[int]:
    tat: float | None = None
    accepted = []
    for now in arrivals_ms:
        decision = gcra(tat, now, rate)
        if decision.allowed:
            tat = decision.new_tat_ms
            accepted.append(now)
    return accepted


@pytest.mark.parametrize("rate", [Rate(5, 60), Rate(7, 60), Rate(1, 60), Rate(60, 60)],
                         ids=str)
def test_gcra_never_lets_more_than_twice_the_count_minus_one_through_any_period(
        rate: Rate) -> None:
    period = rate.period_ms
    greedy = list(range(0, 20 * period, 50))  # a client asking every 50 ms
    rng = random.Random(1234)
    bursty: list[int] = []
    t = 0
    while t < 20 * period:
        # quiet spells, then bursts of back-to-back requests
        t += rng.choice([1, 1, 1, 5, 200, 3_000, period // 2])
        bursty.append(t)
    for arrivals in (greedy, bursty):
        accepted = simulate(rate, arrivals)
        assert max_in_any_window(accepted, period) <= 2 * rate.count - 1
    # the bound is reached: a full burst right after the previous one's refill
    assert max_in_any_window(simulate(rate, greedy), period) == 2 * rate.count - 1


@pytest.mark.parametrize("rate", [Rate(5, 60), Rate(7, 60), Rate(100, 60)], ids=str)
def test_gcra_long_run_rate_converges_to_count_per_period(rate: Rate) -> None:
    duration_ms = 3600 * 1000
    accepted = simulate(rate, list(range(0, duration_ms, 10)))
    expected = duration_ms * rate.count / rate.period_ms
    assert expected <= len(accepted) <= expected + rate.count
    # past the first burst, the rate is count/period (rounding up the tat costs < 1 ms each)
    steady = [t for t in accepted if t >= rate.period_ms]
    steady_rate = len(steady) / (duration_ms - rate.period_ms) * rate.period_ms
    assert steady_rate == pytest.approx(rate.count, rel=0.005)


@pytest.mark.parametrize(("ms", "seconds"), [(0, 1), (1, 1), (999, 1), (1000, 1),
                                             (1001, 2), (12_000, 12), (59_999, 60)])
def test_retry_after_seconds_rounds_up_to_at_least_one(ms: int, seconds: int) -> None:
    assert retry_after_seconds(ms) == seconds
