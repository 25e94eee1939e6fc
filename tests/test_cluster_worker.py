"""Workers on a real Redis Cluster (3 masters, one replica each), players over 3
shards: every shard's stream is persisted once, and a master killed under load
loses nothing a worker had acknowledged and doubles nothing.

What a failover can lose (docs/decisions.md, "Redis Cluster"): Redis replicates
asynchronously, so the entries a master accepted (answered 202) in the moment
before it died and had not yet sent to its replica are gone when the replica takes
over, along with their dedup markers. Only entries of the shards whose slots that
master served; nothing a worker acknowledged (it persisted them first), and nothing
is counted twice: an acknowledgement lost in the failover makes the entry come back,
and Postgres's ``counted_events`` makes its second persist a no-op; a retried batch
whose dedup markers were lost is accepted again into the stream and persisted as
nothing new, for the same reason.

The module starts its own cluster in every pass (the failover needs replicas and
leaves a master down), plus a plain Redis for arq (ARQ_REDIS_URL).
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from scoreboard.embedded import EmbeddedRedis
from scoreboard.embedded_cluster import EmbeddedCluster
from scoreboard.keys import Keys
from tests.conftest import Api, Player
from tests.servers import Backing, board_totals, fresh_name, ingest_server
from tests.test_cluster_ingest import backend_login
from tests.waiting import wait_for
from tests.worker_support import wait_caught_up, worker_process

BATCH = "/api/scores/batch"
SHARDS = 3


@dataclasses.dataclass
class ClusterRun:
    backing: Backing
    cluster: EmbeddedCluster


@pytest.fixture(scope="module")
def run(backing: Backing) -> Iterator[ClusterRun]:
    with tempfile.TemporaryDirectory(prefix="scoreboard-failover-",
                                     ignore_cleanup_errors=True) as folder:
        cluster = EmbeddedCluster(Path(folder) / "cluster", masters=3, replicas=1)
        arq = EmbeddedRedis(Path(folder) / "arq")
        try:
            cluster.start()
            arq_url = arq.start()
            yield ClusterRun(dataclasses.replace(
                backing, redis_url=cluster.url, redis_cluster=True, redis_shards=SHARDS,
                key_prefix=fresh_name("sbfailover"), arq_redis_url=arq_url), cluster)
        finally:
            arq.stop()
            cluster.stop()


def backend_rows(database_url: str, backend_id: str) -> list[tuple[str, str, int]]:
    """(event id, user id, points) of every action the backend's batches persisted."""
    async def fetch() -> list[tuple[str, str, int]]:
        connection = await asyncpg.connect(database_url)
        try:
            rows = await connection.fetch(
                "SELECT event_id, user_id, points FROM actions WHERE source = $1",
                f"backend:{backend_id}")
            return [(r["event_id"], r["user_id"], r["points"]) for r in rows]
        finally:
            await connection.close()
    return asyncio.run(fetch())


def scores_of(database_url: str, users: list[str]) -> dict[str, int]:
    async def fetch() -> dict[str, int]:
        connection = await asyncpg.connect(database_url)
        try:
            rows = await connection.fetch(
                "SELECT user_id, score FROM scores WHERE board = 'global' AND user_id = ANY($1)",
                users)
            return {r["user_id"]: r["score"] for r in rows}
        finally:
            await connection.close()
    return asyncio.run(fetch())


def users_in_every_shard(keys: Keys, per_shard: int) -> list[str]:
    users: list[str] = []
    counts = dict.fromkeys(range(keys.shards), 0)
    while min(counts.values()) < per_shard:
        user = fresh_name("gp")
        if counts[keys.shard_of(user)] < per_shard:
            counts[keys.shard_of(user)] += 1
            users.append(user)
    return users


def post_until_accepted(api: Api, backend: Player, items: list[dict[str, Any]],
                        *, tries: int = 200) -> dict[str, Any]:
    """The client's side of the contract: a 503 (or no answer) is retried, the
    same batch, until it is answered 202."""
    for _ in range(tries):
        try:
            response = api.post(BATCH, json={"increments": items}, headers=backend.headers)
        except httpx.HTTPError:
            time.sleep(0.1)
            continue
        if response.status_code == 202:
            answer: dict[str, Any] = response.json()
            return answer
        assert response.status_code == 503, response.text
        time.sleep(0.1)
    raise AssertionError("a batch was not accepted after 200 tries")


def check_counted_once(backing: Backing, client: Any, backend_id: str,
                       accepted: set[str], users: list[str]) -> list[tuple[str, str, int]]:
    """Postgres holds each accepted event at most once, nothing it was not sent,
    each user's total is the sum of its actions, and the board says the same."""
    rows = backend_rows(backing.database_url, backend_id)
    event_ids = [event_id for event_id, _, _ in rows]
    assert len(event_ids) == len(set(event_ids))
    assert set(event_ids) <= accepted
    sums: dict[str, int] = {}
    for _, user_id, points in rows:
        sums[user_id] = sums.get(user_id, 0) + points
    assert scores_of(backing.database_url, users) == sums
    on_board = board_totals(client, backing.keys, "global")
    assert {user: on_board.get(user) for user in sums} == sums
    return rows


def test_the_worker_persists_every_shard_once(run: ClusterRun) -> None:
    backing, keys = run.backing, run.backing.keys
    users = users_in_every_shard(keys, per_shard=3)
    items: list[dict[str, Any]] = [
        {"user_id": user, "points": 1 + n % 5, "event_id": fresh_name("ev")}
        for n, user in enumerate(users * 3)]
    client = backing.sync_redis(decode_responses=True)
    with ingest_server(backing.env(TRUSTED_PROXIES="127.0.0.1/32",
                                   BACKEND_RATE="100000000/60")) as url, \
            worker_process(backing.env(WORKER_METRICS_PORT="0", WORKER_BLOCK_MS="100")):
        api = Api(url)
        try:
            backend = backend_login(api, backing)
            answer = post_until_accepted(api, backend, items)
            assert answer == {"accepted": len(items), "duplicates": 0, "refused": []}
            assert all(client.xlen(shard.stream) > 0 for shard in keys.every_shard)
            wait_caught_up(client, keys, timeout_s=90)
            rows = check_counted_once(backing, client, backend.user_id,
                                      {item["event_id"] for item in items}, users)
            assert len(rows) == len(items)
            # Sent again: duplicates, and nothing more in Postgres.
            again = post_until_accepted(api, backend, items)
            assert again["duplicates"] == len(items)
            wait_caught_up(client, keys, timeout_s=90)
            assert len(backend_rows(backing.database_url, backend.user_id)) == len(items)
        finally:
            api.close()
            client.close()


@pytest.mark.timeout(420)
def test_a_master_killed_under_load_loses_nothing_acknowledged(
        run: ClusterRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backing, keys, cluster = run.backing, run.backing.keys, run.cluster
    worker_log = tmp_path / "worker.log"  # its tail goes into a failure's message
    monkeypatch.setenv("WORKER_TEST_LOG", str(worker_log))

    def log_tail() -> str:
        return worker_log.read_text()[-3000:] if worker_log.exists() else "(no log)"

    users = users_in_every_shard(keys, per_shard=4)
    client = backing.sync_redis(decode_responses=True)
    killed_shard = 0
    victim = cluster.master_of_slot(client.keyslot(keys.shard(killed_shard).stream))
    served = {shard for shard in range(SHARDS) if cluster.master_of_slot(
        client.keyslot(keys.shard(shard).stream)).port == victim.port}
    accepted: set[str] = set()
    user_of: dict[str, str] = {}
    stop = threading.Event()
    batches = 0
    failures: list[BaseException] = []

    def load(api: Api, backend: Player) -> None:
        nonlocal batches
        try:
            n = 0
            while not stop.is_set():
                items: list[dict[str, Any]] = [
                    {"user_id": users[(n + i) % len(users)], "points": 1 + i % 3,
                     "event_id": fresh_name("ev")} for i in range(len(users))]
                n += 1
                post_until_accepted(api, backend, items)
                user_of.update((item["event_id"], item["user_id"]) for item in items)
                accepted.update(item["event_id"] for item in items)
                batches += 1
        except BaseException as exc:  # surfaced by the test thread
            failures.append(exc)

    consumer = fresh_name("failover-worker")
    with ingest_server(backing.env(TRUSTED_PROXIES="127.0.0.1/32",
                                   BACKEND_RATE="100000000/60")) as url, \
            worker_process(backing.env(WORKER_METRICS_PORT="0", WORKER_BLOCK_MS="100",
                                       CLAIM_IDLE_MS="2000", CONSUMER_NAME=consumer)) as worker:
        api = Api(url)
        try:
            backend = backend_login(api, backing)
            # this worker's consumers are in their groups (its start-up is over); by its
            # own name: the previous test's worker left its consumers there
            wait_for(lambda: all(consumer in {c["name"] for c in consumers_of(client, s.stream)}
                                 for s in keys.every_shard), "the worker started", timeout_s=120,
                     every_s=0.05)
            loader = threading.Thread(target=load, args=(api, backend), daemon=True)
            loader.start()
            wait_for(lambda: batches >= 30 or bool(failures), "30 batches before the kill",
                     timeout_s=120, every_s=0.05)
            cluster.stop_node(victim, kill=True)  # SIGKILL: no AOF flush, no goodbye
            killed_at = batches
            wait_for(lambda: batches >= killed_at + 30 or bool(failures),
                     "30 batches accepted after the kill (through the failover)",
                     timeout_s=120, every_s=0.05)
            stop.set()
            loader.join(timeout=60)
            assert not failures, failures
            cluster.wait_ok(timeout_s=60)
            assert cluster.master_of_slot(client.keyslot(
                keys.shard(killed_shard).stream)).port != victim.port
            assert worker.poll() is None, \
                f"the worker exited with {worker.returncode}:\n{log_tail()}"
            try:
                wait_caught_up(client, keys, timeout_s=180)
            finally:
                assert worker.poll() is None, \
                    f"the worker exited with {worker.returncode}:\n{log_tail()}"
            rows = check_counted_once(backing, client, backend.user_id, accepted, users)
        finally:
            stop.set()
            api.close()
            client.close()
    lost = accepted - {event_id for event_id, _, _ in rows}
    # Only what the killed master had accepted and not yet replicated can be lost:
    # entries of the shards it served, never of another.
    assert {keys.shard_of(user_of[event_id]) for event_id in lost} <= served
    print(f"failover: {len(accepted)} accepted, {len(lost)} lost (not yet replicated)")


def consumers_of(client: Any, stream: str) -> list[Any]:
    try:
        return list(client.xinfo_consumers(stream, "persisters"))
    except Exception:  # no stream or group yet
        return []
