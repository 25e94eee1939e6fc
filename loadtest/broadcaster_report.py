"""What the broadcaster benchmark measured, and how it is printed: the results of
its two parts and the report, with each fan-out figure of ours as a ratio to the
bare anchor server measured in the same run (loadtest/fanout_anchor.py)."""

from __future__ import annotations

import argparse
import os
from collections import Counter
from dataclasses import dataclass, field

from loadtest.harness.figures import histogram_percentile, percentile
from loadtest.harness.http import INCREMENT_PATH
from scoreboard.settings import Settings

DEFAULT_SNAPSHOT_SIZE = Settings().snapshot_size
BOARD_POLL_S = 0.005  # part 2: how often the Redis board is read to time the worker
# The targets of each fan-out figure, against the anchor at the same size in the same run.
TARGET_RATE_RATIO = 0.9  # snapshots per client per second, at least
TARGET_CPU_RATIO = 1.5  # broadcaster CPU per delivered message, at most
TARGET_P99_FACTOR, TARGET_P99_SLACK_MS = 2.0, 20.0  # p99 ts -> receipt, at most
TARGET_CONNECT_S = 30.0  # every handshake done within
TARGET_RSS_KIB = 16.0  # per connection, at most


# --- Part 1 ---------------------------------------------------------------------------------


@dataclass
class FanoutResult:
    server: str  # "ours" or "anchor"
    size: int
    processes: int
    connected: int
    connect_failures: dict[str, int]
    connect_s: float
    window_s: float
    per_client: list[int]  # snapshots each client received in the window, sorted
    bins: dict[int, int]
    closed: dict[str, int]
    still_open: int
    rss_before_kb: int
    rss_start_kb: int
    rss_with_kb: int
    rss_peak_kb: int
    built: float  # snapshots built per second (the anchor: its tick rate)
    dropped: dict[str, float]
    cpu: dict[str, float]
    writes_per_s: float

    @property
    def received(self) -> float:
        """Messages delivered to all clients per second in the window."""
        return sum(self.per_client) / self.window_s if self.window_s else 0.0

    @property
    def per_client_rate(self) -> float:
        return self.received / max(1, len(self.per_client))

    @property
    def cpu_per_message_us(self) -> float:
        return 1e6 * self.cpu["server"] / max(self.received, 1e-9)

    @property
    def p99_ms(self) -> float:
        return histogram_percentile(self.bins, 0.99)

    @property
    def rss_per_connection_kib(self) -> float:
        return (self.rss_with_kb - self.rss_before_kb) / max(1, self.connected)


@dataclass(frozen=True)
class FanoutPair:
    ours: FanoutResult
    anchor: FanoutResult

    def checks(self) -> list[tuple[str, str, bool]]:
        """(figure, ours vs its target, met) for each target of the issue."""
        ours, anchor = self.ours, self.anchor
        rate = ours.per_client_rate / max(anchor.per_client_rate, 1e-9)
        cpu = ours.cpu_per_message_us / max(anchor.cpu_per_message_us, 1e-9)
        p99_limit = TARGET_P99_FACTOR * anchor.p99_ms + TARGET_P99_SLACK_MS
        connected_all = ours.connected == ours.size and not ours.connect_failures
        return [
            ("snapshots/client/s ÷ anchor", f"{rate:.2f} (≥ {TARGET_RATE_RATIO})",
             rate >= TARGET_RATE_RATIO),
            ("CPU per message ÷ anchor", f"{cpu:.2f} (≤ {TARGET_CPU_RATIO})",
             cpu <= TARGET_CPU_RATIO),
            ("p99 ts→receipt", f"{ours.p99_ms:.1f} ms (≤ 2 × {anchor.p99_ms:.1f} + 20 = "
             f"{p99_limit:.1f})", ours.p99_ms <= p99_limit),
            ("handshakes", f"{ours.connected:,}/{ours.size:,} in {ours.connect_s:.1f} s "
             f"(≤ {TARGET_CONNECT_S:g} s)", connected_all and ours.connect_s <= TARGET_CONNECT_S),
            ("RSS per connection", f"{ours.rss_per_connection_kib:.1f} KiB "
             f"(≤ {TARGET_RSS_KIB:g})", ours.rss_per_connection_kib <= TARGET_RSS_KIB),
        ]


def fanout_notes(result: FanoutResult) -> list[str]:
    cores, notes = os.cpu_count() or 1, []
    cpu = result.cpu
    if cpu["server"] >= 0.9:
        notes.append("the server's event loop was CPU-bound (one process = one core): "
                     "it is the limit; spectators skip states and wait longer for each "
                     "fan-out pass")
    if cpu["machine"] >= 0.9 * cores:
        notes.append(f"the machine was saturated ({cpu['machine']:.2f} of {cores} cores): "
                     f"the clients' {cpu['clients']:.2f} cores came from the same pool")
    elif cpu["clients"] >= 0.9 * result.processes:
        notes.append("the client processes were CPU-bound: the figures are a lower bound")
    others = cpu["machine"] - sum(cpu[k] for k in ("server", "clients", "redis",
                                                   "orchestrator"))
    if others > 0.2:
        notes.append(f"{others:.2f} cores went to other processes (Postgres, or whatever "
                     "else ran on the machine): the figure is disturbed")
    if not notes:
        notes.append("no party was saturated")
    return notes


def _print_one(r: FanoutResult) -> None:
    rates = [n / r.window_s for n in r.per_client]
    name = "ours (python -m broadcaster)" if r.server == "ours" else "anchor (bare server)"
    print(f"\n  {r.size:,} spectators, {name}, {r.processes} client processes")
    print(f"    connected         {r.connected:,} in {r.connect_s:.1f} s"
          + (f"; FAILED {r.connect_failures}" if r.connect_failures else ""))
    print(f"    snapshots built   {r.built:.2f}/s"
          + (f" (board writes {r.writes_per_s:.1f}/s)" if r.server == "ours" else "")
          + f"; delivered {r.received:,.0f} messages/s, {r.cpu_per_message_us:.1f} µs of "
          f"server CPU each")
    if rates:
        print(f"    received/client   mean {sum(rates) / len(rates):.2f}/s, min "
              f"{rates[0]:.2f}, p1 {percentile(rates, 0.01):.2f}, median "
              f"{percentile(rates, 0.5):.2f}, max {rates[-1]:.2f}")
    print(f"    latency ts->recv  p50 {histogram_percentile(r.bins, 0.5):.1f} ms, p99 "
          f"{r.p99_ms:.1f} ms, p99.9 {histogram_percentile(r.bins, 0.999):.1f} ms, max "
          f"{histogram_percentile(r.bins, 1.0):.1f} ms ({sum(r.bins.values()):,} snapshots)")
    print(f"    memory            VmRSS {r.rss_before_kb / 1024:.1f} MiB before, "
          f"{r.rss_with_kb / 1024:.1f} MiB with {r.connected:,}: "
          f"{r.rss_per_connection_kib:.1f} KiB/connection (window start "
          f"{r.rss_start_kb / 1024:.1f}, peak {r.rss_peak_kb / 1024:.1f})")
    print(f"    CPU in window     server {r.cpu['server']:.2f}, clients "
          f"{r.cpu['clients']:.2f}, redis {r.cpu['redis']:.2f}, writer+orchestrator "
          f"{r.cpu['orchestrator']:.2f}; machine {r.cpu['machine']:.2f} of "
          f"{os.cpu_count()} cores busy")
    if r.closed or r.still_open != r.connected or r.dropped:
        print(f"    WARNING           closed in window {r.closed or 'none'}, open at end "
              f"{r.still_open:,} of {r.connected:,}, server drops {r.dropped or 'none'}")
    for note in fanout_notes(r):
        print(f"    limit             {note}")


def report_fanout(args: argparse.Namespace, pairs: list[FanoutPair]) -> None:
    print(f"\nPart 1  fan-out: ONE server process at 10 snapshots/s, {args.client} clients, "
          f"{args.window:g} s window after {args.settle:g} s settle. Ours: "
          f"SNAPSHOT_INTERVAL_MS=100, the board changed ~{args.writer_rate:g}/s through the "
          "worker write path. The anchor: loadtest/fanout_anchor.py, the same frame size "
          "written to every socket every 100 ms, nothing else")
    for pair in pairs:
        _print_one(pair.anchor)
        _print_one(pair.ours)
    print("\n  ours ÷ anchor, same size, same run, same clients")
    print(f"  {'spectators':>10}  {'figure':<28} {'ours vs target':<44} met")
    for pair in pairs:
        for figure, value, met in pair.checks():
            print(f"  {pair.ours.size:>10,}  {figure:<28} {value:<44} "
                  f"{'yes' if met else 'NO'}")


# --- Part 2 ---------------------------------------------------------------------------------


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


def latency_notes(args: argparse.Namespace, result: LatencyResult) -> list[str]:
    cpu, cores, d = result.cpu, os.cpu_count() or 1, result.drive
    parts = {"the worker": percentile(result.board_ms, 0.5),
             "notice + throttle + build": percentile(result.build_ms, 0.5),
             "the fan-out": percentile(result.delivery_ms, 0.5)}
    largest = max(parts, key=lambda name: parts[name])
    notes = ["p50s: " + ", ".join(f"{name} {ms:.0f} ms" for name, ms in parts.items())
             + f"; {largest} takes the most (the throttle alone adds 0 to "
             f"{args.latency_interval_ms} ms, {args.latency_interval_ms / 2:g} on average)"]
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
          f"1 broadcaster (SNAPSHOT_INTERVAL_MS={args.latency_interval_ms}, "
          f"SNAPSHOT_SIZE={size}), {args.rate:g} "
          f"increments/s paced over {args.lanes} players (one POST in flight each), "
          f"{result.spectators} spectators matched and {args.crowd:,} more on the board, "
          f"{args.latency_warmup:g} s warm-up, Postgres fsync on")
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
          f"{cpu['driver']:.2f}, spectators {cpu['spectators'] + cpu['crowd']:.2f}, "
          "everything else "
          f"(Postgres, other work) {others:.2f}; {cpu['machine']:.2f} of {cores} cores busy")
    for note in latency_notes(args, result):
        print(f"  limit             {note}")
    print(f"  matched           {len(result.receipt_ms):,} (increment, spectator) pairs; "
          f"{result.unseen} never seen; {result.snapshots_per_s:.2f} snapshots/s per "
          f"spectator while driving; board polled every {1000 * BOARD_POLL_S:g} ms "
          f"({result.board_samples:,} states seen)")
