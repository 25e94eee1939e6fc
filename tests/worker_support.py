"""Helpers of the worker tests: in-process consumers and worker processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from loadtest.harness.processes import WORKER_COMMAND, group_caught_up
from scoreboard.db import create_pool
from scoreboard.keys import Keys
from scoreboard.stream_entry import unpacked
from tests.servers import PROJECT_DIR, Backing, stop_process
from workers.consumer import StreamConsumer
from workers.fraud import RECORDER_GROUP


@asynccontextmanager
async def consumer_for(backing: Backing, keys: Keys, *, name: str = "test-consumer",
                       **overrides: Any) -> AsyncIterator[StreamConsumer]:
    """A StreamConsumer on real Redis and Postgres, with its own connections."""
    client = backing.async_redis(decode_responses=True)
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


def wait_caught_up(client: Any, keys: Keys, *, group: str = "persisters",
                   timeout_s: float = 60) -> None:
    """Until the worker has acknowledged every entry of the stream (so the fraud
    checks of every batch ran: they come before the XACK) and recorded every
    decision of the fraud stream in Postgres. ``client``: a sync Redis client."""
    deadline = time.monotonic() + timeout_s
    while not all(group_caught_up(client, shard.stream, group)
                  and group_caught_up(client, shard.fraud_stream, RECORDER_GROUP)
                  for shard in keys.every_shard):
        if time.monotonic() > deadline:
            raise AssertionError(f"the worker did not catch up within {timeout_s} s: "
                                 + "; ".join(_group_states(client, keys)))
        time.sleep(0.05)


def _group_states(client: Any, keys: Keys) -> list[str]:
    """Each shard stream's length, last id and groups (pending, last delivered): what
    a catch-up timeout shows of where the worker stopped."""
    states = []
    for shard in keys.every_shard:
        for stream in (shard.stream, shard.fraud_stream):
            try:
                info = client.xinfo_stream(stream)
                groups = [f"{g['name']} pending {g['pending']} delivered "
                          f"{g['last-delivered-id']}" for g in client.xinfo_groups(stream)]
                states.append(f"{stream}: length {info['length']}, last "
                              f"{info['last-generated-id']}, {groups}")
            except Exception as exc:  # a diagnosis: never hide the timeout itself
                states.append(f"{stream}: {exc!r}")
    return states


# --- The kill -9 test's proof: the worker's marks (workers/chaos.py) ---------------------

CHAOS_TIMEOUT = pytest.mark.timeout(300)  # twenty worker starts on a busy machine


def wait_for_mark(marker: Path, step: str, worker: subprocess.Popen[bytes],
                  timeout_s: float = 60) -> list[list[str]]:
    """The worker's marks once one of them is ``step`` ("committed", "holding")."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        marks = [line.split() for line in marker.read_text().splitlines()] \
            if marker.exists() else []
        if any(mark[0] == step for mark in marks):
            return marks
        assert worker.poll() is None, f"the worker exited with {worker.returncode}"
        time.sleep(0.02)
    raise AssertionError(f"no {step!r} mark within {timeout_s} s")


def persisted_but_pending(client: Any, database_url: str, stream: str, stream_id: str) -> bool:
    """Entry ``stream_id`` of ``stream`` (a shard's stream, as the worker's chaos mark
    names it) has its row in ``actions`` (committed) and is still pending in the
    group (not acknowledged). ``client``: a sync Redis client."""
    pending = client.xpending_range(stream, "persisters", min=stream_id, max=stream_id,
                                    count=1)
    event_id = unpacked(client.xrange(stream, stream_id, stream_id)[0][1])["event_id"]

    async def rows() -> int:
        connection = await asyncpg.connect(database_url)
        try:
            return int(await connection.fetchval(
                "SELECT count(*) FROM actions WHERE event_id = $1", event_id))
        finally:
            await connection.close()

    return len(pending) == 1 and asyncio.run(rows()) == 1
