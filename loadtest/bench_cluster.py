"""The increment script on 1 shard (one Redis) and on 3 shards (a 3-master Redis
Cluster), driven from Python as ingest drives it: ``make bench-cluster``.

Each configuration runs for ``--duration`` seconds with ``--drivers`` processes of
``--concurrency`` coroutines each, calling ``scoreboard.sharded_calls.increment``
(unsharded: one EVALSHA; sharded: the address's read-only gate, the player's
script, the address's charge) for players spread over the shards, each call on a
fresh, pre-stored action token (accepted path). The report gives increments/s,
Redis calls/s, and the cores each party used: every Redis process (from /proc),
the drivers, and the rest of the machine; and says which party set the limit.

Nothing here is the ingest process: HTTP, JWT and token verification are left
out; ``make bench-ingest`` measures those. Servers come from the embedded default's
binary (``scoreboard.embedded``, ``scoreboard.embedded_cluster``).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.harness.cpu import machine_busy_s, process_cpu_s
from loadtest.harness.figures import command_line, machine_line
from scoreboard.embedded import EmbeddedRedis
from scoreboard.embedded_cluster import EmbeddedCluster
from scoreboard.keys import Keys
from scoreboard.limits import Rate
from scoreboard.lua import register_scripts
from scoreboard.redis_clients import redis_client
from scoreboard.sharded_calls import increment

OPEN = Rate(1_000_000_000, 60)  # limits that never refuse: the accepted path only
USERS = 3000
ADDRESSES = 500


@dataclass(frozen=True)
class Job:
    url: str
    cluster: bool
    shards: int
    prefix: str
    driver: int
    concurrency: int
    tokens: int
    start_at: float
    stop_at: float


def user_of(n: int) -> str:
    return f"u_bench{n:07d}"


async def drive(job: Job) -> tuple[int, float]:
    """Increments accepted by this driver between start_at and stop_at, and its CPU s."""
    keys = Keys(job.prefix, shards=job.shards, cluster=job.cluster)
    client = redis_client(job.url, cluster=job.cluster, socket_timeout=10)
    scripts = register_scripts(client)
    nonces = [f"{job.driver}-{secrets.token_hex(8)}" for _ in range(job.tokens)]
    owners = [user_of(n % USERS) for n in range(job.tokens)]
    async with client.pipeline(transaction=False) as pipe:
        for nonce, owner in zip(nonces, owners, strict=True):
            pipe.set(keys.player(owner).action_token(nonce), owner, px=600_000)
        await pipe.execute()
    next_token = 0
    accepted = 0

    async def one_worker() -> None:
        nonlocal next_token, accepted
        while time.time() < job.stop_at and next_token < len(nonces):
            index = next_token
            next_token += 1
            nonce, owner = nonces[index], owners[index]
            reply = await increment(
                scripts, keys, user_id=owner, jti="j", nonce=nonce,
                address=f"198.51.100.{index % ADDRESSES}", event_id="at-" + nonce,
                board="global", points=1, username="bench", source="player",
                request_id="r", user_rate=OPEN, flagged_rate=OPEN, ip_rate=OPEN,
                dedup_ttl_ms=600_000, rapid_max=1_000_000, rapid_window_ms=1000,
                flag_duration_ms=1000)
            if reply.reason == "ok" and time.time() < job.stop_at:
                accepted += 1

    await asyncio.sleep(max(0.0, job.start_at - time.time()))
    cpu_before = time.process_time()
    await asyncio.gather(*(one_worker() for _ in range(job.concurrency)))
    cpu = time.process_time() - cpu_before
    await client.aclose()
    return accepted, cpu


def run_driver(job: Job) -> tuple[int, float]:
    return asyncio.run(drive(job))


def measure(url: str, pids: list[int], *, cluster: bool, shards: int, duration: float,
            drivers: int, concurrency: int, tokens: int) -> dict[str, Any]:
    prefix = f"bench_{secrets.token_hex(3)}"
    start_at = time.time() + 20  # time to store the tokens first
    stop_at = start_at + duration
    jobs = [Job(url, cluster, shards, prefix, d, concurrency, tokens, start_at, stop_at)
            for d in range(drivers)]
    context = multiprocessing.get_context("spawn")
    with context.Pool(drivers) as pool:
        pending = pool.map_async(run_driver, jobs)
        time.sleep(max(0.0, start_at - time.time()))
        redis_before = {pid: process_cpu_s(pid) for pid in pids}
        machine_before = machine_busy_s()
        time.sleep(max(0.0, stop_at - time.time()))
        redis_after = {pid: process_cpu_s(pid) for pid in pids}
        machine_after = machine_busy_s()
        results = pending.get(timeout=duration + 300)
    accepted = sum(count for count, _ in results)
    redis_cores = {pid: (redis_after[pid] - redis_before[pid]) / duration for pid in pids}
    driver_cores = sum(cpu for _, cpu in results) / duration
    machine = (machine_after - machine_before) / duration
    return {"accepted_per_s": accepted / duration,
            "calls_per_s": accepted * (3 if shards > 1 or cluster else 1) / duration,
            "redis_cores": redis_cores, "driver_cores": driver_cores,
            "other_cores": max(0.0, machine - sum(redis_cores.values()) - driver_cores),
            "exhausted": any(count >= tokens for count, _ in results)}


def report(name: str, figures: dict[str, Any]) -> None:
    redis = ", ".join(f"{cores:.2f}" for cores in figures["redis_cores"].values())
    print(f"  {name}: {figures['accepted_per_s']:,.0f} increments/s "
          f"({figures['calls_per_s']:,.0f} Redis calls/s); cores: Redis [{redis}], "
          f"drivers {figures['driver_cores']:.2f}, rest of the machine "
          f"{figures['other_cores']:.2f}"
          + ("  (a driver ran out of tokens: raise --tokens)" if figures["exhausted"] else ""))
    busiest = max(figures["redis_cores"].values())
    if busiest > 0.9:
        print("    limit: a Redis process (one core busy)")
    elif figures["driver_cores"] + sum(figures["redis_cores"].values()) \
            + figures["other_cores"] > 1.8:
        print("    limit: the machine's 2 cores (drivers and Redis share them)")
    else:
        print("    limit: the drivers' concurrency (no core saturated)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--drivers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=150_000)
    args = parser.parse_args()
    options = {"duration": args.duration, "drivers": args.drivers,
               "concurrency": args.concurrency, "tokens": args.tokens}
    print(command_line("loadtest.bench_cluster"))
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as folder:
        single = EmbeddedRedis(Path(folder) / "single")
        url = single.start()
        try:
            assert single.pid is not None
            one = measure(url, [single.pid], cluster=False, shards=1, **options)
        finally:
            single.stop()
        cluster = EmbeddedCluster(Path(folder) / "cluster", masters=3)
        url = cluster.start()
        try:
            three = measure(url, cluster.pids(), cluster=True, shards=3, **options)
        finally:
            cluster.stop()
    print("increment script (accepted path), Python drivers as ingest calls it:")
    report("1 shard, one Redis", one)
    report("3 shards, 3-master cluster", three)


if __name__ == "__main__":
    main()
