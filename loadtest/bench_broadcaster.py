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
``loadtest/broadcaster_watchers.py``. Part 1 runs in
``loadtest/broadcaster_fanout.py``, part 2 in ``loadtest/broadcaster_latency.py``.

Only 127.0.0.1 is used: Redis and Postgres are embedded in a temporary folder
(or the loopback servers of ``REDIS_URL`` / ``DATABASE_URL``, with a fresh
database and key prefix, removed afterwards). Every process started is stopped
at the end, on Ctrl-C and SIGTERM too.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import redis

from loadtest import BenchError
from loadtest.broadcaster_fanout import run_fanout
from loadtest.broadcaster_latency import run_latency
from loadtest.broadcaster_report import report_fanout, report_latency
from loadtest.broadcaster_watchers import report_watchers, run_watchers
from loadtest.harness.backing import start_backing
from loadtest.harness.command import benchmark_parser, command
from loadtest.harness.cpu import background_cores
from loadtest.harness.figures import background_line, command_line, machine_line
from loadtest.harness.spectator_client import raise_fd_limit

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
