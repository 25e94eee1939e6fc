"""Backpressure: with the worker stopped, writes are refused past ``MAX_BACKLOG``
(503 ``overloaded``, ``Retry-After``), reads keep working, nothing accepted is lost,
and writes resume by themselves once a worker catches up. Real ingest, worker,
Redis and Postgres; a key prefix of its own, so the backlog is this test's alone.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import asyncpg
import httpx
import pytest

from ingest.backlog import COUNT_CAP, count_without_lag, measure_backlog
from scoreboard.keys import Keys
from tests.conftest import Api, Player
from tests.servers import Backing, fresh_name, ingest_server
from tests.worker_support import wait_caught_up, worker_process

MAX_BACKLOG = 60


def batch(api: Api, backend: Player, event_ids: list[str]) -> Any:
    return api.post("/api/scores/batch", headers=backend.headers, json={"increments": [
        {"user_id": fresh_name("gp"), "points": 1, "event_id": e} for e in event_ids]})


def persisted(backing: Backing, event_ids: list[str]) -> int:
    async def count() -> int:
        connection = await asyncpg.connect(backing.database_url, timeout=10)
        try:
            found: int = await connection.fetchval(
                "SELECT count(*) FROM actions WHERE event_id = ANY($1)", event_ids)
            return found
        finally:
            await connection.close()

    return asyncio.run(count())


@pytest.mark.timeout(120)
def test_writes_are_refused_past_the_backlog_and_resume_when_workers_catch_up(
        backing: Backing, backend: Player) -> None:
    env = backing.env(KEY_PREFIX=fresh_name("bp"), TRUSTED_PROXIES="127.0.0.1/32",
                      MAX_BACKLOG=str(MAX_BACKLOG), BACKLOG_CHECK_MS="50",
                      WORKER_METRICS_PORT="0", CONSUMER_NAME="bp-worker")
    with ingest_server(env) as url:
        api = Api(url)
        try:
            player = api.register_and_login()
            token = api.action_token(player)
            accepted: list[str] = []
            refused = None
            for _ in range(100):  # no worker: the backlog only grows
                event_ids = [fresh_name("bp") for _ in range(20)]
                response = batch(api, backend, event_ids)
                if response.status_code == 503:
                    refused = response
                    break
                assert response.status_code == 202, response.text
                accepted += event_ids
                time.sleep(0.06)  # let a measure see it
            assert refused is not None, "never refused"
            assert refused.json()["error"]["code"] == "overloaded"
            assert int(refused.headers["retry-after"]) >= 1
            assert MAX_BACKLOG <= len(accepted) <= MAX_BACKLOG + 40
            # A player's increment is a write too; reads and action tokens keep working.
            increment = api.post("/api/scores/increment", headers=player.headers,
                                 json={"action_token": token})
            assert (increment.status_code, increment.json()["error"]["code"]) \
                == (503, "overloaded")
            assert api.get("/api/scores/top").status_code == 200
            assert api.post("/api/actions/token", headers=player.headers).status_code == 200

            with worker_process(env):
                deadline = time.monotonic() + 60
                while True:  # writes resume by themselves
                    resumed = api.post("/api/scores/increment", headers=player.headers,
                                       json={"action_token": token})
                    if resumed.status_code == 202:
                        break
                    assert resumed.status_code == 503, resumed.text
                    assert time.monotonic() < deadline, "writes never resumed"
                    time.sleep(0.2)
                while persisted(backing, accepted) < len(accepted):
                    assert time.monotonic() < deadline, "accepted increments were lost"
                    time.sleep(0.2)
            assert persisted(backing, accepted) == len(accepted)  # each once
        finally:
            api.close()


# --- A flood: concurrent backends at full speed, the worker started only after refusals ------


FLOOD_MAX_BACKLOG = 300
FLOOD_CHECK_MS = 50
FLOOD_THREADS = 4
FLOOD_BATCH = 20


class Flood:
    """``FLOOD_THREADS`` backends posting batches closed loop, each on a client of its
    own, until stopped; every answer is kept with its time and the batch it answered."""

    def __init__(self, url: str, backend: Player, users: list[str]) -> None:
        self.url, self.backend, self.users = url, backend, users
        self.answers: list[tuple[float, int, dict[str, Any], list[dict[str, Any]]]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def post_until_stopped(self, k: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            n = 0
            while not self.stopping.is_set():
                increments = [{"user_id": self.users[(k + n + i) % len(self.users)],
                               "points": 1 + (n + i) % 3, "event_id": fresh_name(f"fl{k}")}
                              for i in range(FLOOD_BATCH)]
                response = client.post("/api/scores/batch", headers=self.backend.headers,
                                       json={"increments": increments})
                answer = (time.monotonic(), response.status_code,
                          {"retry-after": response.headers.get("retry-after"),
                           "body": response.json()}, increments)
                with self.lock:
                    self.answers.append(answer)
                n += 1

    def start(self) -> None:
        self.threads = [threading.Thread(target=self.post_until_stopped, args=(k,))
                        for k in range(FLOOD_THREADS)]
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def count(self, status: int) -> int:
        with self.lock:
            return sum(1 for _, s, _, _ in self.answers if s == status)

    def accepted(self) -> list[dict[str, Any]]:
        return [item for _, status, _, batch in self.answers if status == 202 for item in batch]

    def refused(self) -> list[dict[str, Any]]:
        return [item for _, status, _, batch in self.answers if status != 202 for item in batch]

    def most_accepted_within(self, window_s: float) -> int:
        """The most increments answered 202 within any ``window_s`` of the run: what
        ingest can take in between two of its measures, from this run's own pace."""
        times = sorted(at for at, status, _, _ in self.answers if status == 202)
        most, first = 0, 0
        for last, at in enumerate(times):
            while at - times[first] > window_s:
                first += 1
            most = max(most, last - first + 1)
        return most * FLOOD_BATCH


class BacklogSampler:
    """``measure_backlog`` (ingest's own measure) as often as it answers, in a thread."""

    def __init__(self, backing: Backing, keys: Keys) -> None:
        self.backing, self.keys = backing, keys
        self.samples: list[int] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self.sample()))

    async def sample(self) -> None:
        client = self.backing.async_redis()
        try:
            while not self.stopping.is_set():
                self.samples.append(sum([await measure_backlog(client, stream, "persisters")
                                         for stream in self.keys.streams]))
                await asyncio.sleep(0.01)
        finally:
            await client.aclose()

    def __enter__(self) -> BacklogSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)


def persisted_exactly(backing: Backing, source: str, accepted: list[dict[str, Any]],
                      refused: list[dict[str, Any]]) -> dict[str, Any]:
    """What Postgres holds of the flood's event ids: rows per accepted id, counted_events
    rows, rows of refused ids, and the users' totals in ``scores``."""
    async def read() -> dict[str, Any]:
        connection = await asyncpg.connect(backing.database_url, timeout=10)
        try:
            ids = [item["event_id"] for item in accepted]
            rows = await connection.fetch("SELECT event_id, count(*) AS n FROM actions "
                                          "WHERE event_id = ANY($1) GROUP BY event_id", ids)
            counted = await connection.fetchval(
                "SELECT count(*) FROM counted_events WHERE source = $1 AND event_id = ANY($2)",
                source, ids)
            leaked = await connection.fetchval(
                "SELECT count(*) FROM actions WHERE event_id = ANY($1)",
                [item["event_id"] for item in refused])
            users = sorted({item["user_id"] for item in accepted})
            totals = await connection.fetch(
                "SELECT user_id, score FROM scores WHERE board = 'global' AND user_id = ANY($1)",
                users)
        finally:
            await connection.close()
        return {"rows": {r["event_id"]: r["n"] for r in rows}, "counted": counted,
                "leaked": leaked, "totals": {r["user_id"]: r["score"] for r in totals}}

    return asyncio.run(read())


@pytest.mark.timeout(240)
def test_a_flood_stays_bounded_and_every_accepted_increment_lands_once(
        backing: Backing, backend: Player) -> None:
    prefix = fresh_name("bpf")
    env = backing.env(KEY_PREFIX=prefix, TRUSTED_PROXIES="127.0.0.1/32",
                      MAX_BACKLOG=str(FLOOD_MAX_BACKLOG), BACKLOG_CHECK_MS=str(FLOOD_CHECK_MS),
                      BACKEND_RATE="100000000/60", WORKER_METRICS_PORT="0",
                      CONSUMER_NAME="bpf-worker")
    keys = backing.keys_for(prefix)
    users = [fresh_name("fu") for _ in range(40)]
    with ingest_server(env) as url, BacklogSampler(backing, keys) as sampler:
        flood = Flood(url, backend, users)
        flood.start()
        try:
            deadline = time.monotonic() + 60
            while flood.count(503) < 20:  # no worker: the backlog only grows until refused
                assert time.monotonic() < deadline, "the flood was never refused"
                time.sleep(0.05)
            before_worker = len(flood.accepted())
            with worker_process(env):
                while len(flood.accepted()) < before_worker + 3 * FLOOD_MAX_BACKLOG:
                    assert time.monotonic() < deadline + 60, "writes never resumed"
                    time.sleep(0.05)
                flood.stop()
                wait_caught_up(backing.sync_redis(), keys)
        finally:
            flood.stop()

    statuses = Counter(status for _, status, _, _ in flood.answers)
    assert set(statuses) == {202, 503}, statuses
    for _, status, details, _ in flood.answers:
        if status == 503:
            assert details["body"]["error"]["code"] == "overloaded", details
            assert int(details["retry-after"]) >= 1, details
        else:
            assert (details["body"]["accepted"], details["body"]["duplicates"]) \
                == (FLOOD_BATCH, 0), details
    # Ingest decides on its last measure: past the maximum, the stream can grow by what
    # it accepts until the next measure lands (one period, plus the measure's own
    # time), and by the batches already past the check, one per backend at most.
    bound = (FLOOD_MAX_BACKLOG + flood.most_accepted_within(2 * FLOOD_CHECK_MS / 1000)
             + FLOOD_THREADS * FLOOD_BATCH)
    assert max(sampler.samples) > FLOOD_MAX_BACKLOG  # the flood did pass the maximum
    assert max(sampler.samples) <= bound, (max(sampler.samples), bound)

    accepted, refused = flood.accepted(), flood.refused()
    found = persisted_exactly(backing, f"backend:{backend.user_id}", accepted, refused)
    assert len(found["rows"]) == len(accepted)  # none lost ...
    assert set(found["rows"].values()) == {1}  # ... none twice
    assert found["counted"] == len(accepted)
    assert found["leaked"] == 0  # a refused batch wrote nothing
    expected: Counter[str] = Counter()
    for item in accepted:
        expected[item["user_id"]] += item["points"]
    assert found["totals"] == dict(expected)


def test_past_the_count_cap_acknowledged_entries_are_not_counted_as_backlog(
        backing: Backing) -> None:
    """Redis 6.2's path (called directly, so it runs on 7 too): once the undelivered
    entries pass the count cap, the measure trims what the group acknowledged
    before reading XLEN; it used to count a minute of acknowledged entries in."""
    stream = Keys(fresh_name("bpcap")).stream
    client: Any = backing.sync_redis(decode_responses=True)

    def add(count: int) -> None:
        with client.pipeline(transaction=False) as pipe:
            for i in range(count):
                pipe.xadd(stream, {"n": str(i)})
            pipe.execute()

    async def measure() -> int:
        async_client = backing.async_redis(decode_responses=True)
        try:
            group = next(g for g in await async_client.xinfo_groups(stream)
                         if g["name"] == "persisters")
            return await count_without_lag(async_client, stream, group, int(group["pending"]))
        finally:
            await async_client.aclose()

    try:
        add(4000)
        client.xgroup_create(stream, "persisters", id="0")
        delivered = [i for _, entries in client.xreadgroup("persisters", "w", {stream: ">"},
                                                           count=4000)
                     for i, _ in entries]
        client.xack(stream, "persisters", *delivered[:3500])  # 500 stay pending
        add(COUNT_CAP + 1000)  # undelivered, past the cap
        assert asyncio.run(measure()) == 500 + COUNT_CAP + 1000
        assert client.xlen(stream) == 500 + COUNT_CAP + 1000  # the acknowledged are gone
        # An old entry still pending keeps what follows it: an upper bound, never less.
        client.xack(stream, "persisters", *delivered[3501:])
        assert asyncio.run(measure()) == 500 + COUNT_CAP + 1000
        assert client.xpending(stream, "persisters")["pending"] == 1
    finally:
        client.delete(stream)
        client.close()
