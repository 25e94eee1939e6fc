"""Part 3 of the broadcaster benchmark: the personal rank feed at N watchers.

For each number of watched players W, the same client processes first drive
the anchor (``loadtest/fanout_anchor.py``: every 100 ms one snapshot frame to
every socket and one rank frame per watched player, built once and written to
that player's watchers, nothing else), then a fresh broadcaster (``python -m
broadcaster``, SNAPSHOT_INTERVAL_MS=100). ``--watchers`` WebSocket spectators
of one board each watch one of W players (spectator i watches player
i mod W, so each player has N / W watchers). A writer in this process sets
every watched player's total ``--watch-writer-rate`` times a second through
the worker's Redis write path (``apply_and_ack``: totals, revision, notice;
Postgres is not on this path, part 1 has it), each total ``(ms since the
run's epoch) * 1000 + k``: every tick every watched player's score and
neighbours change, so every player's rank message goes out each tick (the
worst case for the feed: W reads and W encodings per tick), besides the
board's snapshot. The order of the players does not change.

Measured in a ``--window`` s window, every party's CPU beside:

- messages/s received (snapshots and rank messages), rank messages apart;
- server CPU per delivered message, ours ÷ the anchor;
- ts -> receipt (built -> delivered), both servers;
- freshness of rank messages: receipt minus the time the writer set that
  total (read from the score), i.e. notice + throttle + the Redis read of all
  watched players + encoding + fan-out. For the anchor, which reads nothing,
  it is its own tick plus delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as redis_asyncio
import uvloop

from loadtest.harness.backing import Backing
from loadtest.harness.figures import histogram_percentile
from loadtest.harness.players import ingest_env
from loadtest.harness.processes import broadcaster_process, http_process
from loadtest.harness.spectators import Fleet, writing_beside
from scoreboard.board_writes import BoardTotal, apply_and_ack
from scoreboard.embedded import free_port
from scoreboard.keys import Keys
from scoreboard.lua import register_scripts

WATCH_BOARD = "watched"


@dataclass
class WatchResult:
    server: str  # "ours" or "anchor"
    watchers: int
    watched: int
    connected: int
    connect_failures: dict[str, int]
    window_s: float
    messages: int  # received in the window, all kinds
    ranks: int  # of which rank messages
    bins: dict[int, int]  # ts -> receipt
    fresh_bins: dict[int, int]  # total written -> rank message received
    closed: dict[str, int]
    built_per_s: float  # rank updates encoded per second (the anchor: W per tick)
    cpu: dict[str, float]
    writes_per_s: float

    @property
    def received(self) -> float:
        return self.messages / self.window_s if self.window_s else 0.0

    @property
    def ranks_per_s(self) -> float:
        return self.ranks / self.window_s if self.window_s else 0.0

    @property
    def cpu_per_message_us(self) -> float:
        return 1e6 * self.cpu["server"] / max(self.received, 1e-9)


@dataclass(frozen=True)
class WatchPair:
    ours: WatchResult
    anchor: WatchResult


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def write_watched(backing: Backing, rate: float, watched: int, epoch_ms: int,
                        stop: asyncio.Event, counted: list[float], *,
                        limit: int | None = None) -> None:
    """Set every watched player's total ``rate`` times/s (``limit`` times at most);
    ``counted`` gets [writes, seconds]."""
    client = redis_asyncio.Redis.from_url(backing.redis_url, decode_responses=True)
    scripts, keys = register_scripts(client), Keys(backing.key_prefix)
    loop, writes = asyncio.get_running_loop(), 0
    started = loop.time()
    try:
        while not stop.is_set() and (limit is None or writes < limit):
            delay = started + writes / rate - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            now = datetime.now(UTC)
            base = (int(now.timestamp() * 1000) - epoch_ms) * 1000
            totals = [BoardTotal(board=WATCH_BOARD, user_id=f"watched_{k}", score=base + k,
                                 reached_at=now, version=base + k, username=f"watched {k}")
                      for k in range(watched)]
            await apply_and_ack(client, scripts, keys, group="persisters", totals=totals,
                                ack_ids=[])
            writes += 1
    finally:
        counted[:] = [writes, loop.time() - started]
        await client.aclose()


async def measure(args: argparse.Namespace, backing: Backing, watched: int, url: str,
                  pid: int, redis_client: Any, *, server: str, epoch_ms: int) -> WatchResult:
    ours = server == "ours"
    ws_url = url.replace("http://", "ws://") + f"/ws?board={WATCH_BOARD}"
    stop, counted = asyncio.Event(), [0.0, 0.0]
    if ours:  # the players exist before anyone watches them
        await write_watched(backing, 1000, watched, epoch_ms, stop, [0.0, 0.0], limit=1)
    async with Fleet.open(ws_url, args.client, total=args.watchers,
                          processes=args.client_procs) as fleet:
        connected = await fleet.connect(parallel=args.connect_parallel,
                                        deadline_s=args.connect_deadline,
                                        watch_players=watched, epoch_ms=epoch_ms)
        writer = write_watched(backing, args.watch_writer_rate, watched, epoch_ms, stop,
                               counted) if ours else None
        async with writing_beside(writer, stop) as writer_check:
            await asyncio.sleep(args.settle)
            built_before = await asyncio.to_thread(
                _metric, url, "scoreboard_rank_updates_built_total") if ours else 0.0
            window = await fleet.window(lambda: asyncio.sleep(args.window), server_pid=pid,
                                        redis_client=redis_client)
            built_after = await asyncio.to_thread(
                _metric, url, "scoreboard_rank_updates_built_total") if ours else 0.0
            await writer_check()
    return WatchResult(
        server=server, watchers=args.watchers, watched=watched,
        connected=connected.connected, connect_failures=connected.failures,
        window_s=window.seconds, messages=sum(window.per_client), ranks=window.ranks,
        bins=window.bins, fresh_bins=window.fresh_bins, closed=window.closed,
        built_per_s=(built_after - built_before) / window.span_s if ours else watched * 10.0,
        cpu=window.cpu, writes_per_s=counted[0] / counted[1] if counted[1] else 0.0)


@contextlib.contextmanager
def anchor_process(log_path: Path, epoch_ms: int) -> Iterator[tuple[str, int]]:
    port = free_port()
    with http_process([sys.executable, "-m", "loadtest.fanout_anchor", "--port", str(port),
                       "--board", WATCH_BOARD, "--players", "10", "--interval-ms", "100",
                       "--epoch-ms", str(epoch_ms)], {**os.environ}, log_path, port=port,
                      ready_path="/healthz", what="the anchor") as found:
        yield found


def run_watchers(args: argparse.Namespace, backing: Backing, root: Path,
                 redis_client: Any) -> list[WatchPair]:
    """For each number of watched players, the anchor then ours, same clients."""
    pairs = []
    epoch_ms = int(time.time() * 1000)
    for watched in args.watched:
        measured: dict[str, WatchResult] = {}
        for server in ("anchor", "ours"):
            print(f"rank feed: {args.watchers:,} watchers of {watched:,} players, "
                  f"{server}…", flush=True)
            log = root / f"watch-{server}-{watched}.log"
            with (anchor_process(log, epoch_ms) if server == "anchor" else
                  broadcaster_process(ingest_env(backing), log, max_per_ip=args.watchers + 100)
                  ) as (url, pid):
                measured[server] = uvloop.run(measure(args, backing, watched, url, pid,
                                                      redis_client, server=server,
                                                      epoch_ms=epoch_ms))
        pairs.append(WatchPair(ours=measured["ours"], anchor=measured["anchor"]))
    return pairs


def _print_one(r: WatchResult) -> None:
    name = "ours (python -m broadcaster)" if r.server == "ours" else "anchor (bare server)"
    print(f"\n  {r.watchers:,} watchers of {r.watched:,} players, {name}")
    print(f"    connected         {r.connected:,}"
          + (f"; FAILED {r.connect_failures}" if r.connect_failures else ""))
    print(f"    delivered         {r.received:,.0f} messages/s ({r.ranks_per_s:,.0f} rank "
          f"messages/s, the rest snapshots), {r.cpu_per_message_us:.1f} µs of server CPU "
          f"each; rank updates encoded {r.built_per_s:,.0f}/s"
          + (f" (writes {r.writes_per_s:.1f}/s)" if r.server == "ours" else ""))
    print(f"    ts->recv          p50 {histogram_percentile(r.bins, 0.5):.1f} ms, p99 "
          f"{histogram_percentile(r.bins, 0.99):.1f} ms")
    print(f"    written->recv     p50 {histogram_percentile(r.fresh_bins, 0.5):.1f} ms, p99 "
          f"{histogram_percentile(r.fresh_bins, 0.99):.1f} ms, max "
          f"{histogram_percentile(r.fresh_bins, 1.0):.1f} ms (rank messages)")
    print(f"    CPU in window     server {r.cpu['server']:.2f}, clients "
          f"{r.cpu['clients']:.2f}, redis {r.cpu['redis']:.2f}, writer+orchestrator "
          f"{r.cpu['orchestrator']:.2f}; machine {r.cpu['machine']:.2f} of "
          f"{os.cpu_count()} cores busy")
    if r.closed:
        print(f"    WARNING           closed in window {r.closed}")
    if r.cpu["server"] >= 0.9:
        print("    limit             the server's event loop was CPU-bound")
    if r.cpu["machine"] >= 0.9 * (os.cpu_count() or 1):
        print("    limit             the machine was saturated: clients and server share it")


def report_watchers(args: argparse.Namespace, pairs: list[WatchPair]) -> None:
    print(f"\nPart 3  rank feed: ONE server process, {args.watchers:,} WebSocket watchers "
          f"(each watches one player and gets the board's snapshots too), every watched "
          f"player's total set {args.watch_writer_rate:g} times/s so each one's rank message "
          f"goes out every 100 ms tick; {args.window:g} s window after {args.settle:g} s "
          "settle. The anchor: the same snapshot and rank frames, built once per tick and "
          "player, no Redis")
    for pair in pairs:
        _print_one(pair.anchor)
        _print_one(pair.ours)
    print("\n  ours ÷ anchor, same watchers, same run, same clients")
    for pair in pairs:
        ours, anchor = pair.ours, pair.anchor
        print(f"  {ours.watched:>6,} watched  messages/s "
              f"{ours.received / max(anchor.received, 1e-9):.2f}, rank messages/s "
              f"{ours.ranks_per_s / max(anchor.ranks_per_s, 1e-9):.2f}, "
              f"CPU per message "
              f"{ours.cpu_per_message_us / max(anchor.cpu_per_message_us, 1e-9):.2f}, "
              f"redis {ours.cpu['redis']:.2f} cores")
