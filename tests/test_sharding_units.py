"""Sharded key names and the pure parts of running on a cluster, no server needed
(scoreboard/keys.py, scoreboard/sharded_calls.py, scoreboard/redis_clients.py,
scoreboard/cluster_client.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
import redis.asyncio.connection
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from scoreboard.cluster_client import split_seed_url, stream_read_keys
from scoreboard.errors import ConfigError
from scoreboard.keys import Keys
from scoreboard.redis_clients import cluster_unsettled
from scoreboard.script_calls import BatchItem
from scoreboard.settings import load_settings
from scoreboard.sharded_calls import items_by_shard
from tests.servers import PROJECT_DIR


def test_unsharded_names_are_unchanged() -> None:
    keys = Keys("sb")
    assert not keys.sharded
    assert keys.player("u1") is keys and keys.at_address("192.0.2.1") is keys
    assert keys.player("u1").banned("u1") == "{sb}:banned:u1"
    assert keys.streams == ["{sb}:stream:increments"]
    assert load_settings({}).keys.stream == "{sb}:stream:increments"


def test_a_players_keys_share_its_shards_slot() -> None:
    keys = Keys("sb", shards=3, cluster=True)
    player = keys.player("u1")
    names = [player.banned("u1"), player.action_token("n"), player.event_marks("player") + "1",
             player.user_rate("increment", "u1"), player.stream, player.fraud_stream,
             player.revoked_jti("j"), player.recent_actions("u1")]
    assert len({key_slot(name.encode()) for name in names}) == 1
    assert player.tag == f"{{sb:s{keys.shard_of('u1')}}}"
    assert keys.at_address("192.0.2.1").ip_rate("increment", "192.0.2.1") == \
        "{sb:a:192.0.2.1}:rate:increment:ip:192.0.2.1"
    assert keys.board("global") == "{sb}:board:global"  # boards keep the deployment's tag
    # Names of a user or an address route themselves; on a view they keep its tag.
    assert keys.banned("u1") == player.banned("u1")
    assert keys.ip_rate("auth", "192.0.2.1") == keys.at_address("192.0.2.1").ip_rate(
        "auth", "192.0.2.1")
    other = keys.shard((keys.shard_of("u1") + 1) % 3)
    assert other.banned("u1").startswith(other.tag)


def test_the_shard_of_a_player_is_stable_and_spread() -> None:
    keys = Keys("sb", shards=3)
    assert keys.shard_of("player-42") == Keys("other", shards=3).shard_of("player-42")
    counts = [0, 0, 0]
    for n in range(3000):
        counts[keys.shard_of(f"p{n}")] += 1
    assert min(counts) > 800


def test_a_batch_splits_by_shard_in_order() -> None:
    keys = Keys("sb", shards=3)
    items = [BatchItem(f"e{n}", f"p{n}", "global", 1, "") for n in range(30)]
    parts = items_by_shard(keys, items)
    assert sorted(item for part in parts.values() for item in part) == sorted(items)
    for shard, part in parts.items():
        assert all(keys.shard_of(item.user_id) == shard for item in part)
        assert part == [item for item in items if keys.shard_of(item.user_id) == shard]


def test_redis_shards_below_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="REDIS_SHARDS"):
        load_settings({"REDIS_SHARDS": "0"})
    with pytest.raises(ValueError):
        Keys("sb", shards=0)


def test_a_worker_on_a_cluster_without_arq_redis_url_is_refused_at_start() -> None:
    started = subprocess.run(
        [sys.executable, "-c", "import workers.main"], cwd=PROJECT_DIR, capture_output=True,
        text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://127.0.0.1:1/0",
             "DATABASE_URL": "postgresql://x@127.0.0.1:1/x", "REDIS_CLUSTER": "1"})
    assert started.returncode != 0
    assert "ARQ_REDIS_URL" in started.stderr


def test_a_cluster_in_flux_is_told_from_a_bug() -> None:
    connection = redis.asyncio.connection.Connection()
    with pytest.raises(AttributeError) as closed:  # its writer gone, as after aclose()
        asyncio.run(connection._send_packed_command([b"PING"]))
    assert cluster_unsettled(closed.value)
    with pytest.raises(AttributeError) as ours:
        _ = None.missing  # type: ignore[attr-defined]
    assert not cluster_unsettled(ours.value)
    assert not cluster_unsettled(ValueError("x"))
    assert cluster_unsettled(RedisClusterException(
        "Redis Cluster cannot be connected. Please provide at least one reachable node"))
    assert not cluster_unsettled(RedisClusterException(
        "EVALSHA - all keys must map to the same key slot"))  # a bug: not retried


def test_a_stream_reads_keys_are_read_from_its_arguments() -> None:
    """What the cluster client routes XREAD/XREADGROUP by, without asking a node."""
    assert stream_read_keys(["GROUP", "g", "c", "COUNT", 10, "BLOCK", 100, "STREAMS",
                             "{s0}:a", ">"]) == ["{s0}:a"]
    assert stream_read_keys([b"COUNT", b"5", b"streams", b"k1", b"k2", b"0", b"0"]) == [
        b"k1", b"k2"]
    # a group or consumer named like an option is an argument, not the option
    assert stream_read_keys(["GROUP", "streams", "count", "NOACK", "STREAMS", "k",
                             "0"]) == ["k"]
    for refused in (["GROUP", "g", "c"], ["STREAMS", "k1", "k2", "0"], ["STREAMS"],
                    ["WHAT", "STREAMS", "k", "0"]):
        with pytest.raises(ValueError):
            stream_read_keys(refused)


def test_a_cluster_url_may_name_several_nodes() -> None:
    assert split_seed_url("redis://127.0.0.1:7000/0") == ("redis://127.0.0.1:7000/0", [])
    assert split_seed_url("redis://user:secret@a:7000,b:7001,c,[::1]:7002,[::2]/0?x=1") == (
        "redis://user:secret@a:7000/0?x=1",
        [("a", 7000), ("b", 7001), ("c", 6379), ("::1", 7002), ("::2", 6379)])
    with pytest.raises(ValueError):
        split_seed_url("redis://a:7000,,b:7001/0")
