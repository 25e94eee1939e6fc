"""The personal rank feed (watch one player) with real WebSocket and SSE clients,
a real broadcaster process and real Redis; the last test runs the whole path
(ingest, worker, Postgres, moderation)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from scoreboard.keys import Keys
from tests.servers import Backing, broadcaster_server, fresh_name
from tests.test_broadcaster import Writer, next_snapshot, scores, snapshot_where, ws_url

MAX_WATCHES = 3


@pytest.fixture(scope="module")
def live_url(backing: Backing) -> Iterator[str]:
    with broadcaster_server(backing.env(SNAPSHOT_INTERVAL_MS="50", WS_MAX_PER_IP="500",
                                       WS_MAX_WATCHES=str(MAX_WATCHES))) as url:
        yield url


async def send(ws: ClientConnection, **message: Any) -> None:
    await ws.send(orjson.dumps(message).decode())


async def next_message(ws: ClientConnection, predicate: Any, seen: list[dict[str, Any]] | None
                       = None, timeout_s: float = 10) -> dict[str, Any]:
    """The first message that ``predicate`` accepts; the ones before it go to ``seen``.
    Not one within ``timeout_s``: an AssertionError naming the messages that came."""
    deadline = time.monotonic() + timeout_s
    skipped: list[dict[str, Any]] = []
    while True:
        try:
            raw = await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            raise AssertionError(f"no message wanted within {timeout_s} s; "
                                 f"{len(skipped)} others came: {skipped[-6:]}") from None
        message: dict[str, Any] = orjson.loads(raw)
        if predicate(message):
            return message
        skipped.append(message)
        if seen is not None:
            seen.append(message)


def of_type(kind: str, **fields: Any) -> Any:
    return lambda m: m["type"] == kind and all(m.get(k) == v for k, v in fields.items())


async def received_so_far(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every message the server sent before answering a ping (a pong follows them)."""
    pong = await ws.ping()
    await asyncio.wait_for(pong, 10)
    messages = []
    while True:
        try:
            messages.append(orjson.loads(await asyncio.wait_for(ws.recv(), 0.05)))
        except TimeoutError:
            return messages


def neighbour(rank: int, user_id: str, score: int) -> dict[str, Any]:
    return {"rank": rank, "user_id": user_id, "username": user_id, "score": score}


def test_watch_sends_rank_and_neighbours_then_changes_and_overtaken(
        live_url: str, backing: Backing, keys: Keys) -> None:
    board = fresh_name("watch")

    async def scenario() -> None:
        writer = Writer(backing, keys)
        try:
            for user_id, score in (("ann", 30), ("bob", 20), ("cyd", 10)):
                await writer.set(board, user_id, score)
            async with connect(ws_url(live_url, board)) as ws:
                await next_snapshot(ws)
                await send(ws, type="watch", user_id="bob")
                first = await next_message(ws, of_type("rank"))
                assert {k: first[k] for k in ("board", "user_id", "username", "rank", "score",
                                              "above", "below")} == {
                    "board": board, "user_id": "bob", "username": "bob", "rank": 2,
                    "score": 20, "above": neighbour(1, "ann", 30),
                    "below": neighbour(3, "cyd", 10)}
                # cyd passes bob: a rank message, then who passed
                await writer.set(board, "cyd", 25)
                passed = await next_message(ws, of_type("rank", rank=3))
                assert passed["above"] == neighbour(2, "cyd", 25) and passed["below"] is None
                assert passed["version"] > first["version"]
                overtaken = await next_message(ws, lambda m: m["type"] != "snapshot")
                assert overtaken["type"] == "overtaken" and overtaken["user_id"] == "bob"
                assert overtaken["by"] == neighbour(2, "cyd", 25) and overtaken["rank"] == 3
                # bob climbs to the top: no one passed him
                seen: list[dict[str, Any]] = []
                await writer.set(board, "bob", 40)
                top = await next_message(ws, of_type("rank", rank=1), seen)
                assert top["above"] is None
                assert top["below"] == neighbour(2, "ann", 30) and top["score"] == 40
                # a change that leaves bob, his rank and his neighbours alone sends nothing
                await writer.set(board, "dee", 5)
                await snapshot_where(ws, lambda s: "dee" in scores(s))
                later = seen + await received_so_far(ws)
                assert [m for m in later if m["type"] in ("rank", "overtaken")] == []
                # a neighbour's new score is news
                await writer.set(board, "ann", 35)
                closer = await next_message(ws, of_type("rank"))
                assert closer["below"] == neighbour(2, "ann", 35) and closer["rank"] == 1
        finally:
            await writer.close()

    asyncio.run(scenario())


def test_unwatch_the_watch_cap_and_every_refusal_answer_in_the_error_format(
        live_url: str, backing: Backing, keys: Keys) -> None:
    board = fresh_name("refuse")

    async def scenario() -> None:
        writer = Writer(backing, keys)
        players = [f"w{i}" for i in range(MAX_WATCHES + 1)]
        try:
            for i, user_id in enumerate(players):
                await writer.set(board, user_id, 10 * (i + 1))
            async with connect(ws_url(live_url, board)) as ws:
                await next_snapshot(ws)

                async def refused(**message: Any) -> dict[str, Any]:
                    await send(ws, **message)
                    return await next_message(ws, of_type("error"))

                bad = await refused(type="watch", user_id="not a user id!")
                assert (bad["code"], bad["message"]) == (
                    "invalid_field", "user_id: must be 1 to 64 letters, digits, '_', '.', ':'"
                                     " or '-'")
                assert (await refused(type="watch"))["code"] == "invalid_field"
                assert (await refused(type="watch", user_id=42))["code"] == "invalid_field"
                assert (await refused(type="unwatch", user_id="x" * 65))["code"] \
                    == "invalid_field"
                unknown = await refused(type="watch", user_id="nobody-has-this-id")
                assert unknown["code"] == "unknown_user"
                assert unknown["user_id"] == "nobody-has-this-id"
                assert "nobody-has-this-id" in unknown["message"]
                stray = await refused(type="unwatch", user_id="w0")
                assert (stray["code"], stray["user_id"]) == ("not_watching", "w0")
                assert (await refused(type="dance"))["code"] == "invalid_message"
                for user_id in players[:MAX_WATCHES]:
                    await send(ws, type="watch", user_id=user_id)
                    await next_message(ws, of_type("rank", user_id=user_id))
                await send(ws, type="watch", user_id=players[0])  # again: nothing new
                capped = await refused(type="watch", user_id=players[-1])
                assert (capped["code"], capped["user_id"]) == ("too_many_watches", players[-1])
                assert str(MAX_WATCHES) in capped["message"]
                assert [m for m in await received_so_far(ws) if m["type"] != "snapshot"] == []
                await send(ws, type="unwatch", user_id="w0")
                assert await next_message(ws, of_type("unwatched")) == {
                    "type": "unwatched", "board": board, "user_id": "w0"}
                await send(ws, type="watch", user_id=players[-1])  # a slot is free again
                await next_message(ws, of_type("rank", user_id=players[-1]))
                # w0 climbs to the top, which moves w3 (watched) down: only w3's news comes
                await writer.set(board, "w0", 1000)
                moved = await next_message(ws, of_type("rank", user_id=players[-1]))
                assert moved["rank"] == 2 and moved["above"]["user_id"] == "w0"
                later = await received_so_far(ws)
                assert [m for m in later if m.get("user_id") == "w0"] == []
                # the connection carries on as before
                await writer.set(board, "late", 1)
                await snapshot_where(ws, lambda s: "late" in scores(s))
        finally:
            await writer.close()

    asyncio.run(scenario())


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_watchers_of_one_player_share_one_read_and_one_encoding(
        live_url: str, backing: Backing, keys: Keys) -> None:
    board = fresh_name("shared")
    watchers = 50

    async def scenario() -> None:
        writer = Writer(backing, keys)
        clients: list[ClientConnection] = []
        try:
            await writer.set(board, "star", 10)
            await writer.set(board, "rival", 5)
            clients = list(await asyncio.gather(*[connect(ws_url(live_url, board))
                                                  for _ in range(watchers)]))
            for ws in clients:
                await send(ws, type="watch", user_id="star")
            await asyncio.gather(*[next_message(ws, of_type("rank")) for ws in clients])
            built = metric(live_url, "scoreboard_rank_updates_built_total")
            sent = metric(live_url, "scoreboard_rank_updates_sent_total")
            await writer.set(board, "rival", 50)

            async def raw_rank(ws: ClientConnection) -> bytes:
                while True:
                    raw = await asyncio.wait_for(ws.recv(decode=False), 10)
                    if orjson.loads(raw)["type"] == "rank":
                        return raw

            received = await asyncio.gather(*[raw_rank(ws) for ws in clients])
            assert len(set(received)) == 1  # the same bytes, timestamp included
            assert orjson.loads(received[0])["rank"] == 2
            assert metric(live_url, "scoreboard_rank_updates_built_total") - built == 1
            assert metric(live_url, "scoreboard_rank_updates_sent_total") - sent == watchers
        finally:
            await asyncio.gather(*[ws.close() for ws in clients], return_exceptions=True)
            await writer.close()

    asyncio.run(scenario())


def test_watched_players_follow_a_board_switch(live_url: str, backing: Backing,
                                               keys: Keys) -> None:
    first, second = fresh_name("from"), fresh_name("to")

    async def scenario() -> None:
        writer = Writer(backing, keys)
        try:
            await writer.set(first, "roamer", 7)
            await writer.set(second, "roamer", 3)
            await writer.set(second, "local", 9)
            async with connect(ws_url(live_url, first)) as ws:
                await send(ws, type="watch", user_id="roamer")
                assert (await next_message(ws, of_type("rank")))["rank"] == 1
                await send(ws, type="subscribe", board=second)
                moved = await next_message(ws, of_type("rank", board=second))
                assert moved["rank"] == 2 and moved["above"] == neighbour(1, "local", 9)
                await writer.set(first, "roamer", 70)  # the old board is no longer followed
                await writer.set(second, "roamer", 30)
                back_on_top = await next_message(ws, of_type("rank", rank=1))
                assert back_on_top["board"] == second
                assert all(m.get("board") == second for m in await received_so_far(ws))
        finally:
            await writer.close()

    asyncio.run(scenario())


def sse_events(url: str, path: str, wanted: int, started: threading.Event,
               first: int) -> list[tuple[str, dict[str, Any]]]:
    """The first ``wanted`` events of ``path`` other than snapshots; ``started`` is set
    once ``first`` of them have come."""
    found = []
    with httpx.Client(timeout=10) as client, client.stream("GET", url + path) as response:
        assert response.status_code == 200
        event = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event != "snapshot":
                found.append((event, orjson.loads(line.removeprefix("data: "))))
                if len(found) == first:
                    started.set()
                if len(found) == wanted:
                    return found
    return found


def test_sse_streams_the_rank_feed_and_refuses_bad_watches(
        live_url: str, backing: Backing, keys: Keys) -> None:
    board = fresh_name("ssewatch")

    started = threading.Event()

    async def scenario() -> list[tuple[str, dict[str, Any]]]:
        writer = Writer(backing, keys)
        try:
            for user_id, score in (("sia", 10), ("tom", 4), ("ulf", 1)):
                await writer.set(board, user_id, score)
            streaming = asyncio.create_task(asyncio.to_thread(
                sse_events, live_url, f"/sse?board={board}&watch=tom&watch=ulf", 5, started, 2))
            assert await asyncio.to_thread(started.wait, 10)
            await writer.set(board, "ulf", 5)  # passes tom, not sia
            return await asyncio.wait_for(streaming, 10)
        finally:
            await writer.close()

    events = asyncio.run(scenario())
    first = {data["user_id"]: data for _, data in events[:2]}
    assert [kind for kind, _ in events[:2]] == ["rank", "rank"]
    assert first["tom"]["rank"] == 2 and first["tom"]["below"]["user_id"] == "ulf"
    assert first["ulf"]["rank"] == 3 and first["ulf"]["below"] is None
    later = {(kind, data["user_id"]): data for kind, data in events[2:]}
    assert set(later) == {("rank", "tom"), ("overtaken", "tom"), ("rank", "ulf")}
    assert later[("overtaken", "tom")]["by"]["user_id"] == "ulf"
    assert later[("rank", "ulf")]["rank"] == 2

    def refusal(query: str) -> tuple[int, str]:
        response = httpx.get(f"{live_url}/sse?board={board}&{query}")
        return response.status_code, response.json()["error"]["code"]

    assert refusal("watch=bad%20id") == (422, "invalid_field")
    assert refusal("watch=no-such-player") == (404, "unknown_user")
    too_many = "&".join(f"watch=p{i}" for i in range(MAX_WATCHES + 1))
    assert refusal(too_many) == (422, "too_many_watches")


def test_tied_players_and_their_neighbours_share_competition_ranks(
        live_url: str, backing: Backing, keys: Keys) -> None:
    board = fresh_name("ties")

    async def scenario() -> None:
        writer = Writer(backing, keys)
        try:
            for user_id, score in (("top", 50), ("t1", 10), ("t2", 10), ("t3", 10), ("low", 5)):
                await writer.set(board, user_id, score)
            async with connect(ws_url(live_url, board)) as ws:
                standings = {}
                for user_id in ("t1", "t3", "low"):
                    await send(ws, type="watch", user_id=user_id)
                    standings[user_id] = await next_message(ws, of_type("rank", user_id=user_id))
                assert standings["t1"]["rank"] == 2
                assert standings["t1"]["above"] == neighbour(1, "top", 50)
                assert standings["t1"]["below"] == neighbour(2, "t2", 10)
                assert standings["t3"]["rank"] == 2
                assert standings["t3"]["above"] == neighbour(2, "t2", 10)
                assert standings["t3"]["below"] == neighbour(5, "low", 5)
                assert standings["low"]["rank"] == 5
                assert standings["low"]["above"] == neighbour(2, "t3", 10)
        finally:
            await writer.close()

    asyncio.run(scenario())
