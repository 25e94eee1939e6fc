"""The Lua GCRA (``lua/lib/gcra.lua`` through ``lua/rate_limit.lua``) agrees with
the Python reference, ``scoreboard.limits.gcra``, on a real Redis.

The script reads the clock with Redis ``TIME``, so the reference is fed Redis's
own clock read just before each call; decisions must match exactly, and the
stored state and ``retry_after`` may differ only by the few milliseconds
between the two clock reads.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from scoreboard.keys import Keys
from scoreboard.limits import Rate, ceil_to_microsecond, gcra
from scoreboard.lua import register_scripts

CLOCK_SLACK_MS = 15  # between our TIME read and the script's, on a loaded machine


def redis_now_ms(client: redis.Redis) -> int:
    reply: Any = client.time()
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


class LuaLimit:
    """One rate-limit key driven through the real script, beside its Python model."""

    def __init__(self, client: redis.Redis, key: str, rate: Rate) -> None:
        self.client = client
        self.key = key
        self.rate = rate
        self.script: Any = register_scripts(client).rate_limit
        self.model_tat: float | None = None

    def stored_tat(self) -> float | None:
        value = self.client.get(self.key)
        return None if value is None else float(str(value))

    def request(self, cost: int = 1) -> tuple[bool, int, bool, int]:
        """Run one request through both; returns (lua allowed, lua retry ms,
        model allowed, model retry ms). The model keeps its own state."""
        now = redis_now_ms(self.client)
        expected = gcra(self.model_tat, now, self.rate, cost)
        allowed, retry_ms = self.script(keys=[self.key], args=[*self.rate.as_args(), cost])
        if expected.allowed:
            self.model_tat = expected.new_tat_ms
        return bool(int(allowed)), int(retry_ms), expected.allowed, expected.retry_after_ms

    def assert_agrees(self, cost: int = 1) -> bool:
        """One request; Lua and the model must decide alike. Returns the decision."""
        before = self.stored_tat()
        lua_allowed, lua_retry, model_allowed, model_retry = self.request(cost)
        assert lua_allowed == model_allowed, (cost, lua_retry, model_retry)
        if lua_allowed:
            assert lua_retry == 0
            stored = self.stored_tat()
            assert stored is not None and self.model_tat is not None
            assert abs(stored - self.model_tat) <= CLOCK_SLACK_MS
        else:
            assert lua_retry > 0
            assert abs(lua_retry - model_retry) <= CLOCK_SLACK_MS, (lua_retry, model_retry)
            assert self.stored_tat() == before  # a refusal writes nothing
        return lua_allowed


@pytest.fixture
def limit_key(redis_client: redis.Redis, keys: Keys) -> Iterator[str]:
    key = keys.ip_rate("gcratest", secrets.token_hex(8))
    yield key
    redis_client.delete(key)


def test_burst_of_count_then_refusal_matches_python(redis_client: redis.Redis,
                                                    limit_key: str) -> None:
    limit = LuaLimit(redis_client, limit_key, Rate(5, 60))
    assert [limit.assert_agrees() for _ in range(5)] == [True] * 5
    assert limit.assert_agrees() is False
    _, retry_ms, _, model_retry = limit.request()
    assert abs(retry_ms - 12_000) <= CLOCK_SLACK_MS  # one emission interval
    assert abs(model_retry - 12_000) <= CLOCK_SLACK_MS


def test_sequence_of_costs_matches_python(redis_client: redis.Redis, limit_key: str) -> None:
    limit = LuaLimit(redis_client, limit_key, Rate(10, 60))  # 6 s per unit of cost
    decisions = [limit.assert_agrees(cost) for cost in (3, 2, 4, 2, 1, 5, 11, 1)]
    #             3 5 9 | 11 > 10 refused | 10 | then full: refused, refused, refused
    assert decisions == [True, True, True, False, True, False, False, False]
    _, retry_ms, _, _ = limit.request(4)
    assert abs(retry_ms - 4 * 6_000) <= CLOCK_SLACK_MS


def test_stored_state_is_microseconds_with_a_matching_expiry(
        redis_client: redis.Redis, limit_key: str) -> None:
    limit = LuaLimit(redis_client, limit_key, Rate(3, 1))  # 333.33... ms: rounds up
    assert limit.assert_agrees() is True
    raw = redis_client.get(limit_key)
    assert isinstance(raw, str) and re.fullmatch(r"\d+\.\d{3}", raw)  # no exponent
    now = redis_now_ms(redis_client)
    assert abs(float(raw) - (now + 333.334)) <= CLOCK_SLACK_MS
    ttl_ms: Any = redis_client.pttl(limit_key)
    assert 0 < ttl_ms <= 334  # gone once idle: a fresh burst afterwards


def test_allowed_again_after_the_emission_interval(redis_client: redis.Redis,
                                                   limit_key: str) -> None:
    limit = LuaLimit(redis_client, limit_key, Rate(4, 1))  # 250 ms per request
    assert [limit.assert_agrees() for _ in range(4)] == [True] * 4
    lua_allowed, retry_ms, model_allowed, _ = limit.request()
    assert (lua_allowed, model_allowed) == (False, False)
    assert abs(retry_ms - 250) <= CLOCK_SLACK_MS
    time.sleep((retry_ms + 2 * CLOCK_SLACK_MS) / 1000)
    assert limit.assert_agrees() is True  # exactly one more fits
    assert limit.assert_agrees() is False


def test_key_expiry_gives_a_fresh_burst(redis_client: redis.Redis, limit_key: str) -> None:
    limit = LuaLimit(redis_client, limit_key, Rate(2, 1))
    assert [limit.assert_agrees() for _ in range(3)] == [True, True, False]
    time.sleep(1.05)
    assert redis_client.exists(limit_key) == 0
    assert [limit.assert_agrees() for _ in range(3)] == [True, True, False]


def test_cost_above_count_is_always_refused(redis_client: redis.Redis, limit_key: str) -> None:
    limit = LuaLimit(redis_client, limit_key, Rate(5, 60))
    assert limit.assert_agrees(6) is False
    assert redis_client.exists(limit_key) == 0
    assert limit.assert_agrees(5) is True


def test_paced_requests_match_python_over_time(redis_client: redis.Redis,
                                               limit_key: str) -> None:
    """Requests of mixed cost at mixed gaps, compared one by one with the model.

    Where a request lands within the clock slack of its allow time the two
    clocks may fairly disagree; there the model is resynchronised from Redis
    and that one decision is not compared. Nearly all are.
    """
    rate = Rate(5, 1)  # 200 ms per unit
    limit = LuaLimit(redis_client, limit_key, rate)
    plan = [(1, 0), (2, 0), (2, 0), (1, 0), (1, 90), (1, 130), (3, 260), (1, 0), (2, 420),
            (1, 30), (5, 1_100), (1, 0), (1, 240), (2, 50), (1, 350), (4, 0)]
    compared = 0
    for cost, gap_ms in plan:
        time.sleep(gap_ms / 1000)
        if near_the_boundary(limit.model_tat, redis_now_ms(redis_client), rate, cost):
            limit.request(cost)
            limit.model_tat = limit.stored_tat()
            continue
        limit.assert_agrees(cost)
        compared += 1
    assert compared >= len(plan) - 3


def near_the_boundary(tat: float | None, now: int, rate: Rate, cost: int) -> bool:
    """Whether a request at ``now`` is within the clock slack of its allow time,
    measured from a stored ``tat`` (a request on an idle key starts from its own
    clock in both implementations, so it is never ambiguous)."""
    if tat is None or tat < now - CLOCK_SLACK_MS:
        return False
    allow_at = ceil_to_microsecond(max(tat, now) + rate.period_ms / rate.count * cost) \
        - rate.period_ms
    return abs(allow_at - now) <= CLOCK_SLACK_MS
