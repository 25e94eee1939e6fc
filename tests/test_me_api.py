"""The caller's own account and place (``/api/me*``), and shadow-banned players:
invisible to everyone else on every read, unchanged for themselves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from scoreboard.db import create_pool
from scoreboard.embedded import free_port
from scoreboard.keys import Keys
from scoreboard.lua import register_scripts
from scoreboard.moderation import Moderation
from tests.board_support import entry, seed
from tests.conftest import Api, Player
from tests.servers import Backing, fresh_name, ingest_server


def users_of(body: dict[str, Any]) -> list[str]:
    return [e["user_id"] for e in body["entries"]]


def test_login_and_refresh_return_the_user_id(api: Api, player: Player) -> None:
    login = api.post("/api/auth/login", json={"username": player.username,
                                              "password": player.password},
                     headers={"X-Forwarded-For": player.address})
    assert login.json()["user_id"] == player.user_id
    refreshed = api.post("/api/auth/refresh", json={"refresh_token": player.refresh_token},
                         headers={"X-Forwarded-For": player.address})
    assert refreshed.status_code == 200
    assert refreshed.json()["user_id"] == player.user_id


def test_me_answers_who_the_token_belongs_to(api: Api, player: Player) -> None:
    me = api.get("/api/me", headers=player.headers)
    assert me.status_code == 200
    body = me.json()
    assert (body["user_id"], body["username"], body["scopes"]) == (
        player.user_id, player.username, [])
    assert body["created_at"]


@pytest.mark.parametrize("path", ["/api/me", "/api/me/rank", "/api/me/around"])
def test_me_endpoints_refuse_missing_and_revoked_tokens(api: Api, player: Player,
                                                        path: str) -> None:
    missing = api.get(path)
    assert (missing.status_code, missing.json()["error"]["code"]) == (401, "missing_token")
    assert api.post("/api/auth/logout", headers=player.headers).status_code == 204
    revoked = api.get(path, headers=player.headers)
    assert (revoked.status_code, revoked.json()["error"]["code"]) == (401, "token_revoked")


def test_my_rank_and_around(api: Api, backing: Backing, keys: Keys, player: Player) -> None:
    board = fresh_name("me")
    now = int(time.time() * 1000)
    seed(backing, keys, [entry("top-dog", 50, now, board=board),
                         entry(player.user_id, 40, now, board=board),
                         entry("tail", 5, now, board=board)])
    rank = api.get("/api/me/rank", params={"board": board}, headers=player.headers)
    assert rank.status_code == 200
    assert (rank.json()["user_id"], rank.json()["rank"], rank.json()["score"]) == (
        player.user_id, 2, 40)
    around = api.get("/api/me/around", params={"board": board, "radius": 1},
                     headers=player.headers).json()
    assert users_of(around) == ["top-dog", player.user_id, "tail"]
    assert around["user_id"] == player.user_id
    unranked = api.get("/api/me/rank", params={"board": fresh_name("empty")},
                       headers=player.headers)
    assert (unranked.status_code, unranked.json()["error"]["code"]) == (404, "not_ranked")
    bad = api.get("/api/me/around", params={"board": "no spaces"}, headers=player.headers)
    assert (bad.status_code, bad.json()["error"]["field"]) == (422, "board")


def shadow_ban(backing: Backing, keys: Keys, user_id: str) -> None:
    async def run() -> None:
        client = backing.async_redis(decode_responses=True)
        pool = await create_pool(backing.database_url, max_size=2)
        try:
            await Moderation(redis=client, pool=pool, scripts=register_scripts(client),
                             keys=keys).restrict(user_id, "shadow_banned", reason="test")
        finally:
            await pool.close()
            await client.aclose()

    asyncio.run(run())


@pytest.fixture
def shadow_board(api: Api, backing: Backing, keys: Keys) -> Iterator[tuple[str, Player]]:
    """first 50, sneaky 30 (shadow-banned), other 20, last 10."""
    board = fresh_name("shadow")
    sneaky = api.register_and_login()
    now = int(time.time() * 1000)
    seed(backing, keys, [entry("first", 50, now, board=board),
                         entry(sneaky.user_id, 30, now, board=board),
                         entry("other", 20, now, board=board),
                         entry("last", 10, now, board=board)])
    shadow_ban(backing, keys, sneaky.user_id)
    yield board, sneaky


def check_hidden_from_others(client: Api, board: str, sneaky: Player, onlooker: Player) -> None:
    params = {"board": board}
    assert users_of(client.get("/api/scores/top", params=params).json()) == [
        "first", "other", "last"]
    assert users_of(client.get("/api/scores/page", params={**params, "limit": 2}).json()) == [
        "first", "other"]
    for headers in ({}, onlooker.headers):
        hidden = client.get(f"/api/scores/users/{sneaky.user_id}", params=params,
                            headers=headers)
        assert (hidden.status_code, hidden.json()["error"]["code"]) == (404, "not_ranked")
        hidden_around = client.get(f"/api/scores/around/{sneaky.user_id}", params=params,
                                   headers=headers)
        assert hidden_around.status_code == 404
    around_other = client.get("/api/scores/around/other", params={**params, "radius": 5}).json()
    assert users_of(around_other) == ["first", "other", "last"]
    assert [e["rank"] for e in around_other["entries"]] == [1, 2, 3]
    ranks = client.get("/api/scores/ranks",
                       params={**params, "user_ids": f"{sneaky.user_id},other"}).json()
    assert users_of(ranks) == ["other"]


def check_visible_to_themself(client: Api, board: str, sneaky: Player) -> dict[str, Any]:
    params = {"board": board}
    rank = client.get("/api/me/rank", params=params, headers=sneaky.headers)
    assert rank.status_code == 200, rank.text
    assert (rank.json()["rank"], rank.json()["score"]) == (2, 30)
    own = client.get(f"/api/scores/users/{sneaky.user_id}", params=params,
                     headers=sneaky.headers)
    assert own.status_code == 200
    assert (own.json()["rank"], own.json()["score"]) == (2, 30)
    around = client.get("/api/me/around", params={**params, "radius": 1},
                        headers=sneaky.headers).json()
    assert [(e["user_id"], e["rank"], e["score"]) for e in around["entries"]] == [
        ("first", 1, 50), (sneaky.user_id, 2, 30), ("other", 3, 20)]
    assert around["size"] == 4  # as before the shadow-ban
    wide = client.get(f"/api/scores/around/{sneaky.user_id}",
                      params={**params, "radius": 5}, headers=sneaky.headers).json()
    assert users_of(wide) == ["first", sneaky.user_id, "other", "last"]
    assert [e["rank"] for e in wide["entries"]] == [1, 2, 3, 4]
    alone = client.get("/api/me/around", params={**params, "radius": 0},
                       headers=sneaky.headers).json()
    assert [(e["user_id"], e["rank"]) for e in alone["entries"]] == [(sneaky.user_id, 2)]
    body: dict[str, Any] = around
    return body


def test_shadow_banned_player_is_invisible_to_others_and_unchanged_for_themself(
        api: Api, shadow_board: tuple[str, Player]) -> None:
    board, sneaky = shadow_board
    onlooker = api.register_and_login()
    check_hidden_from_others(api, board, sneaky, onlooker)
    check_visible_to_themself(api, board, sneaky)


def test_shadow_banned_player_when_reads_come_from_postgres(
        api: Api, backing: Backing, shadow_board: tuple[str, Player]) -> None:
    board, sneaky = shadow_board
    onlooker = api.register_and_login()
    from_redis = check_visible_to_themself(api, board, sneaky)
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    env = backing.env(REDIS_URL=dead_redis, TRUSTED_PROXIES="127.0.0.1/32")
    with ingest_server(env, ready_path="/healthz") as url:
        fallback = Api(url)
        try:
            top = fallback.get("/api/scores/top", params={"board": board})
            assert top.headers["x-board-source"] == "postgres"
            check_hidden_from_others(fallback, board, sneaky, onlooker)
            from_postgres = check_visible_to_themself(fallback, board, sneaky)
        finally:
            fallback.close()
    assert from_postgres.pop("version") is None
    from_redis.pop("version")
    assert from_postgres == from_redis
