"""The worker benchmark's checks of a drained database and its report."""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import asyncpg
import redis.asyncio as redis_asyncio

from loadtest.harness.cpu import CpuUse
from loadtest.harness.figures import background_line, bucket_of, machine_line, percentile
from loadtest.worker_workload import BOARDS, Workload
from scoreboard.fraud_rules import is_night
from scoreboard.keys import Keys
from scoreboard.ranking import totals_by_user
from scoreboard.settings import Settings

if TYPE_CHECKING:
    from loadtest.bench_worker import LatencyPass, WorkerBacking, WorkerPass
    from loadtest.worker_anchor import AnchorResult, CopyResult


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


def limit_notes(cpu: CpuUse, process_name: str, *, in_flight: int = 0) -> list[str]:
    """Plain-language reading of a window's CPU split: which party was saturated.

    ``in_flight``: the window ran the consumer with that many batches in
    Postgres at once (``WORKER_IN_FLIGHT``; 0: not a consumer).
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
    if in_flight == 1 and not saturated and 0.7 <= parties <= 1.3:
        notes.append(f"neither {process_name} nor postgres saturated a core; with "
                     f"redis-server they used {parties:.2f} cores together, about one: the "
                     "read of the next batch and the Redis call of the last overlap each "
                     "batch's Postgres transaction, but the transactions of one consumer run "
                     "one after another, so the rate is batch size / transaction time, and "
                     "more worker processes overlap their transactions")
    elif in_flight > 1 and not saturated and not notes:
        notes.append(f"{in_flight} batches in Postgres at once; neither {process_name} nor "
                     f"postgres saturated a core (with redis-server {parties:.2f} cores "
                     "together): the rate is about batch size x batches in flight / "
                     "transaction time, and each transaction waited for a core, its commit's "
                     "fsync or the other's locks")
    elif not notes:
        notes.append("no party was saturated: round trips and fsync waits bound the figure")
    return notes


def scaling_note(one: CpuUse, two: CpuUse, target: float = 1.6) -> str:
    """What bounds two workers against one: a party at a full core, or the machine.

    At one worker's CPU per entry (every party's: worker, Postgres, Redis, this
    benchmark's poll), ``target`` times its rate needs ``target`` times the cores
    its drain kept busy; when that is more than the machine has, no second
    process can get there, whoever the busiest party is."""
    cores = os.cpu_count() or 1
    full = [f"{name} {used:.2f}" for name, used in (
        ("postgres", two.postgres or 0.0), ("redis-server", two.redis),
        ("the first worker", two.process)) if used >= 0.9]
    if full:
        return f"{', '.join(full)} of a core: that party bounds two workers"
    needed = target * one.machine
    if needed > 0.9 * cores:
        return (f"the machine: one worker's drain kept {one.machine:.2f} of its {cores} cores "
                f"busy, so {target:g}x its rate at the same CPU per entry needs about "
                f"{needed:.2f}; two workers had {two.machine:.2f} busy. No party is at a "
                "full core; they share the machine's")
    return (f"no party at a full core and the machine at {two.machine:.2f} of {cores}: "
            "round trips, fsync waits and row locks between the two bound the figure")


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


def report(args: argparse.Namespace, *, background: float, servers: str, backing: WorkerBacking,
           code: tuple[str, bool], night: str, prefill_s: float, worker: WorkerPass,
           worker_problems: list[str], latency: LatencyPass, latency_problems: list[str],
           baseline: CopyResult, workers2: WorkerPass, anchors: tuple[AnchorResult, AnchorResult],
           serial: WorkerPass | None = None) -> bool:
    n = args.entries
    print("\n=== Worker benchmark: one worker process draining a backlog ===")
    print(f"machine     {machine_line()}")
    print(f"code        {code[0]}" + ("" if code[1] else "  WARNING: the product's sources "
                                      "changed during the run; rerun"))
    print(background_line(background))
    print(f"servers     {servers}; started here: {backing.embedded}")
    print(f"workload    {n:,} entries per stream, {args.users:,} users x boards "
          f"{'/'.join(BOARDS)}, points 1..10, unique event ids, source backend:…; batch "
          f"max {args.batch_max}, WORKER_IN_FLIGHT {args.in_flight}")
    print(f"time        {night}")
    print(f"prefill     {n:,} XADDs pipelined by 1000 in {prefill_s:.2f} s "
          f"({n / prefill_s:,.0f}/s), before any consumer started")

    drain = worker.drain
    print(f"\n1. THROUGHPUT  one real worker process (arq workers.main.WorkerSettings, "
          f"pid {worker.pids[0]})")
    print(f"  persisted/s       {drain.steady_rate:,.0f}/s steady (first acknowledgement seen "
          f"{drain.first_ack_s:.2f} s after spawn, all {n:,} at {drain.done_s:.2f} s)")
    print(f"  with start-up     {drain.overall_rate:,.0f}/s (spawn to last acknowledgement)")
    count = worker.histogram[-1][1] if worker.histogram else 0
    print(f"  batch latency     p50 in {bucket_of(worker.histogram, 0.5)}, p99 in "
          f"{bucket_of(worker.histogram, 0.99)} ({count:,.0f} batches, mean "
          f"{n / max(1, count):,.0f} entries; the worker's own "
          "scoreboard_worker_batch_seconds buckets: persist + acknowledge)")
    print(f"  worker counter    scoreboard_worker_persisted_total = "
          f"{worker.persisted_counter:,.0f}")
    print(f"  CPU in drain      {drain.cpu.line('worker')}")
    print(f"  check             {'OK: ' if not worker_problems else 'FAILED: '}"
          + ("; ".join(worker_problems) or f"actions = {n:,} rows, scores and boards = the "
             "entries' per-user sums, no dead letters"))
    for note in limit_notes(drain.cpu, "worker process", in_flight=args.in_flight):
        print(f"  limit             {note}")

    drain2 = workers2.drain
    print("\n1b. SCALING  two worker processes in one group (the second differs only by its "
          "consumer name), on a stream and database of their own")
    print(f"  persisted/s       {drain2.steady_rate:,.0f}/s steady, all {n:,} at "
          f"{drain2.done_s:.2f} s: {drain2.steady_rate / drain.steady_rate:.2f}x one worker")
    print("  workers' cores    " + " + ".join(f"{c:.2f}" for c in workers2.worker_cores)
          + f" (one worker alone: {drain.cpu.process:.2f})")
    print(f"  CPU in drain      {drain2.cpu.line('first worker')} (the second worker is "
          "among the others)")
    print(f"  limit             {scaling_note(drain.cpu, drain2.cpu)}")

    if serial is not None:
        sdrain = serial.drain
        print("\n1c. ONE IN FLIGHT  one worker process with WORKER_IN_FLIGHT=1 (one batch in "
              "Postgres at a time, as before it was 2), on a stream and database of its own")
        print(f"  persisted/s       {sdrain.steady_rate:,.0f}/s steady, all {n:,} at "
              f"{sdrain.done_s:.2f} s; one worker above ÷ this: "
              f"{drain.steady_rate / sdrain.steady_rate:.2f}")
        print(f"  CPU in drain      {sdrain.cpu.line('worker')}")
        for note in limit_notes(sdrain.cpu, "worker process", in_flight=1):
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
          f"{1000 * percentile(pg_s, 0.99):.1f} ms (one statement: counted_events, "
          "actions and scores inserts, totals; plus the users write when a player is new)")
    spans = sorted(latency.timings.postgres_spans)
    idle_s, overlap_s, busy_until = [], 0.0, spans[0][1] if spans else 0.0
    for start, end in spans[1:]:  # batches overlap in Postgres (WORKER_IN_FLIGHT)
        if start > busy_until:
            idle_s.append(start - busy_until)
        else:
            overlap_s += min(end, busy_until) - start
        busy_until = max(busy_until, end)
    idle_s.sort()
    if spans:
        window = spans[-1][1] - spans[0][0]
        print(f"    between         no persist_batch running {sum(idle_s) / window:.0%} of the "
              "time from the first transaction to the last (gaps p50 "
              f"{1000 * percentile(idle_s or [0.0], 0.5):.1f} ms, p99 "
              f"{1000 * percentile(idle_s or [0.0], 0.99):.1f} ms); two or more at once "
              f"{overlap_s / window:.0%}")
    print(f"    Redis           apply_and_ack p50 {1000 * percentile(redis_s, 0.5):.1f} ms, "
          f"p99 {1000 * percentile(redis_s, 0.99):.1f} ms (one lua/apply_batch.lua call: "
          "boards, usernames, revisions, XACK, notices)")
    script_s = latency.timings.script_s
    if script_s:
        print(f"    in Redis        apply_batch.lua p50 {1000 * percentile(script_s, 0.5):.1f} ms, "
              f"p99 {1000 * percentile(script_s, 0.99):.1f} ms of Redis's own time per call "
              f"({len(script_s)} calls, SLOWLOG; per 1,000 entries p50 "
              f"{1e6 * percentile(script_s, 0.5) * len(batch_s) / n:.1f} ms)")
    print(f"    fraud checks    after_batch p50 {1000 * percentile(fraud_s, 0.5):.1f} ms, "
          f"p99 {1000 * percentile(fraud_s, 0.99):.1f} ms (after the XACK, before the next "
          "read; not in the worker's histogram)")
    print(f"  persisted/s       {ldrain.steady_rate:,.0f}/s steady, all {n:,} in "
          f"{ldrain.done_s:.2f} s (the poll shares this process's event loop)")
    print(f"  CPU in drain      {ldrain.cpu.line('this process')}")
    print(f"  check             {'OK: ' if not latency_problems else 'FAILED: '}"
          + ("; ".join(latency_problems) or "same as above, on a database of its own"))
    for note in limit_notes(ldrain.cpu, "this process", in_flight=args.in_flight):
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
    for note in limit_notes(baseline.cpu, "this process"):
        print(f"  limit             {note}")

    print(f"\n4. ANCHOR  exactly-once floor: per {args.batch_max} rows one transaction of "
          "COPY into a temp staging table, INSERT INTO actions .. ON CONFLICT DO NOTHING "
          "RETURNING, upsert of the inserted rows' per-(board, user) sums into scores; "
          "plain asyncpg, no Redis, same rows, fsync'd commits; run before the worker "
          "passes and after them, each on a fresh database")
    for when, anchor in zip(("before", "after"), anchors, strict=True):
        anchor_s = sorted(anchor.batch_s)
        print(f"  {when:<6} rows/s     {anchor.rate:,.0f}/s (per batch p50 "
              f"{1000 * percentile(anchor_s, 0.5):.1f} ms, p99 "
              f"{1000 * percentile(anchor_s, 0.99):.1f} ms)")
        print(f"  {when:<6} CPU        {anchor.cpu.line('this process')}")
    floor = sum(anchor.rate for anchor in anchors) / len(anchors)

    print(f"\nRATIO  persisted/s ÷ anchor rows/s, the mean of before and after "
          f"({floor:,.0f}/s) (target >= 0.7)")
    print(f"  one worker        {drain.steady_rate:,.0f} / {floor:,.0f} = "
          f"{drain.steady_rate / floor:.3f}")
    print(f"  two workers       {drain2.steady_rate:,.0f} / {floor:,.0f} = "
          f"{drain2.steady_rate / floor:.3f}")
    if serial is not None:
        print(f"  one, 1 in flight  {serial.drain.steady_rate:,.0f} / {floor:,.0f} = "
              f"{serial.drain.steady_rate / floor:.3f}")
    print("\nRATIO  persisted/s ÷ COPY rows/s")
    print(f"  real worker       {drain.steady_rate:,.0f} / {baseline.rate:,.0f} = "
          f"{drain.steady_rate / baseline.rate:.3f}")
    print(f"  in-process        {ldrain.steady_rate:,.0f} / {baseline.rate:,.0f} = "
          f"{ldrain.steady_rate / baseline.rate:.3f}")
    print()
    return not worker_problems and not latency_problems
