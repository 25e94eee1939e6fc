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
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from scoreboard.accounts import create_backend_account
from scoreboard.db import with_database
from scoreboard.embedded import EmbeddedPostgres
from scoreboard.keys import Keys
from scoreboard.migrate import ensure_database, migrate
from tests.servers import Backing, SyncRedis, board_totals, fresh_name, ingest_server
from tests.worker_support import CHAOS_TIMEOUT, persisted_but_pending, wait_for_mark, worker_process

BOARD = "global"
GROUP = "persisters"


@dataclass
class Load:
    """Posts batches from a thread until stopped; remembers exactly what was accepted."""

    url: str
    token: str
    users: list[str]
    accepted: Counter[str] = field(default_factory=Counter)
    accepted_events: int = 0
    refused: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10,
                          headers={"Authorization": f"Bearer {self.token}"}) as client:
            while not self.stop.is_set():
                batch: list[dict[str, Any]] = [
                    {"user_id": random.choice(self.users), "points": random.randint(1, 9),
                     "event_id": "ev-" + secrets.token_hex(10), "board": BOARD}
                    for _ in range(20)]
                response = client.post("/api/scores/batch", json={"increments": batch})
                if response.status_code != 202:
                    self.refused.append(f"{response.status_code} {response.text}")
                    continue
                body = response.json()
                assert (body["accepted"], body["duplicates"]) == (len(batch), 0)
                for item in batch:
                    self.accepted[item["user_id"]] += item["points"]
                self.accepted_events += len(batch)
                time.sleep(0.005)

    @contextmanager
    def running(self) -> Iterator[Load]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            thread.join(timeout=30)


@dataclass
class System:
    keys: Keys
    env: dict[str, str]
    database_url: str
    load: Load

    def worker_env(self, name: str, **overrides: str) -> dict[str, str]:
        return {**self.env, "CONSUMER_NAME": name, "CLAIM_IDLE_MS": "2000",
                "WORKER_BLOCK_MS": "200", **overrides}


@contextmanager
def system(backing: Backing, database_url: str | None = None) -> Iterator[System]:
    """An ingest process on a fresh key prefix, a backend login, and a load ready to run."""
    prefix = fresh_name("wproc")
    database_url = database_url or backing.database_url
    env = backing.env(KEY_PREFIX=prefix, DATABASE_URL=database_url,
                      BACKEND_RATE="100000000/60")
    user_id, password = asyncio.run(create_backend_account(
        database_url, fresh_name("backend"), scrypt_n=1024, scrypt_r=8, scrypt_p=1))
    with ingest_server(env) as url:
        login = httpx.post(url + "/api/auth/login", json={
            "username": _username(database_url, user_id), "password": password})
        assert login.status_code == 200, login.text
        users = [fresh_name("player") for _ in range(40)]
        yield System(keys=Keys(prefix), env=env, database_url=database_url,
                     load=Load(url=url, token=login.json()["access_token"], users=users))


def _username(database_url: str, user_id: str) -> str:
    async def query() -> str:
        connection = await asyncpg.connect(database_url)
        try:
            name: str = await connection.fetchval(
                "SELECT username FROM users WHERE user_id = $1", user_id)
            return name
        finally:
            await connection.close()

    return asyncio.run(query())


def wait_settled(client: SyncRedis, keys: Keys, timeout_s: float = 90) -> None:
    """Until every entry of the stream is delivered and acknowledged."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        last = client.xrevrange(keys.stream, count=1)
        groups = client.xinfo_groups(keys.stream) if last else []
        if groups and groups[0]["last-delivered-id"] == last[0][0] \
                and int(groups[0]["pending"]) == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"the stream did not settle: last {last}, groups {groups}, consumers "
                         f"{client.xinfo_consumers(keys.stream, GROUP) if groups else None}")


def assert_exactly_once(sys_: System, client: SyncRedis) -> None:
    load = sys_.load
    assert load.accepted_events > 0

    async def query() -> tuple[int, dict[str, int], dict[str, int]]:
        connection = await asyncpg.connect(sys_.database_url)
        try:
            rows = await connection.fetchval(
                "SELECT count(*) FROM actions WHERE user_id = ANY($1)", load.users)
            duplicates = await connection.fetchval(
                "SELECT count(*) FROM (SELECT event_id FROM actions WHERE user_id = ANY($1)"
                " GROUP BY event_id HAVING count(*) > 1) d", load.users)
            assert duplicates == 0
            sums = {r["user_id"]: r["s"] for r in await connection.fetch(
                "SELECT user_id, sum(points) AS s FROM actions WHERE user_id = ANY($1)"
                " GROUP BY user_id", load.users)}
            scores = {r["user_id"]: r["score"] for r in await connection.fetch(
                "SELECT user_id, score FROM scores WHERE board = $2 AND user_id = ANY($1)",
                load.users, BOARD)}
            return rows, sums, scores
        finally:
            await connection.close()

    rows, sums, scores = asyncio.run(query())
    expected = dict(load.accepted)
    assert rows == load.accepted_events
    assert sums == expected
    assert scores == expected
    assert board_totals(client, sys_.keys, BOARD) == expected


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
                step, held_id, _ = marks[-1]
                assert step == "holding"
                assert persisted_but_pending(redis_client, sys_.database_url, sys_.keys, held_id)
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
