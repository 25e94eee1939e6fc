"""Spectators of a window (real broadcaster, real Redis): subscribe and SSE name a
window and get its current period; at the period's end they move to the next one,
which starts empty. The rank feed works on a window's current period too."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from broadcaster.app import build_state
from broadcaster.snapshots import Snapshot
from scoreboard.keys import Keys
from scoreboard.settings import load_settings
from scoreboard.windows import scope
from tests.servers import Backing, broadcaster_server, fresh_name
from tests.test_broadcaster import Writer, next_snapshot, scores, ws_url
from tests.test_watch_feed import neighbour, next_message, of_type, send, sse_events
from tests.window_support import make_board


@pytest.fixture(scope="module")
def broadcaster_url(backing: Backing) -> Iterator[str]:
    with broadcaster_server(backing.env(SNAPSHOT_INTERVAL_MS="100")) as url:
        yield url


@pytest.fixture(scope="module")
def daily_board(backing: Backing) -> dict[str, str]:
    board = fresh_name("daily")
    made = make_board(backing, board, windows=("all_time", "daily"))
    today = made.spec.period_at("daily", datetime.now(UTC))
    assert today is not None
    return {"board": board, "today": today.period,
            "scope": scope(board, "daily", today.period)}


def test_subscribe_to_a_window_gets_its_current_period(
        broadcaster_url: str, backing: Backing, keys: Keys, daily_board: dict[str, str]) -> None:
    board = daily_board["board"]

    async def scenario() -> None:
        writer = Writer(backing, keys)
        try:
            await writer.set(board, "ann", 50)  # all_time
            await writer.set(daily_board["scope"], "ann", 5)  # today's period
            async with connect(ws_url(broadcaster_url, board) + "&window=daily") as ws:
                first = await next_snapshot(ws)
                assert (first["board"], first["window"], first["period"]) == (
                    board, "daily", daily_board["today"])
                assert scores(first) == {"ann": 5}
                await ws.send(orjson.dumps({"type": "subscribe", "board": board}).decode())
                all_time = await next_snapshot(ws)
                assert "window" not in all_time and scores(all_time) == {"ann": 50}
                await ws.send(orjson.dumps({"type": "subscribe", "board": board,
                                            "window": "weekly"}).decode())
                refused = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
                assert (refused["type"], refused["code"]) == ("error", "window_not_found")
                await ws.send(orjson.dumps({"type": "subscribe", "board": board,
                                            "window": "daily"}).decode())
                again = await next_snapshot(ws)
                assert again["period"] == daily_board["today"]
                await writer.set(daily_board["scope"], "bob", 9)
                update = await next_snapshot(ws)
                assert scores(update) == {"bob": 9, "ann": 5} and update["window"] == "daily"
        finally:
            await writer.close()

    asyncio.run(scenario())


def test_sse_follows_a_window(broadcaster_url: str, daily_board: dict[str, str]) -> None:
    async def first_event() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as client, client.stream(
                "GET", broadcaster_url + "/sse",
                params={"board": daily_board["board"], "window": "daily"}) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    found: dict[str, Any] = orjson.loads(line[6:])
                    return found
        raise AssertionError("no snapshot")

    snapshot = asyncio.run(first_event())
    assert (snapshot["window"], snapshot["period"]) == ("daily", daily_board["today"])
    for params, status in [({"board": daily_board["board"], "window": "monthly"}, 404),
                           ({"board": fresh_name("nope"), "window": "daily"}, 404),
                           ({"board": daily_board["board"], "window": "hourly"}, 422)]:
        assert httpx.get(broadcaster_url + "/sse", params=params).status_code == status


class Recorder:
    kind = "websocket"

    def __init__(self) -> None:
        self.board = ""
        self.version_sent = -1
        self.received: list[Snapshot] = []

    def offer(self, snapshot: Snapshot) -> None:
        if snapshot.version > self.version_sent:
            self.received.append(snapshot)
            self.version_sent = snapshot.version

    def shut(self) -> None:
        pass


def test_at_the_end_of_a_period_spectators_move_to_the_next_one_empty(
        backing: Backing, keys: Keys, daily_board: dict[str, str]) -> None:
    board = daily_board["board"]

    async def scenario() -> None:
        writer = Writer(backing, keys)
        client = backing.async_redis()
        state = build_state(load_settings(backing.env()), client)
        try:
            await writer.set(daily_board["scope"], "ann", 7)
            spectator = Recorder()
            state.hub.join(spectator, daily_board["scope"])
            spectator.offer(await state.snapshots.current(daily_board["scope"]))
            assert await state.periods.rollover() == 0  # nothing ended yet
            tomorrow = datetime.now(UTC) + timedelta(days=1)
            assert await state.periods.rollover(tomorrow) == 1
            following = scope(board, "daily", tomorrow.date().isoformat())
            assert spectator.board == following and daily_board["scope"] not in state.hub.boards
            moved = orjson.loads(spectator.received[-1].payload)
            assert (moved["period"], moved["entries"]) == (tomorrow.date().isoformat(), [])
        finally:
            await writer.close()
            await client.aclose()

    asyncio.run(scenario())


def seasons_switching_soon(backing: Backing, board: str) -> str:
    """``board`` with season s1 ending 4 s from now and s2 starting then: a
    period's end that a test can wait for."""
    now = datetime.now(UTC).replace(microsecond=0)
    switch = now + timedelta(seconds=4)

    def iso(moment: datetime) -> str:
        return moment.isoformat().replace("+00:00", "Z")

    make_board(backing, board, seasons=(f"s1={iso(now - timedelta(hours=1))}/{iso(switch)}",
                                        f"s2={iso(switch)}/{iso(now + timedelta(hours=1))}"))
    return board


def test_a_season_ends_while_watched_and_the_next_one_starts_empty(
        broadcaster_url: str, backing: Backing, keys: Keys) -> None:
    """End to end: a season that ends a few seconds after the spectator connects;
    the broadcaster moves it to the next season (empty) by itself."""
    board = seasons_switching_soon(backing, fresh_name("seasons"))

    async def scenario() -> None:
        writer = Writer(backing, keys)
        try:
            await writer.set(scope(board, "season", "s1"), "ann", 3)
            async with connect(ws_url(broadcaster_url, board) + "&window=season") as ws:
                first = await next_snapshot(ws)
                assert (first["period"], scores(first)) == ("s1", {"ann": 3})
                following = await next_snapshot(ws, timeout_s=30)
                assert (following["window"], following["period"]) == ("season", "s2")
                assert following["entries"] == []
                await writer.set(scope(board, "season", "s2"), "bob", 1)
                update = await next_snapshot(ws)
                assert (update["period"], scores(update)) == ("s2", {"bob": 1})
        finally:
            await writer.close()

    asyncio.run(scenario())


def test_the_rank_feed_watches_a_player_on_a_windows_current_period(
        broadcaster_url: str, backing: Backing, keys: Keys) -> None:
    """Watching on ``?window=weekly`` reads the week's standings (the period's scope,
    ``board/weekly/<period>``), not all_time's; every rank, overtaken and unwatched
    message names the board, window and period as snapshots do."""
    board = fresh_name("arena")
    made = make_board(backing, board, windows=("all_time", "weekly"))
    week = made.spec.period_at("weekly", datetime.now(UTC))
    assert week is not None
    period, where = week.period, {"board": board, "window": "weekly", "period": week.period}
    period_scope = scope(board, "weekly", period)

    async def scenario() -> None:
        writer = Writer(backing, keys)
        try:
            for user_id, score in (("ann", 500), ("bob", 900)):  # all_time: bob leads
                await writer.set(board, user_id, score)
            for user_id, score in (("ann", 30), ("bob", 20), ("cyd", 10)):  # this week
                await writer.set(period_scope, user_id, score)
            async with connect(ws_url(broadcaster_url, board) + "&window=weekly") as ws:
                assert (await next_snapshot(ws))["period"] == period
                await send(ws, type="watch", user_id="bob")
                first = await next_message(ws, of_type("rank"))
                assert {k: first.get(k) for k in (*where, "user_id", "rank", "score", "above",
                                                  "below")} == {
                    **where, "user_id": "bob", "rank": 2, "score": 20,
                    "above": neighbour(1, "ann", 30), "below": neighbour(3, "cyd", 10)}
                await writer.set(period_scope, "cyd", 25)  # cyd passes bob this week
                passed = await next_message(ws, of_type("rank", rank=3))
                assert passed["above"] == neighbour(2, "cyd", 25)
                assert {k: passed.get(k) for k in where} == where
                overtaken = await next_message(ws, lambda m: m["type"] != "snapshot")
                assert overtaken["type"] == "overtaken"
                assert overtaken["by"] == neighbour(2, "cyd", 25)
                assert {k: overtaken.get(k) for k in where} == where
                await send(ws, type="unwatch", user_id="bob")
                unwatched = await next_message(ws, of_type("unwatched"))
                assert {k: unwatched.get(k) for k in where} == {**where}
        finally:
            await writer.close()

    asyncio.run(scenario())
    started = threading.Event()
    events = sse_events(broadcaster_url, f"/sse?board={board}&window=weekly&watch=bob", 1,
                        started, 1)
    assert [kind for kind, _ in events] == ["rank"]
    assert {k: events[0][1].get(k) for k in (*where, "rank")} == {**where, "rank": 3}


def test_watched_players_move_to_the_next_period_with_their_spectators(
        broadcaster_url: str, backing: Backing, keys: Keys) -> None:
    """A season that ends a few seconds after the watchers connect: on the WebSocket
    and on SSE, the watched player's next rank message is their standing in the
    next season, without asking again."""
    board = seasons_switching_soon(backing, fresh_name("seasonwatch"))
    started = threading.Event()

    async def scenario() -> tuple[list[dict[str, Any]], list[tuple[str, dict[str, Any]]]]:
        writer = Writer(backing, keys)
        try:
            await writer.set(scope(board, "season", "s1"), "bob", 3)
            await writer.set(scope(board, "season", "s2"), "ann", 9)  # s2 begins with these
            await writer.set(scope(board, "season", "s2"), "bob", 4)
            sse = asyncio.create_task(asyncio.to_thread(
                sse_events, broadcaster_url, f"/sse?board={board}&window=season&watch=bob", 2,
                started, 1))
            async with connect(ws_url(broadcaster_url, board) + "&window=season") as ws:
                await send(ws, type="watch", user_id="bob")
                ranks = [await next_message(ws, of_type("rank"))]
                ranks.append(await next_message(ws, of_type("rank", period="s2"),
                                                timeout_s=30))
            return ranks, await asyncio.wait_for(sse, 30)
        finally:
            await writer.close()

    ranks, events = asyncio.run(scenario())
    for standings in (ranks, [data for _, data in events]):
        assert [(m["period"], m["rank"], m["score"]) for m in standings] == [
            ("s1", 1, 3), ("s2", 2, 4)]
        assert standings[1]["above"] == neighbour(1, "ann", 9)


def _before_the_period_is_known(backing: Backing, board: str,
                                 messages: list[dict[str, str]]) -> tuple[str, dict[str, Any]]:
    """Send ``messages`` right after the handshake of a connection to ``board``'s
    daily window, while the broadcaster still looks its period up; returns today's
    period and the first message back that is not a snapshot. Thousands of board
    definitions under a key prefix of its own make the lookup slow enough that the
    messages always come first. Bob has 7 points today."""
    prefix = fresh_name("slowdefs")
    keys = Keys(prefix, shards=backing.redis_shards, cluster=backing.redis_cluster)
    made = make_board(backing, board, windows=("all_time", "daily"), key_prefix=prefix)
    today = made.spec.period_at("daily", datetime.now(UTC))
    assert today is not None

    async def scenario(url: str) -> dict[str, Any]:
        writer = Writer(backing, keys)
        try:
            raw = await writer.client.hget(keys.board_definitions, board)
            await writer.client.hset(keys.board_definitions, mapping={
                f"filler{n}": raw.replace(board, f"filler{n}") for n in range(20_000)})
            await writer.set(scope(board, "daily", today.period), "bob", 7)
            async with connect(ws_url(url, board) + "&window=daily") as ws:
                for message in messages:
                    await send(ws, **message)
                return await next_message(ws, lambda m: m["type"] != "snapshot")
        finally:
            await writer.client.delete(keys.board_definitions)
            await writer.close()

    with broadcaster_server(backing.env(KEY_PREFIX=prefix)) as url:
        return today.period, asyncio.run(scenario(url))


def test_a_watch_sent_before_the_window_is_resolved_follows_its_period(
        backing: Backing) -> None:
    """The player is followed on the period, not on the board of no name the
    connection had until then (seen on the cluster as a rank message with no window
    and no rank)."""
    board = fresh_name("earlywatch")
    period, first = _before_the_period_is_known(backing, board,
                                                [{"type": "watch", "user_id": "bob"}])
    assert {k: first.get(k) for k in ("type", "board", "window", "period", "rank", "score")} == {
        "type": "rank", "board": board, "window": "daily", "period": period, "rank": 1,
        "score": 7}


def test_an_unwatch_sent_before_the_window_is_resolved_names_the_board_and_window(
        backing: Backing) -> None:
    """Answered with the board and window of the handshake (its period is not known
    yet), not with an empty board name."""
    board = fresh_name("earlyunwatch")
    _, first = _before_the_period_is_known(backing, board, [
        {"type": "watch", "user_id": "bob"}, {"type": "unwatch", "user_id": "bob"}])
    assert first == {"type": "unwatched", "board": board, "window": "daily", "user_id": "bob"}
