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
import logging
import os
from typing import Any, ClassVar

import redis.asyncio as redis_asyncio
from arq import cron
from arq.connections import RedisSettings

from scoreboard.db import create_pool
from scoreboard.keys import Keys
from scoreboard.logs import configure_logging
from scoreboard.lua import register_scripts
from scoreboard.moderation import Moderation
from scoreboard.settings import load_settings
from scoreboard.tracing import setup_tracing
from workers import jobs
from workers.arq_redis import arq_pool
from workers.chaos import ChaosMarks
from workers.consumer import StreamConsumer
from workers.fraud import FraudChecks
from workers.stream_metrics import WorkerMetrics

logger = logging.getLogger(__name__)

SETTINGS = load_settings()
KEYS = Keys(SETTINGS.key_prefix)
SHUTDOWN_GRACE_S = 30
EXIT_CONSUMER_DIED = 70


def _supervise(task: asyncio.Task[None], consumer: StreamConsumer) -> None:
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
    ctx["redis"] = redis_asyncio.Redis.from_url(SETTINGS.redis_url, decode_responses=True,
                                                socket_connect_timeout=2,
                                                socket_timeout=SETTINGS.worker_block_ms / 1000 + 5,
                                                health_check_interval=30)
    ctx["pool"] = await create_pool(SETTINGS.database_url, min_size=1, max_size=5)
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
    await jobs.ensure_partitions(ctx)
    await jobs.restore_restrictions_job(ctx)
    consumer = StreamConsumer(
        redis=ctx["redis"], pool=ctx["pool"], keys=KEYS, group=SETTINGS.consumer_group,
        name=SETTINGS.consumer, batch_max=SETTINGS.worker_batch_max,
        block_ms=SETTINGS.worker_block_ms, claim_idle_ms=SETTINGS.claim_idle_ms,
        max_deliveries=SETTINGS.max_deliveries,
        chaos_exit_after_commit=SETTINGS.chaos_exit_after_commit,
        chaos_marks=ChaosMarks.from_settings(SETTINGS),
        after_batch=fraud.check_batch, every_second=fraud.record_decisions,
        tracing=ctx["tracing"], board_refresh_s=SETTINGS.board_refresh_s)
    task = asyncio.create_task(consumer.run(), name="stream-consumer")
    task.add_done_callback(lambda t: _supervise(t, consumer))
    ctx["consumer"], ctx["consumer_task"] = consumer, task
    logger.info("stream consumer %s started in group %s", consumer.name, consumer.group)


async def shutdown(ctx: dict[str, Any]) -> None:
    if "metrics" in ctx:
        await ctx["metrics"].stop()
    consumer: StreamConsumer | None = ctx.get("consumer")
    if consumer is not None:
        consumer.stop()
        try:
            await asyncio.wait_for(ctx["consumer_task"], SHUTDOWN_GRACE_S)
        except TimeoutError:
            logger.error("consumer did not finish within %s s; its batch stays pending",
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


class WorkerSettings:
    functions: ClassVar = [jobs.rebuild_board_job]
    cron_jobs: ClassVar = [
        cron(jobs.ensure_partitions, hour={0, 12}, minute={5}, run_at_startup=False),
        cron(jobs.trim_stream, second={15}),
        cron(jobs.reconcile_boards, minute={0, 15, 30, 45}),
        cron(jobs.score_velocity_job, minute={2}),
        cron(jobs.restore_restrictions_job, minute={20}),
        cron(jobs.archive_periods_job, second={40}),
        cron(jobs.history_checkpoints_job, minute={7}, timeout=3600),
        cron(jobs.retention_job, hour={3}, minute={37}, timeout=3600),
    ]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(_redis_url())
    # arq's client: its commands wait out a Redis outage instead of ending the process.
    redis_pool = arq_pool(_redis_url(), queue_name=KEYS.arq_queue)
    queue_name = KEYS.arq_queue
    health_check_interval = 10
    handle_signals = True
