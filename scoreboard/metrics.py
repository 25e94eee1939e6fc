"""Prometheus series more than one process shares, and how a process serves its series.

Each process keeps its own series next to the code that feeds them
(``ingest/metrics.py``, ``workers/stream_metrics.py``, ``broadcaster/hub.py``);
what is here is fed from several places:

- ``scoreboard_fraud_events_total{rule, severity}``: call
  :func:`count_fraud_event` wherever a fraud rule records an event.
- ``scoreboard_db_pool_in_use`` / ``scoreboard_db_pool_max``: the asyncpg
  pool of the process, sampled by :func:`sample_pool` (ingest and worker), for
  the pool-saturation alert.

Multiprocess mode: an ingest run as several server processes
(``uvicorn --workers N``) sets ``PROMETHEUS_MULTIPROC_DIR`` to an empty
folder; prometheus_client then keeps every value in files there (it reads the
variable when it is first imported) and :func:`exposition` merges all
processes' files into one answer. The gauges here say how to merge
(``livesum``: the sum over live processes).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

FRAUD_EVENTS = Counter("scoreboard_fraud_events_total",
                       "Fraud events recorded, by rule and severity", ["rule", "severity"])
POOL_IN_USE = Gauge("scoreboard_db_pool_in_use", "Postgres connections checked out of the pool",
                    multiprocess_mode="livesum")
POOL_MAX = Gauge("scoreboard_db_pool_max", "Most connections the Postgres pool may open",
                 multiprocess_mode="livesum")

POOL_SAMPLE_EVERY_S = 1.0


def observe_many(histogram: Any, amounts: Sequence[float]) -> None:
    """``histogram.observe(a)`` for each of ``amounts``, with one increment per bucket
    touched instead of one lock round per amount: the worker observes every
    entry of a batch (thousands a second), and per-entry ``observe`` was 3 % of
    its CPU. Relies on prometheus_client's Histogram internals (``_upper_bounds``,
    ``_buckets``, ``_sum``: the same since 0.4); without them, observes one by one.
    ``tests/test_pure_pipeline.py`` checks both give the same samples."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for amount in amounts:
            histogram.observe(amount)
        return
    counts = collections.Counter(bisect_left(bounds, amount) for amount in amounts)
    for index, count in counts.items():
        buckets[index].inc(count)
    total.inc(sum(amounts))


def count_fraud_event(rule: str, severity: str) -> None:
    """Count one fraud event of ``rule`` (a rule's fixed name, never a user id:
    each distinct value is a series of its own) at ``severity``."""
    FRAUD_EVENTS.labels(rule, severity).inc()


def sample_pool(pool: Any) -> None:
    """Record how much of ``pool`` (an ``asyncpg.Pool``) is in use right now."""
    POOL_IN_USE.set(pool.get_size() - pool.get_idle_size())
    POOL_MAX.set(pool.get_max_size())


async def sample_pool_forever(pool: Any, *, every_s: float = POOL_SAMPLE_EVERY_S) -> None:
    """Run as a task beside the pool; cancel it before closing the pool."""
    while True:
        sample_pool(pool)
        await asyncio.sleep(every_s)


def exposition(multiproc_dir: str = "") -> tuple[bytes, str]:
    """The text to answer ``GET /metrics`` with, and its content type.

    With ``multiproc_dir`` (``PROMETHEUS_MULTIPROC_DIR``) the series of every
    process writing there, merged; otherwise this process's own."""
    if multiproc_dir:
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            registry, path=multiproc_dir)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def forget_this_process(multiproc_dir: str = "") -> None:
    """At the end of a process in multiprocess mode: drop its ``live*`` gauge
    values so that the merged answer no longer counts them."""
    if multiproc_dir:
        with contextlib.suppress(OSError):
            prometheus_multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
                os.getpid(), multiproc_dir)
