"""The raw part of ``make bench-cluster``: ``increment.lua`` by redis-benchmark on
one Redis and on each master of a cluster at once.

The call is the one ingest makes (recorded through ``IncrementScript``, see
``loadtest/harness/redis_benchmark.py``): unsharded on one Redis; on the cluster
the player's script of each shard (with the address's verdict as arguments, as
``scoreboard/sharded_calls.py`` passes it), one redis-benchmark per shard against
the master serving that shard's slot, all three together. On a cluster an
increment also makes two small calls in the address's slot (the read-only gate
and the charge); those are not in this figure, they are in the HTTP part's.

Token keys are set first (``keyspace`` per server) and redis-benchmark draws
KEYS[1] from them; a token drawn twice is refused the second time (the cheaper
path), so the share accepted is measured by stream growth and reported.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any, cast

import redis

from loadtest import BenchError
from loadtest.harness.backing import settle_redis, wait_for_no_fork
from loadtest.harness.cpu import busiest_others, machine_busy_s, process_cpu_s, process_table
from loadtest.harness.redis_benchmark import (
    RAND,
    Target,
    prefill_token_keys,
    recorded_call,
    run_benchmarks,
)
from scoreboard.keys import Keys
from scoreboard.lua import script_source
from scoreboard.script_calls import AddressVerdict, IncrementScript
from scoreboard.settings import Settings


@dataclass(frozen=True)
class Server:
    """A Redis process that serves (part of) the keys: its port and pid."""

    port: int
    pid: int


@dataclass(frozen=True)
class RawFigures:
    calls: int  # EVALSHA calls sent, all servers
    accepted: int  # of them, accepted (stream growth)
    elapsed_s: float  # from the common start to the last redis-benchmark's end
    redis_cores: dict[int, float]  # pid -> cores over the run
    benchmark_cores: float  # every redis-benchmark together
    machine_cores: float
    p50_ms: list[float]
    p99_ms: list[float]
    others: list[tuple[str, float]]  # processes outside the run that used the cores

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.elapsed_s


def user_on_shard(keys: Keys, shard: int) -> str:
    """A user id of ``shard`` (the first ``u_benchraw<n>`` that lands there)."""
    for n in range(10_000):
        user = f"u_benchraw{n:07d}"
        if keys.shard_of(user) == shard:
            return user
    raise BenchError(f"no user id found for shard {shard}")


def increment_call(keys: Keys, settings: Settings, user: str) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of ``user``'s increment as ingest sends it (accepted path),
    with ``__rand_int__`` where redis-benchmark must vary it: the token, the event
    id, and the per-user keys (one fixed user's rate key would be held to 1000
    calls/s by the GCRA's whole-ms rounding, its recent-actions ZSET would grow)."""
    verdict = AddressVerdict(0, 0) if keys.sharded else None  # not limited, may pass

    async def call(script: IncrementScript) -> Any:
        return await script(
            keys, user_id=user, jti=secrets.token_hex(16), nonce=RAND,
            address=f"198.18.{RAND}", event_id=f"at-{RAND}-{RAND}", board="global", points=1,
            username="bench_raw_player", source="player", request_id=secrets.token_hex(8),
            user_rate=settings.increment_rate, flagged_rate=settings.flagged_increment_rate,
            ip_rate=settings.ip_rate, dedup_ttl_ms=settings.dedup_ttl_s * 1000,
            rapid_max=settings.rapid_max_actions, rapid_window_ms=settings.rapid_window_ms,
            flag_duration_ms=settings.flag_duration_s * 1000, address_verdict=verdict)

    script_keys, script_args = recorded_call(IncrementScript(None), ["ok", "0-1", 0, 0], call)
    if not script_keys[0].endswith(RAND):
        raise BenchError(f"KEYS[1] is not the action token key: {script_keys[0]!r}")
    return [key.replace(user, "u_" + RAND) for key in script_keys], script_args


def check_call(client: redis.Redis, sha: str, script_keys: list[str], script_args: list[str],
               user: str) -> None:
    """One call by hand with its own token: the script must accept it, or the raw
    figure would time a refusal."""
    token_key = script_keys[0][:-len(RAND)] + "check"
    client.set(token_key, user, px=60_000)
    concrete = [part.replace(RAND, "check") for part in [*script_keys, *script_args]]
    reply = cast(list[Any], client.evalsha(sha, len(script_keys), *concrete))
    if not reply or reply[0] != b"ok":
        raise BenchError(f"the increment script answered {reply!r} to the benchmark's call")


def run_raw(binary: str, servers: list[Server], keys: Keys, settings: Settings, *,
            requests: int, keyspace: int, clients: int) -> RawFigures:
    """increment.lua by redis-benchmark: ``requests`` calls in all, spread evenly over
    the shards (one shard unsharded), each shard's against the server of its slot
    (``servers[i]`` serves shard i)."""
    source = script_source("increment")
    sha = hashlib.sha1(source.encode()).hexdigest()
    shards = keys.shards if keys.sharded else 1
    if len(servers) != shards:
        raise BenchError(f"{shards} shards need {shards} servers, got {len(servers)}")
    targets, streams = [], []
    for shard, server in enumerate(servers):
        user = user_on_shard(keys, shard)
        script_keys, script_args = increment_call(keys, settings, user)
        client = redis.Redis(host="127.0.0.1", port=server.port)
        try:
            if str(client.script_load(source)) != sha:
                raise BenchError("SCRIPT LOAD returned an unexpected SHA")
            prefill_token_keys(client, script_keys[0][:-len(RAND)], user, keyspace)
            settle_redis(client, rewrite=True)
            check_call(client, sha, script_keys, script_args, user)
        finally:
            client.close()
        targets.append(Target(server.port, sha, script_keys, script_args,
                              requests // shards, keyspace, clients))
        streams.append((server.port, script_keys[8]))

    def stream_lengths() -> int:
        total = 0
        for port, stream in streams:
            with redis.Redis(host="127.0.0.1", port=port) as client:
                total += int(cast(int, client.xlen(stream)))
        return total

    for server in servers:
        with redis.Redis(host="127.0.0.1", port=server.port) as client:
            wait_for_no_fork(client)
    accepted_before = stream_lengths()
    redis_before = {server.pid: process_cpu_s(server.pid) for server in servers}
    table_before = process_table()
    machine_before, started = machine_busy_s(), time.perf_counter()
    outcomes, benchmark_cpu_s = run_benchmarks(binary, targets)
    elapsed = time.perf_counter() - started
    others = busiest_others(table_before, process_table(), elapsed,
                            {server.pid for server in servers})
    redis_cores = {server.pid: (process_cpu_s(server.pid) - redis_before[server.pid]) / elapsed
                   for server in servers}
    machine = (machine_busy_s() - machine_before) / elapsed
    return RawFigures(calls=sum(t.requests for t in targets),
                      accepted=stream_lengths() - accepted_before, elapsed_s=elapsed,
                      redis_cores=redis_cores, benchmark_cores=benchmark_cpu_s / elapsed,
                      machine_cores=machine, p50_ms=[o.p50_ms for o in outcomes],
                      p99_ms=[o.p99_ms for o in outcomes], others=others)
