"""Redis Cluster benchmark: the increment on 1 shard (one Redis) against 3 shards
(a 3-master Redis Cluster), raw script and whole ingest path, in one run.

    python -m loadtest.bench_cluster [--duration 15 --raw-requests 150000 ...]

Two parts, each on one Redis and then on a 3-master cluster, and the ratio
3 shards ÷ 1 shard of each:

1. Raw (``loadtest/cluster_raw.py``): ``increment.lua`` by redis-benchmark,
   EVALSHA of the call ingest makes, on its accepted path; on the cluster one
   redis-benchmark per shard against the master serving it, all at once.
2. HTTP (``loadtest/cluster_http.py``): POST /api/scores/increment to ONE ingest
   process, as the Procfile starts it, with ``REDIS_CLUSTER=1 REDIS_SHARDS=3`` on
   the cluster; the harness's load generator in a process of its own.

Every figure comes with the cores each party used over its window: every Redis
process (from /proc), ingest, the load generator or the redis-benchmarks, and
the rest of the machine; and a line saying which party set the limit. The
servers are the embedded default's binary (``scoreboard/embedded.py``,
``scoreboard/embedded_cluster.py``), AOF everysec, in a temporary folder; the
cluster's key prefix is chosen so that the 3 shards' slots are on 3 different
masters (what an operator gets by placing the slots; the report says which).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import secrets
import tempfile
from pathlib import Path

import redis
from redis.crc import key_slot

from loadtest import BenchError
from loadtest.cluster_http import HttpFigures, run_http
from loadtest.cluster_raw import RawFigures, Server, run_raw
from loadtest.harness.backing import start_backing
from loadtest.harness.command import benchmark_parser, command
from loadtest.harness.cpu import background_cores
from loadtest.harness.figures import background_line, command_line, machine_line
from loadtest.harness.players import add_load_options, check_load_options, ingest_env
from loadtest.harness.redis_benchmark import benchmark_binary as find_benchmark
from scoreboard.embedded_cluster import EmbeddedCluster
from scoreboard.keys import Keys
from scoreboard.settings import load_settings

SHARDS = 3


def shard_servers(cluster: EmbeddedCluster, keys: Keys) -> list[Server]:
    """The master serving each shard's slot, in shard order."""
    servers = []
    for view in keys.every_shard:
        node = cluster.master_of_slot(key_slot(view.stream.encode()))
        assert node.process is not None
        servers.append(Server(node.port, node.process.pid))
    return servers


def spread_prefix(cluster: EmbeddedCluster) -> str:
    """A key prefix whose shards' slots are served by different masters."""
    for _ in range(200):
        prefix = f"bench_{secrets.token_hex(3)}"
        servers = shard_servers(cluster, Keys(prefix, shards=SHARDS, cluster=True))
        if len({server.port for server in servers}) == SHARDS:
            return prefix
    raise BenchError("no key prefix put the shards on different masters")


# --- The report -------------------------------------------------------------------------


def cores_text(redis_cores: dict[int, float]) -> str:
    return "[" + ", ".join(f"{cores:.2f}" for cores in redis_cores.values()) + "]"


def limit_notes(redis_cores: dict[int, float], client: tuple[str, float],
                ingest: float | None, machine: float) -> list[str]:
    """Which party set the limit, from the cores each used."""
    cpus = os.cpu_count() or 1
    notes = []
    busy = [pid for pid, cores in redis_cores.items() if cores >= 0.9]
    if busy:
        notes.append(f"redis-server {busy} CPU-bound (one core each at most)")
    if ingest is not None and ingest >= 0.9:
        notes.append(f"ingest CPU-bound ({ingest:.2f} cores: one process is one event loop)")
    if client[1] >= 0.9:
        notes.append(f"the {client[0]} CPU-bound ({client[1]:.2f} cores)")
    if machine >= 0.9 * cpus:
        notes.append(f"the machine's {cpus} cores all busy ({machine:.2f}): the parties took "
                     "cores from each other")
    if notes:
        return notes
    parties = {f"redis-server [{pid}]": cores for pid, cores in redis_cores.items()}
    parties[client[0]] = client[1]
    if ingest is not None:
        parties["ingest"] = ingest
    busiest = max(parties, key=lambda name: parties[name])
    return [f"no party at a full core (the busiest: {busiest}, {parties[busiest]:.2f}); "
            "round trips and the shared cores bound the figure"]


def others_text(others: list[tuple[str, float]]) -> str:
    return ", ".join(f"{name} {cores:.2f}" for name, cores in others) or "none above 0.05"


def ratio(three: float, one: float) -> str:
    return f"{three / one:.2f}" if one else "n/a"


def report_raw(one: RawFigures, three: RawFigures, clients: int) -> None:
    print(f"\nRaw: EVALSHA increment.lua by redis-benchmark, {clients} connections per "
          "server, no pipelining")
    print(f"  {'':26}{'1 shard':>16}{'3 shards':>16}{'3 ÷ 1':>8}")
    print(f"  {'calls/s':26}{one.calls_per_s:>16,.0f}{three.calls_per_s:>16,.0f}"
          f"{ratio(three.calls_per_s, one.calls_per_s):>8}")
    per_core1 = one.calls_per_s / sum(one.redis_cores.values())
    per_core3 = three.calls_per_s / sum(three.redis_cores.values())
    print(f"  {'calls per Redis core-s':26}{per_core1:>16,.0f}{per_core3:>16,.0f}"
          f"{ratio(per_core3, per_core1):>8}")
    for name, figures in (("1 shard", one), ("3 shards", three)):
        others = max(0.0, figures.machine_cores - sum(figures.redis_cores.values())
                     - figures.benchmark_cores)
        print(f"  {name}: {figures.calls:,} calls in {figures.elapsed_s:.1f} s, "
              f"{100 * figures.accepted / figures.calls:.1f}% accepted (stream growth), p50 "
              + "/".join(f"{v:.2f}" for v in figures.p50_ms) + " ms, p99 "
              + "/".join(f"{v:.2f}" for v in figures.p99_ms) + " ms")
        print(f"    cores: redis-server {cores_text(figures.redis_cores)}, redis-benchmark "
              f"{figures.benchmark_cores:.2f}, rest of the machine {others:.2f}; machine "
              f"{figures.machine_cores:.2f} of {os.cpu_count()}")
        print(f"    busiest other processes: {others_text(figures.others)}")
        print("    limit: " + "; ".join(limit_notes(
            figures.redis_cores, ("redis-benchmark", figures.benchmark_cores), None,
            figures.machine_cores)))


def report_http(one: HttpFigures, three: HttpFigures, concurrency: int) -> bool:
    print(f"\nHTTP: POST /api/scores/increment to ONE ingest process, {concurrency} "
          "connections, closed loop")
    print(f"  {'':26}{'1 shard':>16}{'3 shards':>16}{'3 ÷ 1':>8}")
    print(f"  {'increments/s (202)':26}{one.per_s:>16,.0f}{three.per_s:>16,.0f}"
          f"{ratio(three.per_s, one.per_s):>8}")
    print(f"  {'per ingest core-s':26}{one.per_s / one.ingest_cores:>16,.0f}"
          f"{three.per_s / three.ingest_cores:>16,.0f}"
          f"{ratio(three.per_s / three.ingest_cores, one.per_s / one.ingest_cores):>8}")
    ok = True
    for name, figures in (("1 shard", one), ("3 shards", three)):
        redis_total = sum(figures.redis_cores.values())
        others = max(0.0, figures.machine_cores - redis_total - figures.ingest_cores
                     - figures.generator_cores)
        print(f"  {name}: {figures.accepted:,} in {figures.window_s:.1f} s, p50 "
              f"{figures.p50_ms:.2f} ms, p99 {figures.p99_ms:.2f} ms, other outcomes "
              f"{figures.statuses or 'none'}; {figures.tokens:,} tokens fetched at "
              f"{figures.token_rate:,.0f}/s")
        print(f"    cores: ingest {figures.ingest_cores:.2f}, redis-server "
              f"{cores_text(figures.redis_cores)}, load generator "
              f"{figures.generator_cores:.2f}, rest of the machine {others:.2f}; machine "
              f"{figures.machine_cores:.2f} of {os.cpu_count()}")
        if figures.accepted:
            print(f"    CPU per increment: ingest {1e6 * figures.ingest_cores / figures.per_s:,.0f}"
                  f" µs, Redis (all processes) {1e6 * redis_total / figures.per_s:,.0f} µs")
        print(f"    busiest other processes (warm-up and window): "
              f"{others_text(figures.others)}")
        print("    limit: " + "; ".join(limit_notes(
            figures.redis_cores, ("load generator", figures.generator_cores),
            figures.ingest_cores, figures.machine_cores)))
        if figures.exhausted:
            print("    WARNING: the tokens ran out before the window's end (raise "
                  "--token-margin)")
        print(f"    stream check: {'OK' if figures.stream_ok else 'MISMATCH'} (the shards' "
              "streams grew by the 202s received)")
        ok = ok and figures.stream_ok
    return ok


# --- The command --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = benchmark_parser("loadtest.bench_cluster", __doc__)
    add_load_options(parser, duration=15, warmup=3, token_margin=1.6,
                     margin_help="tokens fetched per estimated increment")
    parser.add_argument("--tokens", type=int, default=0,
                        help="action tokens to fetch per HTTP part (default: estimated)")
    parser.add_argument("--raw-requests", type=int, default=150_000,
                        help="EVALSHA calls in all per raw part, spread over the shards "
                             "(150000)")
    parser.add_argument("--raw-keys", type=int, default=1_000_000,
                        help="token keys set per server for redis-benchmark to draw from "
                             "(1000000)")
    parser.add_argument("--raw-clients", type=int, default=32,
                        help="redis-benchmark connections per server (32)")
    parser.add_argument("--skip-raw", action="store_true", help="the HTTP part only")
    parser.add_argument("--skip-http", action="store_true", help="the raw part only")
    args = parser.parse_args(argv)
    check_load_options(parser, args)
    if not 1_000 <= args.raw_keys <= 20_000_000 or args.raw_requests < SHARDS:
        parser.error("--raw-keys must be 1000..20000000 and --raw-requests at least 3")
    return args


def run(args: argparse.Namespace) -> int:
    binary = find_benchmark(needed=not args.skip_raw)
    started = datetime.datetime.now(datetime.UTC)
    load_before, background = os.getloadavg(), background_cores()
    raw1 = raw3 = http1 = http3 = None
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-cluster-")))
        print("starting Redis and Postgres, migrating a fresh database…", flush=True)
        backing = start_backing(stack, root)
        # As bench_ingest: the access log at its default; no worker runs.
        env1 = {**ingest_env(backing), "LOG_LEVEL": "INFO", "MAX_BACKLOG": str(10**9)}
        with redis.Redis.from_url(backing.redis_url) as client:
            single_pid = int(client.info("server")["process_id"])
            version = str(client.info("server")["redis_version"])
        single = [Server(int(backing.redis_url.rsplit(":", 1)[1].split("/")[0]), single_pid)]
        settings1 = load_settings(env1)
        if not args.skip_http:
            print("1 shard, HTTP:", flush=True)
            http1 = run_http(args, root, env1, settings1.keys, backing.redis_url, single,
                             "single")
        if not args.skip_raw:
            assert binary is not None
            print("1 shard, raw…", flush=True)
            raw1 = run_raw(binary, single, settings1.keys, settings1,
                           requests=args.raw_requests, keyspace=args.raw_keys,
                           clients=args.raw_clients)
        print("starting a 3-master cluster…", flush=True)
        # Redis's default node timeout (the embedded one's 1 s is for failover tests):
        # on a saturated 2-core machine a node's bus pings can be late by a second,
        # and the cluster would go down under the measurement.
        cluster = EmbeddedCluster(root / "cluster", masters=SHARDS, node_timeout_ms=15_000)
        cluster_url = cluster.start()
        stack.callback(cluster.stop)
        prefix = spread_prefix(cluster)
        env3 = {**env1, "REDIS_URL": cluster_url, "REDIS_CLUSTER": "1",
                "REDIS_SHARDS": str(SHARDS), "KEY_PREFIX": prefix,
                "ARQ_REDIS_URL": backing.redis_url}
        settings3 = load_settings(env3)
        servers = shard_servers(cluster, settings3.keys)
        if not args.skip_http:
            print("3 shards, HTTP:", flush=True)
            cluster.wait_ok(timeout_s=30)
            http3 = run_http(args, root, env3, settings3.keys, cluster_url, servers, "cluster")
        if not args.skip_raw:
            assert binary is not None
            print("3 shards, raw…", flush=True)
            cluster.wait_ok(timeout_s=30)
            raw3 = run_raw(binary, servers, settings3.keys, settings3,
                           requests=args.raw_requests, keyspace=args.raw_keys,
                           clients=args.raw_clients)
        print("stopping the servers started…", flush=True)
    print("\n=== Redis Cluster: 1 shard against 3 ===")
    print(command_line("loadtest.bench_cluster"))
    print(f"date        {started:%Y-%m-%d %H:%M} UTC")
    print(f"machine     {machine_line()}")
    print(background_line(background))
    load_after = os.getloadavg()
    print(f"load avg    {'/'.join(f'{v:.2f}' for v in load_before)} before, "
          f"{'/'.join(f'{v:.2f}' for v in load_after)} after (1/5/15 min)")
    print(f"servers     redis-server {version}, AOF everysec; "
          f"1 shard: one Redis (pid {single_pid}); 3 shards: masters "
          + ", ".join(f"s{i} pid {s.pid}" for i, s in enumerate(servers))
          + f" (prefix {prefix}: each shard's slot on its own master)")
    if raw1 is not None and raw3 is not None:
        report_raw(raw1, raw3, args.raw_clients)
    ok = True
    if http1 is not None and http3 is not None:
        ok = report_http(http1, http3, args.concurrency)
    print()
    return 0 if ok else 1


main = command("bench_cluster", parse_args, run)

if __name__ == "__main__":
    raise SystemExit(main())
