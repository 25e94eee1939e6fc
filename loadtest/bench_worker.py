"""Worker benchmark: increments persisted/s of ONE worker process draining a
backlog, next to the raw rate of binary COPY of the same rows.

    python -m loadtest.bench_worker [--entries 200000 --batch-max 1000 ...]

The stream is filled with ``--entries`` realistic entries (pipelined XADDs,
fields exactly as ``scoreboard/stream_entry.py`` documents them) BEFORE any
consumer starts, so what is measured is a worker catching up on a backlog:
the figure is its ceiling, not the rate of some load generator. One run gives:

1. Throughput: ONE real worker process (``arq workers.main.WorkerSettings``,
   as the Procfile runs it) drains the stream; acknowledged entries are
   polled with XINFO GROUPS every 20 ms. An entry is acknowledged only after
   its batch committed, so acknowledged/s is persisted/s. Its batch latency
   comes from the worker's own Prometheus histogram, scraped from its metrics
   port at the end; a histogram only says in which bucket p50/p99 fall, and
   this one times persist + acknowledge, not the fraud checks that follow.
2. Latency: the same ``StreamConsumer`` class, built as ``workers.main``
   builds it (fraud checks included), run in this process on a second stream
   of the same entries and a database of its own, with every ``handle()``
   timed and its Postgres transaction, Redis MULTI/XACK and fraud checks
   timed apart. Exact p50/p99 per batch.
1c. The same as 1 with ``WORKER_IN_FLIGHT=1`` (one batch in Postgres at a
   time, the behaviour before two): the gain of batches in flight, measured
   in the same run, on a stream and database of its own (``--no-serial-pass``
   skips it).
3. Baseline: asyncpg binary COPY (``copy_records_to_table``) of the same rows
   (``loadtest.worker_anchor.action_record`` of the same parsed entries) into a
   table made ``LIKE actions INCLUDING ALL`` and partitioned by month the same
   way (same columns, primary key, index, check), one autocommitted COPY per
   batch of ``--batch-max`` rows, i.e. one durable commit per batch as the
   worker does. persisted/s ÷ COPY rows/s says how much of the bare insert
   rate the worker's exactly-once machinery keeps.

Both drained databases are then checked: ``actions`` holds exactly the run's
N rows (distinct event ids), each (board, user) total in ``scores`` and in the
board ZSETs equals the sum of that user's entries, nothing was dead-lettered.

Postgres is embedded with ``durable=True`` (fsync and synchronous commit on)
because a worker commits every batch and a figure without fsync would not
hold in production; Redis is embedded with AOF ``everysec``, as in
production. Both live in a temporary folder and are stopped at the end,
unless ``REDIS_URL`` / ``DATABASE_URL`` name loopback servers, in which case
fresh databases and key prefixes are used there and removed afterwards.
The report gives the CPU each party used in each window, so a reader can tell
what limited each figure.

The entries' time matters: the worker's unusual-time fraud rule does extra
work for every entry accepted inside its night window (``NIGHT_START_HOUR``
to ``NIGHT_END_HOUR`` in ``FRAUD_TIMEZONE``). The report says whether the
entries fell inside it; ``--at`` sets their time to measure the other case.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from datetime import time as dt_time
from pathlib import Path
from typing import Any
from unittest import mock

import redis
import redis.asyncio as redis_asyncio

from loadtest import BenchError
from loadtest.harness.backing import (
    Servers,
    fresh_database,
    fresh_prefixes,
    postmaster_pid,
    server_line,
    settle_redis,
    start_servers,
)
from loadtest.harness.command import benchmark_parser, command
from loadtest.harness.cpu import CpuMeter, CpuUse, background_cores, process_cpu_s
from loadtest.harness.figures import code_fingerprint, code_line
from loadtest.harness.http import histogram_buckets, scrape
from loadtest.harness.processes import PROJECT_DIR, WORKER_COMMAND, stop_process
from loadtest.worker_anchor import run_anchor, run_copy_baseline
from loadtest.worker_report import check_drained, night_line, report
from loadtest.worker_workload import GROUP, Progress, Workload, prefill
from scoreboard.board_writes import apply_and_ack
from scoreboard.db import create_pool
from scoreboard.embedded import free_port
from scoreboard.keys import Keys
from scoreboard.lua import register_scripts
from scoreboard.moderation import Moderation
from scoreboard.settings import Settings, load_settings
from workers.batching import ParsedBatch
from workers.consumer import StreamConsumer
from workers.fraud import FraudChecks
from workers.persist import persist_batch

POLL_S = 0.02
CODE_FOLDERS = ("workers", "scoreboard", "lua", "sql")


# --- Servers: embedded or given, a database and a key prefix per pass ---------------------


@dataclass(frozen=True)
class WorkerBacking(Servers):
    """The servers, and one fresh migrated database and key prefix per pass."""

    run_id: str
    databases: dict[str, str]  # pass name -> database URL

    def database_url(self, name: str) -> str:
        return self.databases[name]

    def prefix(self, name: str) -> str:
        return f"benchw_{self.run_id}_{name}"


def start_backing(stack: contextlib.ExitStack, root: Path, names: Sequence[str]
                  ) -> WorkerBacking:
    """Redis and Postgres (durable: the worker commits every batch; without fsync
    the figure would lie), and one fresh migrated database and key prefix per
    name in ``names``; everything is undone by ``stack``."""
    servers = start_servers(stack, root, durable_postgres=True)
    backing = WorkerBacking(**vars(servers), run_id=secrets.token_hex(4), databases={})
    fresh_prefixes(stack, servers, [backing.prefix(n) for n in names])
    for name in names:
        backing.databases[name] = fresh_database(stack, servers,
                                                 f"bench_{backing.run_id}_{name}")
    return backing


# --- 1. Throughput: the real worker process -----------------------------------------------


@dataclass
class DrainResult:
    entries: int
    first_ack_s: float  # after start, when the poll first saw acknowledged entries
    first_acked: int
    done_s: float  # after start, when the poll saw everything acknowledged
    cpu: CpuUse

    @property
    def steady_rate(self) -> float:
        """Entries/s between the first and the last observed acknowledgement
        (excludes process start-up and the first batch)."""
        return (self.entries - self.first_acked) / max(1e-9, self.done_s - self.first_ack_s)

    @property
    def overall_rate(self) -> float:
        return self.entries / self.done_s


@dataclass
class WorkerPass:
    drain: DrainResult  # its CPU line measures the first worker process
    pids: list[int]
    histogram: list[tuple[float, float]]  # (le, cumulative count) of the first worker
    persisted_counter: float
    worker_cores: list[float]  # each worker process's cores over the drain


def scrape_worker(port: int) -> tuple[list[tuple[float, float]], float]:
    """The worker's batch-latency histogram buckets and persisted counter, from
    its own metrics endpoint (what Prometheus would scrape)."""
    samples = scrape(f"http://127.0.0.1:{port}/metrics", timeout_s=5)
    persisted = sum(value for name, _, value in samples
                    if name == "scoreboard_worker_persisted_total")
    return histogram_buckets(samples, "scoreboard_worker_batch_seconds"), persisted


def worker_env(backing: WorkerBacking, name: str, *, batch_max: int, in_flight: int,
               metrics_port: int = 0, number: int = 0) -> dict[str, str]:
    """A worker's environment: the run's servers, database and prefix ``name``;
    everything else at the defaults a deployment gets (a second worker differs
    only by its consumer name and metrics port)."""
    return {**os.environ, "REDIS_URL": backing.redis_url,
            "DATABASE_URL": backing.database_url(name), "KEY_PREFIX": backing.prefix(name),
            "CONSUMER_GROUP": GROUP,
            "CONSUMER_NAME": f"bench-{name}" + (f"-{number}" if number else ""),
            "WORKER_BATCH_MAX": str(batch_max), "WORKER_IN_FLIGHT": str(in_flight),
            "CHAOS_EXIT_AFTER_COMMIT": "0",
            "LOG_LEVEL": "WARNING", "WORKER_METRICS_PORT": str(metrics_port),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                     os.environ.get("PATH", "")])}


def run_worker_pass(backing: WorkerBacking, workload: Workload, ids: Sequence[str],
                    client: Any, meter: CpuMeter, *, batch_max: int, in_flight: int,
                    timeout_s: float, root: Path, name: str = "worker",
                    count: int = 1) -> WorkerPass:
    """Start ``count`` ``arq workers.main.WorkerSettings`` processes in one group and
    poll until the group has acknowledged every entry; always stops them."""
    keys, metrics_port = Keys(backing.prefix(name)), free_port()
    progress, log_path = Progress(ids), root / f"{name}.log"
    processes = []
    with log_path.open("wb") as log:
        for number in range(count):
            env = worker_env(backing, name, batch_max=batch_max, in_flight=in_flight,
                             number=number,
                             metrics_port=metrics_port if number == 0 else 0)
            processes.append(subprocess.Popen(WORKER_COMMAND, cwd=PROJECT_DIR, env=env,
                                              stdout=log, stderr=subprocess.STDOUT))
    process = processes[0]
    try:
        before = meter.snapshot(process.pid)
        before_each = [process_cpu_s(p.pid) for p in processes]
        first: tuple[float, int] | None = None
        while True:
            acknowledged = progress.acknowledged(client.xinfo_groups(keys.stream))
            now = time.perf_counter() - before.at
            if acknowledged and first is None:
                first = (now, acknowledged)
            if acknowledged >= len(workload):
                after = meter.snapshot(process.pid)  # before SIGTERM: the drain only
                after_each = [process_cpu_s(p.pid) for p in processes]
                break
            if any(p.poll() is not None for p in processes):
                raise BenchError(f"a worker exited with {process.returncode}; the log:\n"
                                 f"{log_path.read_text()[-3000:]}")
            if now > timeout_s:
                raise BenchError(f"the worker acknowledged {acknowledged:,} of "
                                 f"{len(workload):,} entries in {timeout_s:g} s; pass a "
                                 "smaller --entries or a larger --timeout")
            time.sleep(POLL_S)
        time.sleep(0.5)  # the last batch's histogram observation follows its XACK
        histogram, persisted = scrape_worker(metrics_port)
    finally:
        for each in processes:
            stop_process(each, timeout_s=40)  # arq's on_shutdown lets the batch finish
    assert first is not None
    drain = DrainResult(entries=len(workload), first_ack_s=first[0], first_acked=first[1],
                        done_s=after.at - before.at, cpu=meter.between(before, after))
    return WorkerPass(drain=drain, pids=[p.pid for p in processes], histogram=histogram,
                      persisted_counter=persisted,
                      worker_cores=[(b - a) / drain.done_s
                                    for a, b in zip(before_each, after_each, strict=True)])


# --- 2. Latency: the same consumer class in this process -----------------------------------


@dataclass
class BatchTimings:
    batch_s: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    postgres_s: list[float] = field(default_factory=list)
    # (start, end) of each persist_batch: the gaps between them are the time the
    # one serial step waits on everything else (the pipelining's check)
    postgres_spans: list[tuple[float, float]] = field(default_factory=list)
    redis_s: list[float] = field(default_factory=list)
    # Redis's own time of each lua/apply_batch.lua call (SLOWLOG: the server's clock,
    # the script alone, without the round trip or the worker's event loop)
    script_s: list[float] = field(default_factory=list)
    fraud_s: list[float] = field(default_factory=list)


@dataclass
class LatencyPass:
    drain: DrainResult
    timings: BatchTimings


class TimedConsumer(StreamConsumer):
    """The product's consumer with each batch timed: persist in one transaction,
    the wait for the batch read before it, the fraud checks that ride along,
    then the one Redis call that sets the boards and acknowledges (the read
    and parse of the next batch, and the other batch in flight, run meanwhile)."""

    def __init__(self, *, timings: BatchTimings, **options: Any) -> None:
        super().__init__(**options)
        self.timings = timings

    async def _handle_parsed(self, parsed: ParsedBatch,
                             previous: asyncio.Task[None] | None = None) -> None:
        started = time.perf_counter()
        await super()._handle_parsed(parsed, previous)
        self.timings.batch_s.append(time.perf_counter() - started)
        self.timings.batch_sizes.append(len(parsed.entries) + len(parsed.malformed))


def timed(function: Callable[..., Awaitable[Any]], into: list[float],
          spans: list[tuple[float, float]] | None = None) -> Callable[..., Awaitable[Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await function(*args, **kwargs)
        finally:
            ended = time.perf_counter()
            into.append(ended - started)
            if spans is not None:
                spans.append((started, ended))
    return wrapper


SLOWLOG_FROM_US = 500  # every apply_batch.lua call of a batch takes longer
SLOWLOG_LENGTH = 100_000


async def slowlog_start(client: Any) -> dict[str, str]:
    """Log every command slower than ``SLOWLOG_FROM_US`` from now on; returns the
    settings to put back (:func:`slowlog_script_s`)."""
    saved: dict[str, str] = {}
    for name in ("slowlog-log-slower-than", "slowlog-max-len"):
        saved.update(await client.config_get(name))
    await client.config_set("slowlog-log-slower-than", SLOWLOG_FROM_US)
    await client.config_set("slowlog-max-len", SLOWLOG_LENGTH)
    await client.slowlog_reset()
    return saved


async def slowlog_script_s(client: Any, saved: dict[str, str], sha: str) -> list[float]:
    """Redis's own duration of each logged EVALSHA of ``sha``, in seconds; puts the
    slow log's settings back."""
    logged = await client.slowlog_get(SLOWLOG_LENGTH)
    for name, value in saved.items():
        await client.config_set(name, value)
    prefix = f"evalsha {sha}".encode()  # redis-py gives the command as bytes
    return sorted(entry["duration"] / 1e6 for entry in logged
                  if bytes(entry["command"]).lower().startswith(prefix))


async def run_latency_pass(backing: WorkerBacking, workload: Workload, ids: Sequence[str],
                           meter: CpuMeter, settings: Settings, *,
                           timeout_s: float) -> LatencyPass:
    """Drain the second stream with a TimedConsumer built as ``workers.main``
    builds it: same Redis client options, pool size, settings, fraud checks.
    (Not started here: arq's cron jobs and the metrics refresh task.)"""
    keys = Keys(backing.prefix("inproc"))
    client = redis_asyncio.Redis.from_url(backing.redis_url, decode_responses=True,
                                          socket_connect_timeout=2,
                                          socket_timeout=settings.worker_block_ms / 1000 + 5,
                                          health_check_interval=30)
    pool = await create_pool(backing.database_url("inproc"), min_size=1, max_size=5)
    progress = Progress(ids)
    timings = BatchTimings()
    fraud = FraudChecks(Moderation(redis=client, pool=pool, scripts=register_scripts(client),
                                   keys=keys), settings, consumer="bench-inproc")
    consumer = TimedConsumer(timings=timings, redis=client, pool=pool, keys=keys, group=GROUP,
                             name="bench-inproc", batch_max=settings.worker_batch_max,
                             block_ms=settings.worker_block_ms,
                             claim_idle_ms=settings.claim_idle_ms,
                             max_deliveries=settings.max_deliveries,
                             in_flight=settings.worker_in_flight,
                             after_batch=timed(fraud.check_batch, timings.fraud_s),
                             every_second=fraud.record_decisions)
    slowlog = await slowlog_start(client)
    # The Postgres and Redis halves of each batch, timed where the consumer calls them.
    with mock.patch("workers.consumer.persist_batch", timed(persist_batch, timings.postgres_s,
                                                                   timings.postgres_spans)), \
            mock.patch("workers.consumer.apply_and_ack", timed(apply_and_ack, timings.redis_s)):
        before = meter.snapshot(os.getpid())
        task = asyncio.create_task(consumer.run())
        first: tuple[float, int] | None = None
        try:
            while True:
                acknowledged = progress.acknowledged(await client.xinfo_groups(keys.stream))
                now = time.perf_counter() - before.at
                if acknowledged and first is None:
                    first = (now, acknowledged)
                if acknowledged >= len(workload):
                    after = meter.snapshot(os.getpid())
                    break
                if task.done():
                    task.result()
                    raise BenchError("the in-process consumer stopped before draining")
                if now > timeout_s:
                    raise BenchError(f"the in-process consumer acknowledged {acknowledged:,} "
                                     f"of {len(workload):,} entries in {timeout_s:g} s")
                await asyncio.sleep(POLL_S)
        finally:
            consumer.stop()
            await asyncio.wait_for(task, 30)
            timings.script_s = await slowlog_script_s(client, slowlog,
                                                      consumer.scripts.apply_batch.script.sha)
            await pool.close()
            await client.aclose()
    assert first is not None
    return LatencyPass(drain=DrainResult(entries=len(workload), first_ack_s=first[0],
                                         first_acked=first[1], done_s=after.at - before.at,
                                         cpu=meter.between(before, after)),
                       timings=timings)


# --- The run --------------------------------------------------------------------------------


def parse_time(text: str) -> int:
    """ISO 8601 date and time, or a time of day (today's date), to ms since the
    epoch; without an offset, UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        try:
            moment = datetime.combine(datetime.now(UTC).date(), dt_time.fromisoformat(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = benchmark_parser("loadtest.bench_worker", __doc__)
    parser.add_argument("--entries", type=int, default=200_000,
                        help="stream entries drained by each pass (200000)")
    parser.add_argument("--batch-max", type=int, default=1000,
                        help="WORKER_BATCH_MAX, and the COPY batch size (1000)")
    parser.add_argument("--in-flight", type=int, default=2,
                        help="WORKER_IN_FLIGHT of the workers measured (2); a "
                        "pass with 1 runs beside them unless --no-serial-pass")
    parser.add_argument("--no-serial-pass", action="store_true",
                        help="skip the pass of one worker with WORKER_IN_FLIGHT=1")
    parser.add_argument("--users", type=int, default=10_000, help="distinct players (10000)")
    parser.add_argument("--timeout", type=float, default=150,
                        help="seconds each drain may take before the run is abandoned (150)")
    parser.add_argument("--seed", type=int, default=1, help="workload seed (1)")
    parser.add_argument("--at", type=parse_time, default=None,
                        help="the entries' acceptance time: ISO 8601, or HH:MM for today "
                        "(UTC unless an offset is given; default: now)")
    args = parser.parse_args(argv)
    if not 1_000 <= args.entries <= 2_000_000 or not 1 <= args.batch_max <= 10_000:
        parser.error("--entries must be 1000..2000000 and --batch-max 1..10000")
    if not 1 <= args.in_flight <= 16:
        parser.error("--in-flight must be 1..16")
    if not 1 <= args.users <= 1_000_000 or not 1 <= args.timeout <= 1800:
        parser.error("--users must be 1..1000000 and --timeout 1..1800 s")
    return args


def run(args: argparse.Namespace) -> int:
    code = code_line(CODE_FOLDERS, "uncommitted changes in workers/, scoreboard/, sql/ or lua/")
    fingerprint = code_fingerprint(CODE_FOLDERS)
    background = background_cores()
    at_ms = args.at if args.at is not None else int(time.time() * 1000)
    workload = Workload.generate(entries=args.entries, users=args.users, seed=args.seed,
                                 at_ms=at_ms)
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-worker-")))
        print("starting Redis and Postgres (durable), migrating two fresh databases…",
              flush=True)
        backing = start_backing(stack, root, ["worker", "inproc", "workers2", "serial",
                                              "anchor_first", "anchor"])
        client = stack.enter_context(contextlib.closing(
            redis.Redis.from_url(backing.redis_url, decode_responses=True)))
        servers = server_line(client, backing.admin_database_url)
        meter = CpuMeter(client, asyncio.run(postmaster_pid(backing.admin_database_url)))
        settings = load_settings(worker_env(backing, "inproc", batch_max=args.batch_max,
                                            in_flight=args.in_flight))

        # The anchor runs first and last: the worker passes are divided by the mean of
        # the two, so a machine that speeds up or slows down over the run weighs on
        # both sides of the ratio (this 2-core machine moved it by a fifth in minutes).
        print(f"filling the worker's stream with {args.entries:,} entries…", flush=True)
        ids, prefill_s = prefill(client, Keys(backing.prefix("worker")), workload)
        settle_redis(client, rewrite=backing.redis_embedded)
        print("anchor (first of two): COPY + insert + totals upsert per batch…", flush=True)
        anchor_first = asyncio.run(run_anchor(backing.database_url("anchor_first"), workload,
                                              ids, meter, batch_max=args.batch_max))
        print("draining it with one worker process…", flush=True)
        worker = run_worker_pass(backing, workload, ids, client, meter,
                                 batch_max=args.batch_max, in_flight=args.in_flight,
                                 timeout_s=args.timeout, root=root)
        worker_problems = asyncio.run(check_drained(
            backing.database_url("worker"), backing.redis_url, Keys(backing.prefix("worker")),
            workload))

        print("filling a stream for two workers with the same entries…", flush=True)
        ids2, _ = prefill(client, Keys(backing.prefix("workers2")), workload)
        settle_redis(client, rewrite=backing.redis_embedded)
        print("draining it with two worker processes in one group…", flush=True)
        workers2 = run_worker_pass(backing, workload, ids2, client, meter,
                                   batch_max=args.batch_max, in_flight=args.in_flight,
                                   timeout_s=args.timeout, root=root, name="workers2", count=2)
        worker_problems += [f"two workers: {p}" for p in asyncio.run(check_drained(
            backing.database_url("workers2"), backing.redis_url,
            Keys(backing.prefix("workers2")), workload))]

        serial = None
        if not args.no_serial_pass:
            print("filling a stream for one worker with one batch in flight…", flush=True)
            ids_serial, _ = prefill(client, Keys(backing.prefix("serial")), workload)
            settle_redis(client, rewrite=backing.redis_embedded)
            print("draining it with one worker process, WORKER_IN_FLIGHT=1…", flush=True)
            serial = run_worker_pass(backing, workload, ids_serial, client, meter,
                                     batch_max=args.batch_max, in_flight=1,
                                     timeout_s=args.timeout, root=root, name="serial")
            worker_problems += [f"one in flight: {p}" for p in asyncio.run(check_drained(
                backing.database_url("serial"), backing.redis_url,
                Keys(backing.prefix("serial")), workload))]

        print("filling a second stream with the same entries…", flush=True)
        inproc_ids, _ = prefill(client, Keys(backing.prefix("inproc")), workload)
        settle_redis(client, rewrite=backing.redis_embedded)
        print("draining it with the consumer in this process…", flush=True)
        latency = asyncio.run(run_latency_pass(backing, workload, inproc_ids, meter, settings,
                                               timeout_s=args.timeout))
        latency_problems = asyncio.run(check_drained(
            backing.database_url("inproc"), backing.redis_url, Keys(backing.prefix("inproc")),
            workload))

        print("COPY baseline…", flush=True)
        baseline = asyncio.run(run_copy_baseline(backing.database_url("worker"), workload, ids,
                                                 meter, batch_max=args.batch_max))
        print("anchor (second of two): COPY + insert + totals upsert per batch…", flush=True)
        anchor = asyncio.run(run_anchor(backing.database_url("anchor"), workload, ids, meter,
                                        batch_max=args.batch_max))
        ok = report(args, background=background, servers=servers, backing=backing,
                    code=(code, code_fingerprint(CODE_FOLDERS) == fingerprint),
                    night=night_line(settings, workload), prefill_s=prefill_s,
                    worker=worker, worker_problems=worker_problems, latency=latency,
                    latency_problems=latency_problems, baseline=baseline,
                    workers2=workers2, anchors=(anchor_first, anchor), serial=serial)
        print("stopping the servers started…", flush=True)
    return 0 if ok else 1


main = command("bench_worker", parse_args, run)

if __name__ == "__main__":
    sys.exit(main())
