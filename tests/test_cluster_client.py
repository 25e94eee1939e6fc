"""The processes' cluster client (scoreboard/cluster_client.py) on real clusters of its
own, in every pass: it comes back after every node it knew failed it at once, its
stream reads go on when the node redis-py asks for their keys is the master killed,
and it starts from the second node of its URL when the first refuses.

Both failed with redis-py 5.3's ``RedisCluster`` as it is: the first for ever
("Redis Cluster cannot be connected ... None", every node answering), the second
until some other command happened to hit the dead node.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from scoreboard.embedded import free_port
from scoreboard.embedded_cluster import EmbeddedCluster
from scoreboard.redis_clients import redis_client


@pytest.fixture
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="scoreboard-cluster-client-",
                                     ignore_cleanup_errors=True) as name:
        yield Path(name)


def test_the_client_comes_back_after_every_node_timed_out_at_once(folder: Path) -> None:
    cluster = EmbeddedCluster(folder, masters=3)
    cluster.start()

    async def scenario() -> None:
        client = redis_client(cluster.url, cluster=True, decode_responses=True,
                              socket_connect_timeout=1, socket_timeout=0.3)
        try:
            keys = [f"{{k{n}}}" for n in range(9)]  # over the three masters
            for key in keys:
                await client.set(key, key)
            for node in cluster.nodes:  # every node stalls past the socket timeout
                with node.client() as admin:
                    admin.execute_command("CLIENT", "PAUSE", "1500")
            # a command in flight on every node: each times out, and redis-py drops
            # its node from those it can start from
            await asyncio.gather(*(client.get(key) for key in keys), return_exceptions=True)
            await asyncio.sleep(1.6)  # every node answers again
            deadline = time.monotonic() + 20
            while True:
                try:
                    assert await client.get(keys[0]) == keys[0]
                    break
                except (redis.RedisError, redis.exceptions.RedisClusterException):
                    assert time.monotonic() < deadline, "the client did not come back"
                    await asyncio.sleep(0.2)
        finally:
            await client.aclose()

    run_then_stop(cluster, scenario)


def test_a_client_starts_from_the_next_node_of_its_url_when_one_refuses(
        folder: Path) -> None:
    cluster = EmbeddedCluster(folder, masters=3)
    cluster.start()
    live = cluster.nodes[1].port

    async def scenario() -> None:
        # the first node named is down (nothing listens there), the second answers
        client = redis_client(f"redis://127.0.0.1:{free_port()},127.0.0.1:{live}/0",
                              cluster=True, decode_responses=True, socket_connect_timeout=1)
        try:
            await client.set("{seeds}:key", "1")
            assert await client.get("{seeds}:key") == "1"
            assert len(client.get_primaries()) == 3
        finally:
            await client.aclose()

    run_then_stop(cluster, scenario)


def test_stream_reads_go_on_when_the_clients_default_node_is_killed(folder: Path) -> None:
    cluster = EmbeddedCluster(folder, masters=3, replicas=1)
    cluster.start()

    async def scenario() -> None:
        client = redis_client(cluster.url, cluster=True, decode_responses=True,
                              socket_connect_timeout=1, socket_timeout=5)
        try:
            await client.ping()
            default = client.get_default_node()
            # streams on the other masters only: no read goes to the killed node
            streams = [name for name in (f"{{s{n}}}:stream" for n in range(30))
                       if cluster.master_of_slot(client.keyslot(name)).port != default.port]
            for stream in streams:
                await client.xgroup_create(stream, "g", id="0", mkstream=True)
            victim = next(node for node in cluster.nodes if node.port == default.port)
            cluster.stop_node(victim, kill=True)
            await asyncio.to_thread(cluster.wait_ok, timeout_s=60)
            for stream in streams:
                await client.xadd(stream, {"n": "1"})
            unread = set(streams)
            deadline = time.monotonic() + 30
            while unread:
                assert time.monotonic() < deadline, f"unread after the failover: {unread}"
                for stream in list(unread):
                    reply: Any = None
                    try:
                        reply = await client.xreadgroup("g", "c", {stream: ">"}, count=10,
                                                        block=10)
                    except (redis.RedisError, redis.exceptions.RedisClusterException):
                        await asyncio.sleep(0.2)
                    if reply:
                        unread.discard(stream)
        finally:
            await client.aclose()

    run_then_stop(cluster, scenario)


def run_then_stop(cluster: EmbeddedCluster,
                  scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``scenario`` against ``cluster`` (started), then stop the cluster whatever
    the scenario did."""
    try:
        asyncio.run(scenario())
    finally:
        cluster.stop()
