"""The worker benchmark's two floors: bare COPY, and exactly-once persistence.

``run_copy_baseline``: binary COPY of the same rows into a table like
``actions``, one autocommitted COPY per batch (the floor of any insert).

``run_anchor``: the cost floor of exactly-once persistence.

Plain asyncpg, no Redis, the same rows in the same batches as the worker: per
``batch_max`` rows ONE transaction that COPYs them into a temporary staging
table, inserts them into ``actions`` with ``ON CONFLICT DO NOTHING``, and
upserts the per-(board, user) totals of the rows really inserted into
``scores``; then commits (fsync'd, as the worker's commit is). That is the
least any exactly-once writer of this schema does; what the worker adds on
top (the durable dedup record, the users upsert, reading the totals back,
the boards, XACK, fraud checks, the stream read) is its overhead.

``ON CONFLICT`` needs the key ``actions`` had until migration 010 (event id,
acceptance time, source), which the worker no longer uses (its durable record
is ``counted_events``): the anchor puts it back on its own database first, so
it does the same work as before that migration.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import asyncpg

from loadtest import BenchError
from loadtest.harness.cpu import CpuMeter, CpuUse
from loadtest.worker_workload import Workload
from scoreboard.stream_entry import StreamEntry
from workers.batching import entry_time, months_of

ANCHOR_KEY = "ALTER TABLE actions ADD PRIMARY KEY (event_id, created_at, source)"
STAGING = """
CREATE TEMP TABLE IF NOT EXISTS anchor_staging (LIKE actions) ON COMMIT DELETE ROWS
"""
BASELINE_TABLE = "actions_copy_baseline"
# Exactly the columns of ``actions``, in its order.
ACTION_COLUMNS = ("event_id", "created_at", "user_id", "board", "points", "source",
                  "client_addr", "request_id", "stream_id")
INSERT_AND_SUM = """
WITH inserted AS (
    INSERT INTO actions SELECT * FROM anchor_staging
    ON CONFLICT DO NOTHING
    RETURNING board, user_id, points, created_at
)
INSERT INTO scores (board, user_id, score, reached_at)
SELECT board, user_id, sum(points), max(created_at) FROM inserted
GROUP BY board, user_id ORDER BY board, user_id
ON CONFLICT (board, user_id) DO UPDATE
SET score = scores.score + EXCLUDED.score,
    reached_at = GREATEST(scores.reached_at, EXCLUDED.reached_at),
    version = scores.version + 1
"""


def action_record(entry: StreamEntry) -> tuple[object, ...]:
    """An entry as the row of ``actions`` the worker writes for it (ACTION_COLUMNS)."""
    return (entry.event_id, entry_time(entry), entry.user_id, entry.board, entry.points,
            entry.source, entry.ip or None, entry.request_id or None, entry.stream_id)


@dataclass
class AnchorResult:
    rows: int
    batch_s: list[float]
    cpu: CpuUse

    @property
    def rate(self) -> float:
        return self.rows / sum(self.batch_s)


async def run_anchor(database_url: str, workload: Workload, ids: Sequence[str],
                     meter: CpuMeter, *, batch_max: int) -> AnchorResult:
    """The anchor's transactions over the whole workload, on a migrated database of
    its own; the rows are built before the timed loop."""
    connection = await asyncpg.connect(database_url, timeout=30)
    try:
        months = months_of(workload.entries(ids, 0, 1)) | months_of(
            workload.entries(ids, len(workload) - 1, len(workload)))
        for month in months:
            await connection.execute("SELECT ensure_actions_partitions($1, 1)", month)
        await connection.execute(ANCHOR_KEY)
        batches = [[action_record(e) for e in workload.entries(
            ids, start, min(len(workload), start + batch_max))]
            for start in range(0, len(workload), batch_max)]
        batch_s: list[float] = []
        before = meter.snapshot(os.getpid())
        for records in batches:
            started = time.perf_counter()
            async with connection.transaction():
                await connection.execute(STAGING)
                await connection.copy_records_to_table("anchor_staging", records=records,
                                                       columns=ACTION_COLUMNS, timeout=60)
                await connection.execute(INSERT_AND_SUM, timeout=60)
            batch_s.append(time.perf_counter() - started)
        after = meter.snapshot(os.getpid())
        rows = await connection.fetchval("SELECT count(*) FROM actions")
        total = await connection.fetchval("SELECT sum(score) FROM scores")
    finally:
        await connection.close()
    expected = sum(v for v in workload.expected_totals().values())
    if rows != len(workload) or total != expected:
        raise BenchError(f"the anchor wrote {rows:,} rows and {total:,} points; expected "
                           f"{len(workload):,} and {expected:,}")
    return AnchorResult(rows=rows, batch_s=batch_s, cpu=meter.between(before, after))


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
        batches = [[action_record(e) for e in workload.entries(
            ids, start, min(len(workload), start + batch_max))]
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
