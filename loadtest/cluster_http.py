"""The HTTP part of ``make bench-cluster``: the whole ingest path, POST
/api/scores/increment to ONE ingest process (as the Procfile starts it), on one
Redis or on the cluster (``REDIS_CLUSTER=1 REDIS_SHARDS=3`` in its environment).

Players are registered through that ingest, action tokens fetched beforehand (one
per request, so every request takes the accepted path), then the harness's load
generator (``loadtest/load_generator.py``, a process of its own) keeps
``--concurrency`` requests in flight for a warm-up and a window, and records the
CPU of ingest, of itself, of every Redis process and of the machine over the
window. At the end every shard's stream together must hold the 202s received.

On one Redis, ingest coalesces concurrent increments into shared script calls
(``ingest/script_batching.py``); on a cluster it does not (one connection per
server), and each increment is three calls (``scoreboard/sharded_calls.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson
import redis

from loadtest.cluster_raw import Server
from loadtest.harness.backing import settle_redis
from loadtest.harness.cpu import busiest_others, process_table
from loadtest.harness.figures import percentile
from loadtest.harness.players import create_players, prepare_requests
from loadtest.harness.processes import ingest_process, run_job
from scoreboard.keys import Keys


@dataclass(frozen=True)
class HttpFigures:
    accepted: int  # 202s in the window
    window_s: float
    statuses: dict[str, int]  # outcomes other than 202 in the window
    p50_ms: float
    p99_ms: float
    ingest_cores: float
    generator_cores: float
    redis_cores: dict[int, float]  # pid -> cores
    machine_cores: float
    tokens: int
    token_rate: float
    stream_ok: bool  # every shard's stream holds exactly the 202s received
    exhausted: bool
    others: list[tuple[str, float]]  # outside the run, over warm-up and window

    @property
    def per_s(self) -> float:
        return self.accepted / self.window_s


def stream_length(redis_url: str, keys: Keys) -> int:
    """Entries in every shard's increment stream together."""
    client: Any = (redis.RedisCluster.from_url(redis_url) if keys.cluster
                   else redis.Redis.from_url(redis_url))
    try:
        return sum(int(cast(int, client.xlen(stream))) for stream in keys.streams)
    finally:
        client.close()


def run_http(args: argparse.Namespace, root: Path, env: dict[str, str], keys: Keys,
             redis_url: str, servers: list[Server], name: str) -> HttpFigures:
    """One ingest process on ``env`` (``redis_url`` its REDIS_URL); ``servers`` every
    Redis process whose CPU is accounted."""
    redis_pids = [server.pid for server in servers]
    with contextlib.ExitStack() as stack:
        url, ingest_pid = stack.enter_context(ingest_process(env, root / f"ingest-{name}.log"))
        print(f"  ingest on {url} (pid {ingest_pid}); registering {args.players} players…",
              flush=True)
        players = asyncio.run(create_players(url, args.players))
        requests, token_rate = prepare_requests(url, players, args)
        print(f"  {len(requests):,} tokens at {token_rate:,.0f}/s; driving increments for "
              f"{args.warmup:g} + {args.duration:g} s…", flush=True)
        for server in servers:  # no AOF rewrite (a fork) started by the set-up in the window
            with redis.Redis(host="127.0.0.1", port=server.port) as client:
                settle_redis(client, rewrite=True)
        before = stream_length(redis_url, keys)
        job = {"url": url, "client": "raw", "concurrency": args.concurrency,
               "warmup_s": args.warmup, "duration_s": args.duration, "ingest_pid": ingest_pid,
               "redis_url": f"redis://127.0.0.1:{servers[0].port}/0",
               "redis_pids": redis_pids, "requests": requests}
        job_path, result_path = root / f"job-{name}.json", root / f"result-{name}.json"
        job_path.write_bytes(orjson.dumps(job))
        table_before, job_started = process_table(), time.perf_counter()
        run_job("loadtest.load_generator", job_path, result_path,
                timeout_s=args.warmup + args.duration + 120)
        others = busiest_others(table_before, process_table(),
                                time.perf_counter() - job_started, {*redis_pids, ingest_pid})
        result: dict[str, Any] = orjson.loads(result_path.read_bytes())
        in_streams = stream_length(redis_url, keys) - before
    window_s, cpu = result["window_s"], result["cpu_s"]
    statuses = dict(result["window_statuses"])
    latencies = result["latencies_ms"]

    return HttpFigures(
        accepted=statuses.pop("202", 0), window_s=window_s, statuses=statuses,
        p50_ms=percentile(latencies, 0.5), p99_ms=percentile(latencies, 0.99),
        ingest_cores=cpu["ingest_cpu_s"] / window_s,
        generator_cores=cpu["generator_cpu_s"] / window_s,
        redis_cores={pid: cpu[f"redis_pid_{pid}"] / window_s for pid in redis_pids},
        machine_cores=cpu["machine_busy_s"] / window_s, tokens=len(requests),
        token_rate=token_rate, exhausted=bool(result["exhausted"]),
        stream_ok=in_streams == result["total_statuses"].get("202", 0), others=others)
