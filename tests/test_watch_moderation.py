"""The rank feed on the whole path: increments through ingest, a real worker
process persisting them, a broadcaster, and bans and shadow-bans through the
moderation code the admin command uses. Watched players who are banned or
shadow-banned drop off the feed exactly as they drop off the board reads."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from scoreboard.db import create_pool
from scoreboard.keys import Keys
from scoreboard.lua import register_scripts
from scoreboard.moderation import Moderation
from tests.conftest import Api, Player
from tests.servers import Backing, broadcaster_server, create_board, fresh_name
from tests.test_broadcaster import next_snapshot, ws_url
from tests.test_watch_feed import next_message, of_type, send
from tests.worker_support import worker_process


def post(api: Api, backend: Player, board: str, user_id: str, points: int) -> None:
    response = api.post("/api/scores/batch", headers=backend.headers, json={"increments": [
        {"user_id": user_id, "points": points, "event_id": fresh_name("ev"), "board": board,
         "username": user_id}]})
    assert response.status_code == 202, response.text


def wait_for_board(api: Api, board: str, expected: dict[str, int]) -> None:
    deadline = time.monotonic() + 30
    while True:
        entries = api.get("/api/scores/top", params={"board": board}).json()["entries"]
        if {e["user_id"]: e["score"] for e in entries} == expected:
            return
        assert time.monotonic() < deadline, entries
        time.sleep(0.1)


def test_banned_and_shadow_banned_players_leave_the_feed_as_they_leave_board_reads(
        api: Api, backend: Player, backing: Backing, keys: Keys, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # both processes' logs go into a failure's message (CI shows its head)
    logs = {"broadcaster": tmp_path / "broadcaster.log", "worker": tmp_path / "worker.log"}
    monkeypatch.setenv("WORKER_TEST_LOG", str(logs["worker"]))
    board = create_board(backing, fresh_name("modwatch"), max_points=100)
    ann, bob, cyd = (fresh_name(name) for name in ("ann", "bob", "cyd"))

    def rank_read(user_id: str) -> int:
        return api.get(f"/api/scores/users/{user_id}", params={"board": board}).status_code

    with worker_process(backing.env()), broadcaster_server(
            backing.env(SNAPSHOT_INTERVAL_MS="50"), log=logs["broadcaster"]) as live:
        for user_id, points in ((ann, 30), (bob, 20), (cyd, 10)):
            post(api, backend, board, user_id, points)
        wait_for_board(api, board, {ann: 30, bob: 20, cyd: 10})

        async def scenario() -> None:
            client = backing.async_redis(decode_responses=True)
            pool = await create_pool(backing.database_url, max_size=2)
            moderation = Moderation(redis=client, pool=pool, scripts=register_scripts(client),
                                    keys=keys)
            try:
                async with connect(ws_url(live, board)) as ws, \
                        connect(ws_url(live, board)) as cyd_watcher:
                    await next_snapshot(ws)
                    await send(ws, type="watch", user_id=bob)
                    first = await next_message(ws, of_type("rank"))
                    assert (first["rank"], first["above"]["user_id"],
                            first["below"]["user_id"]) == (2, ann, cyd)
                    await send(cyd_watcher, type="watch", user_id=cyd)
                    assert (await next_message(cyd_watcher, of_type("rank")))["rank"] == 3

                    await moderation.restrict(ann, "banned", reason="test")
                    promoted = await next_message(ws, of_type("rank", rank=1))
                    assert promoted["above"] is None
                    assert await asyncio.to_thread(rank_read, ann) == 404
                    # a banned player can still be watched: off the board, as reads say
                    await send(ws, type="watch", user_id=ann)
                    gone = await next_message(ws, of_type("rank", user_id=ann))
                    assert (gone["rank"], gone["score"], gone["above"], gone["below"]) == (
                        None, None, None, None)

                    await moderation.restrict(cyd, "shadow_banned", reason="test")
                    alone = await next_message(ws, of_type("rank", user_id=bob))
                    assert (alone["rank"], alone["below"]) == (1, None)
                    hidden = await next_message(cyd_watcher, of_type("rank", rank=None))
                    assert hidden["score"] is None and hidden["above"] is None
                    assert await asyncio.to_thread(rank_read, cyd) == 404

                    await moderation.lift(cyd, "shadow_banned", reason="appeal")
                    back = await next_message(cyd_watcher, of_type("rank", user_id=cyd))
                    assert (back["rank"], back["score"], back["above"]["user_id"]) == (2, 10, bob)
                    # cyd passes bob through ingest and the worker
                    await asyncio.to_thread(post, api, backend, board, cyd, 15)
                    seen: list[dict[str, Any]] = []
                    passed = await next_message(ws, of_type("overtaken", user_id=bob), seen,
                                                timeout_s=30)
                    assert passed["by"]["user_id"] == cyd and passed["by"]["score"] == 25
                    assert passed["rank"] == 2
                    assert any(m["type"] == "rank" and m.get("user_id") == bob
                               and m["rank"] == 2 for m in seen)
            finally:
                await pool.close()
                await client.aclose()

        try:
            asyncio.run(scenario())
        except AssertionError as failure:
            tails = "\n".join(f"--- {name} log:\n{log_tail(path)}" for name, path in logs.items())
            raise AssertionError(f"{failure}\n{tails}") from failure


def log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else "(none)"
