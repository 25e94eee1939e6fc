"""Broadcaster benchmark: spectators held by ONE broadcaster process at 10
snapshots/s, and the latency from an increment's 202 to a spectator's screen.

    python -m loadtest.bench_broadcaster [--quick] [--sizes 1000,5000,10000 ...]

Part 1, fan-out. For each size N a fresh broadcaster process (``python -m
broadcaster``, as the Procfile runs it; SNAPSHOT_INTERVAL_MS=100, WS_MAX_PER_IP
above N) serves one board of 10 players, all in the top 10. N WebSocket
spectators, split over ``--client-procs`` processes of their own, connect
while the board is still (so the handshakes do not compete with the fan-out);
then a writer in this process changes the board ``--writer-rate`` times/s
through the worker's own write path (``persist_batch`` into Postgres, then
``apply_and_ack``: set the totals, bump the revision, publish the notice),
each change moving a total on the snapshot, so the throttle has something to
send every 100 ms. After ``--settle`` s a ``--window`` s window is measured:

- delivery latency: receipt time in the client (``time.time()``) minus the
  snapshot's ``ts`` (server ms when it was built; same machine clock);
- snapshots received per client per second, next to those the server built;
- memory per connection: the broadcaster's VmRSS (/proc) with N connected
  minus VmRSS before connecting, over N. "Before" is taken after one warm-up
  connection, so one-time costs (lazy imports, the board's first snapshot)
  are not counted per connection;
- the CPU of every party during the window: on a small machine the clients
  compete with the server for the same cores, and the report says so.

The spectators use a minimal WebSocket client written on ``asyncio.Protocol``
(``--client raw``: the handshake, unmasked server frames, pong and close
answers; it reads ``ts`` without decoding the JSON), because on 2 cores every
client µs is taken from the server: measured at 1,000 spectators, the
``websockets`` library's asyncio client cost about 49 µs of CPU per message
received, this one about 24 µs. ``--client websockets`` runs the library's
client instead, for comparison.

Part 2, end to end. ingest + ONE worker (``arq workers.main.WorkerSettings``)
+ a broadcaster, all as the Procfile runs them. Increments go through POST
/api/scores/increment (the player endpoint: JWT, action token consumed,
limits and the rapid-actions fraud rule raised out of the way, XADD), paced
at ``--rate`` per second on a fixed schedule. Each increment goes to one of
``--lanes`` players that has no POST in flight: a player's increments go one
after the other, the next only after the previous 202, so a player's score
reaching m means that player's m-th increment is on the board. The
broadcaster's SNAPSHOT_SIZE is raised to the number of players, so every
player is always on the snapshot (20 players rather than the default 10 keep
1,000/s within reach when a POST takes ~10 ms on a busy machine). For each
increment answered 202 the first snapshot a spectator received whose entries
show that player at >= m gives the latency: 202 received -> snapshot
received (both ``time.time()``). The Redis board is also read every 5 ms,
which splits the time into 202 -> on the board (the worker: read, Postgres
commit, board update), on the board -> snapshot built (notice, throttle,
read) and built -> received (fan-out). Postgres is durable (fsync on): the
worker's commit is on the measured path.

Only 127.0.0.1 is used: Redis and Postgres are embedded in a temporary folder
(or the loopback servers of ``REDIS_URL`` / ``DATABASE_URL``, with a fresh
database and key prefix, removed afterwards). Every process started is stopped
at the end, on Ctrl-C and SIGTERM too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import redis
import redis.asyncio as redis_asyncio
import uvloop
from websockets.asyncio.client import connect

from loadtest import BenchError
from loadtest.harness.backing import Backing, start_backing
from loadtest.harness.command import benchmark_parser, command
from loadtest.harness.cpu import background_cores, cores, cpu_seconds
from loadtest.harness.figures import (
    background_line,
    command_line,
    histogram_percentile,
    machine_line,
    percentile,
)
from loadtest.harness.http import INCREMENT_PATH, encode_post, open_connection
from loadtest.harness.players import (
    HIGH_RATE,
    create_players,
    fetch_tokens,
    ingest_env,
    jwt_subject,
)
from loadtest.harness.processes import broadcaster_process, ingest_process, worker_process
from loadtest.harness.spectators import CONNECT_TIMEOUT_S, ClientProcess, raise_fd_limit
from scoreboard.board_writes import apply_and_ack
from scoreboard.db import create_pool
from scoreboard.keys import Keys
from scoreboard.lua import register_scripts
from scoreboard.ranking import totals_by_user
from scoreboard.settings import Settings
from scoreboard.stream_entry import StreamEntry
from workers.persist import PartitionCache, persist_batch

FANOUT_BOARD = "spectated"
LATENCY_BOARD = "global"  # the board of loadtest.harness.players.fetch_tokens' bodies
DEFAULT_SNAPSHOT_SIZE = Settings().snapshot_size
BOARD_PLAYERS = DEFAULT_SNAPSHOT_SIZE  # part 1: every player is always on the snapshot
BOARD_POLL_S = 0.005  # part 2: how often the Redis board is read to time the worker
TAIL_S = 2.0  # after the last increment, time for its snapshot to arrive


# --- Small helpers ----------------------------------------------------------------------


def vm_rss_kb(pid: int) -> int:
    """Resident memory of ``pid`` in KiB (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal positive counts."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def scrape_counters(url: str) -> dict[str, float]:
    """The broadcaster's Prometheus samples, by name with labels (counters and gauges)."""
    text = httpx.get(url + "/metrics", timeout=30).text
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples



# --- Part 1: fan-out to N spectators ---------------------------------------------------------


@dataclass
class WriterStats:
    writes: int = 0
    seconds: float = 0.0


async def write_board(backing: Backing, board: str, rate: float, stop: asyncio.Event,
                      stats: WriterStats, *, limit: int | None = None) -> None:
    """Change ``board`` ``rate`` times/s (``limit`` times at most) as a worker does:
    each change one action row and total in Postgres (one transaction), then the
    board, revision and notice in Redis. The players are bumped in turn, so every
    change moves a total shown on the snapshot."""
    client = redis_asyncio.Redis.from_url(backing.redis_url, decode_responses=True)
    scripts, keys = register_scripts(client), Keys(backing.key_prefix)
    pool = await create_pool(backing.database_url, min_size=1, max_size=1)
    partitions, loop = PartitionCache(), asyncio.get_running_loop()
    started = loop.time()
    try:
        while not stop.is_set() and (limit is None or stats.writes < limit):
            delay = started + stats.writes / rate - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            player = stats.writes % BOARD_PLAYERS
            entry = StreamEntry(stream_id="0-0", event_id="bench-" + secrets.token_hex(8),
                                user_id=f"spectated_{player}", username=f"player {player}",
                                board=board, points=random.randint(1, 9), source="bench",
                                ts_ms=int(time.time() * 1000), ip="", request_id="")
            async with pool.acquire() as connection:
                result = await persist_batch(connection, [entry], partitions)
            await apply_and_ack(client, scripts, keys, group="persisters",
                                totals=result.totals, ack_ids=[])
            stats.writes += 1
    finally:
        stats.seconds = loop.time() - started
        await pool.close()
        await client.aclose()


@dataclass
class FanoutResult:
    size: int
    processes: int
    connected: int
    connect_failures: dict[str, int]
    connect_s: float
    window_s: float
    per_client: list[int]
    bins: dict[int, int]
    closed: dict[str, int]
    still_open: int
    rss_before_kb: int
    rss_start_kb: int
    rss_with_kb: int
    rss_peak_kb: int
    built: float
    sent: float
    dropped: dict[str, float]
    cpu: dict[str, float]
    writes_per_s: float


async def measure_fanout(args: argparse.Namespace, backing: Backing, size: int, url: str,
                         pid: int, redis_client: Any) -> FanoutResult:
    """Seed the board, take VmRSS after one warm-up connection, connect ``size``
    spectators while the board is still, then change it continuously, let it
    settle and measure one window."""
    ws_url = url.replace("http://", "ws://") + f"/ws?board={FANOUT_BOARD}"
    stop, writer_stats = asyncio.Event(), WriterStats()
    await write_board(backing, FANOUT_BOARD, 1000, stop, WriterStats(), limit=BOARD_PLAYERS)
    async with connect(ws_url, compression=None) as warm_up:  # one-time costs, not per client
        await warm_up.recv()
    await asyncio.sleep(1)
    rss_before = vm_rss_kb(pid)
    counts = shares(size, args.client_procs)
    clients: list[ClientProcess] = []
    writer: asyncio.Task[None] | None = None
    try:
        clients = list(await asyncio.gather(*(ClientProcess.start(ws_url, args.client)
                                              for _ in counts)))
        connected = await asyncio.gather(*(
            c.call({"op": "connect", "count": n, "parallel": args.connect_parallel,
                    "deadline_s": args.connect_deadline}, args.connect_deadline + 60)
            for c, n in zip(clients, counts, strict=True)))
        writer = asyncio.create_task(write_board(backing, FANOUT_BOARD, args.writer_rate,
                                                 stop, writer_stats))
        await asyncio.sleep(args.settle)
        metrics_before = await asyncio.to_thread(scrape_counters, url)
        parties: dict[str, int | list[int]] = {"broadcaster": pid,
                                               "clients": [c.pid for c in clients]}
        before = cpu_seconds(parties, redis_client, own="orchestrator")
        await asyncio.gather(*(c.call({"op": "start"}) for c in clients))
        rss_start = vm_rss_kb(pid)
        rss_peak, window_end = rss_start, time.perf_counter() + args.window
        while (left := window_end - time.perf_counter()) > 0:
            rss_peak = max(rss_peak, vm_rss_kb(pid))
            await asyncio.sleep(min(0.5, left))
        windows = await asyncio.gather(*(c.call({"op": "stop"}) for c in clients))
        after = cpu_seconds(parties, redis_client, own="orchestrator")
        rss_with = vm_rss_kb(pid)
        metrics_after = await asyncio.to_thread(scrape_counters, url)
        if writer.done():
            await writer  # raises what stopped it
    finally:
        stop.set()
        await asyncio.gather(*([writer] if writer else []), *(c.stop() for c in clients),
                             return_exceptions=True)
    bins: Counter[int] = Counter()
    closed: Counter[str] = Counter()
    for window in windows:
        bins.update({int(k): v for k, v in window["bins"].items()})
        closed.update(window["closed"])
    failures: Counter[str] = Counter()
    for reply in connected:
        failures.update(reply["failures"])

    def delta(name: str) -> float:
        return metrics_after.get(name, 0.0) - metrics_before.get(name, 0.0)

    span = after["at"] - before["at"]
    return FanoutResult(
        size=size, processes=len(clients), connected=sum(r["connected"] for r in connected),
        connect_failures=dict(failures), connect_s=max(r["seconds"] for r in connected),
        window_s=sum(w["seconds"] for w in windows) / len(windows),
        per_client=sorted(n for w in windows for n in w["per_client"]), bins=dict(bins),
        closed=dict(closed), still_open=sum(w["open"] for w in windows),
        rss_before_kb=rss_before, rss_start_kb=rss_start, rss_with_kb=rss_with,
        rss_peak_kb=max(rss_peak, rss_with),
        built=delta("scoreboard_snapshots_built_total") / span,
        sent=delta("scoreboard_snapshots_sent_total") / span,
        dropped={k.split('"')[1]: v for k, v in metrics_after.items()
                 if k.startswith("scoreboard_spectators_dropped_total{") and v},
        cpu=cores(before, after),
        writes_per_s=writer_stats.writes / writer_stats.seconds if writer_stats.seconds else 0)


def run_fanout(args: argparse.Namespace, backing: Backing, root: Path,
               redis_client: Any) -> list[FanoutResult]:
    results = []
    for size in args.sizes:
        print(f"fan-out: {size:,} spectators…", flush=True)
        with broadcaster_process(ingest_env(backing), root / f"broadcaster-{size}.log",
                                 max_per_ip=size + 100) as (url, pid):
            results.append(uvloop.run(measure_fanout(args, backing, size, url, pid,
                                                     redis_client)))
    return results


# --- Part 2: POST 202 -> spectator receipt at a paced rate -----------------------------------


@dataclass(frozen=True)
class Lane:
    user_id: str
    requests: list[bytes]  # encoded POSTs, each with an action token of this player


@dataclass(frozen=True)
class Accepted:
    lane: int
    ordinal: int  # this player's m-th 202: the board shows >= m once it is applied
    answered_ms: float  # time.time() when the 202 arrived
    in_window: bool


@dataclass
class DriveResult:
    accepted: list[Accepted] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    post_ms: list[float] = field(default_factory=list)  # POST -> answer, window only
    lag_ms: list[float] = field(default_factory=list)  # POST sent after its due time, window
    window_s: float = 0.0
    window_sent: int = 0
    tokens_short: int = 0  # increments not sent: their player's tokens ran out
    first_refusal: str = ""
    started_ms: float = 0.0  # time.time() of the first due POST ...
    ended_ms: float = 0.0  # ... and of the last 202


async def drive(url: str, lanes: list[Lane], rate: float, warmup_s: float,
                duration_s: float) -> DriveResult:
    """Send increments at ``rate``/s on a fixed schedule. Each goes to a player with
    no POST in flight (each player's POSTs go one after the other, on a keep-alive
    connection of its own), so a player's stream entries are in the order of its 202s."""
    total, first_measured = int(rate * (warmup_s + duration_s)), int(rate * warmup_s)
    result = DriveResult()
    connections = [await open_connection(url) for _ in lanes]
    used, accepted = [0] * len(lanes), [0] * len(lanes)
    idle: asyncio.Queue[int] = asyncio.Queue()
    for k in range(len(lanes)):
        idle.put_nowait(k)
    in_flight: set[asyncio.Task[None]] = set()

    async def post(k: int, request: bytes, due: float, measured: bool) -> None:
        sent = time.perf_counter()
        status, body = await connections[k].post(request)
        answered = time.perf_counter()
        result.statuses[str(status)] += 1
        if measured:
            result.window_sent += 1
            result.post_ms.append((answered - sent) * 1000)
            result.lag_ms.append((sent - due) * 1000)
        if status == 202:
            accepted[k] += 1
            result.accepted.append(Accepted(k, accepted[k], time.time() * 1000, measured))
        elif not result.first_refusal:
            result.first_refusal = body.decode(errors="replace")[:200]
        idle.put_nowait(k)

    t0 = time.perf_counter() + 0.2
    result.started_ms = (time.time() + 0.2) * 1000
    window_start = t0 + first_measured / rate
    try:
        for i in range(total):
            due = t0 + i / rate
            if (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            k = await idle.get()
            if used[k] == len(lanes[k].requests):
                result.tokens_short += 1
                continue  # this player is out of tokens: it stays out of the pool
            used[k] += 1
            task = asyncio.create_task(post(k, lanes[k].requests[used[k] - 1], due,
                                            i >= first_measured))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)
        result.window_s = time.perf_counter() - window_start
        result.ended_ms = time.time() * 1000
    finally:
        for connection in connections:
            connection.close()
    return result


Scores = dict[str, int]  # user id -> total, as a snapshot or the board shows it


@dataclass
class LatencyResult:
    drive: DriveResult
    spectators: int
    receipt_ms: list[float]  # 202 -> snapshot received: the figure
    board_ms: list[float]  # 202 -> total on the Redis board (worker), polled
    build_ms: list[float]  # on the board -> snapshot built (notice, throttle, read)
    delivery_ms: list[float]  # snapshot built (ts) -> received
    unseen: int
    snapshots_per_s: float
    board_samples: int
    cpu: dict[str, float]  # cores used during the drive, by party


def first_reflecting(by_lane: dict[int, list[Accepted]], lanes: list[Lane],
                     samples: Sequence[Scores]) -> dict[tuple[int, int], int]:
    """For each (lane, ordinal), the index of the first of ``samples`` (in time
    order) showing that player at >= ordinal, i.e. with that increment applied."""
    found: dict[tuple[int, int], int] = {}
    for k, increments in by_lane.items():
        position, user_id = 0, lanes[k].user_id
        for index, scores in enumerate(samples):
            score = scores.get(user_id, 0)
            while position < len(increments) and increments[position].ordinal <= score:
                found[(k, increments[position].ordinal)] = index
                position += 1
    return found


def match(drive_result: DriveResult, kept: list[tuple[int, float, str]], lanes: list[Lane],
          spectators: int, board: list[tuple[float, Scores]],
          cpu: dict[str, float]) -> LatencyResult:
    """For each spectator and each increment of the window, the first snapshot that
    reflects it; and the first board poll that does, to split the time."""
    by_lane: dict[int, list[Accepted]] = {}
    for accepted in sorted(drive_result.accepted, key=lambda a: (a.lane, a.ordinal)):
        by_lane.setdefault(accepted.lane, []).append(accepted)
    measured = [a for a in drive_result.accepted if a.in_window]
    on_board = first_reflecting(by_lane, lanes, [scores for _, scores in board])
    board_ms = sorted(board[on_board[(a.lane, a.ordinal)]][0] - a.answered_ms
                      for a in measured if (a.lane, a.ordinal) in on_board)
    receipt, build, delivery, unseen = [], [], [], 0
    for index in range(spectators):
        snapshots = []
        for spectator, received_ms, payload in kept:
            if spectator == index:
                message = orjson.loads(payload)
                snapshots.append((received_ms, float(message["ts"]), {
                    e["user_id"]: e["score"] for e in message["entries"]}))
        seen = first_reflecting(by_lane, lanes, [scores for _, _, scores in snapshots])
        for accepted in measured:
            key = (accepted.lane, accepted.ordinal)
            if key not in seen:
                unseen += 1
                continue
            received_ms, built_ms, _ = snapshots[seen[key]]
            receipt.append(received_ms - accepted.answered_ms)
            delivery.append(received_ms - built_ms)
            if key in on_board:
                build.append(built_ms - board[on_board[key]][0])
    driven = sum(1 for _, received_ms, _ in kept
                 if drive_result.started_ms <= received_ms <= drive_result.ended_ms)
    driven_s = (drive_result.ended_ms - drive_result.started_ms) / 1000
    return LatencyResult(drive_result, spectators, sorted(receipt), board_ms, sorted(build),
                         sorted(delivery), unseen, driven / spectators / driven_s, len(board),
                         cpu)


async def watch_board(redis_url: str, keys: Keys, stop: asyncio.Event,
                      into: list[tuple[float, Scores]]) -> None:
    """Every ~``BOARD_POLL_S``, read the whole board; keep each new state with the
    time.time() it was seen at."""
    client = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        while not stop.is_set():
            rows = await client.zrange(keys.board(LATENCY_BOARD), 0, -1, withscores=True)
            seen_ms, scores = time.time() * 1000, totals_by_user(rows)
            if not into or into[-1][1] != scores:
                into.append((seen_ms, scores))
            await asyncio.sleep(BOARD_POLL_S)
    finally:
        await client.aclose()


async def measure_latency(args: argparse.Namespace, ingest_url: str, ws_url: str,
                          lanes: list[Lane], *, redis_url: str, redis_client: Any, keys: Keys,
                          pids: dict[str, int]) -> LatencyResult:
    spectators = await ClientProcess.start(ws_url, "raw", keep=True)
    stop, board = asyncio.Event(), list[tuple[float, Scores]]()
    watcher = asyncio.create_task(watch_board(redis_url, keys, stop, board))
    try:
        connected = await spectators.call({"op": "connect", "count": args.spectators,
                                           "parallel": 8, "deadline_s": CONNECT_TIMEOUT_S},
                                          CONNECT_TIMEOUT_S + 30)
        if connected["connected"] != args.spectators:
            raise BenchError(f"spectators failed to connect: {connected['failures']}")
        await spectators.call({"op": "start"})
        pids = {**pids, "spectators": spectators.pid}
        before = cpu_seconds(pids, redis_client, own="driver")
        drive_result = await drive(ingest_url, lanes, args.rate, args.latency_warmup,
                                   args.latency_duration)
        after = cpu_seconds(pids, redis_client, own="driver")
        await asyncio.sleep(TAIL_S)
        window = await spectators.call({"op": "stop"})
    finally:
        stop.set()
        await asyncio.gather(watcher, spectators.stop(), return_exceptions=True)
    kept = [(int(index), float(at), str(payload)) for index, at, payload in window["kept"]]
    return match(drive_result, kept, lanes, args.spectators, board, cores(before, after))


def run_latency(args: argparse.Namespace, backing: Backing, root: Path,
                redis_client: Any) -> LatencyResult:
    # One player sends rate/lanes increments per second: the fraud rule for rapid
    # actions (and the reduced limit of flagged users) is raised out of the way, as
    # ingest_env does for the other limits.
    env = {**ingest_env(backing), "RAPID_MAX_ACTIONS": str(10**9),
           "FLAGGED_INCREMENT_RATE": HIGH_RATE}
    keys = Keys(backing.key_prefix)
    with contextlib.ExitStack() as stack:
        url, ingest_pid = stack.enter_context(ingest_process(env, root / "ingest.log"))
        worker_pid = stack.enter_context(worker_process(env, root / "worker.log",
                                                        redis_client, keys))
        broadcaster_url, broadcaster_pid = stack.enter_context(broadcaster_process(
            {**env, "SNAPSHOT_SIZE": str(max(args.lanes, DEFAULT_SNAPSHOT_SIZE))},
            root / "broadcaster-latency.log", max_per_ip=100))
        print(f"end to end: ingest, worker and broadcaster up; registering {args.lanes} "
              "players and fetching action tokens…", flush=True)
        players = asyncio.run(create_players(url, args.lanes))
        # A player takes the next increment whenever it has none in flight, so the
        # players' shares differ a little: each gets 20% more tokens than an equal share.
        count = int(args.rate * (args.latency_warmup + args.latency_duration) * 1.2)
        requests, _ = asyncio.run(fetch_tokens(url, players, count, concurrency=16))
        host = urlsplit(url).netloc
        by_player: dict[str, list[bytes]] = {p["Authorization"]: [] for p in players}
        for headers, body in requests:  # in the order the tokens came, not round-robin
            by_player[headers["Authorization"]].append(
                encode_post(host, INCREMENT_PATH, headers, body.encode()))
        lanes = [Lane(jwt_subject(authorization), posts)
                 for authorization, posts in by_player.items()]
        print(f"end to end: {args.rate:g} increments/s for {args.latency_warmup:g} + "
              f"{args.latency_duration:g} s…", flush=True)
        ws_url = broadcaster_url.replace("http://", "ws://") + f"/ws?board={LATENCY_BOARD}"
        return uvloop.run(measure_latency(
            args, url, ws_url, lanes, redis_url=backing.redis_url, redis_client=redis_client,
            keys=keys,
            pids={"ingest": ingest_pid, "worker": worker_pid, "broadcaster": broadcaster_pid}))


# --- Report ---------------------------------------------------------------------------------


def fanout_notes(result: FanoutResult) -> list[str]:
    cores, notes = os.cpu_count() or 1, []
    cpu = result.cpu
    if cpu["broadcaster"] >= 0.9:
        notes.append("the broadcaster's event loop was CPU-bound (one process = one core): "
                     "it is the limit; spectators skip states (one-slot mailbox) and wait "
                     "longer for each fan-out pass")
    if cpu["machine"] >= 0.9 * cores:
        notes.append(f"the machine was saturated ({cpu['machine']:.2f} of {cores} cores): "
                     f"the clients' {cpu['clients']:.2f} cores came from the same pool")
    elif cpu["clients"] >= 0.9 * result.processes:
        notes.append("the client processes were CPU-bound: the figures are a lower bound")
    others = cpu["machine"] - sum(cpu[k] for k in ("broadcaster", "clients", "redis",
                                                   "orchestrator"))
    if others > 0.2:
        notes.append(f"{others:.2f} cores went to other processes (Postgres, or whatever "
                     "else ran on the machine): the figure is disturbed")
    if not notes:
        notes.append("no party was saturated")
    return notes


def report_fanout(args: argparse.Namespace, results: list[FanoutResult]) -> None:
    print(f"\nPart 1  fan-out: ONE broadcaster process, SNAPSHOT_INTERVAL_MS=100, board "
          f"changed ~{args.writer_rate:g}/s through the worker write path, {args.client} "
          f"clients, {args.window:g} s window after {args.settle:g} s settle")
    for r in results:
        rates = [n / r.window_s for n in r.per_client]
        print(f"\n  {r.size:,} spectators ({r.processes} client processes)")
        print(f"    connected         {r.connected:,} in {r.connect_s:.1f} s"
              + (f"; FAILED {r.connect_failures}" if r.connect_failures else ""))
        print(f"    snapshots built   {r.built:.2f}/s by the server (board writes "
              f"{r.writes_per_s:.1f}/s); sent {r.sent:,.0f} messages/s, "
              f"{1e6 * r.cpu['broadcaster'] / max(r.sent, 1):.0f} µs of broadcaster CPU each")
        if rates:
            print(f"    received/client   mean {sum(rates) / len(rates):.2f}/s, min "
                  f"{rates[0]:.2f}, p1 {percentile(rates, 0.01):.2f}, median "
                  f"{percentile(rates, 0.5):.2f}, max {rates[-1]:.2f}")
        print(f"    latency ts->recv  p50 {histogram_percentile(r.bins, 0.5):.1f} ms, p99 "
              f"{histogram_percentile(r.bins, 0.99):.1f} ms, p99.9 "
              f"{histogram_percentile(r.bins, 0.999):.1f} ms, max "
              f"{histogram_percentile(r.bins, 1.0):.1f} ms "
              f"({sum(r.bins.values()):,} snapshots)")
        print(f"    memory            VmRSS {r.rss_before_kb / 1024:.1f} MiB before, "
              f"{r.rss_with_kb / 1024:.1f} MiB with {r.connected:,} at the window's end: "
              f"{(r.rss_with_kb - r.rss_before_kb) / max(1, r.connected):.1f} KiB/connection "
              f"(window start {r.rss_start_kb / 1024:.1f}, peak {r.rss_peak_kb / 1024:.1f})")
        print(f"    CPU in window     broadcaster {r.cpu['broadcaster']:.2f}, clients "
              f"{r.cpu['clients']:.2f}, redis {r.cpu['redis']:.2f}, writer+orchestrator "
              f"{r.cpu['orchestrator']:.2f}; machine {r.cpu['machine']:.2f} of "
              f"{os.cpu_count()} cores busy")
        if r.closed or r.still_open != r.connected or r.dropped:
            print(f"    WARNING           closed in window {r.closed or 'none'}, open at end "
                  f"{r.still_open:,} of {r.connected:,}, server drops {r.dropped or 'none'}")
        for note in fanout_notes(r):
            print(f"    limit             {note}")


def latency_notes(args: argparse.Namespace, result: LatencyResult) -> list[str]:
    cpu, cores, d = result.cpu, os.cpu_count() or 1, result.drive
    parts = {"the worker": percentile(result.board_ms, 0.5),
             "notice + throttle + build": percentile(result.build_ms, 0.5),
             "the fan-out": percentile(result.delivery_ms, 0.5)}
    largest = max(parts, key=lambda name: parts[name])
    notes = ["p50s: " + ", ".join(f"{name} {ms:.0f} ms" for name, ms in parts.items())
             + f"; {largest} takes the most (the throttle alone adds 0-100 ms, 50 on average)"]
    for name in ("ingest", "worker", "broadcaster"):
        if cpu[name] >= 0.9:
            notes.append(f"the {name} process was CPU-bound")
    if cpu["machine"] >= 0.9 * cores:
        notes.append(f"the machine was saturated ({cpu['machine']:.2f} of {cores} cores)")
    if d.window_s and d.window_sent / d.window_s < 0.97 * args.rate:
        notes.append("POSTs left late (busy machine): the offered rate fell below --rate")
    return notes


def report_latency(args: argparse.Namespace, result: LatencyResult) -> None:
    d = result.drive
    size = max(args.lanes, DEFAULT_SNAPSHOT_SIZE)
    print(f"\nPart 2  POST {INCREMENT_PATH} 202 -> spectator receipt: ingest + 1 worker + "
          f"1 broadcaster (SNAPSHOT_INTERVAL_MS=100, SNAPSHOT_SIZE={size}), {args.rate:g} "
          f"increments/s paced over {args.lanes} players (one POST in flight each), "
          f"{result.spectators} spectators, {args.latency_warmup:g} s warm-up, Postgres fsync on")
    print(f"  sent              {d.window_sent:,} in the {d.window_s:.1f} s window = "
          f"{d.window_sent / d.window_s:,.0f}/s; statuses {dict(d.statuses)}")
    if d.tokens_short:
        print(f"  WARNING           {d.tokens_short} increments not sent: tokens ran out")
    if d.first_refusal:
        print(f"  WARNING           refusals, the first: {d.first_refusal}")
    print(f"  POST -> 202       p50 {percentile(sorted(d.post_ms), 0.5):.2f} ms, p99 "
          f"{percentile(sorted(d.post_ms), 0.99):.2f} ms; POSTs left after their due time by "
          f"p50 {percentile(sorted(d.lag_ms), 0.5):.2f} ms, p99 "
          f"{percentile(sorted(d.lag_ms), 0.99):.2f} ms")
    for name, values in (("202 -> received", result.receipt_ms),
                         ("  202 -> on board", result.board_ms),
                         ("  board -> built", result.build_ms),
                         ("  built -> recv", result.delivery_ms)):
        print(f"  {name:<17} p50 {percentile(values, 0.5):.1f} ms, p99 "
              f"{percentile(values, 0.99):.1f} ms, max {percentile(values, 1.0):.1f} ms")
    cpu, cores = result.cpu, os.cpu_count() or 1
    others = cpu["machine"] - sum(v for k, v in cpu.items() if k != "machine")
    print(f"  CPU while driving ingest {cpu['ingest']:.2f}, worker {cpu['worker']:.2f}, "
          f"broadcaster {cpu['broadcaster']:.2f}, redis {cpu['redis']:.2f}, driver "
          f"{cpu['driver']:.2f}, spectators {cpu['spectators']:.2f}, everything else "
          f"(Postgres, other work) {others:.2f}; {cpu['machine']:.2f} of {cores} cores busy")
    for note in latency_notes(args, result):
        print(f"  limit             {note}")
    print(f"  matched           {len(result.receipt_ms):,} (increment, spectator) pairs; "
          f"{result.unseen} never seen; {result.snapshots_per_s:.2f} snapshots/s per "
          f"spectator while driving; board polled every {1000 * BOARD_POLL_S:g} ms "
          f"({result.board_samples:,} states seen)")


# --- Command --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = benchmark_parser("loadtest.bench_broadcaster", __doc__)
    parser.add_argument("--quick", action="store_true",
                        help="short windows (3 s fan-out, 1 + 5 s end to end)")
    parser.add_argument("--sizes", default="1000,5000,10000",
                        help="spectator counts, comma-separated (1000,5000,10000)")
    parser.add_argument("--window", type=float, default=10, help="fan-out window, s (10)")
    parser.add_argument("--settle", type=float, default=2, help="after connecting, s (2)")
    parser.add_argument("--client", choices=("raw", "websockets"), default="raw",
                        help="spectator client (raw; see the module docstring)")
    parser.add_argument("--client-procs", type=int, default=4, help="client processes (4)")
    parser.add_argument("--connect-parallel", type=int, default=100,
                        help="handshakes in flight per client process (100)")
    parser.add_argument("--connect-deadline", type=float, default=60,
                        help="give up spectators not connected by then, s (60)")
    parser.add_argument("--writer-rate", type=float, default=50, help="board changes/s (50)")
    parser.add_argument("--rate", type=float, default=1000, help="increments/s, part 2 (1000)")
    parser.add_argument("--lanes", type=int, default=20,
                        help="players sending them, one POST in flight each; part 2's "
                             "SNAPSHOT_SIZE is raised to this so all are always shown (20)")
    parser.add_argument("--spectators", type=int, default=3, help="part 2 spectators (3)")
    parser.add_argument("--latency-duration", type=float, default=15, help="part 2 window (15)")
    parser.add_argument("--latency-warmup", type=float, default=3, help="part 2 warm-up (3)")
    parser.add_argument("--skip-fanout", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.window, args.latency_warmup, args.latency_duration = 3, 1, 5
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes: comma-separated integers")
    if not all(1 <= s <= 50_000 for s in args.sizes) or not 1 <= args.client_procs <= 32:
        parser.error("--sizes must be 1..50000 each and --client-procs 1..32")
    if not 1 <= args.lanes <= 100 or not 1 <= args.spectators <= 50:
        parser.error("--lanes must be 1..100 and --spectators 1..50")
    if not 0 < args.rate <= 20_000 or not 0 < args.writer_rate <= 1000:
        parser.error("--rate must be in (0, 20000] and --writer-rate in (0, 1000]")
    if not 1 <= args.window <= 120 or not 1 <= args.latency_duration <= 120:
        parser.error("--window and --latency-duration must be 1..120 s")
    return args


def run(args: argparse.Namespace) -> int:
    limit = raise_fd_limit()
    if max(args.sizes) + 200 > limit:
        raise BenchError(f"RLIMIT_NOFILE hard limit {limit} is too low for "
                         f"{max(args.sizes):,} connections in one process")
    started = time.perf_counter()
    background = background_cores()
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-bcast-")))
        print("starting Redis and Postgres (fsync on), migrating a fresh database…", flush=True)
        backing = start_backing(stack, root, durable_postgres=True)
        redis_client = stack.enter_context(
            contextlib.closing(redis.Redis.from_url(backing.redis_url)))
        fanout = [] if args.skip_fanout else run_fanout(args, backing, root, redis_client)
        latency = None if args.skip_latency else run_latency(args, backing, root, redis_client)
        print("\n=== Broadcaster benchmark ===")
        print(f"machine     {machine_line()}")
        print(background_line(background))
        print(command_line("loadtest.bench_broadcaster"))
        if fanout:
            report_fanout(args, fanout)
        if latency is not None:
            report_latency(args, latency)
        print(f"\nwhole run {time.perf_counter() - started:.0f} s; stopping the processes "
              "started…", flush=True)
    return 0


main = command("bench_broadcaster", parse_args, run)

if __name__ == "__main__":
    sys.exit(main())
