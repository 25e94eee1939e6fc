"""Leaderboard reads over HTTP: order, ties, ranks, around-me, pages, fallback."""

from __future__ import annotations

import time
from typing import Any

import pytest

from scoreboard.keys import Keys
from tests.board_support import entry, seed
from tests.conftest import Api
from tests.servers import Backing, fresh_name, ingest_server

T0 = int(time.time() * 1000) - 3_600_000


def users_of(body: dict[str, Any]) -> list[str]:
    return [e["user_id"] for e in body["entries"]]


@pytest.fixture
def board() -> str:
    return fresh_name("board")


@pytest.fixture
def tied_board(backing: Backing, keys: Keys, board: str) -> str:
    """u-a 10 (reached first), u-c 10 and u-b 10 (reached together later), u-d 5."""
    seed(backing, keys, [entry("u-a", 10, T0, board=board),
                         entry("u-c", 10, T0 + 1000, board=board),
                         entry("u-b", 10, T0 + 1000, board=board),
                         entry("u-d", 5, T0, board=board)])
    return board


def test_top_orders_by_score_then_reached_then_user_id(api: Api, tied_board: str) -> None:
    response = api.get("/api/scores/top", params={"board": tied_board, "limit": 10})
    assert response.status_code == 200
    body = response.json()
    assert body["board"] == tied_board
    assert isinstance(body["version"], int) and body["version"] >= 1
    assert response.headers["x-board-source"] == "redis"
    assert body["entries"] == [
        {"rank": 1, "user_id": "u-a", "username": "name of u-a", "score": 10},
        {"rank": 1, "user_id": "u-b", "username": "name of u-b", "score": 10},
        {"rank": 1, "user_id": "u-c", "username": "name of u-c", "score": 10},
        {"rank": 4, "user_id": "u-d", "username": "name of u-d", "score": 5},
    ]


def test_ordinal_ranks_setting(backing: Backing, tied_board: str) -> None:
    with ingest_server(backing.env(RANK_TIES="ordinal")) as url:
        api = Api(url)
        try:
            body = api.get("/api/scores/top", params={"board": tied_board}).json()
        finally:
            api.close()
    assert [(e["rank"], e["user_id"]) for e in body["entries"]] == [
        (1, "u-a"), (2, "u-b"), (3, "u-c"), (4, "u-d")]


def test_user_rank_and_unranked(api: Api, tied_board: str) -> None:
    body = api.get("/api/scores/users/u-c", params={"board": tied_board}).json()
    assert (body["user_id"], body["rank"], body["score"], body["username"]) == (
        "u-c", 1, 10, "name of u-c")
    assert api.get("/api/scores/users/u-d", params={"board": tied_board}).json()["rank"] == 4
    missing = api.get("/api/scores/users/nobody", params={"board": tied_board})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_ranked"


@pytest.mark.parametrize(("path", "params", "field"), [
    ("/api/scores/top", {"limit": "0"}, "limit"),
    ("/api/scores/top", {"limit": "101"}, "limit"),
    ("/api/scores/top", {"limit": "ten"}, "limit"),
    ("/api/scores/top", {"board": "no spaces"}, "board"),
    ("/api/scores/top", {"colour": "red"}, "colour"),
    ("/api/scores/page", {"cursor": "not-a-cursor"}, "cursor"),
    ("/api/scores/around/u-a", {"radius": "51"}, "radius"),
    ("/api/scores/ranks", {}, "user_ids"),
    ("/api/scores/ranks", {"user_ids": "ok,not ok"}, "user_ids"),
    ("/api/scores/users/bad%20id", {}, "user_id"),
])
def test_bad_read_parameters_are_422(api: Api, path: str, params: dict[str, str],
                                     field: str) -> None:
    response = api.get(path, params=params)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field


def test_around_me_at_both_ends_and_in_the_middle(api: Api, backing: Backing, keys: Keys,
                                                  board: str) -> None:
    users = [f"p{i:02d}" for i in range(10)]  # p00 highest
    seed(backing, keys, [entry(u, 100 - i, T0, board=board) for i, u in enumerate(users)])

    def around(user: str, radius: int) -> list[str]:
        response = api.get(f"/api/scores/around/{user}", params={"board": board,
                                                                  "radius": radius})
        assert response.status_code == 200
        return users_of(response.json())

    assert around("p00", 2) == ["p00", "p01", "p02"]
    assert around("p09", 2) == ["p07", "p08", "p09"]
    assert around("p05", 1) == ["p04", "p05", "p06"]
    assert around("p05", 0) == ["p05"]
    body = api.get("/api/scores/around/p09", params={"board": board, "radius": 1}).json()
    assert [e["rank"] for e in body["entries"]] == [9, 10]
    assert api.get("/api/scores/around/nobody", params={"board": board}).status_code == 404


def test_ranks_of_a_friends_list(api: Api, tied_board: str) -> None:
    body = api.get("/api/scores/ranks", params={
        "board": tied_board, "user_ids": "u-d,nobody,u-a,u-d"}).json()
    assert [(e["user_id"], e["rank"]) for e in body["entries"]] == [("u-a", 1), ("u-d", 4)]


def test_pagination_walks_the_whole_board_across_concurrent_updates(
        api: Api, backing: Backing, keys: Keys, board: str) -> None:
    users = [f"q{i:03d}" for i in range(60)]
    seed(backing, keys, [entry(u, 1000 - i * 10, T0, board=board) for i, u in enumerate(users)])
    seen: list[str] = []
    cursor = None
    moved_up = set()
    pages = 0
    while True:
        params: dict[str, Any] = {"board": board, "limit": 7}
        if cursor:
            params["cursor"] = cursor
        body = api.get("/api/scores/page", params=params).json()
        seen += users_of(body)
        pages += 1
        cursor = body["next_cursor"]
        if not cursor:
            break
        # between pages: someone already listed climbs, someone not yet listed climbs
        # within the unlisted part, and the cursor's own user climbs (it must not repeat)
        ahead = users[len(seen) + 5] if len(seen) + 5 < len(users) else None
        changes = [entry(seen[0], 1, T0 + pages, board=board), entry(seen[-1], 3, T0, board=board)]
        if ahead:
            changes.append(entry(ahead, 4, T0, board=board))
            moved_up.add(ahead)
        seed(backing, keys, changes)
    assert len(seen) == len(set(seen)), "an entry was repeated"
    assert set(seen) == set(users), "an entry was skipped"
    assert pages == 9


def test_postgres_fallback_gives_the_same_answers(api: Api, backing: Backing,
                                                  tied_board: str) -> None:
    from scoreboard.embedded import free_port

    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    with ingest_server(backing.env(REDIS_URL=dead_redis), ready_path="/healthz") as url:
        fallback = Api(url)
        try:
            for path, params in [("/api/scores/top", {"board": tied_board}),
                                 ("/api/scores/users/u-b", {"board": tied_board}),
                                 ("/api/scores/around/u-c", {"board": tied_board, "radius": 1}),
                                 ("/api/scores/ranks", {"board": tied_board,
                                                        "user_ids": "u-d,u-a"}),
                                 ("/api/scores/page", {"board": tied_board, "limit": 2})]:
                from_redis = api.get(path, params=params)
                from_postgres = fallback.get(path, params=params)
                assert from_postgres.status_code == 200, from_postgres.text
                assert from_postgres.headers["x-board-source"] == "postgres"
                expected, actual = from_redis.json(), from_postgres.json()
                assert actual.pop("version") is None
                expected.pop("version")
                assert actual == expected, path
        finally:
            fallback.close()
