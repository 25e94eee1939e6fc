"""What one phase of ``loadtest.bench_e2e`` produced, how it is checked, and the report.

A phase (OURS or BASELINE) yields a :class:`PhaseRun`: the driver's record of
every request, the spectators' first sightings of each probe, and the
sampler's readings. ``loadtest.e2e_checks`` reads Postgres and Redis after the
drain; :func:`figures` turns a run into the numbers the report prints, each
with what limited it.
"""

from __future__ import annotations

import argparse
import bisect
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loadtest.e2e_checks import Check
from loadtest.harness.figures import (
    background_line,
    bucket_of,
    closing_notes,
    code_line,
    command_line,
    machine_line,
    percentile,
)
from scoreboard.keys import Keys

BUCKET_S = 5.0  # the timeline's step


# --- What a phase is and what it produced ------------------------------------------------------


@dataclass(frozen=True)
class Increment:
    event_id: str
    user_id: str
    points: int


@dataclass
class Workload:
    """What the driver sends: the players' headers, the load and the probes."""

    players: list[dict[str, str]]
    requests: list[tuple[int, str]]  # (player index, body)
    probes: list[tuple[int, str]]
    increments: list[Increment]  # of requests, same order
    probe_increments: list[Increment]

    @property
    def probe_scores(self) -> dict[str, int]:
        return {p.user_id: p.points for p in self.probe_increments}


@dataclass
class Sample:
    t: float  # time.monotonic()
    edge: str = ""  # "start" / "end": taken at the window's edges
    rows: int | None = None  # rows in actions
    cpu: dict[str, float] | None = None  # CPU seconds so far, per party
    waiting: int | None = None  # entries the group has not acknowledged (pending + new)
    oldest_ms: float | None = None  # age of the oldest unacknowledged entry
    worker: dict[str, float] | None = None  # the worker's batch series (edges only)
    redis_memory: int | None = None  # Redis used_memory (edges only)


@dataclass
class PhaseSpec:
    name: str
    url: str  # the increment endpoint's server
    database_url: str  # where its actions go
    keys: Keys | None  # the stream to watch (ours), or None (the baseline persists inline)
    pids: dict[str, int]
    spectators: dict[str, Any]  # the connect command of loadtest.e2e_spectators
    metrics_url: str | None  # the worker's metrics endpoint
    cycle: bool  # requests may be reused (the baseline does not consume tokens)


@dataclass
class PhaseRun:
    spec: PhaseSpec
    window_start: float
    window_end: float
    driver: dict[str, Any]
    spectators: dict[str, Any]
    connected: dict[str, Any]
    samples: list[Sample]
    drained: bool  # the group acknowledged everything within the drain timeout
    probe_users: list[str]  # probe index -> its player's user id
    markers: tuple[int, float] | None = None  # dedup markers alive after the run, mean bytes


# --- Figures from a phase ----------------------------------------------------------------------


@dataclass
class Figures:
    window_s: float
    accepted: int
    statuses: dict[str, int]
    post_ms: list[float]  # 202s completed in the window (load and probes), from when due
    probe_post_ms: list[float]
    visible_ms: list[float]  # (probe, spectator) pairs: probe sent -> spectator received
    first_visible_ms: list[float]  # per probe, the first spectator
    built_ms: list[float]  # per probe: sent -> the first message showing it was built (ts)
    probes_sent: int
    probes_unseen: int  # answered 202, seen by no spectator
    pairs_missing: int  # (probe, spectator) pairs never seen
    ages_ms: list[float]
    persisted_per_s: float | None
    rows_start: int | None
    rows_end: int | None
    lag_entries: list[int]  # sampled entries not acknowledged by the group
    oldest_ms: list[float]
    cpu: dict[str, float]  # cores, window average
    late_ms: list[float]  # open loop: how late requests went out
    batches: tuple[float, float, str, str] | None  # worker: count, mean size, p50, p99
    freshness: tuple[float, str, str] | None  # worker: entries, p50 and p99 buckets
    redis_bytes: float | None  # used_memory growth over the window per accepted increment
    exhausted: bool
    last_202_s: float  # after the window's end: requests in flight at its end, answered
    drained_s: float | None  # after the window's end: the first lag sample at 0 after them
    timeline: list[tuple[float, float, float | None, int | None, float | None]]


def edge_sample(samples: Sequence[Sample], edge: str) -> Sample | None:
    return next((s for s in samples if s.edge == edge), None)


@dataclass
class ProbeLatencies:
    visible_ms: list[float]  # (probe, spectator): sent -> received
    first_ms: list[float]  # per probe: sent -> received by the first spectator
    built_ms: list[float]  # per probe: sent -> the first message showing it was built
    sent: int  # probes due in the window and answered 202
    unseen: int  # of those, seen by no spectator
    pairs_missing: int


def probe_latencies(run: PhaseRun) -> ProbeLatencies:
    """The probes due in the window and answered 202, matched with the spectators'
    first sightings (both clocks are ``time.time()`` of this machine)."""
    sent_ms = {index: wall * 1000 for index, due, _, _, status, wall in run.driver["probes"]
               if status == "202" and run.window_start <= due <= run.window_end}
    first_seen: dict[str, list[float]] = run.spectators["first_seen_ms"]
    built_at: dict[str, float] = run.spectators["built_ms"]
    spectators = int(run.spectators["spectators"])
    result = ProbeLatencies([], [], [], len(sent_ms), 0, 0)
    for index, sent in sent_ms.items():
        user = run.probe_users[index]
        times = first_seen.get(user, [])
        if user in built_at:
            result.built_ms.append(built_at[user] - sent)
        result.visible_ms.extend(t - sent for t in times)
        if times:
            result.first_ms.append(min(times) - sent)
        else:
            result.unseen += 1
        result.pairs_missing += spectators - len(times)
    for values in (result.visible_ms, result.first_ms, result.built_ms):
        values.sort()
    return result


def worker_batches(start: Sample, end: Sample) -> tuple[float, float, str, str] | None:
    """(batches, mean entries, p50 bucket, p99 bucket) of the worker's histograms
    between two readings of its metrics endpoint."""
    if not start.worker or not end.worker:
        return None
    before, after = start.worker, end.worker
    buckets = sorted((float(k.split(":", 1)[1]), after[k] - before.get(k, 0.0))
                     for k in after if k.startswith("seconds:"))
    count = after.get("size_count", 0.0) - before.get("size_count", 0.0)
    size = after.get("size_sum", 0.0) - before.get("size_sum", 0.0)
    return (count, size / count if count else math.nan, bucket_of(buckets, 0.5),
            bucket_of(buckets, 0.99))


def worker_freshness(start: Sample, end: Sample) -> tuple[float, str, str] | None:
    """(entries, p50 bucket, p99 bucket) of scoreboard_worker_freshness_seconds in the
    window: acceptance of an entry (its stream ts) to its total on the board."""
    if not start.worker or not end.worker:
        return None
    before, after = start.worker, end.worker
    buckets = sorted((float(k.split(":", 1)[1]), after[k] - before.get(k, 0.0))
                     for k in after if k.startswith("fresh:"))
    if not buckets:
        return None
    return buckets[-1][1], bucket_of(buckets, 0.5), bucket_of(buckets, 0.99)


def figures(run: PhaseRun) -> Figures:
    """The numbers of the report, for the window [window_start, window_end]: requests
    count when they completed in it, probes when they were due in it."""
    ws, we = run.window_start, run.window_end
    statuses: Counter[str] = Counter()
    post_ms: list[float] = []
    probe_post_ms: list[float] = []
    late_ms: list[float] = []
    done_202: list[float] = []
    for rows, into in ((run.driver["requests"], post_ms), (run.driver["probes"], probe_post_ms)):
        for _, due, sent, done, status, *_ in rows:
            if status == "202":
                done_202.append(done)
            if ws <= done <= we:
                statuses[status] += 1
                if status == "202":
                    into.append(1000 * (done - due))
            if ws <= sent <= we:
                late_ms.append(1000 * (sent - due))
    done_202.sort()
    probes = probe_latencies(run)
    start, end = edge_sample(run.samples, "start"), edge_sample(run.samples, "end")
    cpu: dict[str, float] = {}
    batches = persisted = freshness = redis_bytes = None
    accepted = statuses.get("202", 0)
    if start and end:
        freshness = worker_freshness(start, end)
        if start.redis_memory is not None and end.redis_memory is not None and accepted:
            redis_bytes = (end.redis_memory - start.redis_memory) / accepted
        span = end.t - start.t
        if start.cpu and end.cpu:
            cpu = {k: (end.cpu[k] - start.cpu[k]) / span for k in end.cpu if k in start.cpu}
        if start.rows is not None and end.rows is not None:
            persisted = (end.rows - start.rows) / span
        batches = worker_batches(start, end)
    in_window = [s for s in run.samples if ws <= s.t <= we]
    last_202 = done_202[-1] if done_202 else we
    drained_at = next((s.t for s in run.samples
                       if s.t >= last_202 and s.waiting == 0), None)
    return Figures(
        window_s=we - ws, accepted=statuses.get("202", 0), statuses=dict(statuses),
        post_ms=sorted(post_ms + probe_post_ms), probe_post_ms=sorted(probe_post_ms),
        visible_ms=probes.visible_ms, first_visible_ms=probes.first_ms,
        built_ms=probes.built_ms, probes_sent=probes.sent, probes_unseen=probes.unseen,
        pairs_missing=probes.pairs_missing, ages_ms=sorted(run.spectators["ages_ms"]),
        persisted_per_s=persisted, rows_start=start.rows if start else None,
        rows_end=end.rows if end else None,
        lag_entries=[s.waiting for s in in_window if s.waiting is not None],
        oldest_ms=sorted(s.oldest_ms for s in in_window if s.oldest_ms is not None),
        cpu=cpu, late_ms=sorted(late_ms), batches=batches, freshness=freshness,
        redis_bytes=redis_bytes,
        exhausted=bool(run.driver["exhausted"]), last_202_s=last_202 - we,
        drained_s=None if drained_at is None else drained_at - we,
        timeline=timeline(run, done_202))


def timeline(run: PhaseRun, done_202: list[float]) -> list[tuple[float, float, float | None,
                                                                 int | None, float | None]]:
    """Per BUCKET_S of the window: (offset s, 202/s, persisted/s, most entries
    waiting for the group, oldest unacknowledged entry in ms: the most in the bucket)."""
    rows = [(s.t, s.rows) for s in run.samples if s.rows is not None]
    out = []
    ws = run.window_start
    buckets = max(1, round((run.window_end - ws) / BUCKET_S))
    size = (run.window_end - ws) / buckets
    for b in range(buckets):
        lo, hi = ws + b * size, ws + (b + 1) * size
        accepted = (bisect.bisect_right(done_202, hi) - bisect.bisect_right(done_202, lo)) / size
        before = [r for r in rows if r[0] <= lo + 0.01]
        after = [r for r in rows if r[0] <= hi + 0.01]
        persisted = None
        if before and after and after[-1][0] > before[-1][0]:
            persisted = (after[-1][1] - before[-1][1]) / (after[-1][0] - before[-1][0])
        inside = [s for s in run.samples if lo <= s.t <= hi]
        waiting = [s.waiting for s in inside if s.waiting is not None]
        ages = [s.oldest_ms for s in inside if s.oldest_ms is not None]
        out.append((lo - ws, accepted, persisted, max(waiting) if waiting else None,
                    max(ages) if ages else None))
    return out


# --- Report -------------------------------------------------------------------------------------


def ms(values: Sequence[float], fraction: float) -> str:
    return "n/a" if not values else f"{percentile(list(values), fraction):,.1f} ms"


def cpu_line(cpu: dict[str, float], parties: Sequence[str]) -> str:
    named = ", ".join(f"{p} {cpu[p]:.2f}" for p in (*parties, "orchestrator") if p in cpu)
    others = cpu.get("machine", 0) - sum(cpu.get(p, 0) for p in (*parties, "orchestrator",
                                                                  "kernel"))
    return (f"{named}, interrupts {cpu.get('kernel', math.nan):.2f}, other processes "
            f"{max(0.0, others):.2f}; machine {cpu.get('machine', math.nan):.2f} of "
            f"{os.cpu_count()} cores busy, iowait {cpu.get('iowait', math.nan):.2f}")


def limit_notes(f: Figures, server: str, parties: Sequence[str], offered: float) -> list[str]:
    """Plain-language reading of the window's CPU split: what limited the figures.
    ``offered``: the open loop's rate (0: closed loop)."""
    cores, cpu, notes = os.cpu_count() or 1, f.cpu, []
    if offered and f.accepted / f.window_s >= 0.97 * offered:
        notes.append(f"the offered {offered:g}/s was met: accepted/s is the load generator's "
                     "rate, not a capacity; the latencies are those of a system keeping up")
    if not cpu:
        return ["no CPU figures (the window's edge samples are missing)"]
    if cpu.get("machine", 0) >= 0.9 * cores:
        heavy = sorted(((cpu[p], p) for p in parties if p in cpu), reverse=True)[:3]
        notes.append(f"the machine was saturated ({cpu['machine']:.2f} of {cores} cores): every "
                     "party took turns on the same cores (the busiest: "
                     + ", ".join(f"{p} {c:.2f}" for c, p in heavy) + ")")
    if cpu.get(server, 0) >= 0.85:
        notes.append(f"{server} was CPU-bound (one Python process = one core at most)")
    if cpu.get("postgres", 0) >= 0.85:
        notes.append(f"postgres used {cpu['postgres']:.2f} cores")
    if cpu.get("iowait", 0) >= 0.2:
        notes.append(f"iowait {cpu['iowait']:.2f}: commits waited on fsync")
    if cpu.get("driver", 0) >= 0.85:
        notes.append("the load generator was CPU-bound: the rate is a lower bound")
    others = cpu.get("machine", 0) - sum(cpu.get(p, 0) for p in (*parties, "orchestrator",
                                                                  "kernel"))
    return closing_notes(
        notes, others,
        disturbed="{others:.2f} cores went to processes outside the run: the figures are "
                  "disturbed",
        unsaturated="no party was saturated: round trips, lock and commit waits bound the "
                    "figure (for the baseline: at most --baseline-pool transactions at once)")


OURS_PARTIES = ("ingest", "worker", "broadcaster", "postgres", "redis", "spectators", "driver")
BASE_PARTIES = ("baseline", "postgres", "redis", "spectators", "driver")


def report_phase(title: str, run: PhaseRun, f: Figures, check: Check, *, ours: bool,
                 spectators: int, offered: float) -> None:
    print(f"\n{title}")
    other = {k: v for k, v in f.statuses.items() if k != "202"}
    print(f"  accepted/s        {f.accepted / f.window_s:,.0f} ({f.accepted:,} answered 202 in "
          f"{f.window_s:.1f} s; other outcomes {other or 'none'})")
    print(f"  POST latency      p50 {ms(f.post_ms, 0.5)}, p99 {ms(f.post_ms, 0.99)} (202s in "
          "the window, load and probes, from when each was due)")
    if f.late_ms and percentile(f.late_ms, 0.99) > 5:
        print(f"  sent late         p50 {ms(f.late_ms, 0.5)}, p99 {ms(f.late_ms, 0.99)} behind "
              "schedule (every connection was busy: the offered rate was not sustained)")
    where = (f"{spectators} WebSocket spectators" if ours
             else "1 Redis subscriber of the published top 10, no WebSocket fan-out")
    print(f"  POST->spectator   p50 {ms(f.visible_ms, 0.5)}, p99 {ms(f.visible_ms, 0.99)} over "
          f"{len(f.visible_ms):,} (probe, spectator) pairs [{where}]")
    print(f"    first to see    p50 {ms(f.first_visible_ms, 0.5)}, p99 "
          f"{ms(f.first_visible_ms, 0.99)}; {f.probes_sent} probes in the window, "
          f"{f.probes_unseen} seen by no one, {f.pairs_missing:,} pairs missing"
          + (" (a probe no one saw was pushed out of the top 10 by 10 newer ones before a "
             "snapshot went out: the board was that far behind)" if f.probes_unseen else ""))
    print(f"    made of         POST -> 202 p50 {ms(f.probe_post_ms, 0.5)}, p99 "
          f"{ms(f.probe_post_ms, 0.99)}; sent -> first message showing it built (its ts) p50 "
          f"{ms(f.built_ms, 0.5)}, p99 {ms(f.built_ms, 0.99)}; built -> received: the age "
          "below")
    if ours:
        counts = run.spectators["messages"]
        per_s = [c / run.spectators["seconds"] for c in counts]
        print(f"    snapshots       {sum(per_s) / max(1, len(per_s)):.1f}/s per spectator; "
              f"age at receipt (receipt - ts) p50 {ms(f.ages_ms, 0.5)}, p99 "
              f"{ms(f.ages_ms, 0.99)}; version regressions {run.spectators['regressions']}; "
              f"closed {run.spectators['closed'] or 'none'}")
    if f.freshness is not None:
        entries, p50, p99 = f.freshness
        print(f"    worker's part   entry accepted (its stream ts) -> its total on the board "
              f"and acknowledged: p50 in {p50}, p99 in {p99} over {entries:,.0f} entries "
              "(the worker's scoreboard_worker_freshness_seconds)")
    if f.redis_bytes is not None:
        print(f"  Redis memory      used_memory grew {f.redis_bytes:,.0f} bytes per accepted "
              "increment over the window: dedup markers and stream entries not yet trimmed, "
              "net of what the run frees meanwhile (each player increment deletes its action "
              "token, fetched before the window; the trim job drops acknowledged entries): "
              "the markers' line below is the per-increment cost")
    if run.markers is not None:
        alive, size = run.markers
        print(f"    dedup markers   {alive:,} alive after the run, {size:,.0f} bytes each "
              "(MEMORY USAGE of their windows' SETs over their members); each lives one to two "
              "DEDUP_TTL_S (scoreboard/dedup_marks.py): at 1,000 accepted/s and the default "
              f"600 s, {1000 * 600 * size / 1e6:,.0f}-{2 * 1000 * 600 * size / 1e6:,.0f} MB")
    if f.persisted_per_s is not None:
        print(f"  persisted/s       {f.persisted_per_s:,.0f} (rows in actions: {f.rows_start:,} "
              f"at the window's start, {f.rows_end:,} at its end)")
    if f.batches is not None:
        count, size, p50, p99 = f.batches
        print(f"  worker batches    {count:,.0f} in the window, mean {size:,.1f} entries; "
              f"persist + acknowledge p50 in {p50}, p99 in {p99} (the worker's histogram)")
    if ours:
        lag = sorted(float(n) for n in f.lag_entries)
        if lag:
            print(f"  consumer lag      entries not acknowledged: median "
                  f"{percentile(lag, 0.5):,.0f}, p99 {percentile(lag, 0.99):,.0f}, max "
                  f"{lag[-1]:,.0f} ({len(lag)} samples, 4/s)")
        print(f"                    oldest unacknowledged entry: median "
              f"{ms(f.oldest_ms, 0.5)}, p99 {ms(f.oldest_ms, 0.99)}, max "
              f"{ms(f.oldest_ms, 1.0)} ({len(f.oldest_ms)} samples, 4/s)")
        if not run.drained:
            print("  drained           NOT within the drain timeout")
        elif f.drained_s is not None:
            print(f"  drained           the last 202 came {max(0.0, f.last_202_s):.2f} s after "
                  f"the window's end; everything was acknowledged {f.drained_s:.2f} s after "
                  "the end (lag sampled 4/s)")
    print("  timeline          t(s)   202/s  persisted/s  max lag  max oldest unacked")
    for offset, accepted, persisted, lag_now, oldest in f.timeline:
        print(f"                    {offset:4.0f} {accepted:8,.0f} "
              f"{'n/a' if persisted is None else f'{persisted:,.0f}':>12} "
              f"{'n/a' if lag_now is None else f'{lag_now:,}':>8} "
              f"{'n/a' if oldest is None else f'{oldest:,.0f} ms':>18}")
    parties = OURS_PARTIES if ours else BASE_PARTIES
    print(f"  CPU (cores)       {cpu_line(f.cpu, parties)}")
    if f.accepted and f.cpu:
        print(f"  CPU / increment   {1e6 * f.cpu['machine'] * f.window_s / f.accepted:,.0f} µs "
              "of machine CPU per accepted increment (every process, the load generator and "
              "spectators included)")
    if f.exhausted:
        print("  WARNING           the action tokens ran out before the window's end "
              "(pass a larger --token-margin)")
    if run.driver["late_start_s"] > 0.05:
        print(f"  WARNING           the driver started {run.driver['late_start_s']:.2f} s late")
    print(f"  check             {'OK' if check.ok else 'FAILED'}: " + "; ".join(check.facts))
    for problem in check.problems:
        print(f"    PROBLEM         {problem}")
    for note in limit_notes(f, "ingest" if ours else "baseline", parties, offered):
        print(f"  limit             {note}")


def report(args: argparse.Namespace, *, background: float, servers: str, setup: str,
           ours: tuple[PhaseRun, Figures, Check],
           base: tuple[PhaseRun, Figures, Check] | None) -> bool:
    print("\n=== End-to-end benchmark ===")
    print(f"machine     {machine_line()}")
    print("code        " + code_line(("ingest", "workers", "broadcaster", "scoreboard", "sql",
                                          "lua"), "uncommitted changes in the product's code"))
    print(command_line("loadtest.bench_e2e"))
    print(background_line(background))
    print(f"servers     {servers}")
    mode = (f"open loop at {args.rate:g}/s (latency from when each request was due)"
            if args.rate else f"closed loop, {args.concurrency} connections")
    print(f"load        POST /api/scores/increment (the player endpoint, one increment per "
          f"request), {mode}, plus {args.probe_rate:g} probes/s; {args.warmup:g} s warm-up, "
          f"{args.duration:g} s window")
    print(f"set-up      {setup}")
    offered = args.rate + args.probe_rate if args.rate else 0.0
    report_phase(f"OURS  ingest + 1 worker + 1 broadcaster, {args.spectators} spectators", *ours,
                 ours=True, spectators=args.spectators, offered=offered)
    if base is not None:
        report_phase("BASELINE  per request: Postgres transaction (audit row + score upsert), "
                     f"top-10 query, Redis PUBLISH; one uvicorn process, pool of "
                     f"{args.baseline_pool}", *base, ours=False, spectators=1, offered=offered)
        fo, fb = ours[1], base[1]
        ours_rate, base_rate = fo.accepted / fo.window_s, fb.accepted / fb.window_s
        print("\nOURS vs BASELINE")
        print(f"  accepted/s        {ours_rate:,.0f} / {base_rate:,.0f} = "
              f"{ours_rate / base_rate if base_rate else math.inf:.2f}x")
        for name, a, b in (("POST p50", fo.post_ms, fb.post_ms), ("POST p99", fo.post_ms,
                                                                   fb.post_ms)):
            q = 0.5 if "p50" in name else 0.99
            print(f"  {name:<17} {ms(a, q)} vs {ms(b, q)}")
        print(f"  visible p50       {ms(fo.visible_ms, 0.5)} (spectators) vs "
              f"{ms(fb.visible_ms, 0.5)} (subscriber)")
        print(f"  visible p99       {ms(fo.visible_ms, 0.99)} vs {ms(fb.visible_ms, 0.99)}")
        if fo.accepted and fb.accepted and fo.cpu and fb.cpu:
            print(f"  CPU / increment   {1e6 * fo.cpu['machine'] * fo.window_s / fo.accepted:,.0f}"
                  f" µs vs {1e6 * fb.cpu['machine'] * fb.window_s / fb.accepted:,.0f} µs")
    print()
    return ours[2].ok and (base is None or base[2].ok)
