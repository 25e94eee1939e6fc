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
3. Baseline: asyncpg binary COPY (``copy_records_to_table``) of the same rows
   (``workers.batching.staging_record`` of the same parsed entries) into a
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
import hashlib
import math
import os
import platform
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from datetime import time as dt_time
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import asyncpg
import redis
import redis.asyncio as redis_asyncio
from prometheus_client.parser import text_string_to_metric_families

from scoreboard.cli import with_database
from scoreboard.db import create_pool
from scoreboard.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from scoreboard.fraud_rules import is_night
from scoreboard.keys import Keys
from scoreboard.lua import register_scripts
from scoreboard.migrate import ensure_database, migrate
from scoreboard.ranking import totals_by_user
from scoreboard.settings import Settings, load_settings
from scoreboard.stream_entry import StreamEntry, parse_entry
from workers.batching import STAGING_COLUMNS, months_of, staging_record, stream_id_key
from workers.consumer import StreamConsumer
from workers.fraud import FraudChecks
from workers.leaderboard import apply_and_ack
from workers.moderation import Moderation
from workers.persist import persist_batch

PROJECT_DIR = Path(__file__).resolve().parent.parent
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
GROUP = "persisters"
BOARDS = ("global", "weekly")
POLL_S = 0.02
BASELINE_TABLE = "actions_copy_baseline"
# staging_record() without the username: exactly the columns of ``actions``.
ACTION_COLUMNS = tuple(c for c in STAGING_COLUMNS if c != "username")
USERNAME_AT = STAGING_COLUMNS.index("username")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """The benchmark cannot produce a trustworthy figure; the message says why."""


# --- The workload: N entries, generated once, reproducible from the seed ----------------


@dataclass
class Workload:
    """Who scores what, as compact columns; ``fields(i)`` builds entry ``i``.

    Kept as columns rather than N dicts so that 10^6 entries stay cheap to
    hold, and the same entries can be XADDed twice and COPYed once.
    """

    run_id: str
    ts_ms: int
    user_of: list[int]
    board_of: list[int]
    points_of: list[int]

    @classmethod
    def generate(cls, *, entries: int, users: int, seed: int, at_ms: int) -> Workload:
        rng = random.Random(seed)
        return cls(run_id=secrets.token_hex(4), ts_ms=at_ms,
                   user_of=[rng.randrange(users) for _ in range(entries)],
                   board_of=[rng.randrange(len(BOARDS)) for _ in range(entries)],
                   points_of=[rng.randint(1, 10) for _ in range(entries)])

    def __len__(self) -> int:
        return len(self.user_of)

    def fields(self, index: int) -> dict[str, str]:
        """Entry ``index`` as a game backend's batch would have put it in the stream:
        ten entries per ms (the backlog of a busy ingest), one request per 100."""
        user = self.user_of[index]
        return {"event_id": f"bench-{self.run_id}-{index}", "user_id": f"player-{user:05d}",
                "username": f"Player {user}", "board": BOARDS[self.board_of[index]],
                "points": str(self.points_of[index]), "source": "backend:bench-worker",
                "ts": str(self.ts_ms + index // 10), "ip": "127.0.0.1",
                "request_id": f"req-{self.run_id}-{index // 100}"}

    def expected_totals(self) -> dict[tuple[str, str], int]:
        totals: dict[tuple[str, str], int] = {}
        for user, board, points in zip(self.user_of, self.board_of, self.points_of,
                                       strict=True):
            key = (BOARDS[board], f"player-{user:05d}")
            totals[key] = totals.get(key, 0) + points
        return totals

    def entries(self, ids: Sequence[str], start: int, stop: int) -> list[StreamEntry]:
        """Parsed entries ``start..stop``, exactly as the consumer parses them."""
        return [parse_entry(ids[i], self.fields(i)) for i in range(start, stop)]


def prefill(client: Any, keys: Keys, workload: Workload, chunk: int = 1000) -> tuple[
        list[str], float]:
    """XADD every entry (pipelines of ``chunk``) and create the group at id 0,
    as the worker would; returns the stream ids and the seconds it took."""
    ids: list[str] = []
    started = time.perf_counter()
    for start in range(0, len(workload), chunk):
        with client.pipeline(transaction=False) as pipe:
            for index in range(start, min(len(workload), start + chunk)):
                pipe.xadd(keys.stream, workload.fields(index))
            ids.extend(pipe.execute())
    elapsed = time.perf_counter() - started
    client.xgroup_create(keys.stream, GROUP, id="0")
    return ids, elapsed


class Progress:
    """Entries the group has acknowledged, from XINFO GROUPS alone.

    Redis 6.2 (the embedded one) has no ``entries-read``, so the delivered
    count is the rank of ``last-delivered-id`` among the ids we added;
    acknowledged = delivered - pending. (Dead-lettered entries are
    acknowledged too; the check at the end requires there are none.)
    """

    def __init__(self, ids: Sequence[str]) -> None:
        self.sorted_ids = [stream_id_key(i) for i in ids]

    def acknowledged(self, groups: Sequence[dict[str, Any]]) -> int:
        group = next((g for g in groups if g["name"] == GROUP), None)
        if group is None:
            return 0
        delivered = bisect_right(self.sorted_ids, stream_id_key(group["last-delivered-id"]))
        return delivered - int(group["pending"])


# --- CPU accounting from /proc and INFO ---------------------------------------------------


@dataclass(frozen=True)
class ProcessTimes:
    name: str
    ppid: int
    own_s: float  # user + system
    reaped_s: float  # of its children it has waited for


def process_table() -> dict[int, ProcessTimes]:
    """Every process's CPU times from /proc (kernel threads included)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        name, rest = text[text.index("(") + 1:text.rindex(")")], text.rsplit(")", 1)[1].split()
        # rest[0] is field 3 (state); field k is rest[k - 3]
        table[int(entry.name)] = ProcessTimes(
            name=name, ppid=int(rest[1]), own_s=(int(rest[11]) + int(rest[12])) / CLOCK_TICKS,
            reaped_s=(int(rest[13]) + int(rest[14])) / CLOCK_TICKS)
    return table


def postgres_cpu_s(table: dict[int, ProcessTimes], postmaster: int | None) -> float | None:
    """CPU of the postmaster, its live children, and (through its reaped time)
    the children that have exited: the whole server's CPU, monotonic."""
    if postmaster is None or postmaster not in table:
        return None
    parent = table[postmaster]
    return parent.own_s + parent.reaped_s + sum(
        p.own_s for p in table.values() if p.ppid == postmaster)


def machine_times_s() -> tuple[float, float]:
    """(busy, iowait) CPU-seconds of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS, iowait / CLOCK_TICKS


@dataclass(frozen=True)
class CpuSnapshot:
    at: float
    machine_s: float
    iowait_s: float
    pid: int  # the worker process, or this benchmark process
    processes: dict[int, ProcessTimes]
    redis_s: float
    postgres_s: float | None
    redis_forks: int


@dataclass(frozen=True)
class CpuUse:
    """Cores used per party over a window (CPU-seconds / wall seconds)."""

    window_s: float
    machine: float
    iowait: float
    process: float
    redis: float
    postgres: float | None
    redis_forked: bool
    top_others: list[tuple[str, float]]  # the busiest other processes, by name

    def line(self, process_name: str) -> str:
        pg = "n/a" if self.postgres is None else f"{self.postgres:.2f}"
        return (f"{process_name} {self.process:.2f}, postgres {pg}, redis-server "
                f"{self.redis:.2f} cores; machine {self.machine:.2f} of {os.cpu_count()} "
                f"cores busy, iowait {self.iowait:.2f}")


class CpuMeter:
    """Snapshots of who used the CPU: the measured process, Postgres (whole
    server), redis-server (its INFO), the machine, and everything else."""

    def __init__(self, redis_client: Any, postmaster: int | None) -> None:
        self.redis_client = redis_client
        self.postmaster = postmaster
        self.redis_pid = int(redis_client.info("server").get("process_id", 0))

    def snapshot(self, pid: int) -> CpuSnapshot:
        info = self.redis_client.info()
        machine, iowait = machine_times_s()
        table = process_table()
        return CpuSnapshot(at=time.perf_counter(), machine_s=machine, iowait_s=iowait, pid=pid,
                           processes=table,
                           redis_s=float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
                           postgres_s=postgres_cpu_s(table, self.postmaster),
                           redis_forks=int(info.get("total_forks", 0)))

    def between(self, before: CpuSnapshot, after: CpuSnapshot) -> CpuUse:
        window = max(1e-9, after.at - before.at)
        postgres = None if before.postgres_s is None or after.postgres_s is None else (
            (after.postgres_s - before.postgres_s) / window)

        def own(snapshot: CpuSnapshot, pid: int) -> float:
            times = snapshot.processes.get(pid)
            return 0.0 if times is None else times.own_s

        parties = {after.pid, self.redis_pid, self.postmaster}
        others = []
        for pid, times in after.processes.items():
            if pid in parties or times.ppid == self.postmaster:
                continue
            earlier = before.processes.get(pid)
            # Own time only: a reaped child's whole life would land in one window.
            used = times.own_s - (earlier.own_s if earlier else 0.0)
            if used / window >= 0.02:
                name = "this benchmark" if pid == os.getpid() else f"{times.name}[{pid}]"
                others.append((name, used / window))
        return CpuUse(window_s=window, machine=(after.machine_s - before.machine_s) / window,
                      iowait=(after.iowait_s - before.iowait_s) / window,
                      process=(own(after, after.pid) - own(before, before.pid)) / window,
                      redis=(after.redis_s - before.redis_s) / window, postgres=postgres,
                      redis_forked=after.redis_forks != before.redis_forks,
                      top_others=sorted(others, key=lambda o: -o[1])[:4])


def background_cores(seconds: float = 2.0) -> float:
    """Cores busy before we start anything: a figure from a shared machine must
    say when it was not alone (another benchmark may be running)."""
    before, started = machine_times_s()[0], time.perf_counter()
    time.sleep(seconds)
    return (machine_times_s()[0] - before) / (time.perf_counter() - started)


def wait_for_no_rewrite(client: Any, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        persistence = client.info("persistence")
        if not (int(persistence.get("aof_rewrite_in_progress", 0))
                or int(persistence.get("aof_rewrite_scheduled", 0))):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"Redis was still rewriting its AOF after {timeout_s:g} s")
        time.sleep(0.1)


def settle_redis(client: Any, *, ours: bool) -> None:
    """Keep AOF rewrites (a fork) out of the measured window.

    A prefill of 10^5 entries grows the AOF past the automatic rewrite
    threshold, so a rewrite would start a moment later, inside the drain. On a
    Redis we started we rewrite it now and wait; on a given one we only wait.
    The drain's own writes (XACK, board scripts) can double the AOF again and
    trigger a rewrite inside the window, as they would in production; the
    report says so when a fork happened in a window.
    """
    time.sleep(0.2)  # serverCron (10 Hz) schedules an automatic rewrite
    wait_for_no_rewrite(client)
    if ours and client.config_get("appendonly")["appendonly"] == "yes":
        client.bgrewriteaof()
        time.sleep(0.2)
        wait_for_no_rewrite(client)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (nan when empty)."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(1, math.ceil(fraction * len(sorted_values))) - 1]


# --- Servers: embedded or given, fresh names either way -----------------------------------


@dataclass(frozen=True)
class Backing:
    redis_url: str
    admin_database_url: str
    run_id: str
    embedded: str  # what was started here, for the report

    def database_url(self, name: str) -> str:
        return with_database(self.admin_database_url, f"bench_{self.run_id}_{name}")

    def prefix(self, name: str) -> str:
        return f"benchw_{self.run_id}_{name}"


def require_loopback(name: str, url: str) -> None:
    """A benchmark floods its target: refuse anything that is not this machine."""
    if urlsplit(url).hostname not in LOOPBACK_HOSTS:
        raise BenchError(f"{name} must point at 127.0.0.1 (the benchmark floods it): {url!r}")


async def drop_database(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(admin_url, timeout=30)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def drop_database_now(admin_url: str, name: str) -> None:
    """Remove the run's database from a server that outlives the run."""
    asyncio.run(drop_database(admin_url, name))


def delete_keys(redis_url: str, prefixes: Sequence[str]) -> None:
    """Remove the run's keys from a Redis that outlives the run."""
    client = redis.Redis.from_url(redis_url)
    try:
        for prefix in prefixes:
            found = list(client.scan_iter(match="{" + prefix + "}*", count=10_000))
            for start in range(0, len(found), 1000):
                client.unlink(*found[start:start + 1000])
    finally:
        client.close()


def start_backing(stack: contextlib.ExitStack, root: Path, names: Sequence[str]) -> Backing:
    """Redis and Postgres (embedded under ``root`` unless given), and one fresh
    migrated database per name in ``names``; everything is undone by ``stack``."""
    redis_url = os.environ.get("REDIS_URL") or None
    admin_url = os.environ.get("DATABASE_URL") or None
    embedded = []
    if redis_url is None:
        embedded_redis = EmbeddedRedis(root / "redis")  # AOF everysec, as in production
        redis_url = embedded_redis.start()
        stack.callback(embedded_redis.stop)
        embedded.append("redis")
    else:
        require_loopback("REDIS_URL", redis_url)
    if admin_url is None:
        # Durable: the worker commits every batch; without fsync the figure would lie.
        embedded_pg = EmbeddedPostgres(root / "postgres", durable=True)
        admin_url = embedded_pg.start()
        stack.callback(embedded_pg.stop)
        embedded.append("postgres")
    else:
        require_loopback("DATABASE_URL", admin_url)
    backing = Backing(redis_url=redis_url, admin_database_url=admin_url,
                      run_id=secrets.token_hex(4), embedded=" and ".join(embedded) or "none")
    if "redis" not in embedded:
        stack.callback(delete_keys, redis_url, [backing.prefix(n) for n in names])
    for name in names:
        database = f"bench_{backing.run_id}_{name}"
        asyncio.run(ensure_database(admin_url, database))
        if "postgres" not in embedded:
            stack.callback(drop_database_now, admin_url, database)
        asyncio.run(migrate(backing.database_url(name)))
    return backing


async def postmaster_pid(database_url: str) -> int | None:
    """The server's postmaster pid, when its data folder is readable from here."""
    connection = await asyncpg.connect(database_url, timeout=30)
    try:
        data_dir = await connection.fetchval("SHOW data_directory")
    finally:
        await connection.close()
    with contextlib.suppress(OSError, ValueError):
        return int((Path(data_dir) / "postmaster.pid").read_text().split()[0])
    return None


def server_line(client: Any, admin_url: str) -> str:
    async def settings() -> tuple[str, str, str]:
        connection = await asyncpg.connect(admin_url, timeout=30)
        try:
            return (await connection.fetchval("SHOW server_version"),
                    await connection.fetchval("SHOW fsync"),
                    await connection.fetchval("SHOW synchronous_commit"))
        finally:
            await connection.close()

    version, fsync, sync_commit = asyncio.run(settings())
    redis_version = client.info()["redis_version"]
    aof = client.config_get("appendonly")["appendonly"]
    aof_fsync = client.config_get("appendfsync")["appendfsync"]
    return (f"redis {redis_version} (appendonly {aof}, appendfsync {aof_fsync}), postgres "
            f"{version.split()[0]} (fsync {fsync}, synchronous_commit {sync_commit})")


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
    drain: DrainResult
    pid: int
    histogram: list[tuple[float, float]]  # (le, cumulative count) from the worker's files
    persisted_counter: float


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (arq runs on_shutdown: the consumer finishes its batch), SIGKILL after 40 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def scrape_worker(port: int) -> tuple[list[tuple[float, float]], float]:
    """The worker's batch-latency histogram buckets and persisted counter, from
    its own metrics endpoint (what Prometheus would scrape)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    buckets: list[tuple[float, float]] = []
    persisted = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "scoreboard_worker_batch_seconds_bucket":
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name == "scoreboard_worker_persisted_total":
                persisted += sample.value
    return sorted(buckets), persisted


def bucket_of(buckets: Sequence[tuple[float, float]], fraction: float) -> str:
    """Where a quantile falls, as a bucket range: all a histogram can honestly say."""
    if not buckets or buckets[-1][1] == 0:
        return "n/a"
    wanted, lower = fraction * buckets[-1][1], 0.0
    for le, cumulative in buckets:
        if cumulative >= wanted:
            return f"({lower * 1000:g}, {le * 1000:g}] ms" if le != math.inf else \
                f"> {lower * 1000:g} ms"
        lower = le
    return "n/a"


def worker_env(backing: Backing, name: str, *, batch_max: int,
               metrics_port: int = 0) -> dict[str, str]:
    """A worker's environment: the run's servers, database and prefix ``name``;
    everything else at the defaults a deployment gets."""
    return {**os.environ, "REDIS_URL": backing.redis_url,
            "DATABASE_URL": backing.database_url(name), "KEY_PREFIX": backing.prefix(name),
            "CONSUMER_GROUP": GROUP, "CONSUMER_NAME": f"bench-{name}",
            "WORKER_BATCH_MAX": str(batch_max), "CHAOS_EXIT_AFTER_COMMIT": "0",
            "LOG_LEVEL": "WARNING", "WORKER_METRICS_PORT": str(metrics_port),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                     os.environ.get("PATH", "")])}


def run_worker_pass(backing: Backing, workload: Workload, ids: Sequence[str],
                    client: Any, meter: CpuMeter, *, batch_max: int, timeout_s: float,
                    root: Path) -> WorkerPass:
    """Start ONE ``arq workers.main.WorkerSettings`` and poll until the group
    has acknowledged every entry; always stops the process."""
    keys, metrics_port = Keys(backing.prefix("worker")), free_port()
    env = worker_env(backing, "worker", batch_max=batch_max, metrics_port=metrics_port)
    progress, log_path = Progress(ids), root / "worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "arq", "workers.main.WorkerSettings"],
                                   cwd=PROJECT_DIR, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        before = meter.snapshot(process.pid)
        first: tuple[float, int] | None = None
        while True:
            acknowledged = progress.acknowledged(client.xinfo_groups(keys.stream))
            now = time.perf_counter() - before.at
            if acknowledged and first is None:
                first = (now, acknowledged)
            if acknowledged >= len(workload):
                after = meter.snapshot(process.pid)  # before SIGTERM: the drain only
                break
            if process.poll() is not None:
                raise BenchError(f"the worker exited with {process.returncode}; its log:\n"
                                 f"{log_path.read_text()[-3000:]}")
            if now > timeout_s:
                raise BenchError(f"the worker acknowledged {acknowledged:,} of "
                                 f"{len(workload):,} entries in {timeout_s:g} s; pass a "
                                 "smaller --entries or a larger --timeout")
            time.sleep(POLL_S)
        time.sleep(0.5)  # the last batch's histogram observation follows its XACK
        histogram, persisted = scrape_worker(metrics_port)
    finally:
        stop_process(process)
    assert first is not None
    drain = DrainResult(entries=len(workload), first_ack_s=first[0], first_acked=first[1],
                        done_s=after.at - before.at, cpu=meter.between(before, after))
    return WorkerPass(drain=drain, pid=process.pid, histogram=histogram,
                      persisted_counter=persisted)


# --- 2. Latency: the same consumer class in this process -----------------------------------


@dataclass
class BatchTimings:
    batch_s: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    postgres_s: list[float] = field(default_factory=list)
    redis_s: list[float] = field(default_factory=list)
    fraud_s: list[float] = field(default_factory=list)


@dataclass
class LatencyPass:
    drain: DrainResult
    timings: BatchTimings


class TimedConsumer(StreamConsumer):
    """The product's consumer with each ``handle()`` timed: one batch, i.e.
    parse, persist in one transaction, the MULTI that sets the boards and
    acknowledges, then the fraud checks that ride along."""

    def __init__(self, *, timings: BatchTimings, **options: Any) -> None:
        super().__init__(**options)
        self.timings = timings

    async def handle(self, raw: Sequence[tuple[str, dict[str, str] | None]]) -> None:
        started = time.perf_counter()
        await super().handle(raw)
        self.timings.batch_s.append(time.perf_counter() - started)
        self.timings.batch_sizes.append(len(raw))


def timed(function: Callable[..., Awaitable[Any]], into: list[float]) -> Callable[
        ..., Awaitable[Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await function(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - started)
    return wrapper


async def run_latency_pass(backing: Backing, workload: Workload, ids: Sequence[str],
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
                             after_batch=timed(fraud.check_batch, timings.fraud_s),
                             every_second=fraud.record_decisions)
    # The Postgres and Redis halves of each batch, timed where the consumer calls them.
    with mock.patch("workers.consumer.persist_batch", timed(persist_batch, timings.postgres_s)), \
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
            await pool.close()
            await client.aclose()
    assert first is not None
    return LatencyPass(drain=DrainResult(entries=len(workload), first_ack_s=first[0],
                                         first_acked=first[1], done_s=after.at - before.at,
                                         cpu=meter.between(before, after)),
                       timings=timings)


# --- 3. Baseline: binary COPY of the same rows ----------------------------------------------


@dataclass
class CopyResult:
    rows: int
    copy_s: list[float]
    cpu: CpuUse
    indexes: list[str]  # of the baseline table, to show they are those of ``actions``

    @property
    def rate(self) -> float:
        return self.rows / sum(self.copy_s)


def month_partitions(months: set[date]) -> list[str]:
    statements = []
    for month in sorted(months):
        following = date(month.year + month.month // 12, month.month % 12 + 1, 1)
        statements.append(f"CREATE TABLE {BASELINE_TABLE}_{month:%Y%m} PARTITION OF "
                          f"{BASELINE_TABLE} FOR VALUES FROM ('{month}') TO ('{following}')")
    return statements


async def run_copy_baseline(database_url: str, workload: Workload, ids: Sequence[str],
                            meter: CpuMeter, *, batch_max: int) -> CopyResult:
    """COPY the rows in batches of ``batch_max``, each its own autocommitted
    statement. The rows are built before the timed loop, so the figure (and
    the CPU window) is COPY alone: the floor of what any insert path pays."""
    connection = await asyncpg.connect(database_url, timeout=30)
    try:
        await connection.execute(f"CREATE TABLE {BASELINE_TABLE} (LIKE actions INCLUDING ALL)"
                                 " PARTITION BY RANGE (created_at)")
        months = months_of(workload.entries(ids, 0, 1)) | months_of(
            workload.entries(ids, len(workload) - 1, len(workload)))
        for statement in month_partitions(months):
            await connection.execute(statement)
        batches = [[record[:USERNAME_AT] + record[USERNAME_AT + 1:] for record in (
            staging_record(e) for e in workload.entries(
                ids, start, min(len(workload), start + batch_max)))]
            for start in range(0, len(workload), batch_max)]
        copy_s: list[float] = []
        before = meter.snapshot(os.getpid())
        for records in batches:
            started = time.perf_counter()
            await connection.copy_records_to_table(BASELINE_TABLE, records=records,
                                                   columns=ACTION_COLUMNS, timeout=60)
            copy_s.append(time.perf_counter() - started)
        after = meter.snapshot(os.getpid())
        rows = await connection.fetchval(f"SELECT count(*) FROM {BASELINE_TABLE}")
        indexes = [r["def"].split(" USING ", 1)[1] for r in await connection.fetch(
            "SELECT pg_get_indexdef(indexrelid) AS def FROM pg_index"
            " WHERE indrelid = $1::regclass ORDER BY indexrelid", BASELINE_TABLE)]
    finally:
        await connection.close()
    if rows != len(workload):
        raise BenchError(f"the baseline table holds {rows:,} rows, not {len(workload):,}")
    return CopyResult(rows=rows, copy_s=copy_s, cpu=meter.between(before, after),
                      indexes=indexes)


# --- Checks ---------------------------------------------------------------------------------


def differences(found: dict[tuple[str, str], int], expected: dict[tuple[str, str], int]) -> str:
    """How many (board, user) totals differ, and the first few, to debug from."""
    wrong = sorted(k for k in found.keys() | expected.keys() if found.get(k) != expected.get(k))
    sample = ", ".join(f"{b}/{u} {found.get((b, u))} != {expected.get((b, u))}"
                       for b, u in wrong[:5])
    return f"{len(wrong):,} of {len(expected):,} (board, user) totals ({sample})"


async def check_drained(database_url: str, redis_url: str, keys: Keys,
                        workload: Workload) -> list[str]:
    """What is wrong with the drained database and boards (empty when all is right)."""
    expected = workload.expected_totals()
    problems: list[str] = []
    connection = await asyncpg.connect(database_url, timeout=30)
    try:
        rows, distinct = (await connection.fetchrow(
            "SELECT count(*), count(DISTINCT event_id) FROM actions WHERE event_id LIKE $1",
            f"bench-{workload.run_id}-%")).values()
        others = await connection.fetchval(
            "SELECT count(*) FROM actions WHERE event_id NOT LIKE $1", f"bench-{workload.run_id}-%")
        action_sums = {(r["board"], r["user_id"]): r["s"] for r in await connection.fetch(
            "SELECT board, user_id, sum(points) AS s FROM actions GROUP BY board, user_id")}
        scores = {(r["board"], r["user_id"]): r["score"] for r in await connection.fetch(
            "SELECT board, user_id, score FROM scores")}
    finally:
        await connection.close()
    if (rows, distinct, others) != (len(workload), len(workload), 0):
        problems.append(f"actions holds {rows:,} rows of the run ({distinct:,} distinct event "
                        f"ids) and {others:,} others; expected {len(workload):,}")
    if action_sums != expected:
        problems.append("per-user sums of actions differ from the entries' sums")
    if scores != expected:
        problems.append(f"scores differ from the entries' sums: {differences(scores, expected)}")
    client = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        boards = {}
        for board in BOARDS:  # decoded as the product encodes a board (scoreboard.ranking)
            members = await client.zrange(keys.board(board), 0, -1, withscores=True)
            boards.update({(board, user): total for user, total in
                           totals_by_user(members).items()})
        dead = await client.xlen(keys.dead_letters)
    finally:
        await client.aclose()
    if boards != expected:
        problems.append("the board ZSETs differ from the entries' sums: "
                        + differences(boards, expected))
    if dead:
        problems.append(f"{dead} entries were dead-lettered")
    return problems


# --- Report ---------------------------------------------------------------------------------


def code_fingerprint() -> str:
    """A digest of the product's sources: other people commit to this tree while
    a run lasts, and a run must say when the code changed under it."""
    digest = hashlib.sha256()
    for folder in ("workers", "scoreboard", "lua", "sql"):
        for path in sorted((PROJECT_DIR / folder).rglob("*")):
            if path.suffix in (".py", ".lua", ".sql") and path.is_file():
                digest.update(path.relative_to(PROJECT_DIR).as_posix().encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def code_line() -> str:
    """The commit measured, and whether the worker's code had uncommitted changes."""
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=PROJECT_DIR, capture_output=True,
                                text=True, check=False, timeout=10)
        return result.stdout.strip() if result.returncode == 0 else "?"

    dirty = git("status", "--porcelain", "--", "workers", "scoreboard", "sql", "lua")
    return f"commit {git('rev-parse', '--short', 'HEAD')}" + (
        " + uncommitted changes in workers/, scoreboard/, sql/ or lua/" if dirty else "")


def machine_line() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    return (f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def limit_notes(cpu: CpuUse, process_name: str, *, serial_batches: bool) -> list[str]:
    """Plain-language reading of a window's CPU split: which party was saturated.

    ``serial_batches``: the window ran the consumer, whose steps per batch
    (XREADGROUP, the Postgres transaction, the MULTI) run one after another.
    """
    cores, notes = os.cpu_count() or 1, []
    if cpu.process >= 0.85:
        notes.append(f"the {process_name} was CPU-bound (one Python event loop = one core at "
                     "most): it limits this figure")
    if cpu.postgres is not None and cpu.postgres >= 0.85:
        notes.append(f"postgres used {cpu.postgres:.2f} cores: it limits this figure")
    if cpu.machine >= 0.9 * cores:
        notes.append(f"the machine was saturated ({cpu.machine:.2f} of {cores} cores): every "
                     "party waited for a core at times, which lengthened each batch")
    if cpu.iowait >= 0.2:
        notes.append(f"iowait {cpu.iowait:.2f}: commits waited on fsync")
    others = cpu.machine - cpu.process - cpu.redis - (cpu.postgres or 0.0)
    if others > 0.15:
        busiest = ", ".join(f"{name} {cores:.2f}" for name, cores in cpu.top_others)
        notes.append(f"{others:.2f} cores went to others in the window (busiest: "
                     f"{busiest or 'no process that lived through the window used 0.02'}"
                     "; the rest is short-lived processes and the kernel): when "
                     "that is not this run's own work, the figure is disturbed")
    if cpu.redis_forked:
        notes.append("Redis forked during the window (an AOF rewrite: the drain's own writes "
                     "doubled the AOF, as in production); the rewrite's CPU and disk writes "
                     "shared the machine with the figure")
    parties = cpu.process + cpu.redis + (cpu.postgres or 0.0)
    saturated = cpu.process >= 0.85 or (cpu.postgres or 0.0) >= 0.85
    if serial_batches and not saturated and 0.7 <= parties <= 1.3:
        notes.append(f"neither {process_name} nor postgres saturated a core; with "
                     f"redis-server they used {parties:.2f} cores together, about one, because "
                     "each batch's steps run "
                     "one after another (read, transaction and commit, MULTI) and the parties "
                     "take turns; the rate is batch size / batch latency, and more worker "
                     "processes would overlap their batches")
    elif not notes:
        notes.append("no party was saturated: round trips and fsync waits bound the figure")
    return notes


def night_line(settings: Settings, workload: Workload) -> str:
    """Whether the entries fall in the unusual-time rule's window, which changes
    the fraud checks' work per entry."""
    zone = ZoneInfo(settings.fraud_timezone)
    first = datetime.fromtimestamp(workload.ts_ms / 1000, UTC).astimezone(zone)
    inside = [is_night(ts, timezone=settings.fraud_timezone,
                       start_hour=settings.night_start_hour, end_hour=settings.night_end_hour)
              for ts in (workload.ts_ms, workload.ts_ms + (len(workload) - 1) // 10)]
    where = "INSIDE" if all(inside) else "outside" if not any(inside) else "partly inside"
    return (f"entries at {first:%Y-%m-%d %H:%M} {settings.fraud_timezone}: {where} the "
            f"unusual-time rule's window [{settings.night_start_hour:02d}:00, "
            f"{settings.night_end_hour:02d}:00) (pass --at to choose)")


def report(args: argparse.Namespace, *, background: float, servers: str, backing: Backing,
           code: tuple[str, bool], night: str, prefill_s: float, worker: WorkerPass,
           worker_problems: list[str], latency: LatencyPass, latency_problems: list[str],
           baseline: CopyResult) -> bool:
    n = args.entries
    print("\n=== Worker benchmark: one worker process draining a backlog ===")
    print(f"machine     {machine_line()}")
    print(f"code        {code[0]}" + ("" if code[1] else "  WARNING: the product's sources "
                                      "changed during the run; rerun"))
    print(f"background  {background:.2f} cores busy before the run started"
          + ("  WARNING: the machine was not idle; the figures are disturbed"
             if background > 0.15 else ""))
    print(f"servers     {servers}; started here: {backing.embedded}")
    print(f"workload    {n:,} entries per stream, {args.users:,} users x boards "
          f"{'/'.join(BOARDS)}, points 1..10, unique event ids, source backend:…; batch "
          f"max {args.batch_max}")
    print(f"time        {night}")
    print(f"prefill     {n:,} XADDs pipelined by 1000 in {prefill_s:.2f} s "
          f"({n / prefill_s:,.0f}/s), before any consumer started")

    drain = worker.drain
    print(f"\n1. THROUGHPUT  one real worker process (arq workers.main.WorkerSettings, "
          f"pid {worker.pid})")
    print(f"  persisted/s       {drain.steady_rate:,.0f}/s steady (first acknowledgement seen "
          f"{drain.first_ack_s:.2f} s after spawn, all {n:,} at {drain.done_s:.2f} s)")
    print(f"  with start-up     {drain.overall_rate:,.0f}/s (spawn to last acknowledgement)")
    count = worker.histogram[-1][1] if worker.histogram else 0
    print(f"  batch latency     p50 in {bucket_of(worker.histogram, 0.5)}, p99 in "
          f"{bucket_of(worker.histogram, 0.99)} ({count:,.0f} batches; the worker's own "
          "scoreboard_worker_batch_seconds buckets: persist + acknowledge)")
    print(f"  worker counter    scoreboard_worker_persisted_total = "
          f"{worker.persisted_counter:,.0f}")
    print(f"  CPU in drain      {drain.cpu.line('worker')}")
    print(f"  check             {'OK: ' if not worker_problems else 'FAILED: '}"
          + ("; ".join(worker_problems) or f"actions = {n:,} rows, scores and boards = the "
             "entries' per-user sums, no dead letters"))
    for note in limit_notes(drain.cpu, "worker process", serial_batches=True):
        print(f"  limit             {note}")

    ldrain, batch_s = latency.drain, sorted(latency.timings.batch_s)
    pg_s, redis_s = sorted(latency.timings.postgres_s), sorted(latency.timings.redis_s)
    fraud_s = sorted(latency.timings.fraud_s)
    print("\n2. LATENCY  the same StreamConsumer class in this process (each handle() timed)")
    print(f"  batch latency     p50 {1000 * percentile(batch_s, 0.5):.1f} ms, p99 "
          f"{1000 * percentile(batch_s, 0.99):.1f} ms, max {1000 * batch_s[-1]:.1f} ms over "
          f"{len(batch_s)} batches (mean {n / len(batch_s):,.0f} entries): parse + Postgres "
          "transaction + Redis MULTI + fraud checks")
    print(f"    Postgres        persist_batch p50 {1000 * percentile(pg_s, 0.5):.1f} ms, p99 "
          f"{1000 * percentile(pg_s, 0.99):.1f} ms (COPY to staging, INSERT .. ON CONFLICT, "
          "users and scores upserts, totals, commit)")
    print(f"    Redis           apply_and_ack p50 {1000 * percentile(redis_s, 0.5):.1f} ms, "
          f"p99 {1000 * percentile(redis_s, 0.99):.1f} ms (board scripts, HSET, XACK, PUBLISH)")
    print(f"    fraud checks    after_batch p50 {1000 * percentile(fraud_s, 0.5):.1f} ms, "
          f"p99 {1000 * percentile(fraud_s, 0.99):.1f} ms (after the XACK, before the next "
          "read; not in the worker's histogram)")
    print(f"  persisted/s       {ldrain.steady_rate:,.0f}/s steady, all {n:,} in "
          f"{ldrain.done_s:.2f} s (the poll shares this process's event loop)")
    print(f"  CPU in drain      {ldrain.cpu.line('this process')}")
    print(f"  check             {'OK: ' if not latency_problems else 'FAILED: '}"
          + ("; ".join(latency_problems) or "same as above, on a database of its own"))
    for note in limit_notes(ldrain.cpu, "this process", serial_batches=True):
        print(f"  limit             {note}")

    copy_s = sorted(baseline.copy_s)
    print(f"\n3. BASELINE  asyncpg binary COPY (copy_records_to_table) of the same {n:,} rows "
          f"into a table LIKE actions INCLUDING ALL, partitioned by month like actions, "
          f"{args.batch_max} rows per autocommitted COPY")
    print(f"  indexes           {', '.join(baseline.indexes)}")
    print(f"  COPY rows/s       {baseline.rate:,.0f}/s (sum of COPY calls {sum(copy_s):.2f} s;"
          f" per batch p50 {1000 * percentile(copy_s, 0.5):.1f} ms, p99 "
          f"{1000 * percentile(copy_s, 0.99):.1f} ms)")
    print(f"  CPU               {baseline.cpu.line('this process')}")
    for note in limit_notes(baseline.cpu, "this process", serial_batches=False):
        print(f"  limit             {note}")

    print("\nRATIO  persisted/s ÷ COPY rows/s")
    print(f"  real worker       {drain.steady_rate:,.0f} / {baseline.rate:,.0f} = "
          f"{drain.steady_rate / baseline.rate:.3f}")
    print(f"  in-process        {ldrain.steady_rate:,.0f} / {baseline.rate:,.0f} = "
          f"{ldrain.steady_rate / baseline.rate:.3f}")
    print()
    return not worker_problems and not latency_problems


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
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_worker",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000,
                        help="stream entries drained by each pass (200000)")
    parser.add_argument("--batch-max", type=int, default=1000,
                        help="WORKER_BATCH_MAX, and the COPY batch size (1000)")
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
    if not 1 <= args.users <= 1_000_000 or not 1 <= args.timeout <= 1800:
        parser.error("--users must be 1..1000000 and --timeout 1..1800 s")
    return args


def run(args: argparse.Namespace) -> int:
    code, fingerprint = code_line(), code_fingerprint()
    background = background_cores()
    at_ms = args.at if args.at is not None else int(time.time() * 1000)
    workload = Workload.generate(entries=args.entries, users=args.users, seed=args.seed,
                                 at_ms=at_ms)
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-worker-")))
        print("starting Redis and Postgres (durable), migrating two fresh databases…",
              flush=True)
        backing = start_backing(stack, root, ["worker", "inproc"])
        client = stack.enter_context(contextlib.closing(
            redis.Redis.from_url(backing.redis_url, decode_responses=True)))
        servers = server_line(client, backing.admin_database_url)
        meter = CpuMeter(client, asyncio.run(postmaster_pid(backing.admin_database_url)))
        settings = load_settings(worker_env(backing, "inproc", batch_max=args.batch_max))

        print(f"filling the worker's stream with {args.entries:,} entries…", flush=True)
        ids, prefill_s = prefill(client, Keys(backing.prefix("worker")), workload)
        settle_redis(client, ours="redis" in backing.embedded)
        print("draining it with one worker process…", flush=True)
        worker = run_worker_pass(backing, workload, ids, client, meter,
                                 batch_max=args.batch_max, timeout_s=args.timeout, root=root)
        worker_problems = asyncio.run(check_drained(
            backing.database_url("worker"), backing.redis_url, Keys(backing.prefix("worker")),
            workload))

        print("filling a second stream with the same entries…", flush=True)
        inproc_ids, _ = prefill(client, Keys(backing.prefix("inproc")), workload)
        settle_redis(client, ours="redis" in backing.embedded)
        print("draining it with the consumer in this process…", flush=True)
        latency = asyncio.run(run_latency_pass(backing, workload, inproc_ids, meter, settings,
                                               timeout_s=args.timeout))
        latency_problems = asyncio.run(check_drained(
            backing.database_url("inproc"), backing.redis_url, Keys(backing.prefix("inproc")),
            workload))

        print("COPY baseline…", flush=True)
        baseline = asyncio.run(run_copy_baseline(backing.database_url("worker"), workload, ids,
                                                 meter, batch_max=args.batch_max))
        ok = report(args, background=background, servers=servers, backing=backing,
                    code=(code, code_fingerprint() == fingerprint),
                    night=night_line(settings, workload), prefill_s=prefill_s,
                    worker=worker, worker_problems=worker_problems, latency=latency,
                    latency_problems=latency_problems, baseline=baseline)
        print("stopping the servers started…", flush=True)
    return 0 if ok else 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so every process started here is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(parse_args(argv))
    except BenchError as exc:
        print(f"bench_worker: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench_worker: interrupted; every process it started is stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
