"""Broadcaster benchmark: spectators held by ONE broadcaster process at 10
snapshots/s, the latency from an increment's 202 to a spectator's screen, and
the personal rank feed at 1,000 watchers.

    python -m loadtest.bench_broadcaster [--quick] [--sizes 1000,5000,10000 ...]

Part 1, fan-out, against its floor. For each size N the same clients first
drive the anchor, ``loadtest/fanout_anchor.py``: a bare uvloop server that
writes one pre-encoded frame of the same shape and size to every socket 10
times a second and does nothing else, the cost floor of this job on this
machine. Then a fresh broadcaster process (``python -m
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
  compete with the server for the same cores, and the report says so;
- ours ÷ the anchor for each figure, against the targets in
  loadtest/broadcaster_report.py (rate ≥ 0.9×, CPU per delivered message ≤
  1.5×, p99 ≤ 2× + 20 ms, every handshake within 30 s, ≤ 16 KiB per connection).

The spectators use a minimal WebSocket client written on ``asyncio.Protocol``
(``--client raw``: the handshake, unmasked server frames, pong and close
answers; it reads ``ts`` without decoding the JSON), because on 2 cores every
client µs is taken from the server: measured at 1,000 spectators, the
``websockets`` library's asyncio client cost about 49 µs of CPU per message
received, this one about 24 µs. ``--client websockets`` runs the library's
client instead, for comparison.

Part 2, end to end. ingest + ONE worker (``arq workers.main.WorkerSettings``)
+ a broadcaster, all as the Procfile runs them, with ``--crowd`` (1,000)
spectators on the board besides the ``--spectators`` whose snapshots are
matched, so the fan-out on the measured path is a real one. Increments go through POST
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

Part 3, the rank feed: ``--watchers`` (1,000) spectators each watching one of
W players (``--watched``, 100 and 1,000), ours against the anchor; see
``loadtest/broadcaster_watchers.py``.

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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
import redis.asyncio as redis_asyncio
import uvloop
from websockets.asyncio.client import connect

from loadtest import BenchError
from loadtest.broadcaster_latency import run_latency
from loadtest.broadcaster_report import (
    DEFAULT_SNAPSHOT_SIZE,
    FanoutPair,
    FanoutResult,
    report_fanout,
    report_latency,
)
from loadtest.broadcaster_watchers import report_watchers, run_watchers
from loadtest.harness.backing import Backing, start_backing
from loadtest.harness.command import benchmark_parser, command
from loadtest.harness.cpu import background_cores, cores, cpu_seconds
from loadtest.harness.figures import (
    background_line,
    command_line,
    machine_line,
)
from loadtest.harness.players import (
    ingest_env,
)
from loadtest.harness.processes import (
    broadcaster_process,
    http_process,
)
from loadtest.harness.spectators import ClientProcess, raise_fd_limit
from scoreboard.board_writes import apply_and_ack
from scoreboard.db import create_pool
from scoreboard.embedded import free_port
from scoreboard.keys import Keys
from scoreboard.lua import register_scripts
from scoreboard.stream_entry import StreamEntry
from workers.persist import PartitionCache, persist_batch

FANOUT_BOARD = "spectated"
BOARD_PLAYERS = DEFAULT_SNAPSHOT_SIZE  # part 1: every player is always on the snapshot
ANCHOR_INTERVAL_S = 0.1  # the anchor's snapshots: 10 a second, as SNAPSHOT_INTERVAL_MS=100


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


async def measure_fanout(args: argparse.Namespace, backing: Backing, size: int, url: str,
                         pid: int, redis_client: Any, *, server: str) -> FanoutResult:
    """Seed the board, take VmRSS after one warm-up connection, connect ``size``
    spectators while the board is still, then change it continuously, let it
    settle and measure one window. The anchor (``server="anchor"``) makes its own
    snapshots: no board, no writer, no metrics."""
    ours = server == "ours"
    ws_url = url.replace("http://", "ws://") + f"/ws?board={FANOUT_BOARD}"
    stop, writer_stats = asyncio.Event(), WriterStats()
    if ours:
        await write_board(backing, FANOUT_BOARD, 1000, stop, WriterStats(),
                          limit=BOARD_PLAYERS)
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
        if ours:
            writer = asyncio.create_task(write_board(backing, FANOUT_BOARD, args.writer_rate,
                                                     stop, writer_stats))
        await asyncio.sleep(args.settle)
        metrics_before = await asyncio.to_thread(scrape_counters, url) if ours else {}
        parties: dict[str, int | list[int]] = {"server": pid,
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
        metrics_after = await asyncio.to_thread(scrape_counters, url) if ours else {}
        if writer is not None and writer.done():
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
        server=server, size=size, processes=len(clients),
        connected=sum(r["connected"] for r in connected),
        connect_failures=dict(failures), connect_s=max(r["seconds"] for r in connected),
        window_s=sum(w["seconds"] for w in windows) / len(windows),
        per_client=sorted(n for w in windows for n in w["per_client"]), bins=dict(bins),
        closed=dict(closed), still_open=sum(w["open"] for w in windows),
        rss_before_kb=rss_before, rss_start_kb=rss_start, rss_with_kb=rss_with,
        rss_peak_kb=max(rss_peak, rss_with),
        built=(delta("scoreboard_snapshots_built_total") / span if ours
               else 1 / ANCHOR_INTERVAL_S),
        dropped={k.split('"')[1]: v for k, v in metrics_after.items()
                 if k.startswith("scoreboard_spectators_dropped_total{") and v},
        cpu=cores(before, after),
        writes_per_s=writer_stats.writes / writer_stats.seconds if writer_stats.seconds else 0)


def run_fanout(args: argparse.Namespace, backing: Backing, root: Path,
               redis_client: Any) -> list[FanoutPair]:
    """For each size, the anchor then ours, with the same clients and settings."""
    pairs = []
    for size in args.sizes:
        measured: dict[str, FanoutResult] = {}
        for server in ("anchor", "ours"):
            print(f"fan-out: {size:,} spectators, {server}…", flush=True)
            log = root / f"{server}-{size}.log"
            with (anchor_process(log) if server == "anchor" else
                  broadcaster_process(ingest_env(backing), log, max_per_ip=size + 100)
                  ) as (url, pid):
                measured[server] = uvloop.run(measure_fanout(
                    args, backing, size, url, pid, redis_client, server=server))
        pairs.append(FanoutPair(ours=measured["ours"], anchor=measured["anchor"]))
    return pairs


@contextlib.contextmanager
def anchor_process(log_path: Path) -> Iterator[tuple[str, int]]:
    """The bare fan-out server (loadtest/fanout_anchor.py) on a free port."""
    port = free_port()
    with http_process([sys.executable, "-m", "loadtest.fanout_anchor", "--port", str(port),
                       "--board", FANOUT_BOARD, "--players", str(BOARD_PLAYERS),
                       "--interval-ms", str(1000 * ANCHOR_INTERVAL_S)], {**os.environ},
                      log_path, port=port, ready_path="/healthz", what="the anchor") as found:
        yield found


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
    parser.add_argument("--spectators", type=int, default=3,
                        help="part 2 spectators whose snapshots are matched (3)")
    parser.add_argument("--crowd", type=int, default=1000,
                        help="part 2 spectators more on the same board, in a client process "
                             "of their own and not matched: the fan-out on the path (1000)")
    parser.add_argument("--latency-duration", type=float, default=15, help="part 2 window (15)")
    parser.add_argument("--latency-warmup", type=float, default=3, help="part 2 warm-up (3)")
    parser.add_argument("--latency-interval-ms", type=int, default=100,
                        help="part 2's SNAPSHOT_INTERVAL_MS: a board that changes all the "
                             "time waits half of it on average for its next snapshot (100)")
    parser.add_argument("--watchers", type=int, default=1000,
                        help="part 3: spectators each watching one player (1000)")
    parser.add_argument("--watched", default="100,1000",
                        help="part 3: numbers of players watched, comma-separated (100,1000)")
    parser.add_argument("--watch-writer-rate", type=float, default=10,
                        help="part 3: times/s every watched player's total is set (10)")
    parser.add_argument("--skip-watchers", action="store_true")
    parser.add_argument("--skip-fanout", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.window, args.latency_warmup, args.latency_duration = 3, 1, 5
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        args.watched = [int(s) for s in args.watched.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes and --watched: comma-separated integers")
    if not 1 <= args.watchers <= 20_000 or not all(1 <= w <= args.watchers
                                                    for w in args.watched):
        parser.error("--watchers must be 1..20000 and each --watched 1..--watchers")
    if not all(1 <= s <= 50_000 for s in args.sizes) or not 1 <= args.client_procs <= 32:
        parser.error("--sizes must be 1..50000 each and --client-procs 1..32")
    if not 1 <= args.lanes <= 100 or not 1 <= args.spectators <= 50 \
            or not 0 <= args.crowd <= 20_000:
        parser.error("--lanes must be 1..100, --spectators 1..50 and --crowd 0..20000")
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
        watchers = [] if args.skip_watchers else run_watchers(args, backing, root,
                                                              redis_client)
        print("\n=== Broadcaster benchmark ===")
        print(f"machine     {machine_line()}")
        print(background_line(background))
        print(command_line("loadtest.bench_broadcaster"))
        if fanout:
            report_fanout(args, fanout)
        if latency is not None:
            report_latency(args, latency)
        if watchers:
            report_watchers(args, watchers)
        print(f"\nwhole run {time.perf_counter() - started:.0f} s; stopping the processes "
              "started…", flush=True)
    return 0


main = command("bench_broadcaster", parse_args, run)

if __name__ == "__main__":
    sys.exit(main())
