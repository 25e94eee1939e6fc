"""The hot scripts' calls on a connection of their own: EVALSHAs of concurrent
requests written together, their replies read back by one reader task.

Each request still runs its own script, atomically and in its own order; what
is shared is the trip. The calls queued while the loop runs one turn are
packed by hiredis and written with one system call (every ``MAX_CALLS`` calls,
and at the end of the turn), straight onto the socket; one long-lived task
reads the connection, and each reply, parsed by hiredis, resolves the future of
the call it answers (Redis answers in order).

Why not a redis-py pipeline per turn, as before: profiled under load, each
pipeline cost a pool checkout whose health check waits one extra loop turn
under a zero timeout, a task started only on the next turn, and an ``await``
per reply; and because the whole turn's calls went as one pipeline, ingest and
Redis took turns: Redis idle while ingest parsed the turn's requests, ingest
idle while Redis ran them all. Here Redis starts on the first ``MAX_CALLS``
calls while ingest parses the rest.

What stays as it was: a script refusal is a reply and goes to its caller; a
Redis error reply is that call's exception (redis-py's classes, so a full Redis
is ``OutOfMemoryError``, answered 503 ``overloaded``); ``NOSCRIPT`` (Redis
restarted or flushed) is answered by running that call again through
redis-py's ``Script``, which loads it. A lost connection fails every call
awaiting a reply with ``ConnectionError`` (503 ``unavailable``; the next call
connects again), and a reply that takes longer than the client's
``socket_timeout`` fails the calls awaiting one with ``TimeoutError``, as
redis-py's reads would. The connection is made by redis-py (address, TLS,
password, database number from ``REDIS_URL``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from scoreboard.lua import Scripts

# A call: the script object, its keys and args, and the caller's future.
Call = tuple[Any, Sequence[Any], Sequence[Any], asyncio.Future[Any]]

MAX_CALLS = 16  # calls written at once at most (see the docstring)
READ_SIZE = 65536


class ScriptBatcher:
    """Writes queued script calls to one Redis connection and resolves their replies."""

    def __init__(self, client: Any, max_calls: int = MAX_CALLS) -> None:
        self.client = client
        self.max_calls = max_calls
        kwargs = client.connection_pool.connection_kwargs
        self.timeout_s: float = kwargs.get("socket_timeout") or 5.0
        self.queue: list[Call] = []
        self.flush_scheduled = False
        self.awaiting: deque[tuple[Call, float]] = deque()  # written, reply not read yet
        self.connection: Any = None  # a connected redis-py Connection, or None
        self.connecting: asyncio.Task[None] | None = None
        self.reader_task: asyncio.Task[None] | None = None
        self.watchdog: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[Any]] = set()

    def call(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> asyncio.Future[Any]:
        """Queue the call; the future is its reply. A plain function returning the
        future rather than a coroutine: every coroutine between a request and its
        reply is resumed once more when the reply comes (see ``CoalescedScript``)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.queue.append((script, keys, args, future))
        if len(self.queue) >= self.max_calls:
            self._write()
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.queue:
            self._write()

    def _write(self) -> None:
        if self.connection is None:  # wait for the connection; its task writes the queue
            if self.connecting is None:
                self.connecting = self._spawn(self._connect())
            return
        calls, self.queue = self.queue, []
        packed = b"".join(hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
                          for script, keys, args, _ in calls)
        sent_at = time.monotonic()
        self.awaiting.extend((call, sent_at) for call in calls)
        self.connection._writer.write(packed)
        if self.watchdog is None:
            self.watchdog = asyncio.get_running_loop().call_later(self.timeout_s, self._check)

    async def _connect(self) -> None:
        connection = self.client.connection_pool.make_connection()
        try:
            await connection.connect()
        except Exception as exc:  # Redis down: the queued calls hear it (503); the next connects
            calls, self.queue = self.queue, []
            self._fail([(call, 0.0) for call in calls], exc)
            return
        finally:
            self.connecting = None
        self.connection = connection
        self.reader_task = self._spawn(self._read(connection))
        if self.queue:
            self._write()

    async def _read(self, connection: Any) -> None:
        reader = hiredis.Reader()
        stream = connection._reader
        try:
            while True:
                data = await stream.read(READ_SIZE)
                if not data:
                    raise RedisConnectionError("Connection closed by server.")
                reader.feed(data)
                while (reply := reader.gets()) is not False:
                    (script, keys, args, future), _ = self.awaiting.popleft()
                    self._resolve(script, keys, args, future, reply)
        except BaseException as exc:
            self._drop(connection, exc if isinstance(exc, Exception)
                       else RedisConnectionError("the connection was closed"))
            if not isinstance(exc, Exception):
                raise

    def _resolve(self, script: Any, keys: Sequence[Any], args: Sequence[Any],
                 future: asyncio.Future[Any], reply: Any) -> None:
        if future.done():  # its request was cancelled (client gone)
            return
        if isinstance(reply, hiredis.ReplyError):
            error = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
            if isinstance(error, NoScriptError):
                self._spawn(self._run_again(script, keys, args, future))
            else:
                future.set_exception(error)
        else:
            future.set_result(reply)

    async def _run_again(self, script: Any, keys: Sequence[Any], args: Sequence[Any],
                         future: asyncio.Future[Any]) -> None:
        """``NOSCRIPT``: redis-py's ``Script`` loads the script and runs the call."""
        try:
            reply = await script(keys=keys, args=args)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(reply)

    def _check(self) -> None:
        """A reply overdue past the socket timeout: the connection is stuck; drop it."""
        self.watchdog = None
        if not self.awaiting:
            return
        overdue = time.monotonic() - self.awaiting[0][1]
        if overdue >= self.timeout_s and self.connection is not None:
            self._drop(self.connection, RedisTimeoutError("Timeout reading from Redis"))
            return
        self.watchdog = asyncio.get_running_loop().call_later(
            max(0.05, self.timeout_s - overdue), self._check)

    def _drop(self, connection: Any, exc: Exception) -> None:
        """Forget a broken connection and fail every call still awaiting its reply."""
        if self.connection is connection:
            self.connection = None
            if self.reader_task is not None and self.reader_task is not asyncio.current_task():
                self.reader_task.cancel()
            self.reader_task = None
        self._spawn(connection.disconnect(nowait=True))
        awaiting, self.awaiting = list(self.awaiting), deque()
        self._fail(awaiting, exc)

    @staticmethod
    def _fail(calls: list[tuple[Call, float]], exc: BaseException) -> None:
        for (*_, future), _ in calls:
            if not future.done():
                future.set_exception(exc)

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coroutine)
        self.tasks.add(task)  # held until done, so it is not collected mid-flight
        task.add_done_callback(self.tasks.discard)
        return task

    async def close(self) -> None:
        """Stop reading and close the connection (the app's lifespan, on the way out)."""
        if self.watchdog is not None:
            self.watchdog.cancel()
        for task in [self.reader_task, self.connecting]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if self.connection is not None:
            await self.connection.disconnect()
            self.connection = None
        if self.tasks:  # a dropped connection's disconnect, a NOSCRIPT rerun
            await asyncio.gather(*self.tasks, return_exceptions=True)


class CoalescedScript:
    """A stand-in for a redis-py ``Script`` (``await script(keys=..., args=...)``) whose
    calls go through a :class:`ScriptBatcher`. Calling it returns the reply's future
    itself, not a coroutine awaiting it: profiled, the ``await`` lines of the chain from
    the handler down to the future were about a tenth of an increment's CPU, each
    coroutine on it being resumed when the reply comes."""

    def __init__(self, script: Any, batcher: ScriptBatcher) -> None:
        self.script = script
        self.batcher = batcher
        self.sha = script.sha

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> asyncio.Future[Any]:
        return self.batcher.call(self.script, keys, args)


def coalesce_hot_scripts(scripts: Scripts, client: Any) -> tuple[Scripts, ScriptBatcher]:
    """``scripts`` with the per-request scripts of the player endpoints coalesced, and
    the batcher (to close with the app)."""
    batcher = ScriptBatcher(client)
    return dataclasses.replace(
        scripts,
        increment=scripts.increment.through(CoalescedScript(scripts.increment.script, batcher)),
        action_token=scripts.action_token.through(
            CoalescedScript(scripts.action_token.script, batcher))), batcher
