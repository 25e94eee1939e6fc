"""Ingest benchmark: increments/s of ONE ingest process, next to the raw Redis
rate of the very script each increment runs.

    python -m loadtest.bench_ingest [--duration 20 --concurrency 64 ...]

One run gives two figures on the same Redis, and their ratio:

1. HTTP. A closed-loop client keeps ``--concurrency`` POST
   /api/scores/increment in flight against one ingest process (``python -m
   ingest``, as the Procfile runs it) for ``--duration`` seconds after a
   warm-up. Every request carries a fresh action token fetched beforehand, so
   every one takes the accepted path (one EVALSHA of ``increment.lua`` that
   consumes the token and XADDs); only 202s are counted, and at the end the
   stream length must equal the number of 202s.
2. Raw. ``redis-benchmark`` calls EVALSHA of the same script SHA with keys
   and arguments of the same shape, so HTTP/raw says how much of one Redis
   core one ingest process can use.

The increment's windows alternate with those of the anchor, a bare Starlette
route on the same stack (``loadtest.ingest_anchor``: uvicorn's own httptools
protocol, the floor the issue set), of the same bare route on ingest's
one-write protocol (``ingest/one_write.py``), and of the action-token
endpoint: ``--rounds`` rounds of bare, bare on one write, increment, token.
Each part's figure pools its rounds and is divided by the bare route's pooled
rate; each round's own ratio is printed beside it; a last line divides the
player endpoints by the bare route on ingest's protocol instead (what our own
code keeps of a floor with the same protocol). On a shared machine whose speed
moves by a factor of two within a minute, one window of each in turn compared
moments, not code.

The client runs in a process of its own (``loadtest.load_generator``; its
docstring says why it is not httpx by default): the machine this was written
on has 2 cores, shared by ingest, Redis and the client. The report gives,
from /proc and Redis's INFO, the CPU each of them used during the measured
window, so a reader can tell which one limited the figure.

Rate limits are raised (``HIGH_RATE``), the rapid-actions rule never flags
(it still runs) and action tokens live an hour, so the figures measure cost,
not policy. Nothing is aimed anywhere but 127.0.0.1:
the embedded Redis and Postgres are started in a temporary folder unless
``REDIS_URL`` / ``DATABASE_URL`` name loopback servers, in which case a fresh
database and key prefix are used and removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
import redis

from loadtest.harness.backing import Backing, settle_redis, start_backing
from loadtest.harness.command import benchmark_parser, command
from loadtest.harness.cpu import background_cores
from loadtest.harness.figures import (
    background_line,
    closing_notes,
    code_line,
    machine_line,
    percentile,
    share,
)
from loadtest.harness.http import INCREMENT_PATH
from loadtest.harness.players import (
    HIGH_RATE,
    RAPID_MAX_ACTIONS,
    add_load_options,
    check_load_options,
    create_players,
    ingest_env,
    prepare_requests,
)
from loadtest.harness.processes import UVICORN_OPTIONS, ingest_process, run_job, uvicorn_process
from loadtest.harness.redis_benchmark import benchmark_binary as find_benchmark
from loadtest.ingest_anchor import (
    backend_headers,
    batch_requests,
    rate,
    report_line,
    token_requests,
)
from loadtest.raw_script import RawResult, report_raw, run_raw, stream_length
from scoreboard.keys import Keys
from scoreboard.settings import load_settings

# --- The run and its report -------------------------------------------------------------


def limit_notes(cpu: dict[str, float], window_s: float, cores: int) -> list[str]:
    """Plain-language reading of the CPU split: which party was saturated."""
    notes = []
    ingest, generator = cpu["ingest_cpu_s"] / window_s, cpu["generator_cpu_s"] / window_s
    redis_share, machine = cpu["redis_cpu_s"] / window_s, cpu["machine_busy_s"] / window_s
    if ingest >= 0.9:
        notes.append("the ingest process was CPU-bound (one process = one event loop = one "
                     "core at most): it is the limit of the HTTP figure")
    if machine >= 0.9 * cores:
        notes.append(f"the machine was saturated ({machine:.2f} of {cores} cores busy): the "
                     f"load generator's {generator:.2f} cores were taken from the same pool, "
                     "so ingest alone on a free core would do somewhat better")
    elif generator >= 0.9:
        notes.append("the load generator was CPU-bound: the HTTP figure is a lower bound")
    if redis_share >= 0.9:
        notes.append("redis-server was CPU-bound")
    return closing_notes(
        notes, machine - ingest - generator - redis_share,
        disturbed="other processes on the machine used {others:.2f} cores during the window: "
                  "the figure is disturbed, rerun on a quiet machine",
        unsaturated="no party was saturated: latency (round trips) bounds the figure; try "
                    "more --concurrency")


def report_http(args: argparse.Namespace, http: dict[str, Any], stream_length: int) -> bool:
    """Print the HTTP figures; return whether the stream check passed."""
    window_s, statuses, latencies = http["window_s"], http["window_statuses"], http[
        "latencies_ms"]
    accepted = statuses.get("202", 0)
    cpu, cores = http["cpu_s"], os.cpu_count() or 1
    others_s = max(0.0, cpu["machine_busy_s"] - cpu["ingest_cpu_s"] - cpu["redis_cpu_s"]
                   - cpu["generator_cpu_s"])
    client = ("raw HTTP/1.1 client (httptools)" if args.client == "raw"
              else "httpx, one AsyncClient per connection")
    print(f"\nHTTP  POST {INCREMENT_PATH}: closed loop, {args.concurrency} connections, "
          f"{client} on uvloop in its own process, {args.warmup:g} s warm-up")
    print(f"  accepted (202)    {accepted:,} in {window_s:.2f} s = "
          f"{accepted / window_s:,.0f} increments/s")
    print(f"  other outcomes    {({k: v for k, v in statuses.items() if k != '202'}) or 'none'}")
    print(f"  latency (202)     p50 {percentile(latencies, 0.5):.2f} ms, "
          f"p99 {percentile(latencies, 0.99):.2f} ms (as the client saw it)")
    print(f"  CPU in window     ingest {share(cpu['ingest_cpu_s'], window_s)}, redis-server "
          f"{share(cpu['redis_cpu_s'], window_s)}, load generator "
          f"{share(cpu['generator_cpu_s'], window_s)}, everything else "
          f"{share(others_s, window_s)}; {cpu['machine_busy_s'] / window_s:.2f} of "
          f"{cores} cores busy")
    if accepted:
        print(f"  CPU per increment ingest {1e6 * cpu['ingest_cpu_s'] / accepted:,.0f} µs, "
              f"redis-server {1e6 * cpu['redis_cpu_s'] / accepted:,.0f} µs, client "
              f"{1e6 * cpu['generator_cpu_s'] / accepted:,.0f} µs")
    if cpu["redis_forks"]:
        print("  WARNING: Redis forked (AOF rewrite / save) during the window")
    if http["exhausted"]:
        print("  WARNING: the action tokens ran out before the window's end; the window "
              "was cut short (pass a larger --tokens or --token-margin)")
    if http["stuck"]:
        print(f"  WARNING: {http['stuck']} requests never answered")
    total_accepted = http["total_statuses"].get("202", 0)
    check_ok = bool(stream_length == total_accepted)
    print(f"  stream check      XLEN {stream_length:,} vs 202s received {total_accepted:,} "
          f"(warm-up + window + tail): {'OK' if check_ok else 'MISMATCH'}")
    for note in limit_notes(cpu, window_s, cores):
        print(f"  limit             {note}")
    return check_ok


def report(args: argparse.Namespace, backing: Backing, background: float, players: int,
           tokens: int, token_rate: float, http: dict[str, Any], stream_length: int,
           raw: RawResult | None) -> bool:
    """Print the whole report; return whether the stream check passed."""
    print("\n=== Ingest benchmark: one ingest process ===")
    print(f"machine     {machine_line()}")
    print("code        " + code_line(("ingest", "scoreboard", "lua"),
                                     "uncommitted changes in ingest/, scoreboard/ or lua/"))
    print(background_line(background))
    print(f"servers     redis {'embedded' if backing.redis_embedded else 'REDIS_URL'} "
          f"(AOF everysec), postgres {'embedded' if backing.database_embedded else 'DATABASE_URL'}"
          " (not on the increment path); no workers running")
    print(f"set-up      {players} players, one address each (X-Forwarded-For), {tokens:,} "
          f"action tokens fetched at {token_rate:,.0f}/s, limits {HIGH_RATE}, rapid-actions "
          f"rule at {RAPID_MAX_ACTIONS:,} (runs, never flags)")
    check_ok = report_http(args, http, stream_length)
    if raw is not None:
        report_raw(raw)
        http_rate = http["window_statuses"].get("202", 0) / http["window_s"]
        print(f"\nHTTP / raw        {http_rate:,.0f} / {raw.rps:,.0f} = {http_rate / raw.rps:.3f}"
              f" (one ingest process drives {100 * http_rate / raw.rps:.0f}% of what Redis "
              "runs of this script)")
    print()
    return check_ok


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = benchmark_parser("loadtest.bench_ingest", __doc__)
    add_load_options(parser, duration=20, warmup=3, token_margin=1.6,
                     margin_help="tokens fetched per estimated increment")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="load generator's HTTP client (raw; see loadtest/load_generator.py)")
    parser.add_argument("--tokens", type=int, default=0,
                        help="action tokens to fetch (default: estimated from a first batch)")
    parser.add_argument("--raw-requests", type=int, default=100_000,
                        help="redis-benchmark EVALSHA calls (100000)")
    parser.add_argument("--raw-keys", type=int, default=2_000_000,
                        help="token keys set for redis-benchmark to draw from (2000000)")
    parser.add_argument("--raw-clients", type=int, default=0,
                        help="redis-benchmark connections (default: --concurrency)")
    parser.add_argument("--skip-raw", action="store_true", help="HTTP figure only")
    parser.add_argument("--batches", type=int, default=800,
                        help="batches prepared for the batch part (800), which has a 1 s "
                             "warm-up and a window of at most 5 s; 0 skips it")
    parser.add_argument("--batch-size", type=int, default=1000, help="increments each (1000)")
    parser.add_argument("--batch-concurrency", type=int, default=4,
                        help="batches in flight (4)")
    parser.add_argument("--skip-anchor", action="store_true",
                        help="no token part and no bare Starlette route")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of bare route, increment and token windows, in turn "
                             "(3): each ratio pools the rounds, so a machine that speeds "
                             "up or slows down during the run weighs on both sides")
    args = parser.parse_args(argv)
    check_load_options(parser, args)
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be 1..20")
    if not 1_000 <= args.raw_keys <= 50_000_000 or args.raw_requests < 1:
        parser.error("--raw-keys must be 1000..50000000 and --raw-requests positive")
    return args


def run_load(args: argparse.Namespace, root: Path, url: str, ingest_pid: int,
             redis_url: str, requests: list[tuple[dict[str, str], str]],
             **job_options: Any) -> dict[str, Any]:
    """The measured HTTP run, in the load-generator process; its result. ``job_options``
    override the job (``path``, ``cycle``, ``concurrency``)."""
    job = {"url": url, "client": args.client, "concurrency": args.concurrency,
           "warmup_s": args.warmup, "duration_s": args.duration, "ingest_pid": ingest_pid,
           "redis_url": redis_url, "requests": requests, **job_options}
    job_path, result_path = root / "job.json", root / "result.json"
    job_path.write_bytes(orjson.dumps(job))
    run_job("loadtest.load_generator", job_path, result_path,
            timeout_s=args.warmup + args.duration + 120)
    result: dict[str, Any] = orjson.loads(result_path.read_bytes())
    return result


def run(args: argparse.Namespace) -> int:
    benchmark_binary = find_benchmark(needed=not args.skip_raw)
    background = background_cores()
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ingest-")))
        print("starting Redis and Postgres, migrating a fresh database…", flush=True)
        backing = start_backing(stack, root, other_prefixes=["_raw"])
        raw_prefix = backing.key_prefix + "_raw"
        # The access log at its default (LOG_LEVEL INFO), as in production; no worker
        # runs, so backpressure is moved out of the way of the batch part.
        env = {**ingest_env(backing), "LOG_LEVEL": "INFO", "MAX_BACKLOG": str(10**9)}
        url, ingest_pid = stack.enter_context(ingest_process(env, root / "ingest.log"))
        print(f"ingest on {url} (pid {ingest_pid}); registering {args.players} players…",
              flush=True)
        players = asyncio.run(create_players(url, args.players))
        print("fetching action tokens…", flush=True)
        requests, token_rate = prepare_requests(url, players, args, windows=args.rounds)
        fetched = len(requests)
        print(f"{fetched:,} tokens ready", flush=True)
        client = stack.enter_context(contextlib.closing(redis.Redis.from_url(backing.redis_url)))
        settle_redis(client, rewrite=True)
        bare: tuple[str, int] | None = None  # the anchor's URL and pid
        bare_one_write: tuple[str, int] | None = None  # the same app on ingest's protocol
        if not args.skip_anchor:
            bare = stack.enter_context(uvicorn_process(
                "loadtest.ingest_anchor:bare_app", env, root / "bare.log",
                ready_path="/healthz", what="the bare route", options=UVICORN_OPTIONS))
            bare_one_write = stack.enter_context(ingest_process(
                env, root / "bare-one-write.log", factory="loadtest.ingest_anchor:bare_app",
                ready_path="/healthz", what="the bare route on ingest's protocol"))
        rounds: list[dict[str, dict[str, Any]]] = []
        for number in range(1, args.rounds + 1):
            parts: dict[str, dict[str, Any]] = {}
            if bare is not None:
                print(f"round {number}: the bare Starlette route…", flush=True)
                parts["bare"] = run_load(args, root, *bare, backing.redis_url, requests,
                                         cycle=True)
            if bare_one_write is not None:
                print(f"round {number}: the bare route on ingest's one-write protocol…",
                      flush=True)
                parts["bare_one_write"] = run_load(args, root, *bare_one_write,
                                                   backing.redis_url, requests, cycle=True)
            print(f"round {number}: POST {INCREMENT_PATH} ({args.warmup:g} + "
                  f"{args.duration:g} s)…", flush=True)
            parts["increment"] = run_load(args, root, url, ingest_pid, backing.redis_url,
                                          requests)
            del requests[:sent(parts["increment"])]  # each action token is used once
            if bare is not None:
                print(f"round {number}: POST /api/actions/token…", flush=True)
                parts["token"] = run_load(args, root, url, ingest_pid, backing.redis_url,
                                          token_requests(players, len(players)),
                                          path="/api/actions/token", cycle=True)
            rounds.append(parts)
        http = pooled([parts["increment"] for parts in rounds])
        xlen = stream_length(client, Keys(backing.key_prefix))
        raw = None
        if benchmark_binary is not None and not args.skip_raw:
            print("running redis-benchmark EVALSHA of the same script…", flush=True)
            raw = run_raw(benchmark_binary, backing.redis_url, load_settings(env), raw_prefix,
                          requests=args.raw_requests, keyspace=args.raw_keys,
                          clients=args.raw_clients or args.concurrency)
        ok = report(args, backing, background, len(players), fetched,
                    token_rate, http, xlen, raw)
        batches = run_batch_part(args, root, backing, url, ingest_pid)
        report_ratios(args, rounds, batches)
        print("stopping the processes started…", flush=True)
    return 0 if ok else 1


BATCH_WINDOW_S = 5.0  # 100,000 increments/s for 6 s is 600 batches of 1,000: ~45 MB of JSON


def sent(result: dict[str, Any]) -> int:
    """Requests the load generator sent (each answered or awaited to the end)."""
    return sum(result["total_statuses"].values())


def pooled(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several windows of one part as one: their times, counts and CPU summed, their
    latencies together."""
    if len(results) == 1:
        return results[0]
    merged: dict[str, Any] = {"window_s": 0.0, "exhausted": False, "stuck": 0,
                              "window_statuses": {}, "total_statuses": {},
                              "latencies_ms": [], "cpu_s": {}}
    for result in results:
        merged["window_s"] += result["window_s"]
        merged["exhausted"] |= result["exhausted"]
        merged["stuck"] += result["stuck"]
        merged["latencies_ms"] += result["latencies_ms"]
        for field in ("window_statuses", "total_statuses", "cpu_s"):
            for key, value in result[field].items():
                merged[field][key] = merged[field].get(key, 0) + value
    merged["latencies_ms"].sort()
    return merged


def run_batch_part(args: argparse.Namespace, root: Path, backing: Backing, url: str,
                   ingest_pid: int) -> dict[str, Any] | None:
    """Game-backend batches at full speed (an absolute target: no anchor of its own)."""
    if not args.batches:
        return None
    print(f"driving POST /api/scores/batch ({args.batches} batches of "
          f"{args.batch_size})…", flush=True)
    return run_load(args, root, url, ingest_pid, backing.redis_url,
                    batch_requests(backend_headers(url, backing.database_url),
                                   args.batches, args.batch_size),
                    path="/api/scores/batch", concurrency=args.batch_concurrency,
                    warmup_s=1, duration_s=min(args.duration, BATCH_WINDOW_S))


def report_ratios(args: argparse.Namespace, rounds: list[dict[str, dict[str, Any]]],
                  batches: dict[str, Any] | None) -> None:
    """Each part's rounds pooled, its ratio to the bare route's pooled rate, and the
    ratio of each round alone (how much the machine moved during the run)."""
    print(f"\nSame run, same client ({args.client}, {args.concurrency} connections; batches "
          f"{args.batch_concurrency}), {len(rounds)} rounds of {args.warmup:g} s warm-up + "
          f"{args.duration:g} s window per part in turn (batches: once, 1 s + at most "
          f"{BATCH_WINDOW_S:g} s), access log at its default (on); CPU is the server "
          "process's")
    labels = {"bare": "bare Starlette JSON route",
              "bare_one_write": "bare route, ingest's protocol",
              "token": "POST /api/actions/token", "increment": "POST /api/scores/increment"}
    bare_rps = rate(pooled([r["bare"] for r in rounds])) if "bare" in rounds[0] else None
    for part, label in labels.items():
        if part not in rounds[0]:
            continue
        line = report_line(label, pooled([r[part] for r in rounds]), bare_rps)
        if bare_rps and len(rounds) > 1:
            line += "  (rounds: " + ", ".join(
                f"{rate(r[part]) / rate(r['bare']):.2f}" for r in rounds) + ")"
        print(line)
    if batches is not None:
        print(report_line(f"POST /api/scores/batch ({args.batch_size} each)", batches, None,
                          per=args.batch_size))
    if "bare_one_write" in rounds[0]:
        # The floor is the bare route on uvicorn's own protocol (above); against
        # the bare route on ingest's protocol, what ingest's own code keeps:
        floor = rate(pooled([r["bare_one_write"] for r in rounds]))
        print("  ÷ the bare route on ingest's protocol: " + ", ".join(
            f"{part} {rate(pooled([r[part] for r in rounds])) / floor:.2f}"
            for part in ("token", "increment")))
    print()


main = command("bench_ingest", parse_args, run)

if __name__ == "__main__":
    sys.exit(main())
