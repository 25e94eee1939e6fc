"""What the end-to-end benchmark samples while a phase runs: consumer lag every
0.25 s, rows in ``actions`` and every party's CPU every 1 s and at the window's
edges, the worker's own histograms from its metrics port, and the dedup markers
left after the run."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any

import asyncpg
import redis

from loadtest.e2e_report import Sample
from loadtest.harness.cpu import machine_times, postgres_cpu_s, process_table
from loadtest.harness.http import scrape_async
from scoreboard.keys import Keys

LAG_EVERY_S = 0.25
FULL_EVERY_S = 1.0

# The consumer lag of group ARGV[1] on stream KEYS[1], in one atomic read (Redis 6.2
# has no XINFO "lag"): {pending + undelivered entries, id of the oldest of them or ""}.
# Counting the undelivered ones walks them, but they are few: the worker reads as
# soon as entries arrive, and a large backlog is exactly what this must show.
LAG_LUA = """
local info = redis.call('XINFO', 'GROUPS', KEYS[1])
for _, group in ipairs(info) do
  local fields = {}
  for i = 1, #group, 2 do fields[group[i]] = group[i + 1] end
  if fields['name'] == ARGV[1] then
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
    local undelivered = redis.call('XRANGE', KEYS[1], '(' .. fields['last-delivered-id'], '+')
    local oldest = ''
    if pending[1] > 0 then oldest = pending[2]
    elseif #undelivered > 0 then oldest = undelivered[1][1] end
    return {pending[1] + #undelivered, oldest}
  end
end
return {0, ''}
"""



class Sampler:
    """Consumer lag every 0.25 s; rows and CPU every 1 s and at the window's edges."""

    def __init__(self, *, redis_client: Any, database_url: str, keys: Keys | None, group: str,
                 pids: dict[str, int], postmaster: int | None, metrics_url: str | None) -> None:
        self.metrics_url = metrics_url
        self.redis = redis_client
        self.database_url = database_url
        self.keys = keys
        self.group = group
        self.pids = pids
        self.postmaster = postmaster
        self.samples: list[Sample] = []
        self.stopping = asyncio.Event()

    async def lag(self) -> tuple[int, float]:
        """(entries not acknowledged by the group: pending + not yet delivered, age in
        ms of the oldest of them), read atomically by LAG_LUA."""
        assert self.keys is not None
        try:
            waiting, oldest = await self.redis.eval(LAG_LUA, 1, self.keys.stream, self.group)
        except redis.ResponseError:  # no stream or group yet
            return 0, 0.0
        if not oldest:
            return int(waiting), 0.0
        return int(waiting), max(0.0, time.time() * 1000 - int(str(oldest).split("-")[0]))

    async def cpu(self) -> dict[str, float]:
        table = process_table()
        cpu = {name: table[pid].own_s for name, pid in self.pids.items() if pid in table}
        postgres = postgres_cpu_s(table, self.postmaster)
        if postgres is not None:
            cpu["postgres"] = postgres
        info = await self.redis.info("cpu")
        cpu["redis"] = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        cpu.update(machine_times())
        cpu["orchestrator"] = time.process_time()
        return cpu

    async def take(self, connection: Any, *, full: bool, edge: str = "") -> None:
        sample = Sample(t=time.monotonic(), edge=edge)
        if self.keys is not None:
            sample.waiting, sample.oldest_ms = await self.lag()
        if edge and self.metrics_url:
            sample.worker = await worker_series(self.metrics_url)
        if edge:
            sample.redis_memory = int((await self.redis.info("memory"))["used_memory"])
        if full:
            sample.cpu = await self.cpu()
            sample.rows = int(await connection.fetchval("SELECT count(*) FROM actions"))
        self.samples.append(sample)

    async def run(self, window_start: float, window_end: float) -> None:
        connection = await asyncpg.connect(self.database_url, timeout=30)
        try:
            edges = [(window_start, "start"), (window_end, "end")]
            next_full = time.monotonic()
            while not self.stopping.is_set():
                now = time.monotonic()
                if edges and now >= edges[0][0]:
                    await self.take(connection, full=True, edge=edges.pop(0)[1])
                    next_full = time.monotonic() + FULL_EVERY_S
                elif now >= next_full:
                    await self.take(connection, full=True)
                    next_full += FULL_EVERY_S
                else:
                    await self.take(connection, full=False)
                wake = min(time.monotonic() + LAG_EVERY_S, next_full,
                           edges[0][0] if edges else math.inf)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(),
                                           max(0.0, wake - time.monotonic()))
            await self.take(connection, full=True)
        finally:
            await connection.close()


async def worker_series(url: str) -> dict[str, float] | None:
    """The worker's batch histograms (scoreboard_worker_batch_seconds / _size) from its
    metrics port: ``seconds:<le>`` cumulative counts, ``size_sum``, ``size_count``."""
    samples = await scrape_async(url)
    if samples is None:
        return None
    series: dict[str, float] = {}
    for name, labels, value in samples:
        if name == "scoreboard_worker_batch_seconds_bucket":
            series[f"seconds:{labels['le']}"] = value
        elif name == "scoreboard_worker_freshness_seconds_bucket":
            series[f"fresh:{labels['le']}"] = value
        elif name in ("scoreboard_worker_batch_size_sum", "scoreboard_worker_batch_size_count"):
            series["size_" + name.rsplit("_", 1)[1]] = value
    return series


async def dedup_markers(client: Any, keys: Keys) -> tuple[int, float]:
    """(event-id marks alive, the bytes per mark of their windows' SETs), every
    source's (``scoreboard.dedup_marks``); MEMORY USAGE estimates a large SET from
    a sample of its members."""
    alive, size = 0, 0
    async for key in client.scan_iter(match=keys.event_marks("*") + "*", count=1000):
        alive += int(await client.scard(key))
        size += int(await client.memory_usage(key) or 0)
    return alive, (size / alive if alive else 0.0)
