"""The one place that builds an asyncio Redis client: a plain ``Redis`` on a single
node, a ``RedisCluster`` (redis-py 5.3) when ``REDIS_CLUSTER`` is on.

What the cluster client does differently, and what the code relies on:

- EVALSHA is routed by the slot of its keys and refused client-side when they
  span slots; ``SCRIPT LOAD`` (a ``Script`` reloading on NOSCRIPT) goes to every
  primary. Hence every script call's keys share one tag (scoreboard/keys.py).
- ``pipeline()`` batches commands per node but has no MULTI/EXEC
  (``transaction=True`` raises): what must be atomic is a script.
- PUBLISH on any node reaches subscribers on every node, so pub/sub needs no
  cluster client: :func:`cluster_pubsub` is a plain connection to one node.
- After a failover the client re-reads the slot map on MOVED and on connection
  errors (``cluster_error_retry_attempts``). Two gaps of redis-py 5.3 in that
  recovery (it could lose every node it starts from, and a stream read depended on
  its default node being up) are closed by scoreboard/cluster_client.py, the class
  built here.
"""

from __future__ import annotations

import random
from typing import Any

import redis.asyncio as redis_asyncio
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.exceptions import ConnectionError, RedisClusterException, RedisError

from scoreboard.cluster_client import ReseedingRedisCluster, split_seed_url


def redis_client(url: str, *, cluster: bool, **options: Any) -> Any:
    """An asyncio client of ``url``. On a cluster, options a node connection does
    not take (``connection_class``, ``health_check_interval``) are dropped, and
    ``url`` may name several nodes, comma-separated: the client starts from any
    of them that answers."""
    if not cluster:
        return redis_asyncio.Redis.from_url(url, **options)
    options.pop("connection_class", None)
    options.pop("health_check_interval", None)
    first, seeds = split_seed_url(url)
    nodes = [ClusterNode(host, port) for host, port in seeds]
    return ReseedingRedisCluster.from_url(first, startup_nodes=nodes or None, **options)


# What a process that serves through Redis treats as "Redis is not answering": a
# cluster client raises RedisClusterException (not a RedisError) while it cannot
# learn the slot map.
REDIS_FAILURES: tuple[type[Exception], ...] = (RedisError, RedisClusterException)


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a cluster client (or its pipeline): no MULTI there, and
    its pipeline refuses RENAME, PUBLISH and does not reload scripts."""
    return isinstance(client, (RedisCluster, ClusterPipeline))


async def publish(client: Any, channel: str, message: str) -> Any:
    """PUBLISH through either client (redis-py 5.3's asyncio ``RedisCluster`` has no
    ``publish()``; the command itself goes to one node and reaches every node's
    subscribers)."""
    return await client.execute_command("PUBLISH", channel, message)


# What redis-py 5.3's cluster client raises while the cluster's layout is changing
# (a failover under way, a node unreachable a moment): the server's moment, not a bug.
UNSETTLED_MESSAGES = ("Redis Cluster cannot be connected", "All slots are not covered",
                      "could not agree on a valid slots cache", "No targets were found")


def cluster_unsettled(exc: BaseException) -> bool:
    """True for a failure of the cluster's moment rather than of the data or the code.

    - redis-py 5.3's asyncio ``RedisCluster`` answers a connection error of one
      command by closing every connection of the client (to re-read the slot map
      after a failover); a command of another task in flight on one of them then
      fails with an ``AttributeError`` or ``TypeError`` (its writer or reader gone)
      raised in the connection code;
    - while it re-reads the slot map it raises ``RedisClusterException`` (which is
      not a ``RedisError``) when no node answers or the nodes disagree.

    Like a ConnectionError: ingest answers 503, the worker retries."""
    if isinstance(exc, RedisClusterException):
        return any(message in str(exc) for message in UNSETTLED_MESSAGES)
    if not isinstance(exc, (AttributeError, TypeError)):
        return False
    traceback, last = exc.__traceback__, None
    while traceback is not None:
        last, traceback = traceback.tb_frame.f_code.co_filename, traceback.tb_next
    return last is not None and last.replace("\\", "/").endswith("redis/asyncio/connection.py")


def cluster_pubsub(client: Any) -> Any:
    """A PubSub on one node of ``client``'s cluster, picked at random among those it
    knows (redis-py 5.3's asyncio ``RedisCluster`` has no ``pubsub()``). In a cluster
    a message published on any node reaches subscribers on every node; when the node
    goes away the caller's reconnect asks again, and gets another node."""
    # Before its first command the client knows only its startup nodes.
    nodes = client.get_nodes() or list(client.nodes_manager.startup_nodes.values())
    if not nodes:
        raise ConnectionError("no node of the cluster is known")
    node = random.choice(nodes)
    connection = redis_asyncio.Redis(host=node.host, port=node.port, socket_connect_timeout=2)
    return _OwningPubSub(connection)


class _OwningPubSub:
    """A PubSub that closes its own client with it."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._pubsub = connection.pubsub(ignore_subscribe_messages=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pubsub, name)

    async def aclose(self) -> None:
        await self._pubsub.aclose()
        await self._connection.aclose()
