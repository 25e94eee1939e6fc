"""The broadcaster process with real WebSocket and SSE clients, real Redis."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Origin

from scoreboard.board_writes import BoardTotal, apply_and_ack
from scoreboard.keys import Keys
from scoreboard.lua import register_scripts
from tests.servers import Backing, broadcaster_server, fresh_name

INTERVAL_MS = 100


@pytest.fixture(scope="module")
def broadcaster_url(backing: Backing) -> Iterator[str]:
    with broadcaster_server(backing.env(SNAPSHOT_INTERVAL_MS=str(INTERVAL_MS),
                                       WS_MAX_PER_IP="3000",
                                       WS_ALLOWED_ORIGINS="http://spectators.example")) as url:
        yield url


def ws_url(url: str, board: str) -> str:
    return url.replace("http://", "ws://") + f"/ws?board={board}"


class Writer:
    """Changes boards through the worker's Redis write path (set totals, bump the
    revision, publish the notice), without Postgres: fast enough for bursts."""

    def __init__(self, backing: Backing, keys: Keys) -> None:
        self.client = backing.async_redis(decode_responses=True)
        self.scripts = register_scripts(self.client)
        self.keys = keys
        self.versions: dict[tuple[str, str], int] = {}

    async def set(self, board: str, user_id: str, score: int) -> None:
        version = self.versions.get((board, user_id), 0) + 1
        self.versions[(board, user_id)] = version
        total = BoardTotal(board=board, user_id=user_id, score=score,
                           reached_at=datetime.now(UTC), version=version, username=user_id)
        await apply_and_ack(self.client, self.scripts, self.keys, group="persisters",
                            totals=[total], ack_ids=[])

    async def close(self) -> None:
        await self.client.aclose()


async def next_snapshot(ws: ClientConnection, timeout_s: float = 5) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), timeout_s))
        if message["type"] == "snapshot":
            return message


async def snapshot_where(ws: ClientConnection, predicate: Any,
                         timeout_s: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        snapshot = await next_snapshot(ws, max(0.1, deadline - time.monotonic()))
        if predicate(snapshot):
            return snapshot


def scores(snapshot: dict[str, Any]) -> dict[str, int]:
    return {e["user_id"]: e["score"] for e in snapshot["entries"]}


def test_snapshot_on_connect_then_on_change(broadcaster_url: str, backing: Backing,
                                            keys: Keys) -> None:
    board = fresh_name("live")

    async def scenario() -> None:
        writer = Writer(backing, keys)
        try:
            await writer.set(board, "ann", 3)
            async with connect(ws_url(broadcaster_url, board)) as ws:
                first = await next_snapshot(ws)
                assert first["board"] == board and scores(first) == {"ann": 3}
                assert first["entries"][0] == {"rank": 1, "user_id": "ann", "username": "ann",
                                               "score": 3}
                assert abs(first["ts"] - time.time() * 1000) < 5000
                await writer.set(board, "bob", 5)
                second = await snapshot_where(ws, lambda s: "bob" in scores(s))
                assert [e["user_id"] for e in second["entries"]] == ["bob", "ann"]
                assert second["version"] > first["version"]
        finally:
            await writer.close()

    asyncio.run(scenario())


def test_a_thousand_clients_all_receive_the_final_state(broadcaster_url: str,
                                                        backing: Backing, keys: Keys) -> None:
    board = fresh_name("crowd")

    async def scenario() -> None:
        writer = Writer(backing, keys)
        clients: list[ClientConnection] = []
        try:
            for start in range(0, 1000, 100):
                clients += await asyncio.gather(*[
                    connect(ws_url(broadcaster_url, board), open_timeout=30)
                    for _ in range(start, start + 100)])
            await asyncio.gather(*[next_snapshot(ws, 30) for ws in clients])
            for i in range(50):
                await writer.set(board, f"player{i % 7}", 10 + i)
            final = {f"player{i % 7}": 10 + i for i in range(43, 50)}
            received = await asyncio.gather(*[
                snapshot_where(ws, lambda s: scores(s) == final, 30) for ws in clients])
            assert len(received) == 1000
            assert len({s["version"] for s in received}) == 1
        finally:
            await asyncio.gather(*[ws.close() for ws in clients], return_exceptions=True)
            await writer.close()

    asyncio.run(scenario())


def test_a_burst_of_changes_is_throttled_and_its_last_state_arrives(
        broadcaster_url: str, backing: Backing, keys: Keys) -> None:
    board = fresh_name("burst")

    async def scenario() -> None:
        writer = Writer(backing, keys)
        try:
            async with connect(ws_url(broadcaster_url, board)) as ws:
                await next_snapshot(ws)
                received: list[dict[str, Any]] = []

                async def collect() -> None:
                    while True:
                        received.append(await next_snapshot(ws, 30))

                collector = asyncio.create_task(collect())
                started = time.monotonic()
                for i in range(1000):
                    await writer.set(board, f"p{i % 20}", i + 1)
                final = {f"p{i % 20}": i + 1 for i in range(990, 1000)}  # the top 10
                deadline = time.monotonic() + 30
                while not (received and scores(received[-1]) == final):  # the trailing edge
                    assert time.monotonic() < deadline, "the last state never arrived"
                    await asyncio.sleep(0.01)
                elapsed = time.monotonic() - started
                await asyncio.sleep(INTERVAL_MS / 1000)  # anything after it would be extra
                collector.cancel()
                assert scores(received[-1]) == final
                allowed = elapsed / (INTERVAL_MS / 1000) + 2
                assert len(received) <= allowed, (len(received), elapsed)
                versions = [s["version"] for s in received]
                assert versions == sorted(set(versions))
        finally:
            await writer.close()

    asyncio.run(scenario())


def _raw_websocket(url: str, board: str) -> socket.socket:
    """A client that completes the handshake and then never reads a byte."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall((f"GET /ws?board={board} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    return sock


def test_a_client_that_never_reads_is_dropped_and_others_keep_receiving(
        backing: Backing, keys: Keys) -> None:
    board = fresh_name("slow")
    env = backing.env(SNAPSHOT_INTERVAL_MS="20", SNAPSHOT_SIZE="100", WS_PING_INTERVAL_S="1",
                      WS_PING_TIMEOUT_S="1", WS_SEND_TIMEOUT_S="1")
    with broadcaster_server(env) as url:

        def spectators() -> int:
            count: int = httpx.get(url + "/healthz").json()["spectators"]
            return count

        async def scenario() -> None:
            writer = Writer(backing, keys)
            stuck = _raw_websocket(url, board)
            try:
                async with connect(ws_url(url, board)) as healthy:
                    await next_snapshot(healthy)
                    deadline = time.monotonic() + 5
                    while spectators() < 2:
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.05)
                    # the healthy client keeps reading all along
                    final = asyncio.create_task(snapshot_where(
                        healthy, lambda s: s["entries"] and s["entries"][0]["score"] == 400, 30))
                    for i in range(400):  # 100 entries of changes, ~8 KB a snapshot
                        await writer.set(board, f"player-with-a-long-name-{i % 100:03d}", i + 1)
                        if i % 20 == 0:
                            await asyncio.sleep(0.02)
                    assert (await final)["entries"][0]["score"] == 400
                    deadline = time.monotonic() + 10
                    while spectators() != 1:
                        assert time.monotonic() < deadline, "the stuck client was never dropped"
                        await asyncio.sleep(0.1)
                    # and the healthy one is still served
                    await writer.set(board, "late-arrival", 10_000)
                    late = await snapshot_where(
                        healthy, lambda s: s["entries"][0]["user_id"] == "late-arrival")
                    assert late["entries"][0]["score"] == 10_000
            finally:
                stuck.close()
                await writer.close()

        asyncio.run(scenario())


def test_foreign_origin_bad_board_and_address_cap_are_refused(
        broadcaster_url: str, backing: Backing) -> None:
    async def scenario() -> None:
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            await connect(ws_url(broadcaster_url, "global"), origin=Origin("http://evil.example"))
        assert refused.value.response.status_code == 403
        async with connect(ws_url(broadcaster_url, "global"),
                           origin=Origin("http://spectators.example")) as ws:
            assert (await next_snapshot(ws))["board"] == "global"
        with pytest.raises(websockets.exceptions.InvalidStatus):
            await connect(ws_url(broadcaster_url, "bad board!"))

    asyncio.run(scenario())
    with broadcaster_server(backing.env(WS_MAX_PER_IP="2")) as url:

        async def capped() -> None:
            async with connect(ws_url(url, "global")), connect(ws_url(url, "global")):
                with pytest.raises(websockets.exceptions.InvalidStatus):
                    await connect(ws_url(url, "global"))
            # slots are released on disconnect
            async with connect(ws_url(url, "global")) as ws:
                await next_snapshot(ws)

        asyncio.run(capped())


def test_compression_is_refused_even_when_the_client_offers_it(broadcaster_url: str) -> None:
    async def scenario() -> None:
        async with connect(ws_url(broadcaster_url, "global"), compression="deflate") as ws:
            assert ws.response is not None
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            await next_snapshot(ws)

    asyncio.run(scenario())


def test_an_oversized_client_message_closes_the_connection(broadcaster_url: str) -> None:
    async def scenario() -> None:
        async with connect(ws_url(broadcaster_url, "global")) as ws:
            await next_snapshot(ws)
            await ws.send("x" * 10_000)  # the cap is 4096 bytes
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

    asyncio.run(scenario())


def test_subscribe_switches_boards_and_bad_messages_change_nothing(
        broadcaster_url: str, backing: Backing, keys: Keys) -> None:
    first, second = fresh_name("one"), fresh_name("two")

    async def scenario() -> None:
        writer = Writer(backing, keys)
        try:
            await writer.set(first, "ann", 1)
            await writer.set(second, "bob", 2)
            async with connect(ws_url(broadcaster_url, first)) as ws:
                assert scores(await next_snapshot(ws)) == {"ann": 1}
                await ws.send("not json")
                error = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
                assert error["type"] == "error" and error["code"] == "invalid_message"
                await ws.send(orjson.dumps({"type": "subscribe", "board": "bad board"}).decode())
                assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "error"
                await ws.send(orjson.dumps({"type": "subscribe", "board": second}).decode())
                switched = await next_snapshot(ws)
                assert (switched["board"], scores(switched)) == (second, {"bob": 2})
                await writer.set(first, "ann", 100)  # the old board no longer reaches it
                await writer.set(second, "bob", 200)
                update = await next_snapshot(ws)
                assert (update["board"], scores(update)) == (second, {"bob": 200})
        finally:
            await writer.close()

    asyncio.run(scenario())


def test_two_broadcasters_give_the_same_versions(backing: Backing, keys: Keys) -> None:
    board = fresh_name("twins")
    env = backing.env(SNAPSHOT_INTERVAL_MS="50")
    with broadcaster_server(env) as url_a, broadcaster_server(env) as url_b:

        async def scenario() -> None:
            writer = Writer(backing, keys)
            seen: dict[str, dict[int, dict[str, int]]] = {"a": {}, "b": {}}
            try:
                async with connect(ws_url(url_a, board)) as a, connect(ws_url(url_b, board)) as b:

                    async def collect(name: str, ws: ClientConnection) -> None:
                        while True:
                            snapshot = await next_snapshot(ws, 30)
                            seen[name][snapshot["version"]] = scores(snapshot)

                    tasks = [asyncio.create_task(collect("a", a)),
                             asyncio.create_task(collect("b", b))]
                    for i in range(60):
                        await writer.set(board, f"p{i % 5}", i + 1)
                        await asyncio.sleep(0.01)
                    await asyncio.sleep(1.5)
                    for task in tasks:
                        task.cancel()
            finally:
                await writer.close()
            common = set(seen["a"]) & set(seen["b"])
            assert max(seen["a"]) == max(seen["b"])
            assert len(common) >= 1
            for version in common:
                assert seen["a"][version] == seen["b"][version]

        asyncio.run(scenario())


def test_sse_streams_the_same_snapshots(broadcaster_url: str, backing: Backing,
                                        keys: Keys) -> None:
    board = fresh_name("sse")

    async def scenario() -> None:
        writer = Writer(backing, keys)
        try:
            await writer.set(board, "ann", 1)
            async with httpx.AsyncClient(timeout=10) as client, client.stream(
                    "GET", broadcaster_url + "/sse", params={"board": board}) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                events = response.aiter_lines()
                snapshots = []
                async for line in events:
                    if line.startswith("data: "):
                        snapshots.append(orjson.loads(line[6:]))
                        if len(snapshots) == 1:
                            await writer.set(board, "ann", 42)
                        elif scores(snapshots[-1]) == {"ann": 42}:
                            break
                assert scores(snapshots[0]) == {"ann": 1}
                assert snapshots[-1]["version"] > snapshots[0]["version"]
        finally:
            await writer.close()

    asyncio.run(scenario())
    bad = httpx.get(broadcaster_url + "/sse", params={"board": "bad board"})
    assert bad.status_code == 422


def test_a_lost_notice_is_caught_by_the_revision_poll(broadcaster_url: str, backing: Backing,
                                                      keys: Keys) -> None:
    board = fresh_name("quiet")

    async def scenario() -> None:
        writer = Writer(backing, keys)
        try:
            await writer.set(board, "ann", 1)
            async with connect(ws_url(broadcaster_url, board)) as ws:
                await next_snapshot(ws)
                # change the board as a worker would, but without publishing the notice
                await writer.scripts.set_totals(keys, board=board, totals=[BoardTotal(
                    board=board, user_id="ann", score=7, reached_at=datetime.now(UTC),
                    version=99, username="ann")], hidden=[False] if keys.sharded else None)
                await writer.client.incr(keys.board_revision(board))
                # without the poll it never comes (no notice was sent)
                snapshot = await snapshot_where(ws, lambda s: scores(s) == {"ann": 7}, 10)
                assert snapshot["board"] == board
        finally:
            await writer.close()

    asyncio.run(scenario())
