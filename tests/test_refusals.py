"""Every refusal of the hot endpoints: the error envelope, the status, and that
nothing was written (the stream did not grow, the action token still works).

429 is covered by ``test_increment_api.py``.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from scoreboard import action_tokens
from scoreboard.embedded import EmbeddedRedis
from scoreboard.jwt_tokens import JWTAuthority
from scoreboard.keys import Keys
from scoreboard.signing_keys import load_action_keys, load_jwt_keys
from tests.conftest import Api, Player
from tests.servers import Backing, fresh_name, ingest_server

INCREMENT, ACTION_TOKEN, BATCH = "/api/scores/increment", "/api/actions/token", "/api/scores/batch"
SMALL_BODY_BYTES = 2048


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is the error envelope with ``status`` and ``code``; returns the error."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert error["code"] == code, body
    assert isinstance(error["message"], str) and error["message"], body
    return error


def increment(api: Api, player: Player, body: Any) -> httpx.Response:
    return api.post(INCREMENT, json=body, headers=player.headers)


def batch_item(**overrides: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"user_id": fresh_name("gp"), "points": 3,
                            "event_id": fresh_name("ev")}
    item.update(overrides)
    return item


def assert_token_still_works(api: Api, player: Player, token: str) -> None:
    """A refusal consumed nothing: the same action token is accepted afterwards."""
    response = increment(api, player, {"action_token": token})
    assert response.status_code == 202, response.text


@pytest.fixture(scope="module")
def small_body_url(backing: Backing) -> Iterator[str]:
    """An ingest with MAX_BODY_BYTES=2048, on the suite's Redis, Postgres and keys."""
    with ingest_server(backing.env(TRUSTED_PROXIES="127.0.0.1/32",
                                   MAX_BODY_BYTES=str(SMALL_BODY_BYTES))) as url:
        yield url


# 400 malformed JSON


@pytest.mark.parametrize("content", [b"{not json", b'{"action_token": "x",}', b""])
def test_malformed_json_is_400(api: Api, player: Player, stream_length: Any,
                               content: bytes) -> None:
    before = stream_length()
    response = api.post(INCREMENT, content=content,
                        headers={**player.headers, "Content-Type": "application/json"})
    assert_error(response, 400, "invalid_json")
    assert stream_length() == before


def test_malformed_json_batch_is_400(api: Api, backend: Player, stream_length: Any) -> None:
    before = stream_length()
    response = api.post(BATCH, content=b'{"increments": [', headers={
        **backend.headers, "Content-Type": "application/json"})
    assert_error(response, 400, "invalid_json")
    assert stream_length() == before


# 413 body too large


def padded_increment(token: str) -> bytes:
    """A valid increment body padded with whitespace past the small ingest's limit."""
    body = orjson.dumps({"action_token": token})
    return body[:-1] + b" " * (2 * SMALL_BODY_BYTES) + b"}"


def chunks_of(content: bytes, size: int = 512) -> Iterator[bytes]:
    for start in range(0, len(content), size):
        yield content[start:start + size]


def test_body_over_the_limit_with_content_length_is_413(small_body_url: str, api: Api,
                                                       player: Player,
                                                       stream_length: Any) -> None:
    token = api.action_token(player)
    before = stream_length()
    with httpx.Client(base_url=small_body_url, timeout=10) as small:
        content = padded_increment(token)
        response = small.post(INCREMENT, content=content,
                              headers={**player.headers, "Content-Type": "application/json"})
        assert response.request.headers["content-length"] == str(len(content))
        assert_error(response, 413, "body_too_large")
        assert stream_length() == before
        # Under the limit the same (whitespace-free) body is fine: the token was not spent.
        accepted = small.post(INCREMENT, json={"action_token": token}, headers=player.headers)
        assert accepted.status_code == 202, accepted.text


def test_chunked_body_over_the_limit_is_413(small_body_url: str, api: Api, player: Player,
                                            stream_length: Any) -> None:
    token = api.action_token(player)
    before = stream_length()
    with httpx.Client(base_url=small_body_url, timeout=10) as small:
        response = small.post(INCREMENT, content=chunks_of(padded_increment(token)),
                              headers={**player.headers, "Content-Type": "application/json"})
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"
        assert_error(response, 413, "body_too_large")
        assert stream_length() == before
        # A chunked body under the limit is read and accepted.
        accepted = small.post(INCREMENT, content=chunks_of(orjson.dumps({"action_token": token}),
                                                           size=16),
                              headers={**player.headers, "Content-Type": "application/json"})
        assert accepted.status_code == 202, accepted.text


@pytest.mark.parametrize("chunked", [False, True])
def test_batch_body_over_the_limit_is_413(small_body_url: str, backend: Player,
                                          stream_length: Any, chunked: bool) -> None:
    content = orjson.dumps({"increments": [batch_item() for _ in range(40)]})
    assert len(content) > SMALL_BODY_BYTES
    before = stream_length()
    with httpx.Client(base_url=small_body_url, timeout=10) as small:
        response = small.post(BATCH, content=chunks_of(content) if chunked else content,
                              headers={**backend.headers, "Content-Type": "application/json"})
    assert_error(response, 413, "body_too_large")
    assert stream_length() == before


# 422 well-formed but invalid


@pytest.mark.parametrize(("body", "field"), [
    ({"points": "5"}, "points"),
    ({"points": 0}, "points"),
    ({"points": -3}, "points"),
    ({"points": 1001}, "points"),
    ({"points": True}, "points"),
    ({"points": 2.5}, "points"),
    ({"pointz": 2}, "pointz"),
    ({"board": "my board"}, "board"),
    ({"board": ""}, "board"),
    ({"board": "b" * 65}, "board"),
    ({"action_token": None}, "action_token"),
    ({"action_token": 12}, "action_token"),
])
def test_invalid_increment_field_is_422_naming_it(api: Api, player: Player, stream_length: Any,
                                                  body: dict[str, Any], field: str) -> None:
    token = api.action_token(player)
    before = stream_length()
    full_body = {"action_token": token, **body}
    if full_body["action_token"] is None:
        del full_body["action_token"]
    response = increment(api, player, full_body)
    error = assert_error(response, 422, "invalid_field")
    assert error["field"] == field
    assert error["message"].startswith(f"{field}:")
    assert stream_length() == before
    assert_token_still_works(api, player, token)


def test_points_that_agree_with_the_action_are_accepted(api: Api, player: Player) -> None:
    """The boundary of the 422 above: the action's own points (play: 1) are allowed."""
    response = increment(api, player, {"action_token": api.action_token(player), "points": 1})
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(("body", "field"), [
    ({"increments": [batch_item() for _ in range(1001)]}, "increments"),
    ({"increments": []}, "increments"),
    ({}, "increments"),
    ({"increments": [batch_item(), {"user_id": "gp_1", "points": 1}]},
     "increments[1].event_id"),
    ({"increments": [batch_item(points="1")]}, "increments[0].points"),
    ({"increments": [batch_item(points=1001)]}, "increments[0].points"),
    ({"increments": [batch_item(user_id="has space")]}, "increments[0].user_id"),
    ({"increments": [batch_item(board="my board")]}, "increments[0].board"),
    ({"increments": [batch_item(colour="red")]}, "increments[0].colour"),
    ({"increments": [batch_item(username="")]}, "increments[0].username"),
])
def test_invalid_batch_is_422_naming_the_field(api: Api, backend: Player, stream_length: Any,
                                               body: dict[str, Any], field: str) -> None:
    before = stream_length()
    response = api.post(BATCH, json=body, headers=backend.headers)
    error = assert_error(response, 422, "invalid_field")
    assert error["field"] == field
    assert stream_length() == before


def test_a_batch_of_exactly_1000_is_accepted(api: Api, backend: Player,
                                             stream_length: Any) -> None:
    """The boundary of the 422 above."""
    before = stream_length()
    response = api.post(BATCH, json={"increments": [batch_item() for _ in range(1000)]},
                        headers=backend.headers)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 1000
    assert stream_length() == before + 1000


# 401 missing, invalid or expired bearer


def expired_access_token(backing: Backing, player: Player) -> str:
    authority = JWTAuthority(load_jwt_keys(backing.jwt_keys_dir), issuer="live-scoreboard",
                             audience="live-scoreboard-api", ttl_s=900)
    issued = authority.issue(sub=player.user_id, name=player.username, scopes=[],
                             sid="", now=time.time() - 1000)
    return issued.token


@pytest.mark.parametrize("path", [INCREMENT, ACTION_TOKEN, BATCH])
@pytest.mark.parametrize(("authorization", "code"), [
    (None, "missing_token"),
    ("Bearer", "missing_token"),
    ("Basic dXNlcjpwYXNz", "missing_token"),
    ("Bearer garbage", "invalid_token"),
    ("Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "invalid_token"),
    ("expired", "token_expired"),
])
def test_bad_bearer_is_401(api: Api, player: Player, backing: Backing, stream_length: Any,
                           path: str, authorization: str | None, code: str) -> None:
    token = api.action_token(player)
    headers = {"X-Forwarded-For": player.address}
    if authorization == "expired":
        headers["Authorization"] = f"Bearer {expired_access_token(backing, player)}"
    elif authorization is not None:
        headers["Authorization"] = authorization
    body = ({"increments": [batch_item(user_id=player.user_id)]} if path == BATCH
            else {"action_token": token})
    before = stream_length()
    response = api.post(path, json=body, headers=headers)
    assert_error(response, 401, code)
    assert stream_length() == before
    assert_token_still_works(api, player, token)


# 403 action token invalid, expired, used; insufficient scope


def real_token_parts(api: Api, player: Player) -> action_tokens.ActionToken:
    """The payload of a token really issued to ``player`` (its nonce is live in Redis)."""
    token = api.action_token(player)
    payload_text = token.rpartition(".")[0]
    payload = orjson.loads(base64.urlsafe_b64decode(payload_text + "=" * (-len(payload_text) % 4)))
    return action_tokens.ActionToken(user_id=payload["u"], board=payload["b"],
                                     action=payload["a"], issued_ms=payload["t"],
                                     nonce=payload["n"], key_id=payload["k"])


def test_forged_action_token_is_403(api: Api, player: Player, backing: Backing,
                                    stream_length: Any) -> None:
    # A real, unused nonce of this player, signed with a key that is not ours.
    parts = real_token_parts(api, player)
    forged = action_tokens.encode(parts, secrets.token_bytes(32))
    payload_text, _, signature = forged.rpartition(".")
    assert len(signature) == 64
    before = stream_length()
    assert_error(increment(api, player, {"action_token": forged}), 403, "action_token_invalid")
    # The real signature of another payload does not carry over either.
    real_key = load_action_keys(backing.action_keys_file)[parts.key_id]
    other = action_tokens.encode(
        action_tokens.ActionToken(user_id=player.user_id, board="global", action="play",
                                  issued_ms=parts.issued_ms,
                                  nonce=secrets.token_hex(16), key_id=parts.key_id), real_key)
    spliced = f"{payload_text}.{other.rpartition('.')[2]}"
    assert_error(increment(api, player, {"action_token": spliced}), 403, "action_token_invalid")
    for garbage in ("not-a-token", "x" * 600, f"{payload_text}.{'0' * 63}"):
        assert_error(increment(api, player, {"action_token": garbage}), 403,
                     "action_token_invalid")
    assert stream_length() == before
    # Correctly signed, the same payload is accepted: only the signature was wrong.
    assert_token_still_works(api, player, action_tokens.encode(parts, real_key))


def test_expired_action_token_is_403(api: Api, player: Player, backing: Backing,
                                     stream_length: Any) -> None:
    keys = load_action_keys(backing.action_keys_file)
    key_id, key = list(keys.items())[-1]
    expired = action_tokens.encode(action_tokens.ActionToken(
        user_id=player.user_id, board="global", action="play",
        issued_ms=int(time.time() * 1000) - 61_000,
        nonce=secrets.token_hex(16), key_id=key_id), key)
    before = stream_length()
    assert_error(increment(api, player, {"action_token": expired}), 403, "action_token_expired")
    assert stream_length() == before


def test_replayed_action_token_gets_the_original_answer(api: Api, player: Player,
                                                        stream_length: Any) -> None:
    """A used token sent again is a retry: the same 202 and event id, nothing written."""
    token = api.action_token(player)
    first = increment(api, player, {"action_token": token})
    assert first.status_code == 202, first.text
    before = stream_length()
    for _ in range(2):
        again = increment(api, player, {"action_token": token})
        assert (again.status_code, again.json()) == (202, first.json())
    assert stream_length() == before


def test_retry_after_the_token_expired_still_gets_the_original_answer(
        api: Api, player: Player, backing: Backing, redis_client: Any, keys: Keys,
        stream_length: Any) -> None:
    """A token accepted while valid and sent again once expired (a slow client's
    retry) is answered with its 202 and event id from the mark, nothing written;
    an expired token that was never accepted stays 403."""
    key_id, key = list(load_action_keys(backing.action_keys_file).items())[-1]
    issued_ms = int(time.time() * 1000) - 57_000  # expires in 3 s (TTL 60 s)

    def token_of(nonce: str) -> str:
        # as POST /api/actions/token issues it: signed, and its nonce recorded
        redis_client.set(keys.player(player.user_id).action_token(nonce), player.user_id,
                         px=10_000)
        return action_tokens.encode(action_tokens.ActionToken(
            user_id=player.user_id, board="global", action="play", issued_ms=issued_ms,
            nonce=nonce, key_id=key_id), key)

    accepted_in_time, never_sent = token_of(secrets.token_hex(16)), token_of(secrets.token_hex(16))
    first = increment(api, player, {"action_token": accepted_in_time})
    assert first.status_code == 202, first.text
    time.sleep(max(0.0, (issued_ms + 60_500) / 1000 - time.time()))
    before = stream_length()
    again = increment(api, player, {"action_token": accepted_in_time})
    assert (again.status_code, again.json()) == (202, first.json())
    assert_error(increment(api, player, {"action_token": never_sent}), 403,
                 "action_token_expired")
    assert stream_length() == before


def test_player_posting_a_batch_is_403_insufficient_scope(api: Api, player: Player,
                                                          stream_length: Any) -> None:
    before = stream_length()
    response = api.post(BATCH, json={"increments": [batch_item(user_id=player.user_id)]},
                        headers=player.headers)
    assert_error(response, 403, "insufficient_scope")
    assert stream_length() == before


# 503 a dependency is down


@pytest.mark.single_node("stops and restarts a Redis of its own, a single node")
def test_redis_down_is_503_with_retry_after(backing: Backing, backend: Player,
                                            tmp_path: Path) -> None:
    dedicated = EmbeddedRedis(tmp_path / "redis")
    redis_url = dedicated.start()
    restarted = EmbeddedRedis(tmp_path / "redis", port=dedicated.port)
    try:
        with ingest_server(backing.env(TRUSTED_PROXIES="127.0.0.1/32",
                                       REDIS_URL=redis_url)) as url:
            api = Api(url)
            try:
                player = api.register_and_login()
                token = api.action_token(player)
                items = [batch_item()]
                dedicated.stop()

                down = {
                    "increment": increment(api, player, {"action_token": token}),
                    "action token": api.post(ACTION_TOKEN, headers=player.headers),
                    "batch": api.post(BATCH, json={"increments": items}, headers=backend.headers),
                    "login": api.post("/api/auth/login", json={
                        "username": player.username, "password": player.password},
                        headers={"X-Forwarded-For": player.address}),
                }
                for what, response in down.items():
                    assert response.status_code == 503, (what, response.text)
                    assert_error(response, 503, "unavailable")
                    assert int(response.headers["retry-after"]) >= 1, what

                ready = api.get("/readyz")
                assert ready.status_code == 503, ready.text
                assert "redis" in ready.json()["down"]
                assert int(ready.headers["retry-after"]) >= 1
                assert api.get("/healthz").status_code == 200  # alive, just not ready

                # Redis comes back with its data: the client retries and nothing was lost.
                restarted.start()
                retried = increment(api, player, {"action_token": token})
                assert retried.status_code == 202, retried.text
                batch = api.post(BATCH, json={"increments": items}, headers=backend.headers)
                assert batch.status_code == 202, batch.text
                assert batch.json()["accepted"] == 1
                assert api.get("/readyz").status_code == 200
            finally:
                api.close()
    finally:
        restarted.stop()
        dedicated.stop()
