"""Ingest's HTTP protocol writes each answer in one system call (ingest/one_write.py),
and answers stay whole and in order: pipelined requests, ``Connection: close``,
large answers, a client gone before its answer. Against a real ``python -m
ingest`` process, the Procfile's command."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest

from loadtest.harness.processes import ingest_process
from tests.servers import Backing

REQUESTS = 200


@pytest.fixture(scope="module")
def ingest(backing: Backing, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[str, int, int]]:
    """(host, port, pid) of an ingest process of this module's own."""
    log = tmp_path_factory.mktemp("one-write") / "ingest.log"
    with ingest_process(backing.env(), log) as (url, pid):
        address = urlsplit(url)
        assert address.hostname is not None and address.port is not None
        yield address.hostname, address.port, pid


def write_calls(pid: int) -> int:
    """The process's write system calls so far (``syscw`` of /proc/PID/io: write and
    writev, which is how uvloop sends on a socket)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError("no syscw in /proc/PID/io")


def request(method: str, path: str, body: bytes = b"", *, close: bool = False) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {len(body)}\r\n"
    if body:
        head += "content-type: application/json\r\n"
    if close:
        head += "connection: close\r\n"
    return head.encode() + b"\r\n" + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await reader.readline()
    headers: dict[str, str] = {}
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


def test_each_answer_is_one_write(ingest: tuple[str, int, int]) -> None:
    """Both a hot path's answer (a refused increment: no Redis call) and the stack's
    (``/healthz``) go out in one write; uvicorn's own protocol makes two."""
    host, port, pid = ingest

    async def run() -> tuple[int, int]:
        reader, writer = await asyncio.open_connection(host, port)
        counts = []
        for message in (request("GET", "/healthz"),
                        request("POST", "/api/scores/increment", b"{}")):
            before = write_calls(pid)
            for _ in range(REQUESTS):
                writer.write(message)
                status, _, _ = await read_answer(reader)
                assert status in (200, 401)
            counts.append(write_calls(pid) - before)
        writer.close()
        return counts[0], counts[1]

    healthz, refused = asyncio.run(run())
    # A little room for the process's own writes meanwhile (a log line, a metric).
    assert REQUESTS <= healthz < REQUESTS * 1.2, healthz
    assert REQUESTS <= refused < REQUESTS * 1.2, refused


def test_pipelined_requests_get_whole_answers_in_order(ingest: tuple[str, int, int]) -> None:
    host, port, _ = ingest

    async def run() -> list[tuple[int, dict[str, str], bytes]]:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request("GET", "/healthz") + request("POST", "/api/scores/increment", b"{}")
                     + request("GET", "/no/such/path") + request("GET", "/healthz"))
        answers = [await read_answer(reader) for _ in range(4)]
        writer.close()
        return answers

    answers = asyncio.run(run())
    assert [status for status, _, _ in answers] == [200, 401, 404, 200]
    assert orjson.loads(answers[1][2])["error"]["code"] == "missing_token"
    assert orjson.loads(answers[2][2])["error"]["code"] == "not_found"
    ids = [headers["x-request-id"] for _, headers, _ in answers[1:3]]
    assert len(set(ids)) == 2


def test_connection_close_gets_the_whole_answer_then_the_end(
        ingest: tuple[str, int, int]) -> None:
    host, port, _ = ingest
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request("POST", "/api/scores/increment", b"{}", close=True))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401")
    assert b"connection: close" in head.lower()
    assert orjson.loads(body)["error"]["code"] == "missing_token"


def test_a_large_answer_arrives_whole(ingest: tuple[str, int, int]) -> None:
    """The API description (tens of kB) on a keep-alive connection, three times."""
    host, port, _ = ingest

    async def run() -> list[bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        bodies = []
        for _ in range(3):
            writer.write(request("GET", "/openapi.json"))
            status, _, body = await read_answer(reader)
            assert status == 200
            bodies.append(body)
        writer.close()
        return bodies

    bodies = asyncio.run(run())
    assert len(bodies[0]) > 20_000
    assert bodies[0] == bodies[1] == bodies[2]
    assert orjson.loads(bodies[0])["openapi"].startswith("3.")


def test_a_client_gone_before_its_answer_leaves_the_server_serving(
        ingest: tuple[str, int, int]) -> None:
    host, port, _ = ingest
    for _ in range(20):
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(request("POST", "/api/scores/increment", b"{}"))
            # linger 0: the close resets the connection, the answer has nowhere to go
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request("GET", "/healthz", close=True))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200")
