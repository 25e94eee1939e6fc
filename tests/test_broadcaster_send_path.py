"""The broadcaster's direct send path with real processes, sockets and Redis: refusals,
slow and stuck clients, SSE slots, proxies, and several processes on one port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from scoreboard.embedded import free_port
from scoreboard.keys import Keys
from tests.servers import Backing, broadcaster_server, fresh_name
from tests.test_broadcaster import Writer, next_snapshot, scores, snapshot_where, ws_url


def raw_upgrade(url: str, target: str, headers: dict[str, str] | None = None,
                receive_buffer: int | None = None) -> socket.socket:
    """A WebSocket handshake sent by hand; the caller reads (or never reads) the answer."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect((host, int(port)))
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    sock.sendall((f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
    return sock


def handshake_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of a refused handshake (the server closes after it)."""
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def spectator_count(url: str) -> int:
    count: int = httpx.get(url + "/healthz").json()["spectators"]
    return count


def counter(url: str, line_prefix: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(line_prefix):
            return float(line.split()[-1])
    return 0.0


def test_refused_handshakes_and_unknown_routes_answer_in_the_error_envelope(
        backing: Backing) -> None:
    env = backing.env(WS_MAX_PER_IP="1", WS_ALLOWED_ORIGINS="http://spectators.example")
    with broadcaster_server(env) as url:
        cases = [("/ws?board=global", {"Origin": "http://evil.example"}, 403,
                  "origin_not_allowed"),
                 ("/ws?board=bad%20board", {}, 422, "invalid_field"),
                 ("/elsewhere", {}, 404, "not_found")]
        for target, headers, status, code in cases:
            answer = handshake_answer(raw_upgrade(url, target, headers))
            assert answer[0] == status, (target, answer)
            assert orjson.loads(answer[2])["error"]["code"] == code
        held = raw_upgrade(url, "/ws?board=global")  # takes the address's only slot
        try:
            deadline = time.monotonic() + 10
            while spectator_count(url) < 1:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            status, headers, body = handshake_answer(raw_upgrade(url, "/ws?board=global"))
            assert status == 429 and headers["retry-after"] == "5"
            assert orjson.loads(body)["error"]["code"] == "too_many_connections"
        finally:
            held.close()
        missing = httpx.get(url + "/nothing-here")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        wrong = httpx.post(url + "/healthz")
        assert wrong.status_code == 405
        assert wrong.json()["error"]["code"] == "method_not_allowed"
        assert httpx.get(url + "/readyz").json() == {"status": "ok"}


def test_the_address_cap_counts_forwarded_clients_only_behind_a_trusted_proxy(
        backing: Backing) -> None:
    env = backing.env(WS_MAX_PER_IP="1", TRUSTED_PROXIES="127.0.0.1/32")
    with broadcaster_server(env) as url:

        async def scenario() -> None:
            def via_proxy(client: str) -> dict[str, str]:
                return {"X-Forwarded-For": client}

            async with connect(ws_url(url, "global"), additional_headers=via_proxy("10.0.0.1")) \
                    as first, connect(ws_url(url, "global"),
                                      additional_headers=via_proxy("10.0.0.2")) as second:
                await next_snapshot(first)
                await next_snapshot(second)  # two players behind one proxy: both admitted
                again = handshake_answer(raw_upgrade(url, "/ws?board=global",
                                                     via_proxy("203.0.113.9, 10.0.0.1")))
                assert again[0] == 429  # the same player again: its own cap

        asyncio.run(scenario())
    with broadcaster_server(backing.env(WS_MAX_PER_IP="1")) as url:  # no trusted proxy

        async def untrusted() -> None:
            async with connect(ws_url(url, "global"),
                               additional_headers={"X-Forwarded-For": "10.0.0.1"}) as first:
                await next_snapshot(first)
                spoofed = handshake_answer(raw_upgrade(url, "/ws?board=global",
                                                       {"X-Forwarded-For": "10.0.0.2"}))
                assert spoofed[0] == 429  # the header is ignored: one peer address

        asyncio.run(untrusted())


async def churn(writer: Writer, board: str, *, until: Any, failure: str) -> int:
    """Move 100 long-named players (snapshots of ~8 KB) until ``until()`` holds;
    returns the last score written (the top of the final state)."""
    score, deadline = 0, time.monotonic() + 60
    while not until():
        assert time.monotonic() < deadline, failure
        for _ in range(20):
            score += 1
            await writer.set(board, f"player-with-a-long-name-{score % 100:03d}", score)
        await asyncio.sleep(0.05)
    return score


def test_a_client_whose_socket_buffer_is_full_is_cut_off_by_the_send_path(
        backing: Backing, keys: Keys) -> None:
    """Pings are far apart here, so only the send path can drop the stuck client."""
    board = fresh_name("stuck")
    env = backing.env(SNAPSHOT_INTERVAL_MS="20", SNAPSHOT_SIZE="100", WS_PING_INTERVAL_S="600",
                      WS_SEND_TIMEOUT_S="1", WS_WRITE_BUFFER_BYTES="4096")
    with broadcaster_server(env) as url:

        async def scenario() -> None:
            writer = Writer(backing, keys)
            stuck = raw_upgrade(url, f"/ws?board={board}", receive_buffer=4096)
            try:
                async with connect(ws_url(url, board)) as healthy:
                    await next_snapshot(healthy)
                    deadline = time.monotonic() + 10
                    while spectator_count(url) < 2:
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.05)
                    await churn(writer, board, until=lambda: spectator_count(url) == 1,
                                failure="the stuck client was never dropped")
                    assert counter(url, 'scoreboard_spectators_dropped_total{reason="slow"}') >= 1
                    await writer.set(board, "late-arrival", 1_000_000)
                    late = await snapshot_where(
                        healthy, lambda s: s["entries"][0]["user_id"] == "late-arrival", 30)
                    assert late["entries"][0]["score"] == 1_000_000
            finally:
                stuck.close()
                await writer.close()

        asyncio.run(scenario())


def read_frames(sock: socket.socket, until: Any, timeout_s: float = 30) -> list[dict[str, Any]]:
    """Read unmasked text frames from a raw socket until ``until(message)`` holds."""
    sock.settimeout(timeout_s)
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        buffer += sock.recv(65536)
    buffer = buffer.split(b"\r\n\r\n", 1)[1]
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        while len(buffer) >= 2:
            length, header = buffer[1] & 0x7F, 2
            if length == 126:
                length, header = int.from_bytes(buffer[2:4]), 4
            elif length == 127:
                length, header = int.from_bytes(buffer[2:10]), 10
            if len(buffer) < header + length:
                break
            opcode, payload = buffer[0] & 0x0F, buffer[header:header + length]
            buffer = buffer[header + length:]
            if opcode == 0x1:
                messages.append(orjson.loads(payload))
                if until(messages[-1]):
                    return messages
        buffer += sock.recv(65536)
    raise TimeoutError(f"condition not met after {len(messages)} messages")


def test_a_client_that_falls_behind_skips_to_the_newest_snapshot_when_it_reads_again(
        backing: Backing, keys: Keys) -> None:
    board = fresh_name("lagging")
    env = backing.env(SNAPSHOT_INTERVAL_MS="20", SNAPSHOT_SIZE="100", WS_PING_INTERVAL_S="600",
                      WS_SEND_TIMEOUT_S="120", WS_WRITE_BUFFER_BYTES="4096")
    with broadcaster_server(env) as url:

        async def scenario() -> None:
            writer = Writer(backing, keys)
            lagging = raw_upgrade(url, f"/ws?board={board}", receive_buffer=4096)
            skipped = 'scoreboard_snapshots_skipped_total '
            try:
                # it reads nothing while the board moves
                final = await churn(writer, board, until=lambda: counter(url, skipped) >= 3,
                                    failure="the buffer never filled")
                messages = await asyncio.to_thread(
                    read_frames, lagging,
                    lambda m: bool(m["entries"]) and m["entries"][0]["score"] == final)
                versions = [m["version"] for m in messages]
                assert versions == sorted(set(versions))  # never back, never twice
                assert spectator_count(url) == 1  # still connected: it was only behind
            finally:
                lagging.close()
                await writer.close()

        asyncio.run(scenario())


def test_sse_slots_are_released_on_early_disconnect_and_on_redis_errors(
        backing: Backing) -> None:
    with broadcaster_server(backing.env(WS_MAX_PER_IP="1")) as url:
        for _ in range(5):
            with httpx.Client(timeout=10) as client, client.stream(
                    "GET", url + "/sse", params={"board": "global"}) as response:
                assert response.status_code == 200
                next(response.iter_lines())  # then hang up early
        deadline = time.monotonic() + 10
        while spectator_count(url) != 0:
            assert time.monotonic() < deadline, "an SSE slot was kept after its client left"
            time.sleep(0.05)
        with httpx.Client(timeout=10) as client, client.stream(
                "GET", url + "/sse", params={"board": "global"}) as response:
            assert response.status_code == 200
    closed_port = free_port()  # nothing listens there: every Redis call fails
    env = backing.env(WS_MAX_PER_IP="1", REDIS_URL=f"redis://127.0.0.1:{closed_port}/0")
    with broadcaster_server(env) as url:
        for _ in range(3):
            refused = httpx.get(url + "/sse", params={"board": "global"}, timeout=10)
            assert refused.status_code == 503, refused.text  # not 429: no slot leaked
            assert refused.json()["error"]["code"] == "unavailable"
        assert httpx.get(url + "/readyz").status_code == 503


def test_two_processes_share_one_port_their_metrics_and_the_same_versions(
        backing: Backing, keys: Keys) -> None:
    board = fresh_name("shared")
    with broadcaster_server(backing.env(BROADCASTER_PROCESSES="2",
                                        SNAPSHOT_INTERVAL_MS="50")) as url:

        async def scenario() -> None:
            writer = Writer(backing, keys)
            clients = []
            try:
                await writer.set(board, "ann", 1)
                clients = [await connect(ws_url(url, board)) for _ in range(40)]
                await asyncio.gather(*[next_snapshot(ws) for ws in clients])
                per_process: dict[int, int] = {}
                async with httpx.AsyncClient() as http:
                    for _ in range(60):  # each request may land on either process
                        health = (await http.get(url + "/healthz",
                                                 headers={"Connection": "close"})).json()
                        per_process[health["pid"]] = health["spectators"]
                assert len(per_process) == 2, per_process
                assert sum(per_process.values()) == 40
                # Whichever process answers a scrape answers for both.
                async with httpx.AsyncClient() as http:
                    for _ in range(10):
                        text = (await http.get(url + "/metrics",
                                               headers={"Connection": "close"})).text
                        assert 'scoreboard_spectators{transport="websocket"} 40.0' in text, text
                for i in range(30):
                    await writer.set(board, f"p{i % 5}", i + 2)
                final = {f"p{i % 5}": i + 2 for i in range(25, 30)} | {"ann": 1}
                finals = await asyncio.gather(*[
                    snapshot_where(ws, lambda s: scores(s) == final, 30) for ws in clients])
                assert len({s["version"] for s in finals}) == 1
            finally:
                await asyncio.gather(*[ws.close() for ws in clients], return_exceptions=True)
                await writer.close()

        asyncio.run(scenario())


def test_a_client_that_never_answers_pings_is_closed_and_one_that_answers_stays(
        backing: Backing) -> None:
    env = backing.env(WS_PING_INTERVAL_S="0.5", WS_PING_TIMEOUT_S="0.5")
    with broadcaster_server(env) as url:

        async def scenario() -> None:
            deaf = raw_upgrade(url, "/ws?board=global")  # reads, but never sends a pong
            async with connect(ws_url(url, "global"), ping_interval=None) as answering:
                await next_snapshot(answering)  # the library answers pings by itself
                deadline = time.monotonic() + 20
                timed_out = 'scoreboard_spectators_dropped_total{reason="ping_timeout"}'
                while counter(url, timed_out) < 1:
                    assert time.monotonic() < deadline, "the deaf client was never closed"
                    await asyncio.sleep(0.1)
                assert spectator_count(url) == 1
                await asyncio.sleep(2)  # several more ping rounds
                assert spectator_count(url) == 1
                await answering.send('{"type": "subscribe", "board": "global"}')
                assert (await next_snapshot(answering))["board"] == "global"
            deaf.settimeout(5)
            received = b""
            while chunk := deaf.recv(65536):
                received += chunk
            assert b"\x88" in received  # its close frame (1011) came before the end
            deaf.close()

        asyncio.run(scenario())


def test_stopping_the_broadcaster_closes_spectators_with_going_away(backing: Backing) -> None:
    with contextlib.ExitStack() as running:
        url = running.enter_context(broadcaster_server(backing.env()))

        async def scenario() -> None:
            async with connect(ws_url(url, "global")) as ws:
                await next_snapshot(ws)
                await asyncio.to_thread(running.close)  # SIGTERM, as a process manager stops it
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        await asyncio.wait_for(ws.recv(), 10)
                assert ws.close_code == 1001

        asyncio.run(scenario())
