"""The increment endpoint against a real ingest process, Redis and Postgres."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from scoreboard.keys import Keys
from tests.conftest import Api, Player
from tests.servers import Backing, SyncRedis, create_board, fresh_name, stream_entries


def increment(api: Api, player: Player, token: str, **body: Any) -> httpx.Response:
    return api.post("/api/scores/increment", json={"action_token": token, **body},
                    headers=player.headers)


def test_accepted_increment_lands_in_the_stream(api: Api, player: Player, backing: Backing,
                                                redis_client: SyncRedis, keys: Keys) -> None:
    board = create_board(backing, fresh_name("weekly"), (("play", 1), ("win", 7)))
    issued = api.post("/api/actions/token", json={"board": board, "action": "win"},
                      headers=player.headers)
    assert issued.status_code == 200, issued.text
    assert {k: v for k, v in issued.json().items() if k in ("board", "action", "points")} \
        == {"board": board, "action": "win", "points": 7}
    token = issued.json()["action_token"]
    response = increment(api, player, token)  # the token says board and points
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "accepted"
    entries = [fields for _, fields in stream_entries(redis_client, keys)
               if fields.get("event_id") == body["event_id"]]
    assert len(entries) == 1
    entry = entries[0]
    assert entry["user_id"] == player.user_id
    assert entry["username"] == player.username
    assert entry["board"] == board
    assert entry["points"] == "7"
    assert entry["source"] == "player"
    assert entry["ip"] == player.address
    assert entry["request_id"] == response.headers["x-request-id"]


def test_defaults_are_one_point_on_global(api: Api, player: Player,
                                          redis_client: SyncRedis, keys: Keys) -> None:
    issued = api.post("/api/actions/token", headers=player.headers)  # no body at all
    assert issued.status_code == 200, issued.text
    assert {k: issued.json()[k] for k in ("board", "action", "points")} \
        == {"board": "global", "action": "play", "points": 1}
    response = increment(api, player, issued.json()["action_token"])
    assert response.status_code == 202
    event_id = response.json()["event_id"]
    entry = next(f for _, f in stream_entries(redis_client, keys) if f.get("event_id") == event_id)
    assert (entry["points"], entry["board"]) == ("1", "global")


def test_same_token_posted_50_times_concurrently_is_accepted_once(
        api: Api, player: Player, stream_length: Any, ingest_url: str,
        redis_client: SyncRedis, keys: Keys) -> None:
    token = api.action_token(player)
    before = stream_length()

    async def post_all() -> list[tuple[int, str | None]]:
        async with httpx.AsyncClient(base_url=ingest_url, timeout=20) as client:
            responses = await asyncio.gather(*[
                client.post("/api/scores/increment", json={"action_token": token},
                            headers=player.headers) for _ in range(50)])
        return [(r.status_code, r.json().get("event_id")) for r in responses]

    answers = asyncio.run(post_all())
    # One ran the script; the 49 others are retries of it: each gets the same 202.
    assert answers == [(202, answers[0][1])] * 50
    assert stream_length() == before + 1
    assert not redis_client.exists(keys.token_failures_user(player.user_id))


def test_token_of_another_user_is_refused(api: Api, player: Player, stream_length: Any) -> None:
    other = api.register_and_login()
    token = api.action_token(other)
    before = stream_length()
    response = increment(api, player, token)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "action_token_foreign"
    assert stream_length() == before
    # The owner can still use it: the refusal consumed nothing.
    assert increment(api, other, token).status_code == 202


def test_user_limit_gives_429_with_retry_after_and_keeps_the_token(
        api: Api, player: Player, stream_length: Any) -> None:
    # Default player limit: 5 increments a minute (GCRA, a burst of 5).
    for _ in range(5):
        assert increment(api, player, api.action_token(player)).status_code == 202
    token = api.action_token(player)
    before = stream_length()
    response = increment(api, player, token)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(response.headers["retry-after"]) <= 12
    assert stream_length() == before


def test_action_token_issue_limit(api: Api, player: Player) -> None:
    statuses = [api.post("/api/actions/token", headers=player.headers).status_code
                for _ in range(11)]
    assert statuses[:10] == [200] * 10
    assert statuses[10] == 429


def test_flagged_user_is_held_to_the_reduced_limit(api: Api, player: Player,
                                                    redis_client: SyncRedis, keys: Keys,
                                                    stream_length: Any) -> None:
    redis_client.set(keys.flagged(player.user_id), "rapid_actions")
    assert increment(api, player, api.action_token(player)).status_code == 202
    before = stream_length()
    response = increment(api, player, api.action_token(player))
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) > 12  # 1 a minute, not 5
    assert stream_length() == before


def test_banned_user_is_refused(api: Api, player: Player, redis_client: SyncRedis,
                                keys: Keys, stream_length: Any) -> None:
    token = api.action_token(player)
    redis_client.set(keys.banned(player.user_id), "1")
    before = stream_length()
    response = increment(api, player, token)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "user_banned"
    token_response = api.post("/api/actions/token", headers=player.headers)
    assert token_response.status_code == 403
    assert stream_length() == before


def test_per_address_limit_spans_users(backing: Any, stream_length: Any) -> None:
    from tests.servers import ingest_server

    with ingest_server(backing.env(TRUSTED_PROXIES="127.0.0.1/32", IP_RATE="3/60")) as url:
        api = Api(url)
        try:
            players = [api.register_and_login() for _ in range(4)]
            shared = "2001:db8::beef"
            for p in players:
                p.address = shared
            tokens = [api.action_token(p) for p in players[:3]]
            assert api.post("/api/actions/token", headers=players[3].headers).status_code == 429
            for p, t in zip(players[:3], tokens, strict=True):
                assert increment(api, p, t).status_code == 202
            # the increment limit has its own budget per address: three used, the fourth waits
            players[3].address = "2001:db8::cafe"
            token = api.action_token(players[3])
            players[3].address = shared
            before = stream_length()
            response = increment(api, players[3], token)
            assert response.status_code == 429
            assert stream_length() == before
        finally:
            api.close()


def test_forwarded_for_is_ignored_without_a_trusted_proxy(backing: Any) -> None:
    """With TRUSTED_PROXIES empty, X-Forwarded-For cannot pick the limited address
    (neither our rule nor the server's own proxy-header handling may believe it)."""
    from tests.servers import ingest_server

    with ingest_server(backing.env(TRUSTED_PROXIES="", IP_RATE="2/60")) as url:
        api = Api(url)
        try:
            players = [api.register_and_login() for _ in range(3)]
            statuses = []
            for number, player in enumerate(players):
                player.address = f"2001:db8::{number + 1}"  # spoofed, all different
                statuses.append(api.post("/api/actions/token",
                                         headers=player.headers).status_code)
            assert statuses == [200, 200, 429]  # all three counted on 127.0.0.1
        finally:
            api.close()
