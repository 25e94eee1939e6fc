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
import tempfile
import time
from pathlib import Path

from scoreboard.db import with_database
from scoreboard.embedded import EmbeddedPostgres
from scoreboard.migrate import ensure_database, migrate
from tests.load_support import GROUP, assert_exactly_once, system, wait_settled
from tests.servers import Backing, SyncRedis, fresh_name
from tests.worker_support import CHAOS_TIMEOUT, persisted_but_pending, wait_for_mark, worker_process


@CHAOS_TIMEOUT
def test_kill_9_twenty_times_under_load_loses_and_doubles_nothing(
        backing: Backing, redis_client: SyncRedis, tmp_path: Path) -> None:
    """Twenty real SIGKILLs of a worker under load, each after it committed a batch.

    Every other worker holds after the commit of its k-th batch (k of 1-3) and
    is killed there, between the commit and the XACK, which its marks and the
    entry's state (a row in actions, still pending) prove; the others are
    killed at a random moment after their first commit. A kill counts only
    when the process died of SIGKILL."""
    between_commit_and_ack = at_random = 0
    with system(backing) as sys_, sys_.load.running():
        rng = random.Random()
        deadline = time.monotonic() + 240
        run = 0
        while between_commit_and_ack + at_random < 20 and time.monotonic() < deadline:
            run += 1
            hold = run % 2 == 0
            marker = tmp_path / f"worker-{run}.marks"
            env = sys_.worker_env("chaos-worker", CHAOS_MARKER_FILE=str(marker),
                                  CHAOS_HOLD_AFTER_COMMITS=str(rng.randint(1, 3) if hold else 0))
            with worker_process(env) as worker:
                marks = wait_for_mark(marker, "holding" if hold else "committed", worker)
                if not hold:
                    time.sleep(rng.uniform(0, 0.5))
                worker.send_signal(signal.SIGKILL)
                assert worker.wait() == -signal.SIGKILL, "the worker exited on its own"
            if hold:
                # The holding line, not the last one: the previous batch's boards and
                # XACK run beside the next commit and may be marked after it.
                # On a cluster each shard's consumer holds after its own k-th batch:
                # every batch marked holding is committed and still pending.
                held = [(stream, stream_id) for step, stream, stream_id, _ in marks
                        if step == "holding"]
                assert held
                for stream, stream_id in held:
                    assert persisted_but_pending(redis_client, sys_.database_url,
                                                 stream, stream_id)
                between_commit_and_ack += 1
            else:
                at_random += 1
        time.sleep(0.5)
    assert (between_commit_and_ack, at_random) == (10, 10)
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
        for stream in sys_.keys.streams:  # each shard's stream, read by all three
            consumers = {c["name"] for c in redis_client.xinfo_consumers(stream, GROUP)}
            assert consumers == {"w1", "w2", "w3"}
        assert_exactly_once(sys_, redis_client)


def test_postgres_down_for_ten_seconds_under_load_loses_nothing(
        backing: Backing, redis_client: SyncRedis) -> None:
    # Not under pytest's tmp_path: another pytest run starting meanwhile resets its
    # root to 0700 and the server's unprivileged user loses its data directory
    # (initdb failed so once, "pg_control: Permission denied").
    folder = tempfile.TemporaryDirectory(prefix="scoreboard-pgdown-", ignore_cleanup_errors=True)
    postgres = EmbeddedPostgres(Path(folder.name) / "pg", durable=False)
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
        folder.cleanup()


def test_consumer_that_dies_takes_the_process_down_non_zero(
        backing: Backing, redis_client: SyncRedis) -> None:
    keys = backing.keys_for(fresh_name("wdie"))
    redis_client.set(keys.shard(0).stream, "not a stream")  # XGROUP CREATE fails: WRONGTYPE
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
        for stream in sys_.keys.streams:
            pending = redis_client.xpending_range(stream, GROUP, min="-", max="+",
                                                  count=10, consumername="graceful")
            assert pending == []
        with worker_process(sys_.worker_env("graceful")):
            wait_settled(redis_client, sys_.keys)
        assert_exactly_once(sys_, redis_client)


def test_health_command_reflects_the_consumer(backing: Backing, redis_client: SyncRedis) -> None:
    keys = backing.keys_for(fresh_name("whealth"))
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
