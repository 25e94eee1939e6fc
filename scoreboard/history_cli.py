"""``scoreboard history BOARD --as-of TIME`` and ``scoreboard history-checkpoints``.

``history`` prints the top of a board as it stood at a moment, one JSON
entry a line, best first (the same answer as ``GET /api/scores/top?as_of=``);
a refused moment or an unknown board says why on stderr and exits 1.
``history-checkpoints`` writes the checkpoints the worker's hourly job would
(up to ``--until``, default: where the stream is all committed, less
``HISTORY_CHECKPOINT_LAG_S``), for an operator or a benchmark that cannot wait.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from scoreboard.db import create_pool
from scoreboard.errors import RequestError
from scoreboard.history import parse_as_of
from scoreboard.history_checkpoints import committed_horizon, write_due_checkpoints
from scoreboard.history_reads import board_exists, earliest_as_of, top_as_of
from scoreboard.settings import Settings

MAX_LIMIT = 10_000


def _limit(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def add_history_parsers(commands: Any) -> None:
    history = commands.add_parser("history", help="the top of a board as it stood at a past"
                                                  " moment, one JSON entry a line")
    history.add_argument("board")
    history.add_argument("--as-of", required=True, metavar="TIME",
                         help="ISO 8601 with a time zone, e.g. 2026-11-30T12:00:00Z")
    history.add_argument("--limit", type=_limit, default=10,
                         help=f"how many entries (10, at most {MAX_LIMIT})")
    checkpoints = commands.add_parser(
        "history-checkpoints", help="write the due checkpoints of the board history now")
    checkpoints.add_argument("--until", metavar="TIME",
                             help="the latest moment to cover (default: the safe horizon)")


async def _history(args: argparse.Namespace, settings: Settings) -> int:
    assert settings.database_url is not None
    pool = await create_pool(settings.database_url, max_size=2)
    try:
        moment = parse_as_of(args.as_of, now=datetime.now(UTC),
                             earliest=await earliest_as_of(pool))
        if not await board_exists(pool, args.board):
            print(f"board {args.board!r} does not exist", file=sys.stderr)
            return 1
        page = await top_as_of(pool, args.board, moment, args.limit,
                               rank_mode=settings.rank_ties)
    except RequestError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        await pool.close()
    for entry in page.entries:
        sys.stdout.buffer.write(orjson.dumps(entry.as_json()) + b"\n")
    return 0


async def _safe_horizon(settings: Settings) -> datetime:
    from scoreboard.redis_clients import redis_client

    assert settings.redis_url is not None
    client = redis_client(settings.redis_url, cluster=settings.redis_cluster,
                          decode_responses=True)
    try:
        return await committed_horizon(client, settings.keys, now=datetime.now(UTC),
                                       lag=timedelta(seconds=settings.history_checkpoint_lag_s))
    finally:
        await client.aclose()


async def _checkpoints(args: argparse.Namespace, settings: Settings) -> int:
    assert settings.database_url is not None
    if args.until is not None:
        try:
            horizon = parse_as_of(args.until, now=datetime.now(UTC), earliest=None)
        except RequestError as exc:
            print(exc, file=sys.stderr)
            return 1
    else:
        horizon = await _safe_horizon(settings)
    pool = await create_pool(settings.database_url, max_size=2)
    try:
        written: list[datetime] = []
        while True:  # every due one, in runs of the per-run limit
            batch = await write_due_checkpoints(
                pool, horizon=horizon,
                interval=timedelta(hours=settings.history_checkpoint_hours),
                limit=settings.history_checkpoints_per_run)
            written += batch
            if not batch:
                break
    finally:
        await pool.close()
    print(f"history checkpoints written: {len(written)}"
          + (f" ({written[0].isoformat()} .. {written[-1].isoformat()})" if written else ""))
    return 0


def main_history(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "history":
        return asyncio.run(_history(args, settings))
    return asyncio.run(_checkpoints(args, settings))
