"""Backpressure: with the worker stopped, writes are refused past ``MAX_BACKLOG``
(503 ``overloaded``, ``Retry-After``), reads keep working, nothing accepted is lost,
and writes resume by themselves once a worker catches up. Real ingest, worker,
Redis and Postgres; a key prefix of its own, so the backlog is this test's alone.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from tests.conftest import Api, Player
from tests.servers import Backing, fresh_name, ingest_server
from tests.worker_support import worker_process

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
