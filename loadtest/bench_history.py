"""History benchmark: ``GET /api/scores/top?as_of=...&limit=100`` over millions of
actions, against a plain full GROUP BY over ``actions`` in the same run.

    python -m loadtest.bench_history [--actions 10000000 --players 50000 --days 100 ...]

1. Load: ``--actions`` rows into ``actions`` by COPY (CSV generated here, in
   time order as the worker writes them, spread over ``--days`` days ending an
   hour ago; 90 % on board ``arena``, 10 % on ``other``; points 1 to 10), and
   their players into ``users``; then VACUUM ANALYZE (autovacuum would do it).
   With ``--reuse DIR`` the embedded servers live in DIR and a later run with
   the same ``--actions/--players/--days`` skips the load and the checkpoints.
2. Checkpoints: ``scoreboard history-checkpoints --until END`` (the command an
   operator runs; the worker's hourly job does the same), every
   ``HISTORY_CHECKPOINT_HOURS`` (24, the default) over the whole history.
   Its wall time and the checkpoint tables' size are reported.
3. as_of: ONE ingest process (as the Procfile runs it) answers ``--queries``
   requests at moments spread over the history, each timed from this process
   (one at a time, so each figure is one answer's latency), plus the two
   extremes of the replay: just after a checkpoint and just before the next.
4. Anchor: the same top 100 by a plain ``GROUP BY user_id`` over every action
   of the board up to the moment (no checkpoint), asyncpg from this process,
   for ``--anchors`` of the same moments. Its answers must equal as_of's.

CPU of each party (ingest, the whole Postgres server, this process) is given
for the as_of and the anchor windows. Postgres is embedded without fsync (the
figure is about reads), Redis only serves ingest's readiness.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis

from loadtest.harness.backing import Backing, postmaster_pid, start_backing
from loadtest.harness.command import benchmark_parser, command
from loadtest.harness.cpu import CpuMeter, CpuUse, background_cores
from loadtest.harness.figures import (
    background_line,
    code_line,
    command_line,
    machine_line,
    percentile,
)
from loadtest.harness.processes import PROJECT_DIR, ingest_process

BOARDS = (("arena", 0.9), ("other", 0.1))
CHUNK_ROWS = 100_000
TOP = 100
ANCHOR = """
SELECT user_id, sum(points) AS total, max(created_at) AS reached_at FROM actions
WHERE board = 'arena' AND created_at <= $1
GROUP BY user_id ORDER BY total DESC, reached_at, user_id LIMIT 100
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = benchmark_parser("loadtest.bench_history", __doc__)
    parser.add_argument("--actions", type=int, default=10_000_000)
    parser.add_argument("--players", type=int, default=50_000)
    parser.add_argument("--days", type=int, default=100, help="the history's span")
    parser.add_argument("--queries", type=int, default=20, help="as_of moments, random")
    parser.add_argument("--anchors", type=int, default=3, help="moments also run as GROUP BY")
    parser.add_argument("--checkpoint-hours", type=int, default=24,
                        help="HISTORY_CHECKPOINT_HOURS for the checkpoints (24, the default)")
    parser.add_argument("--reuse", type=Path, help="keep the servers and data in this folder")
    parser.add_argument("--seed", type=int, default=12)
    return parser.parse_args(argv)


def z(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def csv_rows(count: int, players: int, start: datetime, span_ms: int, seed: int
                   ) -> AsyncIterator[bytes]:
    """The actions as CSV, oldest first, in chunks."""
    rng = random.Random(seed)
    start_ms = int(start.timestamp() * 1000)
    step = span_ms / count
    for first in range(0, count, CHUNK_ROWS):
        lines = []
        for index in range(first, min(count, first + CHUNK_ROWS)):
            moment = datetime.fromtimestamp((start_ms + int(index * step)) / 1000, UTC)
            board = "arena" if rng.random() < BOARDS[0][1] else "other"
            lines.append(f"b{index},{moment.isoformat()},p{rng.randrange(players)},{board},"
                         f"{rng.randint(1, 10)},bench\n")
        yield "".join(lines).encode()
        await asyncio.sleep(0)


async def loaded(url: str, args: argparse.Namespace) -> tuple[datetime, datetime] | None:
    """The span of a load done before with the same parameters, if any."""
    connection = await asyncpg.connect(url, timeout=30)
    try:
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS bench_history_load (actions bigint, players int,"
            " days int, first_at timestamptz, last_at timestamptz)")
        row = await connection.fetchrow(
            "SELECT first_at, last_at FROM bench_history_load WHERE actions = $1 AND"
            " players = $2 AND days = $3", args.actions, args.players, args.days)
    finally:
        await connection.close()
    return None if row is None else (row["first_at"], row["last_at"])


async def load(url: str, args: argparse.Namespace) -> tuple[datetime, datetime, float]:
    """Empty the tables, COPY the actions and players; returns the span and seconds."""
    end = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    start = end - timedelta(days=args.days)
    connection = await asyncpg.connect(url, timeout=30)
    try:
        await connection.execute("TRUNCATE actions, users, history_checkpoints,"
                                 " history_checkpoint_totals, bench_history_load CASCADE")
        await connection.execute("DROP TABLE IF EXISTS bench_history_checkpoints")
        for board, _ in BOARDS:
            await connection.execute("INSERT INTO boards (board) VALUES ($1)"
                                     " ON CONFLICT DO NOTHING", board)
        await connection.execute("SELECT ensure_actions_partitions($1, $2)", start.date(),
                                 args.days // 28 + 3)
        began = time.perf_counter()
        await connection.execute(
            "INSERT INTO users (user_id, username) SELECT 'p' || i, 'player ' || i"
            " FROM generate_series(0, $1 - 1) AS i", args.players)
        await connection.copy_to_table(
            "actions", source=csv_rows(args.actions, args.players, start,
                                       args.days * 86_400_000, args.seed),
            columns=["event_id", "created_at", "user_id", "board", "points", "source"],
            format="csv", timeout=3600)
        await connection.execute("VACUUM ANALYZE actions", timeout=3600)
        seconds = time.perf_counter() - began
        last = await connection.fetchval("SELECT max(created_at) FROM actions"
                                         " WHERE created_at > $1", end - timedelta(days=1))
        await connection.execute("INSERT INTO bench_history_load VALUES ($1, $2, $3, $4, $5)",
                                 args.actions, args.players, args.days, start, last)
    finally:
        await connection.close()
    return start, last, seconds


async def checkpoints_of(url: str, hours: int) -> bool:
    """True when the checkpoints there were written every ``hours``; else none are left."""
    connection = await asyncpg.connect(url, timeout=30)
    try:
        await connection.execute("CREATE TABLE IF NOT EXISTS bench_history_checkpoints"
                                 " (hours int)")
        if await connection.fetchval("SELECT hours FROM bench_history_checkpoints") == hours:
            return True
        await connection.execute("TRUNCATE history_checkpoints, history_checkpoint_totals,"
                                 " bench_history_checkpoints")
        return False
    finally:
        await connection.close()


def write_checkpoints(backing: Backing, until: datetime, hours: int, log: Path) -> float:
    """``scoreboard history-checkpoints`` over the whole history; its seconds."""
    began = time.perf_counter()
    with log.open("ab") as out:
        done = subprocess.run([sys.executable, "-m", "scoreboard.cli", "history-checkpoints",
                               "--until", z(until)], cwd=PROJECT_DIR,
                              env={**backing.env(), "HISTORY_CHECKPOINT_HOURS": str(hours),
                                   "HISTORY_CHECKPOINTS_PER_RUN": "1000"},
                              stdout=out, stderr=subprocess.STDOUT, timeout=7200, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"history-checkpoints failed; see {log}")
    seconds = time.perf_counter() - began

    async def record() -> None:
        connection = await asyncpg.connect(backing.database_url, timeout=30)
        try:
            await connection.execute("CREATE TABLE IF NOT EXISTS bench_history_checkpoints"
                                     " (hours int)")
            await connection.execute("DELETE FROM bench_history_checkpoints")
            await connection.execute("INSERT INTO bench_history_checkpoints VALUES ($1)", hours)
        finally:
            await connection.close()
    asyncio.run(record())
    return seconds


async def checkpoint_facts(url: str) -> dict[str, Any]:
    connection = await asyncpg.connect(url, timeout=30)
    try:
        row = await connection.fetchrow(
            "SELECT count(*) AS checkpoints, min(at) AS first, max(at) AS last,"
            " (SELECT count(*) FROM history_checkpoint_totals) AS rows,"
            " pg_total_relation_size('history_checkpoint_totals') AS bytes,"
            " (SELECT sum(pg_total_relation_size(name::regclass)) FROM actions_partitions())"
            " AS actions_bytes FROM history_checkpoints")
        return dict(row)
    finally:
        await connection.close()


def moments(args: argparse.Namespace, first: datetime, last: datetime,
            checkpoints: tuple[datetime, datetime]) -> list[datetime]:
    """Random moments after the first day, and both ends of one replay interval."""
    rng = random.Random(args.seed + 1)
    span_ms = int((last - first).total_seconds() * 1000) - 86_400_000
    chosen = [first + timedelta(days=1, milliseconds=rng.randrange(span_ms))
              for _ in range(args.queries)]
    low = checkpoints[0]
    interval = timedelta(hours=args.checkpoint_hours)
    middle = low + (last - low) / 2 // interval * interval
    return [*chosen, middle + timedelta(milliseconds=1),
            middle + interval - timedelta(milliseconds=1), last]


def measure_as_of(url: str, at_moments: list[datetime]) -> tuple[list[float], dict[str, Any]]:
    latencies, answers = [], {}
    with httpx.Client(base_url=url, timeout=120) as client:
        client.get("/api/scores/top", params={"board": "arena", "as_of": z(at_moments[0]),
                                              "limit": TOP})  # connection, statement cache
        for moment in at_moments:
            began = time.perf_counter()
            response = client.get("/api/scores/top", params={"board": "arena",
                                                             "as_of": z(moment), "limit": TOP})
            latencies.append(time.perf_counter() - began)
            if response.status_code != 200:
                raise RuntimeError(f"as_of {z(moment)}: {response.status_code} {response.text}")
            answers[z(moment)] = [(e["user_id"], e["score"]) for e in response.json()["entries"]]
    return latencies, answers


async def measure_anchor(url: str, at_moments: list[datetime]
                         ) -> tuple[list[float], dict[str, Any]]:
    connection = await asyncpg.connect(url, timeout=30)
    latencies, answers = [], {}
    try:
        for moment in at_moments:
            began = time.perf_counter()
            rows = await connection.fetch(ANCHOR, moment, timeout=600)
            latencies.append(time.perf_counter() - began)
            answers[z(moment)] = [(r["user_id"], r["total"]) for r in rows]
    finally:
        await connection.close()
    return latencies, answers


def cpu_line(use: CpuUse, name: str) -> str:
    return f"  cpu: {use.line(name)}"


def run(args: argparse.Namespace) -> int:
    background = background_cores()
    with contextlib.ExitStack() as stack:
        if args.reuse is not None:
            root = args.reuse.resolve()
            root.mkdir(parents=True, exist_ok=True)
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="bench-history-", ignore_cleanup_errors=True)))
        backing = start_backing(stack, root, database_name="bench_history")
        url = backing.database_url
        span = asyncio.run(loaded(url, args))
        load_s = checkpoint_s = None
        if span is None:
            first, last, load_s = asyncio.run(load(url, args))
        else:
            first, last = span
        if span is None or not asyncio.run(checkpoints_of(url, args.checkpoint_hours)):
            checkpoint_s = write_checkpoints(backing, last, args.checkpoint_hours,
                                             root / "checkpoints.log")
        facts = asyncio.run(checkpoint_facts(url))
        at_moments = moments(args, first, last, (facts["first"], facts["last"]))
        client = redis.Redis.from_url(backing.redis_url)
        stack.callback(client.close)
        meter = CpuMeter(client, asyncio.run(postmaster_pid(url)))
        with ingest_process({**backing.env(), "LOG_LEVEL": "WARNING"},
                            root / "ingest.log") as (ingest_url, ingest_pid):
            before = meter.snapshot(ingest_pid)
            as_of_s, as_of_answers = measure_as_of(ingest_url, at_moments)
            as_of_cpu = meter.between(before, meter.snapshot(ingest_pid))
        anchor_moments = sorted(at_moments[:args.queries], reverse=True)[:args.anchors]
        before = meter.snapshot(os.getpid())
        anchor_s, anchor_answers = asyncio.run(measure_anchor(url, anchor_moments))
        anchor_cpu = meter.between(before, meter.snapshot(os.getpid()))
    same = all(as_of_answers[z(m)] == anchor_answers[z(m)] for m in anchor_moments)
    ordered = sorted(as_of_s)
    print("history benchmark: GET /api/scores/top?as_of=...&limit=100 against a full GROUP BY")
    print(command_line("loadtest.bench_history"))
    print(f"machine     {machine_line()}")
    print(f"code        {code_line(['scoreboard', 'ingest', 'sql'], 'uncommitted changes')}")
    print(background_line(background))
    print(f"data        {args.actions:,} actions ({facts['actions_bytes'] / 2**30:.2f} GiB with"
          f" indexes), {args.players:,} players, {args.days} days from {z(first)}"
          + (f"; loaded by COPY in {load_s:.0f} s" if load_s else "; reused from --reuse"))
    print(f"checkpoints {facts['checkpoints']} (every {args.checkpoint_hours} h),"
          f" {facts['rows']:,} rows,"
          f" {facts['bytes'] / 2**20:.0f} MiB"
          + (f"; written in {checkpoint_s:.0f} s" if checkpoint_s else ""))
    print(f"as_of       {len(as_of_s)} requests, one at a time: p50"
          f" {percentile(ordered, 0.5) * 1000:.0f} ms, p95 {percentile(ordered, 0.95) * 1000:.0f}"
          f" ms, max {ordered[-1] * 1000:.0f} ms")
    print(f"  just after a checkpoint {as_of_s[-3] * 1000:.0f} ms, just before the next"
          f" {as_of_s[-2] * 1000:.0f} ms, at the last action {as_of_s[-1] * 1000:.0f} ms")
    print(cpu_line(as_of_cpu, "ingest"))
    anchor_mean = sum(anchor_s) / len(anchor_s)
    print(f"anchor      full GROUP BY, {len(anchor_s)} moments (the latest of them):"
          f" {', '.join(f'{s * 1000:.0f}' for s in anchor_s)} ms")
    print(cpu_line(anchor_cpu, "this process"))
    as_of_mean = sum(as_of_s) / len(as_of_s)
    print(f"ratio       anchor mean / as_of mean = {anchor_mean / as_of_mean:.1f}x;"
          f" answers equal at the anchor moments: {'yes' if same else 'NO'}")
    return 0 if same else 1


main = command("bench-history", parse_args, run)

if __name__ == "__main__":
    sys.exit(main())
