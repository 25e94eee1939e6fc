"""The asyncio cluster client every process uses: redis-py 5.3's ``RedisCluster`` with
two of its recovery gaps closed. Built by :func:`scoreboard.redis_clients.redis_client`.

1. It forgets every node it could start from. On each command's ``ConnectionError``
   or ``TimeoutError`` redis-py drops that node from ``nodes_manager.startup_nodes``
   and closes every connection of the client (to re-read the slot map), so the
   commands other tasks had in flight on live nodes fail too and drop *their* nodes.
   The list is refilled only by a successful re-read. Once it is empty the client
   can never re-read the slot map again: every command raises "Redis Cluster cannot
   be connected. Please provide at least one reachable node: None", for ever, with
   every node answering (redis-py issue #3693, pull request #3697, open for 5.x).
   The worker treats that message as the cluster's moment and retries, so it stayed
   up and persisted nothing. Here, before each re-read, the nodes redis-py dropped
   come back at the end of the list: the seed node(s) of the URL and every node of
   the last slot map (those that did not fail are still asked first). The list is
   iterated over a copy, so another task dropping a node meanwhile is no
   ``RuntimeError: dictionary changed size during iteration``.

2. Its stream reads depend on one node. ``XREAD``/``XREADGROUP`` have "movable" keys:
   for each call redis-py asks its default node ``COMMAND GETKEYS`` (one round trip)
   before it knows the slot. When that node is down (a master killed: a failover)
   the call fails *before* it reaches a node, so it never triggers the re-read of
   the slot map that would replace the default node: every stream read of the
   process fails until some other command happens to hit the dead node. Here the
   keys of a stream read are taken from its arguments (``STREAMS k1 .. kn id1 ..
   idn``), as redis-py already does for ``EVALSHA``.

And a process can start from any of several nodes: ``REDIS_URL`` may list them,
comma-separated (``redis://node-a:6379,node-b:6379/0``; redis-py's own URL takes one
host), so one node being down when a process starts does not keep it from learning
the cluster from another (:func:`split_seed_url`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException

STREAM_READS = ("XREAD", "XREADGROUP")


def stream_read_keys(args: Sequence[Any]) -> list[Any]:
    """The keys of an ``XREAD``/``XREADGROUP`` call's arguments (after the command
    name), read as Redis reads them: options (``GROUP g c``, ``COUNT n``, ``BLOCK ms``,
    ``NOACK``) up to ``STREAMS``, then as many ids as keys. Raises ``ValueError`` for
    anything else (the server would refuse it too)."""
    index = 0
    while index < len(args):
        word = args[index]
        word = (word.decode() if isinstance(word, bytes) else str(word)).upper()
        if word == "STREAMS":
            rest = list(args[index + 1:])
            if not rest or len(rest) % 2:
                raise ValueError("STREAMS takes as many ids as keys")
            return rest[:len(rest) // 2]
        step = _READ_OPTIONS.get(word)
        if step is None:
            raise ValueError(f"unexpected {word!r} in a stream read")
        index += step
    raise ValueError("no STREAMS in a stream read")


def split_seed_url(url: str) -> tuple[str, list[tuple[str, int]]]:
    """``redis://[user:pass@]h1:p1,h2:p2/0?...`` as the URL of its first node (what
    redis-py's ``from_url`` parses) and the (host, port) of every node it names, in
    order (the client asks them in that order); a URL of one node comes back as it
    is, with no list. A node without a port has 6379."""
    parts = urlsplit(url)
    credentials, _, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return url, []
    nodes = [host.strip() for host in hosts.split(",")]
    if not all(nodes):
        raise ValueError("an empty node in the URL's list of nodes")
    seeds = []
    for node in nodes:
        host, colon, port = node.rpartition(":")
        if not colon or node.endswith("]"):  # no port (an IPv6 address is bracketed)
            host, port = node, ""
        seeds.append((host.strip("[]"), int(port) if port else 6379))
    first = f"{credentials}@{nodes[0]}" if credentials else nodes[0]
    return urlunsplit(parts._replace(netloc=first)), seeds


# Each option of XREAD/XREADGROUP and how many arguments it spans, itself included.
_READ_OPTIONS = {"GROUP": 3, "COUNT": 2, "BLOCK": 2, "NOACK": 1}


class _NodeList(dict[str, ClusterNode]):
    """redis-py's ``startup_nodes``, iterated over a copy: redis-py awaits a node inside
    its loop over them while other tasks may drop a node that failed."""

    def values(self) -> Any:
        return list(super().values())


class ReseedingRedisCluster(RedisCluster):
    """``RedisCluster`` that can always re-read the slot map from a node it once knew,
    and reads streams without asking a node for their keys (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        manager = self.nodes_manager
        self._seed_nodes = dict(manager.startup_nodes)
        manager.startup_nodes = _NodeList(manager.startup_nodes)

    def _reseed(self) -> None:
        """Put back, after the nodes redis-py still lists, the seeds and every node of
        the last slot map it dropped. Reusing its node objects: redis-py closes those
        it replaces when the re-read succeeds, and all of them when the client closes."""
        listed = self.nodes_manager.startup_nodes
        for known in (self.nodes_manager.nodes_cache, self._seed_nodes):
            for name, node in list(known.items()):
                listed.setdefault(name, node)

    async def initialize(self) -> ReseedingRedisCluster:
        if self._initialize:
            self._reseed()
        await super().initialize()
        return self

    async def _determine_slot(self, command: str, *args: Any) -> int:
        if command.upper() not in STREAM_READS:
            return int(await super()._determine_slot(command, *args))
        try:
            keys = stream_read_keys(args)
        except ValueError as exc:
            raise RedisClusterException(f"{command}: {exc}") from exc
        slots = {self.keyslot(key) for key in keys}
        if len(slots) != 1:
            raise RedisClusterException(f"{command} - all keys must map to the same key slot")
        return slots.pop()
