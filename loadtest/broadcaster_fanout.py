"""Part 1 of the broadcaster benchmark: fan-out to N spectators, against its floor.

For each size N the same client processes first drive the anchor
(``loadtest/fanout_anchor.py``: one pre-encoded frame of the same shape and
size to every socket 10 times a second, nothing else), then a fresh
broadcaster serving one board of ``BOARD_PLAYERS`` players, changed
continuously through the worker's own write path (Postgres, then Redis).
One window is measured per server: delivery latency, snapshots received per
client, memory per connection, every party's CPU. What is measured and why:
the docstring of ``loadtest/bench_broadcaster.py`` (its ``--help``); the
report and its targets: ``loadtest/broadcaster_report.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as redis_asyncio
import uvloop
from websockets.asyncio.client import connect

from loadtest import BenchError
from loadtest.broadcaster_report import DEFAULT_SNAPSHOT_SIZE, FanoutPair, FanoutResult
from loadtest.harness.backing import Backing
from loadtest.harness.players import ingest_env
from loadtest.harness.processes import broadcaster_process, http_process
from loadtest.harness.spectators import Fleet, writing_beside
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
    rss_start = rss_peak = 0

    async def sample_rss() -> None:  # the window: the broadcaster's memory at its start and peak
        nonlocal rss_start, rss_peak
        rss_start = rss_peak = vm_rss_kb(pid)
        window_end = time.perf_counter() + args.window
        while (left := window_end - time.perf_counter()) > 0:
            rss_peak = max(rss_peak, vm_rss_kb(pid))
            await asyncio.sleep(min(0.5, left))

    async with Fleet.open(ws_url, args.client, total=size,
                          processes=args.client_procs) as fleet:
        connected = await fleet.connect(parallel=args.connect_parallel,
                                        deadline_s=args.connect_deadline)
        writer = write_board(backing, FANOUT_BOARD, args.writer_rate, stop,
                             writer_stats) if ours else None
        async with writing_beside(writer, stop) as writer_check:
            await asyncio.sleep(args.settle)
            metrics_before = await asyncio.to_thread(scrape_counters, url) if ours else {}
            window = await fleet.window(sample_rss, server_pid=pid, redis_client=redis_client)
            rss_with = vm_rss_kb(pid)
            metrics_after = await asyncio.to_thread(scrape_counters, url) if ours else {}
            await writer_check()

    def delta(name: str) -> float:
        return metrics_after.get(name, 0.0) - metrics_before.get(name, 0.0)

    return FanoutResult(
        server=server, size=size, processes=len(fleet.clients),
        connected=connected.connected, connect_failures=connected.failures,
        connect_s=connected.seconds, window_s=window.seconds,
        per_client=sorted(window.per_client), bins=window.bins, closed=window.closed,
        still_open=window.still_open, rss_before_kb=rss_before, rss_start_kb=rss_start,
        rss_with_kb=rss_with, rss_peak_kb=max(rss_peak, rss_with),
        built=(delta("scoreboard_snapshots_built_total") / window.span_s if ours
               else 1 / ANCHOR_INTERVAL_S),
        dropped={k.split('"')[1]: v for k, v in metrics_after.items()
                 if k.startswith("scoreboard_spectators_dropped_total{") and v},
        cpu=window.cpu,
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
