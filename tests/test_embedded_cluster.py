"""The test harness's Redis Cluster (scoreboard/embedded_cluster.py): formed from the
embedded default's binary, every slot served, keys of different tags on different
masters, and a replica promoted when its master stops."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from scoreboard.embedded_cluster import SLOTS, EmbeddedCluster, slot_ranges


def test_slot_ranges_cover_every_slot_once() -> None:
    for masters in (1, 2, 3, 5):
        ranges = slot_ranges(masters)
        assert ranges[0][0] == 0 and ranges[-1][1] == SLOTS - 1
        assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ranges))


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    with tempfile.TemporaryDirectory(prefix="scoreboard-cluster-",
                                     ignore_cleanup_errors=True) as folder:
        started = EmbeddedCluster(Path(folder), masters=3, replicas=1)
        started.start()
        try:
            yield started
        finally:
            started.stop()


def test_three_masters_serve_every_slot(cluster: EmbeddedCluster) -> None:
    client = redis.RedisCluster.from_url(cluster.url, decode_responses=True)
    try:
        served = sum(end - start + 1 for start, end, *_ in
                     client.execute_command("CLUSTER SLOTS", target_nodes=client.RANDOM))
        assert served == SLOTS
        masters = {cluster.master_of_slot(client.keyslot(f"{{t{i}}}")).port for i in range(30)}
        assert masters == {node.port for node in cluster.master_nodes}
        for i in range(30):
            client.set(f"{{t{i}}}:k", i)
        assert [int(client.get(f"{{t{i}}}:k")) for i in range(30)] == list(range(30))
    finally:
        client.close()


def test_a_stopped_master_is_replaced_by_its_replica(cluster: EmbeddedCluster) -> None:
    """Runs last in this module: it leaves the cluster with a master down."""
    client = redis.RedisCluster.from_url(cluster.url, decode_responses=True)
    try:
        slot = client.keyslot("{failover}")
        client.set("{failover}:k", "kept")
        client.execute_command("WAIT", 1, 5000, target_nodes=client.get_node_from_key(
            "{failover}:k"))
        old_master = cluster.master_of_slot(slot)
        cluster.stop_node(old_master, kill=True)
        cluster.wait_ok(timeout_s=60)
        new_master = cluster.master_of_slot(slot)
        assert new_master.port != old_master.port
        assert new_master.master_port == old_master.port  # its own replica took over
    finally:
        client.close()
    fresh = redis.RedisCluster(host="127.0.0.1", port=new_master.port, decode_responses=True)
    try:
        assert fresh.get("{failover}:k") == "kept"  # WAIT had it on the replica
    finally:
        fresh.close()
