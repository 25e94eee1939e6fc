"""Unit tests of request validation (ingest/validation.py): no servers.

Each refusal names the field it is about; these tests hold every parser to it.
"""

from __future__ import annotations

from typing import Any

import pytest

from ingest.validation import (
    ActionTokenRequest,
    BatchIncrement,
    Credentials,
    IncrementRequest,
    parse_action_token_request,
    parse_batch,
    parse_credentials,
    parse_increment,
    parse_refresh,
)
from scoreboard.errors import RequestError


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


def test_action_token_request_defaults_and_refusals() -> None:
    assert parse_action_token_request(None) == ActionTokenRequest(board="global", action=None)
    assert parse_action_token_request({"board": "b1", "action": "win"}) \
        == ActionTokenRequest(board="b1", action="win")
    for body, field in [({"action": "Win"}, "action"), ({"action": 3}, "action"),
                        ({"board": ""}, "board"), ({"points": 3}, "points"), ([], "body")]:
        assert field_error(parse_action_token_request, body).field == field
