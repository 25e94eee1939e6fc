"""Helpers of the worker tests: in-process consumers and worker processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import redis.asyncio as redis_asyncio

from loadtest.harness.processes import WORKER_COMMAND
from scoreboard.db import create_pool
from scoreboard.keys import Keys
from tests.servers import PROJECT_DIR, Backing, stop_process
from workers.consumer import StreamConsumer


@asynccontextmanager
async def consumer_for(backing: Backing, keys: Keys, *, name: str = "test-consumer",
                       **overrides: Any) -> AsyncIterator[StreamConsumer]:
    """A StreamConsumer on real Redis and Postgres, with its own connections."""
    client = redis_asyncio.Redis.from_url(backing.redis_url, decode_responses=True)
    pool = await create_pool(backing.database_url, max_size=4)
    options: dict[str, Any] = {"batch_max": 500, "block_ms": 100, "claim_idle_ms": 30_000,
                               "max_deliveries": 5, **overrides}
    consumer = StreamConsumer(redis=client, pool=pool, keys=keys, group="persisters",
                              name=name, **options)
    try:
        yield consumer
    finally:
        await pool.close()
        await client.aclose()


async def run_until(consumer: StreamConsumer, done: Callable[[], Any],
                    timeout_s: float = 30) -> None:
    """Run the consumer's loop until ``await done()`` is true, then stop it."""
    task = asyncio.create_task(consumer.run())
    deadline = time.monotonic() + timeout_s
    try:
        while not await done():
            if task.done():
                task.result()  # surfaces the consumer's exception
                raise AssertionError("consumer stopped before the condition held")
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached within {timeout_s} s")
            await asyncio.sleep(0.05)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)


@contextmanager
def worker_process(env: Mapping[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """``arq workers.main.WorkerSettings``, as the Procfile runs it.

    Its output is dropped unless ``WORKER_TEST_LOG`` names a file to append it to.
    """
    with open(os.environ.get("WORKER_TEST_LOG") or os.devnull, "ab") as log:
        process = subprocess.Popen(WORKER_COMMAND, cwd=PROJECT_DIR, env=dict(env), stdout=log,
                                   stderr=log)
        try:
            yield process
        finally:
            stop_process(process, timeout_s=30)
