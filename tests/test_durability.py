"""What the README says of durability, on a real redis-server killed with SIGKILL.

The README: Redis runs with ``appendonly yes`` and ``appendfsync everysec``; an
increment answered 202 is in the stream, and what is in the stream survives
a crash of the Redis process (each write reaches the AOF file before its
reply goes out), while a crash of the whole host can lose up to about the
last second (the file is fsynced once a second). A test cannot crash the
host; it can kill the process, and restart it from the same folder.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from scoreboard.embedded import EmbeddedRedis
from scoreboard.keys import Keys
from tests.conftest import Api
from tests.servers import Backing, fresh_name, ingest_server, stream_entries
from tests.test_fraud import increment


@pytest.fixture
def killable_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of this test's own (the suite's must not be killed)."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.single_node("SIGKILLs a single Redis and restarts it from its AOF; the cluster's "
                         "failover is tests/test_cluster_worker.py")
def test_every_202_survives_a_sigkill_of_redis(killable_redis: EmbeddedRedis,
                                               backing: Backing) -> None:
    keys = Keys(fresh_name("durable"))
    client: Any = redis.Redis.from_url(killable_redis.url, decode_responses=True)
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    env = backing.env(REDIS_URL=killable_redis.url, KEY_PREFIX=keys.prefix,
                      TRUSTED_PROXIES="127.0.0.1/32", INCREMENT_RATE="1000/60",
                      ACTION_TOKEN_RATE="1000/60", RAPID_MAX_ACTIONS="1000")
    accepted: list[str] = []
    with ingest_server(env) as url:
        api = Api(url)
        try:
            players = [api.register_and_login() for _ in range(3)]
            for _ in range(10):
                for player in players:
                    response = increment(api, player)
                    assert response.status_code == 202, response.text
                    accepted.append(response.json()["event_id"])
            # At once after the last 202: well inside the second everysec leaves unsynced.
            pid = int(client.info("server")["process_id"])
            os.kill(pid, signal.SIGKILL)
            client.close()
        finally:
            api.close()
    killable_redis.stop()  # reaps the killed process
    assert killable_redis.data_dir.exists()

    restarted = EmbeddedRedis(killable_redis.data_dir, port=killable_redis.port)
    restarted.start()
    try:
        client = redis.Redis.from_url(restarted.url, decode_responses=True)
        started = time.monotonic()
        while client.info("persistence").get("loading"):  # the AOF is read at start
            assert time.monotonic() - started < 30
            time.sleep(0.05)
        in_stream = [fields["event_id"] for _, fields in stream_entries(client, keys)]
        client.close()
    finally:
        restarted.stop()
    assert in_stream == accepted


def test_a_restart_over_a_large_aof_returns_once_the_data_is_loaded(
        killable_redis: EmbeddedRedis) -> None:
    """Redis takes connections while it loads its AOF and answers ``LOADING`` to
    every command meanwhile; ``start`` returns only when it answers for real, so
    nothing that starts after it (ingest, a worker, a test) sees that error."""
    client = redis.Redis.from_url(killable_redis.url)
    keys = 400_000  # loading takes a good fraction of a second here
    client.eval("for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'k' .. i, i) end", 0, str(keys))
    client.close()
    port = killable_redis.port
    killable_redis.stop()
    killable_redis.start()
    assert killable_redis.port == port
    client = redis.Redis.from_url(killable_redis.url)
    try:
        assert client.dbsize() == keys  # no BusyLoadingError, and everything is back
    finally:
        client.close()
