"""Worker processes under load and failure: kill -9, several workers, Postgres down.

Every test drives real increments through a real ingest process (the batch
endpoint of a game backend, unique event ids) into a stream of its own (a
key prefix of its own), runs real ``arq workers.main.WorkerSettings``
processes, and at the end checks the guarantee: one ``actions`` row per
accepted increment, and each user's total in ``scores`` and in the board
equal to the sum of that user's accepted points.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from scoreboard.cli import with_database
from scoreboard.embedded import EmbeddedPostgres
from scoreboard.keys import Keys
from scoreboard.migrate import ensure_database, migrate
from tests.load_support import GROUP, assert_exactly_once, system, wait_settled
from tests.servers import Backing, SyncRedis, fresh_name
from tests.worker_support import worker_process


def test_kill_9_twenty_times_under_load_loses_and_doubles_nothing(
        backing: Backing, redis_client: SyncRedis) -> None:
    kills = 0
    with system(backing) as sys_, sys_.load.running():
        rng = random.Random()
        deadline = time.monotonic() + 60
        while kills < 22 and time.monotonic() < deadline:
            # Every third run also dies by itself between commit and XACK.
            chaos = "0.3" if kills % 3 == 0 else "0"
            with worker_process(sys_.worker_env("chaos-worker",
                                                CHAOS_EXIT_AFTER_COMMIT=chaos)) as worker:
                time.sleep(rng.uniform(0.2, 1.2))
                if worker.poll() is None:
                    worker.send_signal(signal.SIGKILL)
                worker.wait()
                kills += 1
        time.sleep(0.5)
    assert kills >= 20
    assert not sys_.load.refused
    with worker_process(sys_.worker_env("chaos-worker")):
        wait_settled(redis_client, sys_.keys)
    assert_exactly_once(sys_, redis_client)


def test_three_workers_in_one_group_lose_and_double_nothing(
        backing: Backing, redis_client: SyncRedis) -> None:
    with system(backing) as sys_:
        with worker_process(sys_.worker_env("w1")), worker_process(sys_.worker_env("w2")), \
                worker_process(sys_.worker_env("w3")):
            with sys_.load.running():
                time.sleep(8)
            wait_settled(redis_client, sys_.keys)
        consumers = {c["name"] for c in redis_client.xinfo_consumers(sys_.keys.stream, GROUP)}
        assert consumers == {"w1", "w2", "w3"}
        assert_exactly_once(sys_, redis_client)


def test_postgres_down_for_ten_seconds_under_load_loses_nothing(
        backing: Backing, redis_client: SyncRedis, tmp_path: Path) -> None:
    postgres = EmbeddedPostgres(tmp_path / "pg", durable=False)
    admin_url = postgres.start()
    try:
        asyncio.run(ensure_database(admin_url, "scoreboard"))
        database_url = with_database(admin_url, "scoreboard")
        asyncio.run(migrate(database_url))
        with system(backing, database_url) as sys_, \
                worker_process(sys_.worker_env("pg-down")) as worker:
            with sys_.load.running():
                time.sleep(2)
                postgres.stop()
                accepted_before_outage = sys_.load.accepted_events
                time.sleep(10)
                # ingest kept accepting into the stream while Postgres was down
                assert sys_.load.accepted_events > accepted_before_outage
                assert worker.poll() is None, "the worker must wait, not die"
                postgres.start()
                time.sleep(2)
            wait_settled(redis_client, sys_.keys)
            assert not sys_.load.refused
            assert_exactly_once(sys_, redis_client)
    finally:
        postgres.stop()


def test_consumer_that_dies_takes_the_process_down_non_zero(
        backing: Backing, redis_client: SyncRedis) -> None:
    keys = Keys(fresh_name("wdie"))
    redis_client.set(keys.stream, "not a stream")  # XGROUP CREATE fails: WRONGTYPE
    with worker_process({**backing.env(KEY_PREFIX=keys.prefix)}) as worker:
        status = worker.wait(timeout=30)
    assert status == 70


def test_sigterm_finishes_the_batch_and_exits_cleanly(
        backing: Backing, redis_client: SyncRedis) -> None:
    with system(backing) as sys_:
        with worker_process(sys_.worker_env("graceful")) as worker:
            with sys_.load.running():
                time.sleep(3)
                worker.send_signal(signal.SIGTERM)
                status = worker.wait(timeout=40)
        assert status in (0, -signal.SIGTERM)
        # what it had read it finished: nothing is left pending on it
        pending = redis_client.xpending_range(sys_.keys.stream, GROUP, min="-", max="+",
                                              count=10, consumername="graceful")
        assert pending == []
        with worker_process(sys_.worker_env("graceful")):
            wait_settled(redis_client, sys_.keys)
        assert_exactly_once(sys_, redis_client)


def test_health_command_reflects_the_consumer(backing: Backing, redis_client: SyncRedis) -> None:
    keys = Keys(fresh_name("whealth"))
    env = backing.env(KEY_PREFIX=keys.prefix, CONSUMER_NAME="healthy")

    def health(extra: dict[str, str]) -> int:
        return subprocess.run([sys.executable, "-m", "workers.health"], env={**env, **extra},
                              capture_output=True, check=False, timeout=30).returncode

    assert health({}) == 1  # nothing running yet
    with worker_process(env):
        deadline = time.monotonic() + 30
        while health({}) != 0:
            assert time.monotonic() < deadline, "worker never became healthy"
            time.sleep(0.3)
        assert health({"CONSUMER_NAME": "someone-else"}) == 1
