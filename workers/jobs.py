"""arq jobs: partitions ahead of time, stream trimming, board reconciliation, rebuild,
history checkpoints, retention and the anomaly score's passes.

Each is safe to run on two workers at once or to be killed half-way:
partition creation is serialised in Postgres and skips existing months; the
trim point only ever covers acknowledged entries; reconciliation only raises
scores to committed totals; a rebuild swaps in a complete copy or nothing;
a checkpoint is written whole under an advisory lock or not at all;
retention drops a partition only after the checkpoint at its end exists.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from scoreboard.anomaly_scoring import score_and_review
from scoreboard.archives import NOT_ARCHIVED, archive_periods
from scoreboard.board_writes import rebuild_board, reconcile_board
from scoreboard.history import retention_cutoff
from scoreboard.history_checkpoints import committed_horizon, write_due_checkpoints
from scoreboard.moderation import restore_restrictions
from scoreboard.retention import drop_expired_partitions
from scoreboard.stream_trim import trim_acknowledged
from workers.fraud import score_velocity

logger = logging.getLogger(__name__)

PARTITION_MONTHS_AHEAD = 3  # this month and the next two


async def ensure_partitions(ctx: dict[str, Any]) -> int:
    created: int = await ctx["pool"].fetchval(
        "SELECT ensure_actions_partitions($1, $2)", datetime.now(UTC).date(),
        PARTITION_MONTHS_AHEAD)
    if created:
        logger.info("created %d actions partitions", created)
    return created


async def trim_stream(ctx: dict[str, Any]) -> str | None:
    """Trim each shard's stream (one unsharded) below the oldest entry some consumer
    group still needs; returns the last shard's trim point."""
    redis, keys = ctx["redis"], ctx["keys"]
    trimmed = None
    for shard in keys.every_shard:
        trimmed = await trim_acknowledged(redis, shard.stream)
    return trimmed


def reconcile_minutes(every: int) -> set[int]:
    """The minutes of each hour the reconcile job runs at, every ``every`` minutes
    from the hour's start (``BOARD_RECONCILE_MINUTES``; 0: never)."""
    return set(range(0, 60, every)) if every else set()


async def reconcile_boards(ctx: dict[str, Any]) -> int:
    redis, pool, keys = ctx["redis"], ctx["pool"], ctx["keys"]
    # Archived periods are frozen and their Redis keys expire: not reconciled.
    boards = [row["board"] for row in await pool.fetch(
        "SELECT DISTINCT board FROM scores WHERE " + NOT_ARCHIVED.format(column="scores.board"))]
    for board in boards:
        await reconcile_board(redis, pool, ctx["scripts"], keys, board)
    return len(boards)


async def score_velocity_job(ctx: dict[str, Any]) -> int:
    """Hourly: the score-velocity rule over the last complete hour."""
    return len(await score_velocity(ctx["moderation"], ctx["settings"]))


async def anomaly_job(ctx: dict[str, Any]) -> int:
    """Every minute, a pass of the anomaly score when one is due (``ANOMALY_EVERY_S``
    since the last, on any worker: a Redis key living that long); returns how many
    accounts it asked a moderator about. A period rather than an hourly cron, so
    the fraud simulator's time scale shortens it like every other rule's."""
    settings = ctx["settings"]
    if not settings.anomaly_scoring:
        return 0
    if not await ctx["redis"].set(ctx["keys"].anomaly_due, "1", nx=True,
                                  px=settings.anomaly_every_s * 1000):
        return 0
    try:
        scored = await score_and_review(ctx["pool"], settings)
    except ModuleNotFoundError as exc:  # installed without the "anomaly" extra
        logger.warning("anomaly pass skipped: %s (pip install 'live-scoreboard[anomaly]', or"
                       " ANOMALY_SCORING=false)", exc)
        return 0
    reviewed = sum(1 for s in scored if s.reviewed)
    logger.info("anomaly pass: %d accounts scored, %d for review", len(scored), reviewed)
    return reviewed


async def restore_restrictions_job(ctx: dict[str, Any]) -> int:
    """Flags, bans and revoked tokens from Postgres back into Redis (idempotent)."""
    return await restore_restrictions(ctx["redis"], ctx["pool"], ctx["keys"])


async def archive_periods_job(ctx: dict[str, Any]) -> int:
    """Every minute: archive the windows' periods that ended (scoreboard/archives.py)."""
    settings = ctx["settings"]
    archived = await archive_periods(
        ctx["redis"], ctx["pool"], ctx["keys"], now=datetime.now(UTC),
        grace_s=settings.period_archive_grace_s, key_ttl_s=settings.period_key_ttl_s,
        service_max=settings.max_points_per_increment)
    return len(archived)


async def history_checkpoints_job(ctx: dict[str, Any]) -> int:
    """Hourly: the checkpoints ``as_of`` starts from, up to where the stream is all
    committed (scoreboard/history.py: ``checkpoint_horizon``)."""
    settings = ctx["settings"]
    horizon = await committed_horizon(ctx["redis"], ctx["keys"], now=datetime.now(UTC),
                                      lag=timedelta(seconds=settings.history_checkpoint_lag_s))
    written = await write_due_checkpoints(
        ctx["pool"], horizon=horizon, interval=timedelta(hours=settings.history_checkpoint_hours),
        limit=settings.history_checkpoints_per_run)
    return len(written)


async def retention_job(ctx: dict[str, Any]) -> int:
    """Daily: drop the partitions of ``actions`` older than ``RETENTION_MONTHS``."""
    cutoff = retention_cutoff(datetime.now(UTC), ctx["settings"].retention_months)
    if cutoff is None:
        return 0
    return len(await drop_expired_partitions(ctx["pool"], cutoff))


async def rebuild_board_job(ctx: dict[str, Any], board: str) -> int:
    return await rebuild_board(ctx["redis"], ctx["pool"], ctx["scripts"], ctx["keys"], board)
