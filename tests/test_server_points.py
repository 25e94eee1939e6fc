"""Server-decided points and retries, against a real ingest process and Redis.

A player's increment adds exactly the points of the action its token names; a
retry of an accepted increment (same token) gets the original 202 and event id
and is never counted as token manipulation.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import orjson
import pytest

from scoreboard.keys import Keys
from tests.conftest import Api, Player
from tests.servers import (
    Backing,
    SyncRedis,
    create_board,
    fresh_name,
    ingest_server,
    stream_entries,
)


def issue(api: Api, player: Player, **body: Any) -> Any:
    return api.post("/api/actions/token", json=body, headers=player.headers)


def increment(api: Api, player: Player, **body: Any) -> Any:
    return api.post("/api/scores/increment", json=body, headers=player.headers)


def error_of(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_unknown_board_is_404_for_tokens_and_batches(api: Api, player: Player, backend: Player,
                                                     stream_length: Any) -> None:
    before = stream_length()
    assert error_of(issue(api, player, board=fresh_name("nowhere"))) == (404, "board_not_found")
    batch = api.post("/api/scores/batch", headers=backend.headers, json={"increments": [
        {"user_id": fresh_name("gp"), "points": 1, "event_id": fresh_name("e")},
        {"user_id": fresh_name("gp"), "points": 1, "event_id": fresh_name("e"),
         "board": fresh_name("nowhere")}]})
    assert error_of(batch) == (404, "board_not_found")
    assert stream_length() == before  # the batch's good half was not written either


def test_unknown_action_and_malformed_requests_are_422(api: Api, player: Player) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"action": "fly"}, "action"), ({"action": "Play!"}, "action"),
        ({"board": "no board"}, "board"), ({"points": 5}, "points")]
    for body, field in cases:
        response = issue(api, player, **body)
        assert error_of(response) == (422, "invalid_field"), body
        assert response.json()["error"]["field"] == field


def test_points_or_board_that_disagree_with_the_token_are_refused(
        api: Api, player: Player, stream_length: Any) -> None:
    token = api.action_token(player)  # global, play = 1 point
    before = stream_length()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"points": 1000}, "points"), ({"points": 2}, "points"), ({"board": "other"}, "board")]
    for body, field in cases:
        response = increment(api, player, action_token=token, **body)
        assert error_of(response) == (422, "invalid_field"), body
        assert response.json()["error"]["field"] == field
    assert stream_length() == before
    # Agreeing values are allowed (clients of the old contract keep working).
    assert increment(api, player, action_token=token, points=1,
                     board="global").status_code == 202


def test_a_tampered_board_or_action_breaks_the_signature(
        api: Api, player: Player, backing: Backing, stream_length: Any) -> None:
    import base64

    board = create_board(backing, fresh_name("b"), (("play", 1), ("jackpot", 500)))
    token = issue(api, player, board=board).json()["action_token"]
    payload_text, _, signature = token.rpartition(".")
    payload = orjson.loads(base64.urlsafe_b64decode(payload_text + "=" * (-len(payload_text) % 4)))
    assert (payload["b"], payload["a"]) == (board, "play")
    changed = base64.urlsafe_b64encode(orjson.dumps({**payload, "a": "jackpot"})).rstrip(b"=")
    before = stream_length()
    response = increment(api, player, action_token=f"{changed.decode()}.{signature}")
    assert error_of(response) == (403, "action_token_invalid")
    assert stream_length() == before


def test_backend_points_are_capped_by_the_boards_maximum(
        api: Api, backend: Player, backing: Backing, stream_length: Any) -> None:
    board = create_board(backing, fresh_name("capped"), max_points=50)

    def post(points: int) -> Any:
        return api.post("/api/scores/batch", headers=backend.headers, json={"increments": [
            {"user_id": fresh_name("gp"), "points": points, "event_id": fresh_name("e"),
             "board": board}]})

    before = stream_length()
    refused = post(51)
    assert error_of(refused) == (422, "invalid_field")
    assert refused.json()["error"]["field"] == "increments[0].points"
    assert stream_length() == before
    assert post(50).status_code == 202
    assert stream_length() == before + 1


def test_create_board_command_makes_a_board_players_can_use(
        api: Api, player: Player, backing: Backing, redis_client: SyncRedis, keys: Keys) -> None:
    import subprocess
    import sys

    from tests.servers import PROJECT_DIR

    board = fresh_name("cli")
    made = subprocess.run(
        [sys.executable, "-m", "scoreboard.cli", "admin", "create-board", board,
         "--action", "kill=3", "--action", "win=10", "--max-points", "100"],
        cwd=PROJECT_DIR, env=backing.env(), capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    shown = orjson.loads(made.stdout.strip().splitlines()[-1])
    assert {k: shown[k] for k in ("board", "actions", "max_points", "operator", "open")} == {
        "board": board, "actions": {"kill": 3, "win": 10}, "max_points": 100,
        "operator": "sum", "open": True}
    issued = issue(api, player, board=board)  # the first action is the default
    assert {k: issued.json()[k] for k in ("action", "points")} == {"action": "kill", "points": 3}
    accepted = increment(api, player, action_token=issued.json()["action_token"])
    assert accepted.status_code == 202
    entry = next(f for _, f in stream_entries(redis_client, keys)
                 if f.get("event_id") == accepted.json()["event_id"])
    assert (entry["board"], entry["points"]) == (board, "3")
    bad = subprocess.run(
        [sys.executable, "-m", "scoreboard.cli", "admin", "create-board", fresh_name("x"),
         "--action", "kill=0"], cwd=PROJECT_DIR, env=backing.env(), capture_output=True,
        text=True, timeout=60)
    assert bad.returncode == 2 and "points must be" in bad.stdout


def send_and_drop(url: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> None:
    """POST, then close the connection without reading: the reply is lost."""
    host, port = url.removeprefix("http://").split(":")
    raw = orjson.dumps(body)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
                     f"\r\nContent-Length: {len(raw)}\r\n{head}\r\n".encode() + raw)


def wait_for_entry(redis_client: SyncRedis, keys: Keys, event_id: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(f.get("event_id") == event_id for _, f in stream_entries(redis_client, keys)):
            return
        time.sleep(0.05)
    raise AssertionError(f"{event_id} never reached the stream")


def test_retry_after_a_lost_reply_gets_the_original_answer(
        api: Api, player: Player, ingest_url: str, redis_client: SyncRedis, keys: Keys,
        stream_length: Any) -> None:
    token = api.action_token(player)
    nonce = orjson.loads(__import__("base64").urlsafe_b64decode(
        token.rpartition(".")[0] + "==="))["n"]
    before = stream_length()
    send_and_drop(ingest_url, "/api/scores/increment", {"action_token": token}, player.headers)
    wait_for_entry(redis_client, keys, f"at-{nonce}")  # the script ran; the client saw nothing
    for _ in range(3):
        retry = increment(api, player, action_token=token)
        assert retry.status_code == 202, retry.text
        assert retry.json() == {"event_id": f"at-{nonce}", "status": "accepted"}
    assert stream_length() == before + 1
    assert not redis_client.exists(keys.token_failures_user(player.user_id))


@pytest.fixture(scope="module")
def short_token_url(backing: Backing) -> Any:
    with ingest_server(backing.env(TRUSTED_PROXIES="127.0.0.1/32", ACTION_TOKEN_TTL_S="1")) as url:
        yield url


def test_late_retry_of_an_accepted_increment_still_gets_its_202(
        short_token_url: str, redis_client: SyncRedis, keys: Keys, stream_length: Any) -> None:
    api = Api(short_token_url)
    try:
        player = api.register_and_login()
        accepted_token, unused_token = api.action_token(player), api.action_token(player)
        first = increment(api, player, action_token=accepted_token)
        assert first.status_code == 202
        before = stream_length()
        time.sleep(1.2)  # both tokens are now past their lifetime
        late = increment(api, player, action_token=accepted_token)
        assert (late.status_code, late.json()) == (202, first.json())
        # A token that was never used is refused as expired, but is no manipulation.
        assert error_of(increment(api, player, action_token=unused_token)) \
            == (403, "action_token_expired")
        assert stream_length() == before
        assert not redis_client.exists(keys.token_failures_user(player.user_id))
    finally:
        api.close()
