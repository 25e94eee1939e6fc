"""The Lua GCRA (``lua/lib/gcra.lua`` through ``lua/rate_limit.lua``) agrees with
the Python reference, ``scoreboard.limits.gcra``, on a real Redis.

The script reads the clock with Redis ``TIME``. So each call is bracketed by
two reads of that clock, one just before and one just after: the script's
``now`` lies between them, and the reference is evaluated at both ends. Where
both ends decide alike, the script must decide the same, its ``retry_after``
must lie between the two ends' and its stored state between theirs; where
they differ (the allow time fell inside the bracket) the decision is not
compared. No bound depends on how fast the machine is.
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
from scoreboard.limits import Rate, gcra
from scoreboard.lua import register_scripts

ROUNDING_MS = 0.001  # Lua and Python may round a microsecond apart


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
        self.script: Any = register_scripts(client).rate_limit.script  # the raw, sync Script
        self.model_tat: float | None = None
        self.first_ms: int | None = None  # Redis's clock before the first request
        self.compared = 0
        self.ambiguous = 0

    def stored_tat(self) -> float | None:
        value = self.client.get(self.key)
        return None if value is None else float(str(value))

    def elapsed_ms(self) -> int:
        """Redis's clock now, less its reading before the first request."""
        assert self.first_ms is not None
        return redis_now_ms(self.client) - self.first_ms

    def request(self, cost: int = 1) -> tuple[bool, int]:
        """One request through the script, checked against the model at both ends
        of its clock bracket; returns the script's (allowed, retry ms)."""
        before = self.stored_tat()
        early_ms = redis_now_ms(self.client)
        if self.first_ms is None:
            self.first_ms = early_ms
        reply = self.script(keys=[self.key], args=[*self.rate.as_args(), cost])
        late_ms = redis_now_ms(self.client)
        allowed, retry_ms = bool(int(reply[0])), int(reply[1])
        early = gcra(self.model_tat, early_ms, self.rate, cost)
        late = gcra(self.model_tat, late_ms, self.rate, cost)
        stored = self.stored_tat()
        if early.allowed != late.allowed:
            self.ambiguous += 1
        else:
            self.compared += 1
            assert allowed == early.allowed, (cost, retry_ms, early, late)
            if allowed:
                assert retry_ms == 0
                assert stored is not None
                assert early.new_tat_ms - ROUNDING_MS <= stored <= late.new_tat_ms + ROUNDING_MS
            else:
                assert late.retry_after_ms <= retry_ms <= early.retry_after_ms, (
                    retry_ms, early, late)
        if allowed:
            self.model_tat = stored
        else:
            assert retry_ms > 0
            assert stored == before  # a refusal writes nothing
        return allowed, retry_ms

    def allowed(self, cost: int = 1) -> bool:
        return self.request(cost)[0]


@pytest.fixture
def limit_key(redis_client: redis.Redis, keys: Keys) -> Iterator[str]:
    key = keys.ip_rate("gcratest", secrets.token_hex(8))
    yield key
    redis_client.delete(key)


def test_burst_of_count_then_refusal_matches_python(redis_client: redis.Redis,
                                                    limit_key: str) -> None:
    limit = LuaLimit(redis_client, limit_key, Rate(5, 60))  # 12 s per request
    assert [limit.allowed() for _ in range(5)] == [True] * 5
    allowed, retry_ms = limit.request()
    assert not allowed
    # one emission interval from the burst's start, less the time since then
    assert 12_000 - limit.elapsed_ms() <= retry_ms <= 12_000
    assert limit.ambiguous == 0


def test_sequence_of_costs_matches_python(redis_client: redis.Redis, limit_key: str) -> None:
    limit = LuaLimit(redis_client, limit_key, Rate(10, 60))  # 6 s per unit of cost
    decisions = [limit.allowed(cost) for cost in (3, 2, 4, 2, 1, 5, 11, 1)]
    #             3 5 9 | 11 > 10 refused | 10 | then full: refused, refused, refused
    assert decisions == [True, True, True, False, True, False, False, False]
    allowed, retry_ms = limit.request(4)
    assert not allowed
    assert 4 * 6_000 - limit.elapsed_ms() <= retry_ms <= 4 * 6_000


def test_stored_state_is_microseconds_with_a_matching_expiry(
        redis_client: redis.Redis, limit_key: str) -> None:
    limit = LuaLimit(redis_client, limit_key, Rate(3, 1))  # 333.33... ms: rounds up
    assert limit.allowed() is True  # a fresh key: the stored tat is its now + 333.334
    raw = redis_client.get(limit_key)
    assert isinstance(raw, str) and re.fullmatch(r"\d+\.\d{3}", raw)  # no exponent
    assert raw.endswith(".334")  # whole ms of TIME plus 333.334, rounded up
    ttl_ms: Any = redis_client.pttl(limit_key)
    assert 0 < ttl_ms <= 334  # gone once idle: a fresh burst afterwards


def test_allowed_again_after_the_emission_interval(redis_client: redis.Redis,
                                                   limit_key: str) -> None:
    limit = LuaLimit(redis_client, limit_key, Rate(4, 1))  # 250 ms per request
    decisions = [limit.request() for _ in range(4)]  # a burst of 4, as the model says
    allowed, retry_ms = limit.request()
    for _ in range(20):  # more fit only if the clock ran past an interval meanwhile
        if not allowed:
            break
        allowed, retry_ms = limit.request()
    assert decisions[0] == (True, 0) and not allowed
    assert 0 < retry_ms <= 250
    time.sleep((retry_ms + 2) / 1000)  # TIME is read in whole ms
    assert limit.allowed() is True  # once the refusal's wait is over, one more fits
    limit.request()  # and the next is as the model says


def test_key_expiry_gives_a_fresh_burst(redis_client: redis.Redis, limit_key: str) -> None:
    limit = LuaLimit(redis_client, limit_key, Rate(2, 1))
    assert [limit.allowed() for _ in range(2)] == [True, True]
    limit.request()  # refused unless 500 ms passed: the model checks which
    time.sleep(1.05)  # the key lives at most one period after its last write
    assert redis_client.exists(limit_key) == 0
    assert [limit.allowed() for _ in range(2)] == [True, True]


def test_cost_above_count_is_always_refused(redis_client: redis.Redis, limit_key: str) -> None:
    limit = LuaLimit(redis_client, limit_key, Rate(5, 60))
    assert limit.allowed(6) is False
    assert redis_client.exists(limit_key) == 0
    assert limit.allowed(5) is True


def test_paced_requests_match_python_over_time(redis_client: redis.Redis,
                                               limit_key: str) -> None:
    """Requests of mixed cost at mixed gaps, compared one by one with the model.

    A request whose allow time falls between the two clock reads around it is
    not compared (either answer is right); nearly all are."""
    limit = LuaLimit(redis_client, limit_key, Rate(5, 1))  # 200 ms per unit
    plan = [(1, 0), (2, 0), (2, 0), (1, 0), (1, 90), (1, 130), (3, 260), (1, 0), (2, 420),
            (1, 30), (5, 1_100), (1, 0), (1, 240), (2, 50), (1, 350), (4, 0)]
    for cost, gap_ms in plan:
        time.sleep(gap_ms / 1000)
        limit.request(cost)
    assert limit.compared >= len(plan) - 3
