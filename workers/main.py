"""The worker process: ``arq workers.main.WorkerSettings`` (the Procfile's ``worker``).

arq runs the scheduled jobs; arq does not consume streams, so ``on_startup``
starts the stream consumer as a supervised task beside arq's job loop. If
that task ever ends on its own (a bug, an error it cannot handle), the
process exits non-zero so its process manager restarts it; its entries are
still pending and a restart resumes them. On SIGTERM arq runs
``on_shutdown``, which lets the consumer finish its batch (commit,
acknowledge) before the connections close.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from typing import Any, ClassVar

from arq import cron
from arq.connections import RedisSettings

from scoreboard.db import create_pool
from scoreboard.logs import configure_logging
from scoreboard.lua import register_scripts
from scoreboard.moderation import Moderation
from scoreboard.redis_clients import redis_client
from scoreboard.settings import load_settings
from scoreboard.tracing import setup_tracing
from workers import jobs
from workers.arq_redis import arq_pool
from workers.batching import backoff_s
from workers.chaos import ChaosMarks
from workers.consumer import StreamConsumer, is_transient
from workers.fraud import FraudChecks
from workers.stream_metrics import WorkerMetrics

logger = logging.getLogger(__name__)

SETTINGS = load_settings()
KEYS = SETTINGS.keys
SHUTDOWN_GRACE_S = 30
RECONCILE_MINUTES = jobs.reconcile_minutes(SETTINGS.board_reconcile_minutes)
EXIT_CONSUMER_DIED = 70


async def _until_done(job: Any, ctx: dict[str, Any], *, attempts: int = 30) -> None:
    """A start-up job, retried while Redis or Postgres has a transient failure (a
    worker starting during a cluster failover would otherwise exit at once)."""
    for attempt in range(1, attempts + 1):
        try:
            await job(ctx)
            return
        except Exception as exc:
            if not is_transient(exc) or attempt == attempts:
                raise
            delay = backoff_s(attempt)
            logger.warning("start-up job %s: transient failure %r; retry in %.1f s",
                           job.__name__, exc, delay)
            await asyncio.sleep(delay)


def _supervise(task: asyncio.Task[None], *, consumer: StreamConsumer) -> None:
    if consumer.stopping:
        return
    error = None if task.cancelled() else task.exception()
    logger.critical("stream consumer stopped unexpectedly: %r; exiting", error, exc_info=error)
    os._exit(EXIT_CONSUMER_DIED)


async def startup(ctx: dict[str, Any]) -> None:
    configure_logging(SETTINGS.log_level)
    assert SETTINGS.redis_url is not None and SETTINGS.database_url is not None
    # decode_responses for the consumer's reads; no socket timeout shorter than
    # XREADGROUP's block.
    ctx["redis"] = redis_client(SETTINGS.redis_url, cluster=SETTINGS.redis_cluster,
                                decode_responses=True, socket_connect_timeout=2,
                                socket_timeout=SETTINGS.worker_block_ms / 1000 + 5,
                                health_check_interval=30)
    # A connection per batch in flight on each shard's stream, and a few for the
    # fraud checks and the scheduled jobs.
    ctx["pool"] = await create_pool(SETTINGS.database_url, min_size=1, max_size=3 + (
        SETTINGS.worker_in_flight * len(KEYS.every_shard)))
    ctx["keys"] = KEYS
    ctx["settings"] = SETTINGS
    ctx["scripts"] = register_scripts(ctx["redis"])
    ctx["tracing"] = setup_tracing("worker", os.environ)  # None unless OTEL_* turn it on
    ctx["metrics"] = WorkerMetrics.start(redis=ctx["redis"], pool=ctx["pool"], keys=KEYS,
                                         host=SETTINGS.worker_metrics_host,
                                         port=SETTINGS.worker_metrics_port)
    ctx["moderation"] = Moderation(redis=ctx["redis"], pool=ctx["pool"], scripts=ctx["scripts"],
                                   keys=KEYS)
    fraud = FraudChecks(ctx["moderation"], SETTINGS, consumer=SETTINGS.consumer)
    await _until_done(jobs.ensure_partitions, ctx)
    await _until_done(jobs.restore_restrictions_job, ctx)
    # One consumer per shard's stream (one unsharded), each supervised: every
    # worker process reads every shard, in the same consumer group per stream.
    consumers = [StreamConsumer(
        redis=ctx["redis"], pool=ctx["pool"], keys=shard_keys, group=SETTINGS.consumer_group,
        name=SETTINGS.consumer, batch_max=SETTINGS.worker_batch_max,
        block_ms=SETTINGS.worker_block_ms, claim_idle_ms=SETTINGS.claim_idle_ms,
        max_deliveries=SETTINGS.max_deliveries, in_flight=SETTINGS.worker_in_flight,
        chaos_exit_after_commit=SETTINGS.chaos_exit_after_commit,
        chaos_marks=ChaosMarks.from_settings(SETTINGS),
        after_batch=fraud.check_batch,
        every_second=fraud.record_decisions if index == 0 else None,
        tracing=ctx["tracing"], board_refresh_s=SETTINGS.board_refresh_s, board_keys=KEYS)
        for index, shard_keys in enumerate(KEYS.every_shard)]
    tasks = []
    for index, consumer in enumerate(consumers):
        task = asyncio.create_task(consumer.run(), name=f"stream-consumer-{index}")
        task.add_done_callback(functools.partial(_supervise, consumer=consumer))
        tasks.append(task)
    ctx["consumers"], ctx["consumer_tasks"] = consumers, tasks
    logger.info("stream consumer %s started in group %s on %d stream(s)",
                SETTINGS.consumer, SETTINGS.consumer_group, len(consumers))


async def shutdown(ctx: dict[str, Any]) -> None:
    if "metrics" in ctx:
        await ctx["metrics"].stop()
    consumers: list[StreamConsumer] = ctx.get("consumers", [])
    for consumer in consumers:
        consumer.stop()
    if consumers:
        try:
            await asyncio.wait_for(asyncio.gather(*ctx["consumer_tasks"]), SHUTDOWN_GRACE_S)
        except TimeoutError:
            logger.error("consumers did not finish within %s s; their batches stay pending",
                         SHUTDOWN_GRACE_S)
    if "pool" in ctx:
        await ctx["pool"].close()
    if "redis" in ctx:
        await ctx["redis"].aclose()
    if ctx.get("tracing") is not None:
        ctx["tracing"].shutdown()


def _redis_url() -> str:
    if SETTINGS.redis_url is None:
        raise RuntimeError("REDIS_URL must be set (the run command sets it)")
    return SETTINGS.redis_url


def _arq_redis_url() -> str:
    """arq's Redis: ``ARQ_REDIS_URL``, else ``REDIS_URL``. arq 0.28 runs MULTI over
    its job keys, which are not hash-tagged: on a cluster it needs a plain Redis."""
    if SETTINGS.arq_redis_url:
        return SETTINGS.arq_redis_url
    if SETTINGS.redis_cluster:
        raise RuntimeError("REDIS_CLUSTER is on: set ARQ_REDIS_URL to a plain (non-cluster) "
                           "Redis for arq's job queue")
    return _redis_url()


class WorkerSettings:
    functions: ClassVar = [jobs.rebuild_board_job]
    cron_jobs: ClassVar = [
        cron(jobs.ensure_partitions, hour={0, 12}, minute={5}, run_at_startup=False),
        cron(jobs.trim_stream, second={15}),
        *([cron(jobs.reconcile_boards, minute=RECONCILE_MINUTES)] if RECONCILE_MINUTES else []),
        cron(jobs.score_velocity_job, minute={2}),
        cron(jobs.anomaly_job, second={50}, timeout=600),
        cron(jobs.restore_restrictions_job, minute={20}),
        cron(jobs.archive_periods_job, second={40}),
        cron(jobs.history_checkpoints_job, minute={7}, timeout=3600),
        cron(jobs.retention_job, hour={3}, minute={37}, timeout=3600),
    ]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(_arq_redis_url())
    # arq's client: its commands wait out a Redis outage instead of ending the process.
    redis_pool = arq_pool(_arq_redis_url(), queue_name=KEYS.arq_queue)
    queue_name = KEYS.arq_queue
    health_check_interval = 10
    handle_signals = True
