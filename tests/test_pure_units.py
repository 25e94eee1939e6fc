"""Unit tests of the pure modules: no Redis, no Postgres, no HTTP.

Action tokens, GCRA limits, request validation, client addresses, settings,
password hashes and the JWT authority are plain functions and classes; each is
driven here directly with explicit inputs (times included), so every case is
deterministic apart from the JWT cache-expiry test, which waits out a real
two-second token.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import hmac
import ipaddress
import random
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from ingest.validation import (
    BatchIncrement,
    Credentials,
    IncrementRequest,
    parse_batch,
    parse_credentials,
    parse_increment,
    parse_refresh,
)
from scoreboard import action_tokens
from scoreboard.action_tokens import ActionToken
from scoreboard.client_address import client_address
from scoreboard.errors import ActionTokenError, ConfigError, JWTError, RequestError
from scoreboard.jwt_tokens import JWTAuthority, SigningKey
from scoreboard.limits import Rate, gcra, retry_after_seconds
from scoreboard.passwords import hash_password, verify_password
from scoreboard.settings import IPNetwork, Settings, load_settings

# --------------------------------------------------------------------------- action tokens

OLD_KEY, NEW_KEY = secrets.token_bytes(32), secrets.token_bytes(32)
TOKEN_KEYS = {"k-old": OLD_KEY, "k-new": NEW_KEY}
TTL_MS = 60_000
ISSUED_MS = 1_764_547_200_123


BA = {"b": "global", "a": "play"}  # the board and action every token of these tests names


def make_token(*, user_id: str = "u_alice", issued_ms: int = ISSUED_MS,
               nonce: str = "0123456789abcdef", key_id: str = "k-new") -> str:
    return action_tokens.encode(ActionToken(user_id=user_id, board="global", action="play",
                                            issued_ms=issued_ms, nonce=nonce, key_id=key_id),
                                TOKEN_KEYS[key_id])


def verify_token(text: Any, *, keys: Mapping[str, bytes] = TOKEN_KEYS, user_id: str = "u_alice",
                 now_ms: int = ISSUED_MS + 1_000) -> ActionToken:
    return action_tokens.verify(text, keys=keys, user_id=user_id, now_ms=now_ms, ttl_ms=TTL_MS)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def signed(payload: bytes, key: bytes = NEW_KEY) -> str:
    """A token over arbitrary payload bytes with a valid signature, to reach the
    checks that run after the signature."""
    payload_text = b64(payload)
    return f"{payload_text}.{hmac.new(key, payload_text.encode(), hashlib.sha256).hexdigest()}"


def refusal_code(text: Any, **kwargs: Any) -> str:
    with pytest.raises(ActionTokenError) as caught:
        verify_token(text, **kwargs)
    return caught.value.code


def test_action_token_round_trip() -> None:
    token = make_token()
    payload_text, _, signature = token.partition(".")
    assert len(signature) == 64 and all(c in "0123456789abcdef" for c in signature)
    assert orjson.loads(base64.urlsafe_b64decode(payload_text + "=" * (-len(payload_text) % 4))) \
        == {"u": "u_alice", "b": "global", "a": "play", "t": ISSUED_MS,
            "n": "0123456789abcdef", "k": "k-new"}
    assert verify_token(token) == ActionToken("u_alice", "global", "play", ISSUED_MS,
                                              "0123456789abcdef", "k-new")


def test_action_token_with_tampered_payload_is_invalid() -> None:
    token = make_token(user_id="u_alice")
    _, _, signature = token.partition(".")
    forged_payload = b64(orjson.dumps({**BA, "u": "u_mallory", "t": ISSUED_MS,
                                       "n": "0123456789abcdef", "k": "k-new"}))
    assert refusal_code(f"{forged_payload}.{signature}", user_id="u_mallory") \
        == "action_token_invalid"


def test_action_token_with_tampered_signature_is_invalid() -> None:
    token = make_token()
    payload_text, _, signature = token.partition(".")
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    assert refusal_code(f"{payload_text}.{flipped}") == "action_token_invalid"


def test_action_token_signed_with_the_wrong_key_is_invalid() -> None:
    payload_text = make_token().partition(".")[0]
    wrong = hmac.new(OLD_KEY, payload_text.encode(), hashlib.sha256).hexdigest()
    assert refusal_code(f"{payload_text}.{wrong}") == "action_token_invalid"


def test_action_token_with_unknown_key_id_is_invalid() -> None:
    token = make_token(key_id="k-new")
    assert refusal_code(token, keys={"k-old": OLD_KEY}) == "action_token_invalid"


def test_action_token_of_an_older_key_verifies_until_that_key_is_removed() -> None:
    token = make_token(key_id="k-old")
    assert verify_token(token, keys={"k-old": OLD_KEY, "k-new": NEW_KEY}).key_id == "k-old"
    assert refusal_code(token, keys={"k-new": NEW_KEY}) == "action_token_invalid"


def test_action_token_expires_after_its_lifetime() -> None:
    token = make_token()
    assert verify_token(token, now_ms=ISSUED_MS + TTL_MS - 1).nonce == "0123456789abcdef"
    assert refusal_code(token, now_ms=ISSUED_MS + TTL_MS) == "action_token_expired"
    assert refusal_code(token, now_ms=ISSUED_MS + 10 * TTL_MS) == "action_token_expired"


def test_action_token_issued_too_far_in_the_future_is_refused() -> None:
    token = make_token()
    # A little clock skew between ingest processes is tolerated (5 s), more is not.
    assert verify_token(token, now_ms=ISSUED_MS - 5_000).issued_ms == ISSUED_MS
    assert refusal_code(token, now_ms=ISSUED_MS - 5_001) == "action_token_expired"


def test_action_token_of_another_user_is_foreign() -> None:
    assert refusal_code(make_token(user_id="u_alice"), user_id="u_bob") == "action_token_foreign"


@pytest.mark.parametrize("text", [
    pytest.param("", id="empty"),
    pytest.param("no-dot-at-all" + "a" * 64, id="no-dot"),
    pytest.param(make_token()[:-1], id="signature-63-chars"),
    pytest.param(make_token() + "0", id="signature-65-chars"),
    pytest.param("a." + "0" * 64, id="payload-not-base64"),
    pytest.param(signed(b"not json"), id="payload-not-json"),
    pytest.param(signed(b"[1, 2, 3]"), id="payload-json-array"),
    pytest.param(signed(b'"a string"'), id="payload-json-string"),
    pytest.param("é" + make_token(), id="payload-not-ascii"),
    pytest.param(make_token().partition(".")[0] + "." + "é" * 64, id="signature-not-ascii"),
    pytest.param(make_token(user_id="u" * 600), id="too-long"),
    pytest.param(signed(orjson.dumps({**BA, "t": ISSUED_MS, "n": "abc", "k": "k-new"})),
                 id="missing-user"),
    pytest.param(signed(orjson.dumps({**BA, "u": "u_alice", "n": "abc", "k": "k-new"})),
                 id="missing-issued"),
    pytest.param(signed(orjson.dumps({**BA, "u": "u_alice", "t": ISSUED_MS, "k": "k-new"})),
                 id="missing-nonce"),
    pytest.param(signed(orjson.dumps({**BA, "u": "u_alice", "t": ISSUED_MS, "n": "abc"})),
                 id="missing-key-id"),
    pytest.param(signed(orjson.dumps({**BA, "u": 7, "t": ISSUED_MS, "n": "abc", "k": "k-new"})),
                 id="user-not-string"),
    pytest.param(signed(orjson.dumps({**BA, "u": "u_alice", "t": str(ISSUED_MS), "n": "abc",
                                      "k": "k-new"})), id="issued-not-int"),
    pytest.param(signed(orjson.dumps({**BA, "u": "u_alice", "t": ISSUED_MS + 0.5, "n": "abc",
                                      "k": "k-new"})), id="issued-float"),
    pytest.param(signed(orjson.dumps({**BA, "u": "u_alice", "t": ISSUED_MS, "n": 12,
                                      "k": "k-new"})), id="nonce-not-string"),
    pytest.param(signed(orjson.dumps({**BA, "u": "u_alice", "t": ISSUED_MS, "n": "a:b",
                                      "k": "k-new"})), id="nonce-not-alphanumeric"),
    pytest.param(signed(orjson.dumps({**BA, "u": "u_alice", "t": ISSUED_MS, "n": "abc",
                                      "k": ["k-new"]})), id="key-id-not-string"),
    pytest.param(signed(orjson.dumps({"u": "u_alice", "a": "play", "t": ISSUED_MS, "n": "abc",
                                      "k": "k-new"})), id="missing-board"),
    pytest.param(signed(orjson.dumps({"u": "u_alice", "b": "global", "t": ISSUED_MS, "n": "abc",
                                      "k": "k-new"})), id="missing-action"),
    pytest.param(signed(orjson.dumps({**BA, "u": "u_alice", "b": 5, "t": ISSUED_MS, "n": "abc",
                                      "k": "k-new"})), id="board-not-string"),
])
def test_malformed_action_token_is_invalid(text: str) -> None:
    assert refusal_code(text) == "action_token_invalid"


@pytest.mark.parametrize("value", [None, 12, b"bytes.token", ["a.b"]])
def test_action_token_that_is_not_a_string_is_invalid(value: Any) -> None:
    assert refusal_code(value) == "action_token_invalid"


def test_signed_helper_makes_tokens_that_verify() -> None:
    """The malformed-payload cases above fail for their payload, not their signature."""
    good = signed(orjson.dumps({**BA, "u": "u_alice", "t": ISSUED_MS, "n": "abc", "k": "k-new"}))
    assert verify_token(good).nonce == "abc"


def test_uppercase_signature_verifies() -> None:
    payload_text, _, signature = make_token().partition(".")
    assert verify_token(f"{payload_text}.{signature.upper()}").user_id == "u_alice"


# --------------------------------------------------------------------------- limits


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


# --------------------------------------------------------------------------- validation


def field_error(call: Any, *args: Any, **kwargs: Any) -> RequestError:
    with pytest.raises(RequestError) as caught:
        call(*args, **kwargs)
    error = caught.value
    assert error.status == 422
    assert error.code == "invalid_field"
    assert error.field is not None and str(error).startswith(error.field + ": ")
    return error


def test_parse_credentials_accepts_good_input() -> None:
    assert parse_credentials({"username": "alice.b-1_", "password": "correct horse"}) \
        == Credentials("alice.b-1_", "correct horse")


@pytest.mark.parametrize(("body", "field"), [
    ({"password": "password1"}, "username"),
    ({"username": "alice"}, "password"),
    ({"username": 12, "password": "password1"}, "username"),
    ({"username": "al", "password": "password1"}, "username"),
    ({"username": "a" * 33, "password": "password1"}, "username"),
    ({"username": "al ice", "password": "password1"}, "username"),
    ({"username": "alice", "password": 12345678}, "password"),
    ({"username": "alice", "password": "short"}, "password"),
    ({"username": "alice", "password": "p" * 129}, "password"),
    ({"username": "alice", "password": "password1", "admin": True}, "admin"),
    ([], "body"),
    ("alice", "body"),
    (None, "body"),
])
def test_parse_credentials_names_the_bad_field(body: Any, field: str) -> None:
    assert field_error(parse_credentials, body).field == field


def test_parse_credentials_message_says_what_is_wrong() -> None:
    assert "required" in str(field_error(parse_credentials, {"username": "alice"}))
    assert "unknown field" in str(field_error(
        parse_credentials, {"username": "alice", "password": "password1", "x": 1}))


def test_parse_refresh() -> None:
    assert parse_refresh({"refresh_token": "rt_abc"}) == "rt_abc"
    assert field_error(parse_refresh, {}).field == "refresh_token"
    assert field_error(parse_refresh, {"refresh_token": 5}).field == "refresh_token"
    assert field_error(parse_refresh, {"refresh_token": ""}).field == "refresh_token"
    assert field_error(parse_refresh, {"refresh_token": "r" * 257}).field == "refresh_token"
    assert field_error(parse_refresh, {"refresh_token": "rt", "extra": 1}).field == "extra"
    assert field_error(parse_refresh, ["rt"]).field == "body"


def test_parse_increment_defaults_and_values() -> None:
    """``points`` and ``board`` are optional: the token decides (None: not sent)."""
    assert parse_increment({"action_token": "t.sig"}, max_points=1000) \
        == IncrementRequest(action_token="t.sig", points=None, board=None)
    assert parse_increment({"action_token": "t", "points": 1000, "board": "weekly:2025-w48"},
                           max_points=1000) \
        == IncrementRequest(action_token="t", points=1000, board="weekly:2025-w48")


@pytest.mark.parametrize(("body", "field", "words"), [
    ({}, "action_token", "required"),
    ({"action_token": ""}, "action_token", "non-empty"),
    ({"action_token": 5}, "action_token", "non-empty"),
    ({"action_token": "t", "points": True}, "points", "integer"),
    ({"action_token": "t", "points": False}, "points", "integer"),
    ({"action_token": "t", "points": 1.0}, "points", "integer"),
    ({"action_token": "t", "points": "5"}, "points", "integer"),
    ({"action_token": "t", "points": 0}, "points", "between 1 and 1000"),
    ({"action_token": "t", "points": -3}, "points", "between 1 and 1000"),
    ({"action_token": "t", "points": 1001}, "points", "between 1 and 1000"),
    ({"action_token": "t", "board": ""}, "board", "1 to 64"),
    ({"action_token": "t", "board": "b" * 65}, "board", "1 to 64"),
    ({"action_token": "t", "board": "with space"}, "board", "1 to 64"),
    ({"action_token": "t", "board": 3}, "board", "1 to 64"),
    ({"action_token": "t", "point": 5}, "point", "unknown field"),
    (["t"], "body", "JSON object"),
])
def test_parse_increment_names_the_bad_field(body: Any, field: str, words: str) -> None:
    error = field_error(parse_increment, body, max_points=1000)
    assert error.field == field
    assert words in str(error)


def batch_item(**overrides: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"user_id": "player-1", "points": 3, "event_id": "ev-1"}
    item.update(overrides)
    return item


def test_parse_batch_accepts_good_input() -> None:
    parsed = parse_batch({"increments": [
        batch_item(),
        batch_item(user_id="p:2", points=10, event_id="ev.2", board="weekly",
                   username="Bob the Great"),
    ]}, max_points=10, max_increments=2)
    assert parsed == [
        BatchIncrement(user_id="player-1", points=3, event_id="ev-1", board="global",
                       username=""),
        BatchIncrement(user_id="p:2", points=10, event_id="ev.2", board="weekly",
                       username="Bob the Great"),
    ]


@pytest.mark.parametrize(("body", "field", "words"), [
    ({}, "increments", "required"),
    ({"increments": []}, "increments", "non-empty"),
    ({"increments": {"0": batch_item()}}, "increments", "non-empty array"),
    ({"increments": [batch_item()] * 4}, "increments", "at most 3"),
    ({"increments": [batch_item()], "extra": 1}, "extra", "unknown field"),
    ("increments", "body", "JSON object"),
])
def test_parse_batch_refuses_bad_envelope(body: Any, field: str, words: str) -> None:
    error = field_error(parse_batch, body, max_points=100, max_increments=3)
    assert error.field == field
    assert words in str(error)


@pytest.mark.parametrize(("item", "field", "words"), [
    (5, "increments[3]", "JSON object"),
    (batch_item(user_id=None), "increments[3].user_id", "required"),
    ({"points": 3, "event_id": "ev-1"}, "increments[3].user_id", "required"),
    (batch_item(user_id=""), "increments[3].user_id", "1 to 64"),
    (batch_item(user_id="u" * 65), "increments[3].user_id", "1 to 64"),
    (batch_item(user_id="a/b"), "increments[3].user_id", "1 to 64"),
    (batch_item(user_id=42), "increments[3].user_id", "1 to 64"),
    ({"user_id": "p", "event_id": "ev-1"}, "increments[3].points", "required"),
    (batch_item(points=True), "increments[3].points", "integer"),
    (batch_item(points="3"), "increments[3].points", "integer"),
    (batch_item(points=2.5), "increments[3].points", "integer"),
    (batch_item(points=0), "increments[3].points", "between 1 and 100"),
    (batch_item(points=101), "increments[3].points", "between 1 and 100"),
    ({"user_id": "p", "points": 3}, "increments[3].event_id", "required"),
    (batch_item(event_id="e" * 129), "increments[3].event_id", "1 to 128"),
    (batch_item(event_id="ev 1"), "increments[3].event_id", "1 to 128"),
    (batch_item(board="no spaces"), "increments[3].board", "1 to 64"),
    (batch_item(board=""), "increments[3].board", "1 to 64"),
    (batch_item(username=""), "increments[3].username", "non-empty"),
    (batch_item(username="   "), "increments[3].username", "non-empty"),
    (batch_item(username="n" * 65), "increments[3].username", "at most 64"),
    (batch_item(username=7), "increments[3].username", "non-empty"),
    (batch_item(username="bell\x07"), "increments[3].username", "control characters"),
    (batch_item(username="del\x7f"), "increments[3].username", "control characters"),
    (batch_item(username="\u0085\u009b"), "increments[3].username", "control characters"),
    (batch_item(username="evil\u202etxt.exe"), "increments[3].username", "bidirectional"),
    (batch_item(username="a\u2066b"), "increments[3].username", "bidirectional"),
    (batch_item(score=5), "increments[3].score", "unknown field"),
])
def test_parse_batch_names_the_bad_item_field(item: Any, field: str, words: str) -> None:
    items = [batch_item(event_id=f"ok-{n}") for n in range(3)] + [item]
    error = field_error(parse_batch, {"increments": items}, max_points=100, max_increments=10)
    assert error.field == field
    assert words in str(error)


def test_parse_batch_accepts_exactly_the_maximum() -> None:
    items = [batch_item(event_id=f"ev-{n}") for n in range(5)]
    assert len(parse_batch({"increments": items}, max_points=100, max_increments=5)) == 5


def test_parse_batch_keeps_long_event_ids_and_unicode_names() -> None:
    parsed = parse_batch({"increments": [batch_item(event_id="e" * 128, username="Zoë 🎮")]},
                         max_points=100, max_increments=1)
    assert (parsed[0].event_id, parsed[0].username) == ("e" * 128, "Zoë 🎮")


# --------------------------------------------------------------------------- client address

PROXIES: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.1/32"),
                                  ipaddress.ip_network("10.0.0.0/8"),
                                  ipaddress.ip_network("fd00::/8"))


def test_untrusted_peer_ignores_forwarded_for() -> None:
    assert client_address("203.0.113.9", "198.51.100.1", PROXIES) == "203.0.113.9"
    assert client_address("203.0.113.9", "10.0.0.1, 127.0.0.1", PROXIES) == "203.0.113.9"


def test_peer_without_forwarded_for_is_the_client() -> None:
    assert client_address("127.0.0.1", None, PROXIES) == "127.0.0.1"
    assert client_address("127.0.0.1", "", PROXIES) == "127.0.0.1"
    assert client_address("127.0.0.1", " , ", PROXIES) == "127.0.0.1"
    assert client_address(None, "198.51.100.1", PROXIES) == "unknown"


def test_no_trusted_proxies_means_forwarded_for_is_never_used() -> None:
    assert client_address("127.0.0.1", "198.51.100.1", ()) == "127.0.0.1"


def test_trusted_proxy_uses_the_rightmost_untrusted_hop() -> None:
    # The left-most entry is whatever the client claimed; the proxy appended the real one.
    assert client_address("127.0.0.1", "6.6.6.6, 198.51.100.1", PROXIES) == "198.51.100.1"
    assert client_address("127.0.0.1", "198.51.100.1", PROXIES) == "198.51.100.1"


def test_chain_of_trusted_proxies_is_walked_past() -> None:
    assert client_address("127.0.0.1", "6.6.6.6, 198.51.100.1, 10.1.2.3, 10.0.0.7",
                          PROXIES) == "198.51.100.1"
    assert client_address("127.0.0.1", "2001:db8::1, fd00::2", PROXIES) == "2001:db8::1"


def test_chain_of_only_trusted_hops_gives_the_leftmost() -> None:
    assert client_address("127.0.0.1", "10.0.0.3, 10.0.0.2", PROXIES) == "10.0.0.3"


def test_garbage_hop_stops_the_walk_at_the_last_good_one() -> None:
    assert client_address("127.0.0.1", "198.51.100.1, not-an-ip", PROXIES) == "127.0.0.1"
    assert client_address("127.0.0.1", "198.51.100.1, junk, 10.0.0.2", PROXIES) == "10.0.0.2"
    # garbage left of the real client is never reached
    assert client_address("127.0.0.1", "junk, 198.51.100.1", PROXIES) == "198.51.100.1"


# --------------------------------------------------------------------------- settings


def test_settings_defaults() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.redis_url is None and settings.database_url is None
    assert settings.ingest_port == 8000 and settings.broadcaster_port == 8001
    assert settings.increment_rate == Rate(5, 60)
    assert settings.action_token_ttl_s == 60
    assert settings.trusted_proxies == ()
    assert settings.jwt_keys_path == Path(".local") / "keys" / "jwt"
    assert settings.action_keys_path == Path(".local") / "keys" / "action-token-keys"


def test_settings_parse_the_environment() -> None:
    settings = load_settings({
        "REDIS_URL": "redis://:hunter2@cache:6379/0",
        "DATABASE_URL": "postgresql://app:s3cret@db/app",
        "KEY_PREFIX": "prod-eu",
        "DATA_DIR": "/var/lib/sb",
        "INGEST_PORT": "9000",
        "MAX_POINTS_PER_INCREMENT": "50",
        "INCREMENT_RATE": "3/10",
        "IP_RATE": "100/1",
        "TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1 ,fd00::/8",
        "JWT_ISSUER": "issuer-x",
        "UNRELATED": "ignored",
    })
    assert settings.redis_url == "redis://:hunter2@cache:6379/0"
    assert settings.database_url == "postgresql://app:s3cret@db/app"
    assert settings.key_prefix == "prod-eu"
    assert settings.jwt_keys_path == Path("/var/lib/sb/keys/jwt")
    assert settings.ingest_port == 9000
    assert settings.max_points_per_increment == 50
    assert settings.increment_rate == Rate(3, 10)
    assert settings.ip_rate == Rate(100, 1)
    assert settings.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),
                                        ipaddress.ip_network("127.0.0.1/32"),
                                        ipaddress.ip_network("fd00::/8"))
    assert settings.jwt_issuer == "issuer-x"


def test_settings_empty_server_urls_mean_embedded() -> None:
    settings = load_settings({"REDIS_URL": "", "DATABASE_URL": ""})
    assert settings.redis_url is None and settings.database_url is None


def test_settings_host_bits_of_a_proxy_network_are_tolerated() -> None:
    settings = load_settings({"TRUSTED_PROXIES": "10.1.2.3/8"})
    assert settings.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),)


def test_settings_read_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROADCASTER_PORT", "9123")
    assert load_settings().broadcaster_port == 9123


@pytest.mark.parametrize(("variable", "value"), [
    ("INGEST_PORT", "eighty"),
    ("INGEST_PORT", "70000"),
    ("BROADCASTER_PORT", "-1"),
    ("MAX_BODY_BYTES", "0"),
    ("MAX_POINTS_PER_INCREMENT", "-5"),
    ("MAX_BATCH_INCREMENTS", "1.5"),
    ("ACTION_TOKEN_TTL_S", "0"),
    ("ACCESS_TOKEN_TTL_S", ""),
    ("DEDUP_TTL_S", "0"),
    ("INCREMENT_RATE", "5 per minute"),
    ("IP_RATE", "0/60"),
    ("BACKEND_RATE", "10/0"),
    ("TRUSTED_PROXIES", "10.0.0.0/8, proxy.internal"),
    ("TRUSTED_PROXIES", "10.0.0.0/33"),
    ("KEY_PREFIX", ""),
    ("KEY_PREFIX", "a{b}"),
    ("KEY_PREFIX", "has space"),
])
def test_settings_bad_value_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({variable: value})
    assert caught.value.variable == variable
    assert variable in str(caught.value)


def test_settings_repr_hides_server_urls() -> None:
    settings = load_settings({"REDIS_URL": "redis://:hunter2@cache:6379/0",
                              "DATABASE_URL": "postgresql://app:s3cret@db/app"})
    text = repr(settings)
    assert "hunter2" not in text and "s3cret" not in text
    assert "redis_url" not in text and "database_url" not in text
    assert "key_prefix='sb'" in text  # the rest is shown


def test_settings_are_frozen() -> None:
    settings = load_settings({})
    with pytest.raises(AttributeError):
        settings.ingest_port = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- passwords

CHEAP = {"n": 1024, "r": 8, "p": 1}


def test_password_hash_verifies() -> None:
    stored = hash_password("correct horse battery", **CHEAP)
    assert stored.startswith("scrypt$1024$8$1$")
    assert "correct horse" not in stored
    assert verify_password("correct horse battery", stored)


def test_password_hashes_are_salted() -> None:
    assert hash_password("same password", **CHEAP) != hash_password("same password", **CHEAP)


def test_wrong_password_is_refused() -> None:
    stored = hash_password("correct horse battery", **CHEAP)
    assert not verify_password("correct horse batterY", stored)
    assert not verify_password("", stored)


def test_unicode_password_round_trip() -> None:
    stored = hash_password("pässwörd ✓ 密码", **CHEAP)
    assert verify_password("pässwörd ✓ 密码", stored)
    assert not verify_password("passwort ✓ 密码", stored)


GOOD_HASH = hash_password("correct horse battery", **CHEAP)
_SCHEME, _N, _R, _P, _SALT, _DIGEST = GOOD_HASH.split("$")


@pytest.mark.parametrize("stored", [
    pytest.param("", id="empty"),
    pytest.param("plain-text-password", id="no-fields"),
    pytest.param("$".join(["bcrypt", _N, _R, _P, _SALT, _DIGEST]), id="other-scheme"),
    pytest.param("$".join([_SCHEME, "lots", _R, _P, _SALT, _DIGEST]), id="n-not-a-number"),
    pytest.param("$".join([_SCHEME, "1000", _R, _P, _SALT, _DIGEST]), id="n-not-power-of-two"),
    pytest.param("$".join([_SCHEME, _N, "0", _P, _SALT, _DIGEST]), id="r-zero"),
    pytest.param("$".join([_SCHEME, _N, _R, _P, "!!not base64!!", _DIGEST]), id="salt-garbage"),
    pytest.param("$".join([_SCHEME, _N, _R, _P, _SALT, "@@@"]), id="digest-garbage"),
    pytest.param("$".join([_SCHEME, _N, _R, _P, _SALT]), id="too-few-fields"),
    pytest.param(GOOD_HASH + "$extra", id="too-many-fields"),
])
def test_garbage_stored_hash_is_refused_without_raising(stored: str) -> None:
    assert verify_password("correct horse battery", GOOD_HASH)  # the baseline verifies
    assert not verify_password("correct horse battery", stored)


# --------------------------------------------------------------------------- JWT authority

ISSUER, AUDIENCE = "live-scoreboard", "live-scoreboard-api"


@pytest.fixture(scope="module")
def rsa_keys() -> list[SigningKey]:
    return [SigningKey(kid=f"kid-{n}", private_key=rsa.generate_private_key(
        public_exponent=65537, key_size=2048)) for n in range(3)]


def authority(keys: list[SigningKey], ttl_s: int = 900) -> JWTAuthority:
    return JWTAuthority(keys, issuer=ISSUER, audience=AUDIENCE, ttl_s=ttl_s)


def craft(key: SigningKey, *, drop: tuple[str, ...] = (), **overrides: Any) -> str:
    """A token signed by ``key`` with the usual claims, some overridden or dropped."""
    now = int(time.time())
    claims: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u_alice", "iat": now,
                              "exp": now + 600, "jti": secrets.token_hex(16), "name": "alice",
                              "scope": "", "sid": "s1"}
    claims.update(overrides)
    for name in drop:
        del claims[name]
    return jwt.encode(claims, key.private_key, algorithm="RS256", headers={"kid": key.kid})


def jwt_refusal(auth: JWTAuthority, token: str) -> JWTError:
    with pytest.raises(JWTError) as caught:
        auth.verify(token)
    return caught.value


def test_jwt_issue_and_verify(rsa_keys: list[SigningKey]) -> None:
    auth = authority(rsa_keys[:1])
    issued = auth.issue(sub="u_alice", name="alice", scopes=["scores:write", "a"], sid="fam-1")
    assert issued.expires_in == 900
    claims = auth.verify(issued.token)
    assert (claims.sub, claims.name, claims.jti, claims.sid) == ("u_alice", "alice", issued.jti,
                                                                 "fam-1")
    assert claims.scopes == frozenset({"scores:write", "a"})
    assert abs(claims.exp - (time.time() + 900)) < 5
    header = jwt.get_unverified_header(issued.token)
    assert header["alg"] == "RS256" and header["kid"] == "kid-0"


def test_jwt_each_issue_has_a_fresh_jti(rsa_keys: list[SigningKey]) -> None:
    auth = authority(rsa_keys[:1])
    first, second = (auth.issue(sub="u", name="n", scopes=[], sid="s") for _ in range(2))
    assert first.jti != second.jti and first.token != second.token


def test_jwt_cache_returns_the_same_claims(rsa_keys: list[SigningKey]) -> None:
    auth = authority(rsa_keys[:1])
    token = auth.issue(sub="u_alice", name="alice", scopes=[], sid="s").token
    first = auth.verify(token)
    assert auth.verify(token) is first


def test_jwt_cache_does_not_outlive_the_token(rsa_keys: list[SigningKey]) -> None:
    auth = authority(rsa_keys[:1], ttl_s=2)
    issued = auth.issue(sub="u_alice", name="alice", scopes=[], sid="s")
    assert auth.verify(issued.token).sub == "u_alice"  # now cached
    time.sleep(max(0.0, auth.verify(issued.token).exp - time.time()) + 0.05)
    assert jwt_refusal(auth, issued.token).code == "token_expired"


def test_jwt_cache_is_bounded(rsa_keys: list[SigningKey]) -> None:
    auth = JWTAuthority(rsa_keys[:1], issuer=ISSUER, audience=AUDIENCE, ttl_s=900, cache_size=2)
    tokens = [auth.issue(sub=f"u{n}", name="n", scopes=[], sid="s").token for n in range(3)]
    first = auth.verify(tokens[0])
    auth.verify(tokens[1])
    auth.verify(tokens[2])  # evicts tokens[0]
    again = auth.verify(tokens[0])
    assert again == first and again is not first


def test_jwt_expired_token_is_refused(rsa_keys: list[SigningKey]) -> None:
    auth = authority(rsa_keys[:1])
    issued = auth.issue(sub="u_alice", name="alice", scopes=[], sid="s",
                        now=time.time() - 901)
    assert jwt_refusal(auth, issued.token).code == "token_expired"
    crafted = craft(rsa_keys[0], iat=int(time.time()) - 100, exp=int(time.time()) - 10)
    assert jwt_refusal(auth, crafted).code == "token_expired"


@pytest.mark.parametrize("overrides", [
    pytest.param({"aud": "another-api"}, id="wrong-aud"),
    pytest.param({"aud": [AUDIENCE, "another-api"]}, id="aud-list"),
    pytest.param({"iss": "someone-else"}, id="wrong-iss"),
    pytest.param({"sub": ""}, id="empty-sub"),
    pytest.param({"sub": 42}, id="sub-not-string"),
    pytest.param({"jti": ""}, id="empty-jti"),
    pytest.param({"jti": 42}, id="jti-not-string"),
    pytest.param({"iat": int(time.time()) + 3600}, id="issued-in-the-future"),
])
def test_jwt_with_bad_claims_is_invalid(rsa_keys: list[SigningKey],
                                        overrides: dict[str, Any]) -> None:
    auth = authority(rsa_keys[:1])
    assert auth.verify(craft(rsa_keys[0])).sub == "u_alice"  # the crafted baseline is good
    assert jwt_refusal(auth, craft(rsa_keys[0], **overrides)).code == "invalid_token"


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud", "sub", "jti"])
def test_jwt_missing_required_claim_is_invalid(rsa_keys: list[SigningKey], claim: str) -> None:
    auth = authority(rsa_keys[:1])
    assert jwt_refusal(auth, craft(rsa_keys[0], drop=(claim,))).code == "invalid_token"


def test_jwt_signed_by_an_unknown_key_is_invalid(rsa_keys: list[SigningKey]) -> None:
    auth = authority(rsa_keys[:1])
    stranger = SigningKey(kid="kid-0", private_key=rsa_keys[2].private_key)  # known kid, wrong key
    assert jwt_refusal(auth, craft(stranger)).code == "invalid_token"
    unknown = jwt_refusal(auth, craft(rsa_keys[2]))  # kid-2 is not in the authority
    assert unknown.code == "invalid_token" and "key id" in str(unknown)


def test_jwt_without_kid_or_with_other_algorithms_is_invalid(rsa_keys: list[SigningKey]) -> None:
    auth = authority(rsa_keys[:1])
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "iat": int(time.time()),
              "exp": int(time.time()) + 60, "jti": "j"}
    no_kid = jwt.encode(claims, rsa_keys[0].private_key, algorithm="RS256")
    assert jwt_refusal(auth, no_kid).code == "invalid_token"
    ps256 = jwt.encode(claims, rsa_keys[0].private_key, algorithm="PS256",
                       headers={"kid": "kid-0"})
    assert jwt_refusal(auth, ps256).code == "invalid_token"
    hs256 = jwt.encode(claims, "a-shared-secret-of-at-least-32-bytes!", algorithm="HS256",
                       headers={"kid": "kid-0"})
    assert jwt_refusal(auth, hs256).code == "invalid_token"


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "a.b", "...."])
def test_jwt_malformed_is_invalid(rsa_keys: list[SigningKey], token: str) -> None:
    assert jwt_refusal(authority(rsa_keys[:1]), token).code == "invalid_token"


def test_jwt_previous_key_still_verifies_after_rotation(rsa_keys: list[SigningKey]) -> None:
    before = authority(rsa_keys[:1])
    old_token = before.issue(sub="u_alice", name="alice", scopes=[], sid="s").token
    rotated = authority(rsa_keys[:2])
    assert rotated.verify(old_token).sub == "u_alice"
    new_token = rotated.issue(sub="u_bob", name="bob", scopes=[], sid="s").token
    assert jwt.get_unverified_header(new_token)["kid"] == "kid-1"
    assert rotated.verify(new_token).sub == "u_bob"


def test_jwt_key_older_than_previous_no_longer_verifies(rsa_keys: list[SigningKey]) -> None:
    oldest_token = authority(rsa_keys[:1]).issue(sub="u", name="n", scopes=[], sid="s").token
    previous_token = authority(rsa_keys[:2]).issue(sub="u", name="n", scopes=[], sid="s").token
    twice_rotated = authority(rsa_keys[:3])
    assert jwt_refusal(twice_rotated, oldest_token).code == "invalid_token"
    assert twice_rotated.verify(previous_token).sub == "u"


def test_jwks_lists_current_and_previous_keys(rsa_keys: list[SigningKey]) -> None:
    jwks = authority(rsa_keys).jwks()
    assert [k["kid"] for k in jwks["keys"]] == ["kid-2", "kid-1"]
    for entry in jwks["keys"]:
        assert (entry["kty"], entry["alg"], entry["use"]) == ("RSA", "RS256", "sig")
        assert "d" not in entry and "p" not in entry  # public halves only
        key = next(k for k in rsa_keys if k.kid == entry["kid"])
        public = RSAAlgorithm.from_jwk(entry)
        assert public.public_numbers() == key.public_key.public_numbers()  # type: ignore[union-attr]
    single = authority(rsa_keys[:1]).jwks()
    assert [k["kid"] for k in single["keys"]] == ["kid-0"]


def test_jwks_keys_verify_issued_tokens(rsa_keys: list[SigningKey]) -> None:
    auth = authority(rsa_keys[:2])
    token = auth.issue(sub="u_alice", name="alice", scopes=[], sid="s").token
    entry = next(k for k in auth.jwks()["keys"]
                 if k["kid"] == jwt.get_unverified_header(token)["kid"])
    payload = jwt.decode(token, RSAAlgorithm.from_jwk(entry), algorithms=["RS256"],  # type: ignore[arg-type]
                         audience=AUDIENCE, issuer=ISSUER)
    assert payload["sub"] == "u_alice"


def test_jwt_authority_needs_a_key() -> None:
    with pytest.raises(ValueError):
        JWTAuthority([], issuer=ISSUER, audience=AUDIENCE, ttl_s=60)


def test_forwarded_for_zone_ids_are_refused() -> None:
    """``fe80::1%eth0`` is one address under endless spellings: never a client address."""
    assert client_address("127.0.0.1", "fe80::1%eth0", PROXIES) == "127.0.0.1"
    assert client_address("127.0.0.1", "198.51.100.1, fe80::1%25x", PROXIES) == "127.0.0.1"


def test_action_token_request_defaults_and_refusals() -> None:
    from ingest.validation import ActionTokenRequest, parse_action_token_request

    assert parse_action_token_request(None) == ActionTokenRequest(board="global", action=None)
    assert parse_action_token_request({"board": "b1", "action": "win"}) \
        == ActionTokenRequest(board="b1", action="win")
    for body, field in [({"action": "Win"}, "action"), ({"action": 3}, "action"),
                        ({"board": ""}, "board"), ({"points": 3}, "points"), ([], "body")]:
        assert field_error(parse_action_token_request, body).field == field


def test_board_actions_parse_and_refuse() -> None:
    from scoreboard.board_defs import definition, from_json, parse_actions

    assert parse_actions([], max_points=100) == (("play", 1),)
    actions = parse_actions(["kill=3", "win=10"], max_points=100)
    board = definition("b1", actions, None, service_max=100)
    assert (board.default_action, board.points_of("win"), board.points_of("x")) \
        == ("kill", 10, None)
    assert from_json("b1", board.to_json()) == board
    for bad in (["kill"], ["kill=0"], ["kill=101"], ["Kill=1"], ["a=1", "a=2"]):
        with pytest.raises(ValueError):
            parse_actions(bad, max_points=100)
    with pytest.raises(ValueError):
        definition("b1", actions, 101, service_max=100)
    with pytest.raises(ValueError):
        definition("no board", actions, None, service_max=100)
