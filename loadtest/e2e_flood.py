"""The end-to-end benchmark's flood part: game-backend batches at full speed
against ONE ingest process, with 1 and then 2 workers, and ingest's
backpressure (``MAX_BACKLOG``) keeping the backlog bounded.

    python -m loadtest.bench_e2e --flood [--flood-duration 60 --max-backlog 50000 ...]

Per pass (``--flood-workers``, 1 then 2 by default), on a fresh database and
key prefix of the run's Redis and Postgres (embedded, fsync on, as the rest of
``bench_e2e``): ONE ingest (uvicorn, as the Procfile runs it) with
``MAX_BACKLOG`` set low enough that the workers cannot keep up and the
refusals start within the run, N workers, and ``loadtest.flood_driver`` in a
process of its own posting ``--flood-batch``-increment batches on
``--flood-connections`` connections, closed loop, for ``--flood-duration``
seconds, ignoring ``Retry-After`` (the worst client).

Every 0.25 s two figures of the consumer group's backlog (entries not
acknowledged: pending + not yet delivered):

- ingest's measure, ``ingest.backlog.measure_backlog``, the very function
  ingest decides with. On Redis 6.2 (no ``lag`` in XINFO) it is exact up to
  ``COUNT_CAP`` undelivered entries and past that an upper bound (``XLEN -
  pending``, which counts acknowledged entries the minutely trim has not
  removed yet): the report shows how far that bound is from the truth;
- the exact backlog, at no cost during the run: each sample reads the
  group's pending count and last-delivered id and the server's TIME in one
  MULTI; afterwards the stream ids of the run's ``actions`` rows (every
  accepted entry, as the check verifies) say how many entries existed at
  that TIME after the last-delivered id.

After the flood the sampling goes on until ingest's measure is 0 (exact
then: nothing pending, nothing undelivered): the drain time is from the
flood's end to that sample. CPU per party (ingest, each worker, the driver, redis-server, the
whole Postgres server, this process, the machine) over the flood and over
the drain. Then the check: per player, the rows in ``actions`` of the run's
source, their distinct event ids, their points, the ``counted_events`` rows
and the total in ``scores`` equal exactly what the batches answered 202 held.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import json
import os
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis
import redis.asyncio as redis_asyncio

from ingest.backlog import measure_backlog
from loadtest import BenchError
from loadtest.flood_driver import BUCKET_S, batch_increments
from loadtest.harness.backing import Backing, fresh_database, fresh_prefixes, settle_redis
from loadtest.harness.cpu import machine_busy_s, postgres_cpu_s, process_cpu_s, process_table
from loadtest.harness.figures import background_line, code_line, command_line, machine_line
from loadtest.harness.players import HIGH_RATE, expect, ingest_env
from loadtest.harness.processes import PROJECT_DIR, ingest_process, stop_process, worker_process
from scoreboard.accounts import create_backend_account
from scoreboard.keys import Keys
from scoreboard.settings import load_settings

DRIVER_START_S = 2.0  # the driver's imports and connections, before its first request
BACKLOG_CHECK_MS = 200  # ingest's default, stated in the report


def add_flood_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("flood (with --flood)")
    group.add_argument("--flood", action="store_true",
                       help="run the flood part instead of the closed-loop comparison")
    group.add_argument("--flood-duration", type=float, default=60,
                       help="seconds of batches at full speed per pass (60)")
    group.add_argument("--max-backlog", type=int, default=50_000,
                       help="ingest's MAX_BACKLOG for the flood (50000)")
    group.add_argument("--flood-workers", default="1,2",
                       help="worker processes per pass, comma-separated (1,2)")
    group.add_argument("--flood-connections", type=int, default=8,
                       help="the driver's connections (8)")
    group.add_argument("--flood-batch", type=int, default=1000,
                       help="increments per batch (1000, the maximum)")
    group.add_argument("--flood-users", type=int, default=10_000,
                       help="distinct players the increments go to (10000)")
    group.add_argument("--table-every", type=float, default=2.0,
                       help="seconds per row of the lag table (2)")


def check_flood_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    try:
        args.worker_counts = [int(n) for n in args.flood_workers.split(",")]
    except ValueError:
        parser.error("--flood-workers must be integers separated by commas, e.g. 1,2")
    if not all(1 <= n <= 8 for n in args.worker_counts):
        parser.error("--flood-workers: 1..8 workers per pass")
    if not 1 <= args.flood_duration <= 600 or not 100 <= args.max_backlog <= 10_000_000:
        parser.error("--flood-duration must be 1..600 s and --max-backlog 100..10000000")
    if not 1 <= args.flood_connections <= 256 or not 1 <= args.flood_batch <= 1000:
        parser.error("--flood-connections must be 1..256 and --flood-batch 1..1000")
    if not 1 <= args.flood_users <= 1_000_000 or not BUCKET_S <= args.table_every <= 60:
        parser.error("--flood-users must be 1..1000000 and --table-every 0.25..60")


# --- CPU: cumulative seconds per party, readable after a process has exited -----------------


class CpuClock:
    """CPU seconds per party so far; a process that has exited keeps its last reading."""

    def __init__(self, parties: dict[str, Sequence[int]], client: Any, postmaster: int | None
                 ) -> None:
        self.parties, self.client, self.postmaster = parties, client, postmaster
        self.last: dict[str, float] = {}

    def read(self) -> dict[str, float]:
        reading = {"at": time.perf_counter(), "machine": machine_busy_s(),
                   "this benchmark": time.process_time()}
        for name, pids in self.parties.items():
            try:
                reading[name] = sum(process_cpu_s(pid) for pid in pids)
            except (FileNotFoundError, ProcessLookupError):
                reading[name] = self.last.get(name, 0.0)
        info = self.client.info("cpu")
        reading["redis-server"] = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        postgres = postgres_cpu_s(process_table(), self.postmaster)
        if postgres is not None:
            reading["postgres"] = postgres
        self.last = reading
        return reading


def cores_line(before: dict[str, float], after: dict[str, float]) -> str:
    span = max(1e-9, after["at"] - before["at"])
    parts = [f"{name} {(after[name] - before[name]) / span:.2f}"
             for name in before if name not in ("at", "machine") and name in after]
    machine = (after["machine"] - before["machine"]) / span
    return ", ".join(parts) + f" cores; machine {machine:.2f} of {os.cpu_count()} busy"


# --- One pass ---------------------------------------------------------------------------------


@dataclasses.dataclass
class FloodPass:
    workers: int
    samples: list[Sample]
    exact: list[int]  # the exact backlog of each sample
    result: dict[str, Any]
    flood_cpu: str
    drain_cpu: str
    drain_s: float | None
    checks: list[tuple[bool, str]]


def backend_login(url: str, database_url: str) -> tuple[str, str]:
    """A game backend's account, created as the CLI does: (its user id, Authorization)."""
    name = f"flood-{secrets.token_hex(4)}"
    user_id, password = asyncio.run(create_backend_account(
        database_url, name, scrypt_n=1024, scrypt_r=8, scrypt_p=1))
    body = expect(httpx.post(f"{url}/api/auth/login", timeout=30,
                             json={"username": name, "password": password}), 200)
    return user_id, f"Bearer {body['access_token']}"


@dataclasses.dataclass(frozen=True)
class Sample:
    at: float  # seconds since the flood's start
    measured: int  # ingest's measure_backlog
    pending: int
    last_delivered: int  # stream ids as ms * SEQ_SPAN + seq, comparable as integers
    now: int  # the server's TIME as a stream id: every entry added so far is at most this


SEQ_SPAN = 1 << 20  # more entries than this in one ms of the stream is not possible here


def stream_int(stream_id: str | bytes) -> int:
    ms, _, seq = (stream_id.decode() if isinstance(stream_id, bytes) else stream_id).partition("-")
    return int(ms) * SEQ_SPAN + int(seq or 0)


async def group_now(client: Any, keys: Keys, group: str) -> tuple[int, int, int]:
    """(pending, last-delivered id, server time as an id), in one MULTI."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.xinfo_groups(keys.stream)
        pipe.time()
        groups, (seconds, micros) = await pipe.execute()
    found = next(g for g in groups if g["name"] in (group, group.encode()))
    now = (int(seconds) * 1000 + int(micros) // 1000) * SEQ_SPAN + SEQ_SPAN - 1
    return int(found["pending"]), stream_int(found["last-delivered-id"]), now


def exact_backlogs(samples: list[Sample], ids: list[int]) -> list[int]:
    """Per sample: pending + the entries added by then after the last-delivered id
    (``ids``: every accepted entry's stream id, sorted)."""
    return [s.pending + max(0, bisect.bisect_right(ids, s.now)
                            - bisect.bisect_right(ids, s.last_delivered)) for s in samples]


async def sample_backlog(redis_url: str, keys: Keys, group: str, start_at: float,
                         end_at: float, drain_timeout: float, clock: CpuClock,
                         readings: list[dict[str, float]]) -> tuple[list[Sample], float | None]:
    """Samples every BUCKET_S from ``start_at`` until ingest's measure is 0 after
    ``end_at`` (or the drain timeout); CPU readings at the flood's start, its end and
    the drain's end."""
    client = redis_asyncio.Redis.from_url(redis_url)
    samples: list[Sample] = []
    try:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        readings.append(clock.read())
        k = 0
        while True:
            k += 1
            await asyncio.sleep(max(0.0, start_at + k * BUCKET_S - time.monotonic()))
            now = time.monotonic()
            pending, last_delivered, server_now = await group_now(client, keys, group)
            backlog = await measure_backlog(client, keys.stream, group)
            samples.append(Sample(now - start_at, backlog, pending, last_delivered, server_now))
            if now >= end_at and len(readings) == 1:
                readings.append(clock.read())
            if now >= end_at + BUCKET_S and backlog == 0:
                readings.append(clock.read())
                return samples, now - end_at
            if now > end_at + drain_timeout:
                readings.append(clock.read())
                return samples, None
    finally:
        await client.aclose()


async def stream_ids(database_url: str, source: str) -> list[int]:
    """The stream ids of the run's ``actions`` rows, sorted, as :func:`stream_int`."""
    connection = await asyncpg.connect(database_url, timeout=30)
    try:
        ids: list[int] | None = await connection.fetchval(
            f"""SELECT array_agg(split_part(stream_id, '-', 1)::bigint * {SEQ_SPAN}
                                 + split_part(stream_id, '-', 2)::bigint)
                FROM actions WHERE source = $1""", source)
    finally:
        await connection.close()
    return sorted(ids or [])


async def persisted_by_user(database_url: str, source: str) -> dict[str, tuple[int, ...]]:
    """Per player: (actions rows, distinct event ids, points, counted_events rows, score)."""
    connection = await asyncpg.connect(database_url, timeout=30)
    try:
        rows = await connection.fetch(
            """SELECT a.user_id, a.n, a.distinct_ids, a.points, coalesce(c.n, 0) AS counted,
                      coalesce(s.score, 0) AS score
               FROM (SELECT user_id, count(*) AS n, count(DISTINCT event_id) AS distinct_ids,
                            sum(points) AS points
                     FROM actions WHERE source = $1 GROUP BY user_id) a
               LEFT JOIN (SELECT a2.user_id, count(*) AS n FROM counted_events ce
                          JOIN actions a2 USING (source, event_id)
                          WHERE ce.source = $1 GROUP BY a2.user_id) c USING (user_id)
               LEFT JOIN scores s ON s.board = 'global' AND s.user_id = a.user_id""", source)
        counted_total: int = await connection.fetchval(
            "SELECT count(*) FROM counted_events WHERE source = $1", source)
    finally:
        await connection.close()
    found: dict[str, tuple[int, ...]] = {
        r["user_id"]: (r["n"], r["distinct_ids"], r["points"], r["counted"], r["score"])
        for r in rows}
    found["*counted_events"] = (counted_total,)
    return found


def expected_by_user(result: dict[str, Any], job: dict[str, Any]
                     ) -> tuple[dict[str, tuple[int, ...]], int]:
    """What the 202-answered batches held, in :func:`persisted_by_user`'s shape."""
    counts: Counter[str] = Counter()
    points: Counter[str] = Counter()
    for connection, seq in result["accepted"]:
        for item in batch_increments(job["run"], connection, seq, job["batch"], job["users"]):
            counts[item["user_id"]] += 1
            points[item["user_id"]] += item["points"]
    expected: dict[str, tuple[int, ...]] = {
        u: (n, n, points[u], n, points[u]) for u, n in counts.items()}
    return expected, sum(counts.values())


def check_exactly_once(database_url: str, source: str, result: dict[str, Any],
                       job: dict[str, Any]) -> list[tuple[bool, str]]:
    expected, total = expected_by_user(result, job)
    found = asyncio.run(persisted_by_user(database_url, source))
    counted = found.pop("*counted_events")[0]
    wrong = [u for u in expected.keys() | found.keys() if expected.get(u) != found.get(u)]
    example = "" if not wrong else f" (e.g. {wrong[0]}: expected {expected.get(wrong[0])}, " \
                                   f"found {found.get(wrong[0])})"
    return [
        (not result["partial"], f"every 202 accepted its whole batch "
                                f"({len(result['partial'])} partly accepted)"),
        (not wrong, f"{total:,} increments answered 202: per player, actions rows = distinct "
                    f"event ids = counted_events rows = accepted, points and scores total = "
                    f"accepted points ({len(wrong)} players differ{example})"),
        (counted == total, f"counted_events rows of the run's source: {counted:,} "
                           f"(accepted {total:,})"),
    ]


def flood_pass(backing: Backing, client: Any, postmaster: int | None, root: Path,
               args: argparse.Namespace, workers: int, stack: contextlib.ExitStack) -> FloodPass:
    name = f"w{workers}_{secrets.token_hex(2)}"
    fresh_prefixes(stack, backing, [f"{backing.key_prefix}_{name}"])
    database = f"{backing.database_name}_{name}"
    fresh_database(stack, backing, database)
    ours = dataclasses.replace(backing, database_name=database,
                               key_prefix=f"{backing.key_prefix}_{name}")
    env = {**ingest_env(ours), "BACKEND_RATE": HIGH_RATE, "MAX_BACKLOG": str(args.max_backlog),
           "BACKLOG_CHECK_MS": str(BACKLOG_CHECK_MS)}
    keys, group = Keys(ours.key_prefix), load_settings(env).consumer_group
    with contextlib.ExitStack() as processes:
        url, ingest_pid = processes.enter_context(ingest_process(env, root / f"ingest-{name}.log"))
        worker_pids = [processes.enter_context(worker_process(
            env, root / f"worker-{name}-{i}.log", client, keys, name=f"flood-worker-{i}"))
            for i in range(workers)]
        user_id, authorization = backend_login(url, ours.database_url)
        settle_redis(client, rewrite=backing.redis_embedded)
        start_at = time.monotonic() + DRIVER_START_S
        job = {"url": url, "authorization": authorization, "run": f"fl{name}",
               "batch": args.flood_batch, "users": args.flood_users,
               "connections": args.flood_connections, "start_at": start_at,
               "end_at": start_at + args.flood_duration}
        job_path, result_path = root / f"flood-{name}.json", root / f"flood-{name}-result.json"
        job_path.write_text(json.dumps(job))
        print(f"pass: {workers} worker(s), flooding for {args.flood_duration:g} s…", flush=True)
        driver = subprocess.Popen([sys.executable, "-m", "loadtest.flood_driver",
                                   str(job_path), str(result_path)], cwd=PROJECT_DIR)
        try:
            clock = CpuClock({"ingest": [ingest_pid], **{f"worker {i + 1}": [pid] for i, pid
                                                          in enumerate(worker_pids)},
                              "driver": [driver.pid]}, client, postmaster)
            readings: list[dict[str, float]] = []
            samples, drain_s = asyncio.run(sample_backlog(
                ours.redis_url, keys, group, start_at, job["end_at"], args.drain_timeout,
                clock, readings))
            driver.wait(timeout=60)
        finally:
            stop_process(driver)
        if driver.returncode != 0:
            raise BenchError(f"the flood driver failed with status {driver.returncode}")
        result = json.loads(result_path.read_text())
        checks = [(drain_s is not None, f"the backlog drained within {args.drain_timeout:g} s")]
        exact: list[int] = []
        if drain_s is not None:
            source = f"backend:{user_id}"
            checks += check_exactly_once(ours.database_url, source, result, job)
            exact = exact_backlogs(samples, asyncio.run(stream_ids(ours.database_url, source)))
    return FloodPass(workers, samples, exact, result, cores_line(readings[0], readings[1]),
                     cores_line(readings[1], readings[2]), drain_s, checks)


# --- The report -------------------------------------------------------------------------------


def lag_table(run: FloodPass, args: argparse.Namespace) -> list[str]:
    """Rows of ``--table-every`` s: the exact backlog at the row's end and its peak within,
    ingest's measure at the row's end, increments answered 202 per second, requests
    answered 503 overloaded per second."""
    per_row = max(1, round(args.table_every / BUCKET_S))
    buckets = {int(k): v for k, v in run.result["buckets"].items()}
    exact = run.exact or [-1] * len(run.samples)
    lines = ["      t (s)    backlog  (peak in row)  ingest's measure   accepted/s   "
             "503 overloaded/s   other/s"]
    for first in range(0, len(run.samples), per_row):
        rows = run.samples[first:first + per_row]
        span = len(rows) * BUCKET_S
        answers: Counter[str] = Counter()
        for b in range(first, first + len(rows)):
            answers.update(buckets.get(b, {}))
        other = sum(v for k, v in answers.items() if k not in ("202", "503"))
        lines.append(f"  {rows[-1].at:9.2f}  {exact[first + len(rows) - 1]:9,}  "
                     f"({max(exact[first:first + len(rows)]):9,})  {rows[-1].measured:16,}"
                     f"   {answers['202'] * args.flood_batch / span:10,.0f}"
                     f"   {answers['503'] / span:16,.0f}   {other / span:7,.0f}")
    return lines


def pass_lines(run: FloodPass, args: argparse.Namespace) -> list[str]:
    counts = run.result["counts"]
    accepted = counts.get("202", 0) * args.flood_batch
    peak = max(run.exact, default=-1)
    peak_measured = max((s.measured for s in run.samples), default=0)
    first_503 = next((int(k) * BUCKET_S for k, v in run.result["buckets"].items()
                      if v.get("503")), None)
    end = args.flood_duration
    refusing = sum(1 for s in run.samples if s.at <= end and s.measured > args.max_backlog)
    truly_over = sum(1 for s, e in zip(run.samples, run.exact, strict=False)
                     if s.at <= end and e > args.max_backlog)
    # From the first sample after the flood's end after which the exact backlog stays 0
    # (batches still in flight at the end are accepted a moment later).
    drained_at = next((s.at for i, s in enumerate(run.samples) if s.at >= end
                       and run.exact and not any(run.exact[i:])), None)
    drain = ("not drained" if run.drain_s is None else
             f"{run.drain_s:.2f} s from the flood's end to ingest's measure at 0"
             + ("" if drained_at is None else
                f"; exact backlog 0 {drained_at - end:.2f} s after the end"))
    lines = [f"--- {run.workers} worker(s) ---",
             f"accepted    {accepted:,} increments in {end:g} s "
             f"({accepted / end:,.0f}/s); {counts.get('503', 0):,} requests "
             f"answered 503 overloaded"
             + ("" if first_503 is None else f", the first at t={first_503:.2f} s")
             + f"; other answers: {({k: v for k, v in counts.items() if k not in ('202', '503')})}",
             f"backlog     peak {peak:,} against MAX_BACKLOG {args.max_backlog:,} "
             f"({peak / args.max_backlog:.2f}x); ingest's measure peaked at "
             f"{peak_measured:,}",
             f"over max    ingest's measure over MAX_BACKLOG in {refusing} of the flood's "
             f"samples, the exact backlog in {truly_over}",
             f"drain       {drain}",
             f"CPU flood   {run.flood_cpu}",
             f"CPU drain   {run.drain_cpu}",
             *lag_table(run, args)]
    lines += [f"check       {'ok    ' if ok else 'FAILED'} {text}" for ok, text in run.checks]
    return lines


def run_flood(args: argparse.Namespace, *, background: float, servers: str, backing: Backing,
              client: redis.Redis, postmaster: int | None, root: Path,
              stack: contextlib.ExitStack) -> int:
    """Every pass of ``--flood-workers``, then the report; 1 when a check failed."""
    runs = [flood_pass(backing, client, postmaster, root, args, n, stack)
            for n in args.worker_counts]
    lines = ["", "=== End-to-end benchmark: flood ===", f"machine     {machine_line()}",
             "code        " + code_line(("ingest", "workers", "scoreboard", "sql", "lua"),
                                        "uncommitted changes in the product's code"),
             command_line("loadtest.bench_e2e"), background_line(background),
             f"servers     {servers}",
             f"flood       ONE ingest process, MAX_BACKLOG {args.max_backlog:,} (measured "
             f"every {BACKLOG_CHECK_MS} ms), {args.flood_connections} connections posting "
             f"{args.flood_batch}-increment batches closed loop for {args.flood_duration:g} s, "
             f"Retry-After ignored; backlog sampled every {BUCKET_S} s"]
    for run in runs:
        lines += pass_lines(run, args)
    print("\n".join(lines))
    return 0 if all(ok for run in runs for ok, _ in run.checks) else 1
