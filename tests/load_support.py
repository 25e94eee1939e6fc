"""Real increments through a real ingest process, and the exactly-once check.

A ``System`` is an ingest process on a key prefix of its own (its own stream,
group and boards), a game backend's login, and a ``Load`` that posts batches
of unique event ids from a thread and remembers exactly what was accepted.
``assert_exactly_once`` then checks the guarantee: one ``actions`` row per
accepted increment, and each user's total in ``scores`` and in the board equal
to the sum of that user's accepted points.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from scoreboard.accounts import create_backend_account
from scoreboard.keys import Keys
from tests.servers import Backing, SyncRedis, board_totals, fresh_name, ingest_server

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
    # As the API asks of clients: a 503 is retried with the same event ids
    # (the first try may have landed before the connection to Redis broke).
    retry_unavailable: bool = False
    unavailable: int = 0

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10,
                          headers={"Authorization": f"Bearer {self.token}"}) as client:
            while not self.stop.is_set():
                batch: list[dict[str, Any]] = [
                    {"user_id": random.choice(self.users), "points": random.randint(1, 9),
                     "event_id": "ev-" + secrets.token_hex(10), "board": BOARD}
                    for _ in range(20)]
                response = client.post("/api/scores/batch", json={"increments": batch})
                retried = False
                deadline = time.monotonic() + 60
                while (self.retry_unavailable and response.status_code == 503
                       and time.monotonic() < deadline):
                    self.unavailable += 1
                    retried = True
                    time.sleep(0.1)
                    response = client.post("/api/scores/batch", json={"increments": batch})
                if response.status_code != 202:
                    self.refused.append(f"{response.status_code} {response.text}")
                    continue
                body = response.json()
                if retried:  # some or all may have landed on an earlier try: once in all
                    assert body["accepted"] + body["duplicates"] == len(batch), body
                else:
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
                "WORKER_BLOCK_MS": "200", "WORKER_METRICS_PORT": "0", **overrides}


    def post_batch(self, increments: list[dict[str, Any]]) -> httpx.Response:
        """One batch as the load's backend (outside the load's own count)."""
        return httpx.post(self.load.url + "/api/scores/batch", json={"increments": increments},
                          headers={"Authorization": f"Bearer {self.load.token}"}, timeout=10)


@contextmanager
def system(backing: Backing, database_url: str | None = None, *,
           redis_url: str | None = None) -> Iterator[System]:
    """An ingest process on a fresh key prefix, a backend login, and a load ready to run."""
    prefix = fresh_name("wproc")
    database_url = database_url or backing.database_url
    env = backing.env(KEY_PREFIX=prefix, DATABASE_URL=database_url,
                      REDIS_URL=redis_url or backing.redis_url, BACKEND_RATE="100000000/60")
    user_id, password = asyncio.run(create_backend_account(
        database_url, fresh_name("backend"), scrypt_n=1024, scrypt_r=8, scrypt_p=1))
    with ingest_server(env) as url:
        login = httpx.post(url + "/api/auth/login", json={
            "username": _username(database_url, user_id), "password": password})
        assert login.status_code == 200, login.text
        users = [fresh_name("player") for _ in range(40)]
        yield System(keys=Keys(prefix, shards=backing.redis_shards,
                               cluster=backing.redis_cluster),
                     env=env, database_url=database_url,
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
    """Until every entry of the streams (every shard's) is delivered and acknowledged."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        unsettled = [stream for stream in keys.streams if not _settled(client, stream)]
        if not unsettled:
            return
        time.sleep(0.2)
    stream = unsettled[0]
    last = client.xrevrange(stream, count=1)
    groups = client.xinfo_groups(stream) if last else []
    raise AssertionError(f"the stream did not settle: last {last}, groups {groups}, consumers "
                         f"{client.xinfo_consumers(stream, GROUP) if groups else None}")


def _settled(client: SyncRedis, stream: str) -> bool:
    last = client.xrevrange(stream, count=1)
    if not last:
        return not client.exists(stream) or int(client.xlen(stream)) == 0
    groups = client.xinfo_groups(stream)
    return bool(groups and groups[0]["last-delivered-id"] == last[0][0]
                and int(groups[0]["pending"]) == 0)


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
    on_board = board_totals(client, sys_.keys, BOARD)
    differ = {user: (on_board.get(user), total) for user, total in expected.items()
              if on_board.get(user) != total}
    extra = sorted(set(on_board) - set(expected))
    assert not differ and not extra, f"board != Postgres (board, expected): {differ}; extra {extra}"
