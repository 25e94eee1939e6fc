"""Ingest on a real Redis Cluster, players over 3 shards (scoreboard/keys.py,
scoreboard/sharded_calls.py).

Runs in every pass: on the default single-node pass the module starts a 3-master
cluster of its own (scoreboard/embedded_cluster.py); on ``make test-cluster`` it
uses the suite's. Each accepted increment must land in its player's shard stream
and nowhere else; the limits whose keys live in other slots (the address's, the
backend's) must hold across shards; a refusal writes nothing in any slot.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scoreboard.embedded_cluster import EmbeddedCluster
from scoreboard.keys import Keys
from scoreboard.stream_entry import unpacked
from tests.conftest import Api, Player, new_address
from tests.servers import Backing, fresh_name, ingest_server
from tests.test_refusals import assert_error, batch_item

INCREMENT, ACTION_TOKEN, BATCH = "/api/scores/increment", "/api/actions/token", "/api/scores/batch"
SHARDS = 3


@pytest.fixture(scope="module")
def cluster_backing(backing: Backing) -> Iterator[Backing]:
    """The suite's backing on a cluster: its own (with a fresh key prefix), or the
    suite's when the suite runs on one."""
    if backing.redis_cluster:
        yield dataclasses.replace(backing, key_prefix=fresh_name("sbcluster"))
        return
    with tempfile.TemporaryDirectory(prefix="scoreboard-cluster-",
                                     ignore_cleanup_errors=True) as folder:
        cluster = EmbeddedCluster(Path(folder), masters=3)
        cluster.start()
        try:
            yield dataclasses.replace(backing, redis_url=cluster.url, redis_cluster=True,
                                      redis_shards=SHARDS, key_prefix=fresh_name("sbcluster"))
        finally:
            cluster.stop()


@pytest.fixture(scope="module")
def cluster_redis(cluster_backing: Backing) -> Iterator[Any]:
    client = cluster_backing.sync_redis(decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="module")
def cluster_url(cluster_backing: Backing) -> Iterator[str]:
    # A low per-address limit (3 a minute) so that the cross-shard test reaches it;
    # every other test speaks from addresses of its own.
    with ingest_server(cluster_backing.env(TRUSTED_PROXIES="127.0.0.1/32",
                                           IP_RATE="3/60")) as url:
        yield url


@pytest.fixture
def cluster_api(cluster_url: str) -> Iterator[Api]:
    client = Api(cluster_url)
    yield client
    client.close()


def players_in_every_shard(api: Api, keys: Keys) -> dict[int, Player]:
    found: dict[int, Player] = {}
    for _ in range(60):
        player = api.register_and_login()
        found.setdefault(keys.shard_of(player.user_id), player)
        if len(found) == keys.shards:
            return found
    raise AssertionError(f"no player in some shard after 60 registrations: {sorted(found)}")


def stream_event_ids(client: Any, stream: str) -> list[str]:
    # Batch entries are packed (scoreboard/stream_entry.py); increments are plain.
    return [unpacked(fields)["event_id"] for _, fields in client.xrange(stream)]


def all_lengths(client: Any, keys: Keys) -> list[int]:
    return [int(client.xlen(stream)) for stream in keys.streams]


def test_shard_streams_live_on_different_masters(cluster_redis: Any,
                                                 cluster_backing: Backing) -> None:
    keys = cluster_backing.keys
    nodes = {cluster_redis.get_node_from_key(stream).name for stream in keys.streams}
    assert len(nodes) > 1, nodes  # 3 tags, 3 masters: the slots fall on more than one


def test_each_increment_lands_in_its_players_shard(cluster_api: Api, cluster_redis: Any,
                                                   cluster_backing: Backing) -> None:
    keys = cluster_backing.keys
    players = players_in_every_shard(cluster_api, keys)
    for shard, player in players.items():
        before = all_lengths(cluster_redis, keys)
        token = cluster_api.action_token(player)
        accepted = cluster_api.post(INCREMENT, json={"action_token": token},
                                    headers=player.headers)
        assert accepted.status_code == 202, accepted.text
        event_id = accepted.json()["event_id"]
        assert event_id in stream_event_ids(cluster_redis, keys.shard(shard).stream)
        after = all_lengths(cluster_redis, keys)
        assert [a - b for a, b in zip(after, before, strict=True)] == [
            1 if index == shard else 0 for index in range(SHARDS)]
        # The same token again: the original answer, nothing written.
        again = cluster_api.post(INCREMENT, json={"action_token": token}, headers=player.headers)
        assert again.status_code == 202 and again.json()["event_id"] == event_id
        assert all_lengths(cluster_redis, keys) == after
    assert not cluster_redis.exists(keys.stream)  # the unsharded stream is not used


def test_the_address_limit_holds_across_shards(cluster_api: Api, cluster_redis: Any,
                                               cluster_backing: Backing) -> None:
    """Three increments from one address, by players of three shards, use its limit
    (3 a minute); the fourth, by a player of any shard, is refused, writes nothing
    and leaves its action token unused."""
    keys = cluster_backing.keys
    players = list(players_in_every_shard(cluster_api, keys).values())
    tokens = [cluster_api.action_token(player) for player in players]
    extra = players[0]
    extra_token = cluster_api.action_token(extra)
    shared = new_address()
    for player, token in zip(players, tokens, strict=True):
        headers = {**player.headers, "X-Forwarded-For": shared}
        response = cluster_api.post(INCREMENT, json={"action_token": token}, headers=headers)
        assert response.status_code == 202, response.text
    before = all_lengths(cluster_redis, keys)
    refused = cluster_api.post(INCREMENT, json={"action_token": extra_token},
                               headers={**extra.headers, "X-Forwarded-For": shared})
    assert_error(refused, 429, "rate_limited")
    assert "address" in refused.json()["error"]["message"]
    assert all_lengths(cluster_redis, keys) == before
    # Not consumed: from another address the same token is accepted.
    accepted = cluster_api.post(INCREMENT, json={"action_token": extra_token},
                                headers=extra.headers)
    assert accepted.status_code == 202, accepted.text


def test_action_tokens_share_the_address_limit_across_shards(
        cluster_api: Api, cluster_backing: Backing) -> None:
    keys = cluster_backing.keys
    players = list(players_in_every_shard(cluster_api, keys).values())
    shared = new_address()
    for player in players:
        issued = cluster_api.post(ACTION_TOKEN, headers={**player.headers,
                                                         "X-Forwarded-For": shared})
        assert issued.status_code == 200, issued.text
    refused = cluster_api.post(ACTION_TOKEN, headers={**players[1].headers,
                                                      "X-Forwarded-For": shared})
    assert_error(refused, 429, "rate_limited")


def test_a_revoked_access_token_is_refused_on_its_shard(cluster_api: Api,
                                                        cluster_backing: Backing) -> None:
    player = cluster_api.register_and_login()
    token = cluster_api.action_token(player)
    assert cluster_api.post("/api/auth/logout", headers=player.headers).status_code == 204
    refused = cluster_api.post(INCREMENT, json={"action_token": token}, headers=player.headers)
    assert_error(refused, 401, "token_revoked")


def backend_login(api: Api, backing: Backing) -> Player:
    import asyncio

    from scoreboard.accounts import create_backend_account
    name = fresh_name("backend")
    user_id, password = asyncio.run(create_backend_account(
        backing.database_url, name, scrypt_n=1024, scrypt_r=8, scrypt_p=1))
    return api.login(user_id, name, password, new_address())


def items_in_every_shard(keys: Keys, per_shard: int = 2) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    counts = dict.fromkeys(range(keys.shards), 0)
    while min(counts.values()) < per_shard:
        item = batch_item()
        shard = keys.shard_of(item["user_id"])
        if counts[shard] < per_shard:
            counts[shard] += 1
            items.append(item)
    return items


def test_a_batch_is_split_by_shard(cluster_api: Api, cluster_redis: Any,
                                   cluster_backing: Backing) -> None:
    keys = cluster_backing.keys
    backend = backend_login(cluster_api, cluster_backing)
    items = items_in_every_shard(keys)
    banned = items[0]
    cluster_redis.set(keys.player(banned["user_id"]).banned(banned["user_id"]), "test")
    before = all_lengths(cluster_redis, keys)
    accepted = cluster_api.post(BATCH, json={"increments": items}, headers=backend.headers)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json() == {"accepted": len(items) - 1, "duplicates": 0, "refused": [
        {"event_id": banned["event_id"], "reason": "user_banned"}]}
    after = all_lengths(cluster_redis, keys)
    for shard in range(SHARDS):
        expected = {item["event_id"] for item in items[1:]
                    if keys.shard_of(item["user_id"]) == shard}
        assert after[shard] - before[shard] == len(expected)
        assert expected <= set(stream_event_ids(cluster_redis, keys.shard(shard).stream))
    # The same batch again: every part answers its items as duplicates.
    again = cluster_api.post(BATCH, json={"increments": items[1:]}, headers=backend.headers)
    assert again.status_code == 202, again.text
    assert again.json() == {"accepted": 0, "duplicates": len(items) - 1, "refused": []}
    assert all_lengths(cluster_redis, keys) == after


def test_a_batch_over_the_backend_limit_writes_nothing_in_any_shard(
        cluster_backing: Backing) -> None:
    keys = cluster_backing.keys
    with ingest_server(cluster_backing.env(TRUSTED_PROXIES="127.0.0.1/32",
                                           BACKEND_RATE="8/60")) as url:
        api = Api(url)
        client = cluster_backing.sync_redis(decode_responses=True)
        try:
            backend = backend_login(api, cluster_backing)
            first = api.post(BATCH, json={"increments": items_in_every_shard(keys)},
                             headers=backend.headers)
            assert first.status_code == 202 and first.json()["accepted"] == 6, first.text
            before = all_lengths(client, keys)
            over = api.post(BATCH, json={"increments": items_in_every_shard(keys)},
                            headers=backend.headers)
            assert_error(over, 429, "rate_limited")
            assert all_lengths(client, keys) == before
        finally:
            client.close()
            api.close()


def test_a_banned_backend_and_a_revoked_backend_token_are_refused(
        cluster_api: Api, cluster_redis: Any, cluster_backing: Backing) -> None:
    keys = cluster_backing.keys
    backend = backend_login(cluster_api, cluster_backing)
    before = all_lengths(cluster_redis, keys)
    cluster_redis.set(keys.player(backend.user_id).banned(backend.user_id), "test", px=60_000)
    banned = cluster_api.post(BATCH, json={"increments": items_in_every_shard(keys)},
                              headers=backend.headers)
    assert_error(banned, 403, "user_banned")
    cluster_redis.delete(keys.player(backend.user_id).banned(backend.user_id))
    assert cluster_api.post("/api/auth/logout", headers=backend.headers).status_code == 204
    revoked = cluster_api.post(BATCH, json={"increments": items_in_every_shard(keys)},
                               headers=backend.headers)
    assert_error(revoked, 401, "token_revoked")
    assert all_lengths(cluster_redis, keys) == before
