"""Ingest's hot-script channel (ingest/script_batching.py) on a real Redis: each
concurrent call gets its own reply, error replies become redis-py's exceptions,
``NOSCRIPT`` is answered by loading the script, and a killed connection fails the
calls awaiting it and is replaced on the next call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError

from ingest.script_batching import ScriptBatcher
from tests.servers import Backing

pytestmark = pytest.mark.single_node("ingest's coalescing channel is one connection to one "
                                     "server; a cluster deployment does not use it")

ECHO = "return {KEYS[1], ARGV[1], tonumber(ARGV[2]) * 2}"


def run(backing: Backing, scenario: Any, max_calls: int = 4) -> Any:
    async def main() -> Any:
        client = backing.async_redis()
        batcher = ScriptBatcher(client, max_calls=max_calls)
        try:
            return await scenario(client, batcher)
        finally:
            await batcher.close()
            await client.aclose()

    return asyncio.run(main())


def test_concurrent_calls_each_get_their_own_reply(backing: Backing) -> None:
    async def scenario(client: Any, batcher: ScriptBatcher) -> list[Any]:
        echo = client.register_script(ECHO)
        await echo(keys=["k"], args=["a", 1])  # loaded
        # 50 calls in one turn: written in groups of max_calls, and at the turn's end
        return await asyncio.gather(*(batcher.call(echo, [f"key{i}"], [f"v{i}", i])
                                      for i in range(50)))

    replies = run(backing, scenario)
    assert replies == [[f"key{i}".encode(), f"v{i}".encode(), 2 * i] for i in range(50)]


def test_error_replies_are_redis_py_exceptions_of_their_call_only(backing: Backing) -> None:
    async def scenario(client: Any, batcher: ScriptBatcher) -> Any:
        echo = client.register_script(ECHO)
        full = client.register_script(
            "return redis.error_reply('OOM command not allowed when used memory > maxmemory')")
        failing = client.register_script("return redis.error_reply('ERR no such thing')")
        for script in (echo, full, failing):
            await client.script_load(script.script)
        return await asyncio.gather(batcher.call(echo, ["k"], ["a", 1]),
                                    batcher.call(full, [], []),
                                    batcher.call(failing, [], []),
                                    batcher.call(echo, ["k"], ["b", 2]),
                                    return_exceptions=True)

    ok, full, failing, ok_too = run(backing, scenario)
    assert ok == [b"k", b"a", 2] and ok_too == [b"k", b"b", 4]
    assert isinstance(full, OutOfMemoryError)  # answered 503 overloaded by the app
    assert isinstance(failing, ResponseError) and not isinstance(failing, OutOfMemoryError)


def test_noscript_loads_the_script_and_runs_the_call(backing: Backing) -> None:
    async def scenario(client: Any, batcher: ScriptBatcher) -> list[Any]:
        echo = client.register_script(ECHO)
        first = await batcher.call(echo, ["k"], ["a", 1])  # never loaded before: NOSCRIPT
        await client.script_flush()  # as after a Redis restart
        return [first, *await asyncio.gather(*(batcher.call(echo, ["k"], ["b", i])
                                                for i in range(6)))]

    first, *rest = run(backing, scenario)
    assert first == [b"k", b"a", 2]
    assert rest == [[b"k", b"b", 2 * i] for i in range(6)]


def test_a_lost_connection_fails_its_calls_and_the_next_call_reconnects(
        backing: Backing) -> None:
    async def scenario(client: Any, batcher: ScriptBatcher) -> tuple[Any, Any, Any]:
        echo = client.register_script(ECHO)
        before = await batcher.call(echo, ["k"], ["a", 1])  # connected and loaded
        in_flight = asyncio.ensure_future(batcher.call(echo, ["k"], ["b", 2]))
        await asyncio.sleep(0)  # written (max_calls 1), its reply not read yet
        assert len(batcher.awaiting) == 1
        batcher.connection._writer.transport.abort()  # the connection is lost
        lost = (await asyncio.gather(in_flight, return_exceptions=True))[0]
        return before, lost, await batcher.call(echo, ["k"], ["c", 3])

    before, lost, after = run(backing, scenario, max_calls=1)
    assert before == [b"k", b"a", 2]
    assert isinstance(lost, RedisConnectionError)  # answered 503 unavailable by the app
    assert after == [b"k", b"c", 6]
