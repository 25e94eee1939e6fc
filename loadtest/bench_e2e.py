"""End-to-end benchmark: the whole system under sustained increments with
spectators watching, next to the spec's straightforward design on the same
machine, load generator and duration.

    python -m loadtest.bench_e2e [--duration 30 --spectators 200 --rate 0 ...]

1. OURS. Redis and Postgres (embedded, fsync on, unless ``REDIS_URL`` /
   ``DATABASE_URL`` name loopback servers: then a fresh database and key
   prefix, removed afterwards), then the Procfile's processes: ONE ingest
   (uvicorn), ONE worker (arq), ONE broadcaster, and ``--spectators``
   WebSocket spectators of the board in a process of their own
   (``loadtest.e2e_spectators``). The load is the PLAYER endpoint, POST
   /api/scores/increment, one increment per request (JWT, action token
   fetched beforehand and consumed by the request's Lua script), sent by
   ``loadtest.e2e_driver`` in a process of its own: closed loop over
   ``--concurrency`` connections (``--rate 0``, the default: as many as the
   system takes) or open loop at ``--rate`` per second. Rate limits and the
   rapid-actions fraud rule are raised through the environment, so the
   figures measure cost, not policy, and the unusual-time rule's hour is
   moved away from the run (``e2e_env`` says why).

   POST-to-spectator: ``--probe-rate`` times a second, on connections of its
   own, the driver sends a probe: an increment that lifts a fresh player
   to the top of the board with a score no one else has. Each spectator
   notes when it first receives a snapshot showing that player at that
   score; the latency is that moment minus the probe's send time (both
   ``time.time()`` on this machine), over every (probe, spectator) pair.

   Sampled every 0.25 s: consumer lag, i.e. the entries the group has not
   acknowledged (pending + not yet delivered) and the age of the oldest,
   in one Lua read (``loadtest.e2e_sampler.LAG_LUA``); every 1 s: rows in ``actions``
   (persisted/s) and every party's CPU (/proc, Redis INFO); at the window's
   edges the worker's own batch and freshness histograms from its metrics
   port (the worker's part of POST-to-visible: an entry's acceptance time to
   its total on the board) and Redis ``used_memory`` (bytes per accepted
   increment); after the run, the dedup markers alive and their size.

   After the window, once the worker has acknowledged everything: every
   increment answered 202 must be in ``actions`` exactly once (rows per
   event id), and each user's total in ``scores`` and on the Redis board
   (``scoreboard.ranking.totals_by_user`` of ZRANGE WITHSCORES) must be
   the sum of that user's accepted increments; every spectator's last
   snapshot must be the board's final top 10.

2. BASELINE (``loadtest.baseline_server``): per request a Postgres
   transaction (audit row, score upsert), then the top-10 query, then a
   Redis PUBLISH of it; a Starlette app in one uvicorn process, with a
   database of its own on the same Postgres, driven by the same driver with
   the same requests, concurrency, rate and window. Its POST-to-visible
   latency is measured by one Redis subscriber of the channel (it has no
   WebSocket fan-out). Its docstring lists what it leaves out.

3. FLOOD (``--flood``, instead of 1 and 2): game-backend batches at full
   speed against ONE ingest with 1 and then 2 workers and a low
   ``MAX_BACKLOG``: the backlog over time, its peak, the drain time, CPU per
   party and the exactly-once check (``loadtest.e2e_flood`` says how).

The report gives ours ÷ baseline for accepted/s, the latencies side by side,
and the CPU each party used, so a reader can see what limited each figure.
Only 127.0.0.1 is used, the run is bounded (warm-up + window + drain, each
capped), and every process started is stopped, on Ctrl-C and SIGTERM too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import orjson
import redis
import redis.asyncio as redis_asyncio
import uvloop

from loadtest import BenchError
from loadtest.baseline_server import channel_name
from loadtest.e2e_checks import BOARD, Check, check_baseline, check_ours
from loadtest.e2e_flood import add_flood_options, check_flood_options, run_flood
from loadtest.e2e_report import (
    Figures,
    Increment,
    PhaseRun,
    PhaseSpec,
    Workload,
    figures,
    report,
)
from loadtest.e2e_sampler import Sampler, dedup_markers
from loadtest.harness.backing import (
    Backing,
    fresh_database,
    postmaster_pid,
    server_line,
    settle_redis,
    start_backing,
)
from loadtest.harness.command import benchmark_parser, command
from loadtest.harness.cpu import background_cores
from loadtest.harness.players import (
    HIGH_RATE,
    add_load_options,
    check_load_options,
    create_players,
    ingest_env,
    prepare_requests,
    token_fields,
)
from loadtest.harness.processes import (
    PROJECT_DIR,
    broadcaster_process,
    ingest_process,
    uvicorn_process,
    worker_process,
)
from loadtest.harness.spectator_client import raise_fd_limit
from loadtest.harness.spectators import ClientProcess
from scoreboard.embedded import free_port
from scoreboard.keys import Keys
from scoreboard.settings import load_settings

PROBE_BASE = 100_000_000  # probe k scores PROBE_BASE + k: above every player, unique
MAX_POINTS = 1_000_000_000  # MAX_POINTS_PER_INCREMENT, so that probes are valid increments
DRIVER_START_S = 2.5  # the driver's imports and connections, before the first request
TAIL_S = 2.0  # after the drain: time for the final snapshot to reach everyone

# --- Action tokens: who each request is for --------------------------------------------------


def build_workload(players: list[dict[str, str]], requests: list[tuple[dict[str, str], str]],
                   probe_players: list[dict[str, str]],
                   probe_requests: list[tuple[dict[str, str], str]]) -> Workload:
    everyone = players + probe_players
    index_of = {id(headers): i for i, headers in enumerate(everyone)}
    load, increments = [], []
    for headers, body in requests:
        user_id, nonce = token_fields(body)
        load.append((index_of[id(headers)], body))
        increments.append(Increment(f"at-{nonce}", user_id, 1))
    probes, probe_increments = [], []
    for k, (headers, body) in enumerate(probe_requests):
        user_id, nonce = token_fields(body)
        points = PROBE_BASE + k
        probes.append((index_of[id(headers)], orjson.dumps(
            {**orjson.loads(body), "points": points}).decode()))
        probe_increments.append(Increment(f"at-{nonce}", user_id, points))
    return Workload(everyone, load, probes, increments, probe_increments)


# --- One phase: spectators, driver, sampler, drain ------------------------------------------


async def wait_drained(client: Any, keys: Keys, group: str, timeout_s: float) -> bool:
    """True once the group has been delivered the whole stream and acknowledged it all."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        last = (await client.xinfo_stream(keys.stream))["last-generated-id"]
        found = [g for g in await client.xinfo_groups(keys.stream) if g["name"] == group]
        if found and found[0]["last-delivered-id"] == last and not int(found[0]["pending"]):
            return True
        await asyncio.sleep(0.1)
    return False


async def run_phase(spec: PhaseSpec, args: argparse.Namespace, workload: Workload,
                    redis_url: str, postmaster: int | None, root: Path) -> PhaseRun:
    client = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
    spectators = await ClientProcess.start_module("loadtest.e2e_spectators")
    try:
        connected = await spectators.call(spec.spectators, timeout_s=180)
        if connected["connected"] != spec.spectators.get("count", 1):
            raise BenchError(f"{spec.name}: spectators failed to connect: {connected}")
        await spectators.call({"op": "start", "probes": workload.probe_scores})
        start_at = time.monotonic() + DRIVER_START_S
        window_start = start_at + args.warmup
        window_end = window_start + args.duration
        job_path, result_path = root / f"{spec.name}-job.json", root / f"{spec.name}-result.json"
        job_path.write_bytes(orjson.dumps({
            "url": spec.url, "players": workload.players, "requests": workload.requests,
            "probes": workload.probes, "concurrency": args.concurrency, "rate": args.rate,
            "probe_rate": args.probe_rate, "start_at": start_at, "window_end": window_end,
            "cycle": spec.cycle}))
        driver = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loadtest.e2e_driver", str(job_path), str(result_path),
            cwd=PROJECT_DIR)
        sampler = Sampler(redis_client=client, database_url=spec.database_url, keys=spec.keys,
                          group="persisters", pids={**spec.pids, "driver": driver.pid,
                                                    "spectators": spectators.pid},
                          postmaster=postmaster, metrics_url=spec.metrics_url)
        sampling = asyncio.create_task(sampler.run(window_start, window_end))
        try:
            await asyncio.wait_for(driver.wait(), window_end - time.monotonic() + 90)
        except TimeoutError:
            driver.kill()
            await driver.wait()
            raise BenchError(f"{spec.name}: the driver did not finish in time") from None
        finally:
            if driver.returncode is None:
                driver.kill()
                await driver.wait()
        if driver.returncode != 0:
            raise BenchError(f"{spec.name}: the driver failed with status {driver.returncode}")
        result: dict[str, Any] = orjson.loads(result_path.read_bytes())
        drained = True
        if spec.keys is not None:
            print(f"{spec.name}: window over; waiting for the worker to persist everything…",
                  flush=True)
            drained = await wait_drained(client, spec.keys, "persisters", args.drain_timeout)
        await asyncio.sleep(TAIL_S)
        markers = await dedup_markers(client, spec.keys) if spec.keys is not None else None
        seen = await spectators.call({"op": "stop"}, timeout_s=120)
        sampler.stopping.set()
        await sampling
    finally:
        await spectators.stop()
        await client.aclose()
    return PhaseRun(spec=spec, window_start=window_start, window_end=window_end, driver=result,
                    spectators=seen, connected=connected, samples=sampler.samples,
                    drained=drained,
                    probe_users=[p.user_id for p in workload.probe_increments],
                    markers=markers)


# --- The run ------------------------------------------------------------------------------------


def e2e_env(backing: Backing, args: argparse.Namespace) -> dict[str, str]:
    """ingest_env (limits out of the way) plus: probes' points allowed; the rapid-actions
    fraud rule and the flagged users' limit raised (every player here is "rapid"); and
    the unusual-time rule's hour moved 12 hours away from now.

    That rule costs the worker a Redis round trip per entry during its hours
    (and a fraud_events row per user and day): a figure must not depend on the
    time of day it was measured at, and each probe is a new user."""
    env = {**ingest_env(backing), "MAX_POINTS_PER_INCREMENT": str(MAX_POINTS),
           "RAPID_MAX_ACTIONS": str(10**9), "FLAGGED_INCREMENT_RATE": HIGH_RATE,
           "WS_MAX_PER_IP": str(args.spectators + 10)}
    zone = ZoneInfo(load_settings(env).fraud_timezone)
    away = (datetime.now(zone).hour + 12) % 24
    return {**env, "NIGHT_START_HOUR": str(away), "NIGHT_END_HOUR": str(away + 1)}


async def checkpoint(admin_url: str) -> None:
    """Flush Postgres's dirty pages before a window, so no phase inherits the other's."""
    connection = await asyncpg.connect(admin_url, timeout=30)
    try:
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await connection.execute("CHECKPOINT")
    finally:
        await connection.close()


def probe_count_of(args: argparse.Namespace) -> int:
    count: int = math.ceil(args.probe_rate * (args.warmup + args.duration)) + 5
    return count


def define_probe_actions(backing: Backing, probe_count: int) -> None:
    """Points are the server's: probe k's token names action ``probe<k>`` of the board,
    worth PROBE_BASE + k (the body still says so too, for the baseline, which takes the
    client's points). Written before ingest starts, which publishes it to Redis."""
    from scoreboard.board_defs import create_board, definition
    from scoreboard.db import create_pool

    actions = [("play", 1), *((f"probe{k}", PROBE_BASE + k) for k in range(probe_count))]

    async def write() -> None:
        pool = await create_pool(backing.database_url, max_size=1)
        client = redis_asyncio.Redis.from_url(backing.redis_url)
        try:
            await create_board(pool, client, Keys(backing.key_prefix).board_definitions,
                               definition(BOARD, actions, None, service_max=MAX_POINTS))
        finally:
            await client.aclose()
            await pool.close()

    asyncio.run(write())


async def fetch_probe_tokens(url: str, players: list[dict[str, str]],
                             count: int) -> list[tuple[dict[str, str], str]]:
    """Probe k's action token, for action ``probe<k>``."""
    requests = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for k in range(count):
            headers = players[k % len(players)]
            response = await client.post("/api/actions/token", json={"action": f"probe{k}"},
                                         headers=headers)
            if response.status_code != 200:
                raise BenchError(f"probe token: {response.status_code} {response.text[:300]}")
            requests.append((headers, orjson.dumps(
                {"action_token": response.json()["action_token"]}).decode()))
    return requests


def prepare_workload(url: str, args: argparse.Namespace) -> tuple[Workload, str]:
    players = asyncio.run(create_players(url, args.players))
    probe_count = probe_count_of(args)
    probe_players = asyncio.run(create_players(url, probe_count)) if probe_count else []
    print(f"{args.players} players and {probe_count} probe players registered; fetching "
          "action tokens…", flush=True)
    if args.rate:
        args.tokens = math.ceil(args.rate * (args.warmup + args.duration) * 1.05) + \
            args.concurrency
    requests, token_rate = prepare_requests(url, players, args)
    probe_requests = asyncio.run(fetch_probe_tokens(url, probe_players, probe_count))
    workload = build_workload(players, requests, probe_players, probe_requests)
    return workload, (f"{args.players} players (one address each), {len(requests):,} action "
                      f"tokens fetched at {token_rate:,.0f}/s, {probe_count} probe players "
                      f"(one probe each, points {PROBE_BASE:,} + k); limits {HIGH_RATE}, "
                      "RAPID_MAX_ACTIONS 10^9, "
                      "unusual-time rule 12 h away")


def run(args: argparse.Namespace) -> int:
    raise_fd_limit()
    background = background_cores()
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-e2e-")))
        print("starting Redis and Postgres (fsync on), migrating a fresh database…", flush=True)
        backing = start_backing(stack, root, durable_postgres=True)
        client = stack.enter_context(contextlib.closing(
            redis.Redis.from_url(backing.redis_url, decode_responses=True)))
        servers = server_line(client, backing.admin_database_url)
        postmaster = asyncio.run(postmaster_pid(backing.admin_database_url))
        if args.flood:
            return run_flood(args, background=background, servers=servers, backing=backing,
                             client=client, postmaster=postmaster, root=root, stack=stack)
        env, keys = e2e_env(backing, args), Keys(backing.key_prefix)
        define_probe_actions(backing, probe_count_of(args))
        with contextlib.ExitStack() as ours_stack:
            url, ingest_pid = ours_stack.enter_context(ingest_process(env, root / "ingest.log"))
            metrics_port = free_port()
            worker_pid = ours_stack.enter_context(worker_process(
                env, root / "worker.log", client, keys, metrics_port=metrics_port))
            bcast_url, bcast_pid = ours_stack.enter_context(broadcaster_process(
                env, root / "broadcaster.log", max_per_ip=args.spectators + 10))
            print(f"ingest {url}, worker pid {worker_pid}, broadcaster {bcast_url}; "
                  "registering players…", flush=True)
            workload, setup = prepare_workload(url, args)
            settle_redis(client, rewrite=backing.redis_embedded)
            asyncio.run(checkpoint(backing.admin_database_url))
            print(f"OURS: {args.spectators} spectators, then {args.warmup:g} + "
                  f"{args.duration:g} s of increments…", flush=True)
            ws_url = bcast_url.replace("http://", "ws://") + f"/ws?board={BOARD}"
            spec = PhaseSpec(
                name="ours", url=url, database_url=backing.database_url, keys=keys,
                pids={"ingest": ingest_pid, "worker": worker_pid, "broadcaster": bcast_pid},
                spectators={"op": "connect", "mode": "websocket", "url": ws_url,
                            "count": args.spectators, "parallel": 50},
                metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
                cycle=False)
            ours_run = uvloop.run(run_phase(spec, args, workload, backing.redis_url,
                                            postmaster, root))
            ours_check = asyncio.run(check_ours(ours_run, workload, backing.redis_url,
                                                backing.database_url, keys))
            print("OURS done; stopping ingest, worker and broadcaster…", flush=True)
        base = None
        if not args.skip_baseline:
            base = run_baseline(args, stack, backing, env, workload, postmaster, root, client)
        ok = report(args, background=background, servers=servers, setup=setup,
                    ours=(ours_run, figures(ours_run), ours_check), base=base)
        print("stopping the servers started…", flush=True)
    return 0 if ok else 1


def run_baseline(args: argparse.Namespace, stack: contextlib.ExitStack, backing: Backing,
                 env: dict[str, str], workload: Workload, postmaster: int | None, root: Path,
                 client: Any) -> tuple[PhaseRun, Figures, Check]:
    database_url = fresh_database(stack, backing, f"{backing.database_name}_baseline")
    base_env = {**env, "DATABASE_URL": database_url,
                "BASELINE_POOL_SIZE": str(args.baseline_pool)}
    load_settings(base_env)  # fail early on a bad setting
    with uvicorn_process("loadtest.baseline_server:create_app", base_env,
                         root / "baseline.log", ready_path="/healthz",
                         what="the baseline server") as (url, pid):
        settle_redis(client, rewrite=backing.redis_embedded)
        asyncio.run(checkpoint(backing.admin_database_url))
        print(f"BASELINE on {url}: {args.warmup:g} + {args.duration:g} s of the same "
              "increments…", flush=True)
        spec = PhaseSpec(
            name="baseline", url=url, database_url=database_url, keys=None,
            pids={"baseline": pid},
            spectators={"op": "connect", "mode": "redis", "redis_url": backing.redis_url,
                        "channel": channel_name(backing.key_prefix)}, metrics_url=None,
            cycle=True)
        base_run = uvloop.run(run_phase(spec, args, workload, backing.redis_url, postmaster,
                                        root))
        base_check = asyncio.run(check_baseline(base_run, workload, database_url))
    return base_run, figures(base_run), base_check


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = benchmark_parser("loadtest.bench_e2e", __doc__)
    add_load_options(parser, duration=30, warmup=5, token_margin=1.15,
                     margin_help="closed loop: tokens fetched per increment predicted from "
                                 "the token rate")
    parser.add_argument("--spectators", type=int, default=200,
                        help="WebSocket spectators of the board (200)")
    parser.add_argument("--rate", type=float, default=0,
                        help="offered increments/s, open loop; 0: closed loop (0)")
    parser.add_argument("--probe-rate", type=float, default=10,
                        help="probes/s for POST-to-spectator latency (10)")
    parser.add_argument("--drain-timeout", type=float, default=120,
                        help="seconds the worker may take to catch up after the window (120)")
    parser.add_argument("--baseline-pool", type=int, default=10,
                        help="the baseline's Postgres pool size (10, as ingest's)")
    parser.add_argument("--skip-baseline", action="store_true")
    add_flood_options(parser)
    args = parser.parse_args(argv)
    check_flood_options(parser, args)
    args.tokens = 0  # for prepare_requests: estimate from a first batch
    check_load_options(parser, args)
    if not 1 <= args.spectators <= 5000 or not 1 <= args.baseline_pool <= 100:
        parser.error("--spectators must be 1..5000 and --baseline-pool 1..100")
    if not 0 <= args.rate <= 100_000 or not 0 <= args.probe_rate <= 50:
        parser.error("--rate must be 0..100000 and --probe-rate 0..50 (above 50 probes/s, "
                     "more than 10 can share one 100 ms snapshot and push each other out)")
    return args


main = command("bench_e2e", parse_args, run)

if __name__ == "__main__":
    sys.exit(main())
