"""Coalescing the hot scripts' calls: the EVALSHAs of concurrent requests go to
Redis as one pipeline per event-loop turn.

Each request still runs its own script, atomically and in its own order; what
is shared is the trip: the calls queued while the loop runs one turn are
written with one system call on one pooled connection and their replies read
back together, instead of a connection checkout, a write and a read wake-up
per request. Under load many requests become ready in the same turn (each
connection's request is parsed in the turn its bytes arrive), so the cost per
call falls with the load; a lone request waits for nothing but the end of the
current turn.

A call's reply (or its own error: a script refusal is a reply, a Redis error
is that call's exception) goes back to its caller only. A lost connection fails
every call of that pipeline with the connection error, which the app answers
503 like any other Redis outage. ``NOSCRIPT`` (Redis restarted or flushed) is
answered by loading the script and running that call again, as redis-py's
``Script`` does.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

from scoreboard.lua import Scripts

Call = tuple[Any, Sequence[Any], Sequence[Any], asyncio.Future[Any]]


class ScriptBatcher:
    """Queues script calls and sends each loop turn's calls as one pipeline."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.queue: list[Call] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def call(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self.queue:
            loop.call_soon(self._flush)
        self.queue.append((script, keys, args, future))
        return await future

    def _flush(self) -> None:
        calls, self.queue = self.queue, []
        task = asyncio.ensure_future(self._send(calls))
        self.tasks.add(task)  # held until done, so it is not collected mid-flight
        task.add_done_callback(self.tasks.discard)

    async def _send(self, calls: list[Call]) -> None:
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for script, keys, args, _ in calls:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the whole trip failed: every caller hears it
            for *_, future in calls:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (script, keys, args, future), reply in zip(calls, replies, strict=True):
            if future.done():  # its request was cancelled (client gone)
                continue
            if isinstance(reply, NoScriptError):
                try:
                    reply = await script(keys=keys, args=args)  # loads it, runs again
                except Exception as exc:
                    future.set_exception(exc)
                    continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


class CoalescedScript:
    """A stand-in for a redis-py ``Script`` (``await script(keys=..., args=...)``) whose
    calls go through a :class:`ScriptBatcher`."""

    def __init__(self, script: Any, batcher: ScriptBatcher) -> None:
        self.script = script
        self.batcher = batcher
        self.sha = script.sha

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        return await self.batcher.call(self.script, keys, args)


def coalesce_hot_scripts(scripts: Scripts, client: Any) -> Scripts:
    """``scripts`` with the per-request scripts of the player endpoints coalesced."""
    batcher = ScriptBatcher(client)
    return dataclasses.replace(
        scripts,
        increment=scripts.increment.through(CoalescedScript(scripts.increment.script, batcher)),
        action_token=scripts.action_token.through(
            CoalescedScript(scripts.action_token.script, batcher)))
