"""Unit tests of action tokens (scoreboard/action_tokens.py): no servers.

Every case names its time explicitly (``now_ms``), so none depends on the clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Any

import orjson
import pytest

from scoreboard import action_tokens
from scoreboard.action_tokens import ActionToken
from scoreboard.errors import ActionTokenError

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
