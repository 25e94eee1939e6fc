"""Helpers of the windows tests: boards with windows, seeding through the worker's
write path with the definitions it would read."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from scoreboard.board_defs import BoardDefinition, create_board, definition
from scoreboard.board_writes import apply_and_ack
from scoreboard.db import create_pool
from scoreboard.keys import Keys
from scoreboard.lua import register_scripts
from scoreboard.stream_entry import StreamEntry
from scoreboard.windows import check_spec, parse_season
from tests.servers import Backing
from workers.persist import PartitionCache, persist_batch


def ms(text: str) -> int:
    """Milliseconds since the epoch of an ISO time with an offset."""
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def make_board(backing: Backing, board: str, *, windows: Sequence[str] = ("all_time",),
               timezone: str = "UTC", hour: int = 0, operator: str = "sum",
               seasons: Sequence[str] = (), key_prefix: str | None = None,
               created_at: str | None = None) -> BoardDefinition:
    """Create a board as the admin command does; ``created_at`` back-dates it (the
    archive job archives periods from a board's creation on)."""
    made = definition(board, (("play", 1),), None, service_max=1000, operator=operator,
                      spec=check_spec(windows, timezone, hour,
                                      [parse_season(s) for s in seasons]))

    async def run() -> None:
        pool = await create_pool(backing.database_url, max_size=1)
        client = backing.async_redis()
        try:
            await create_board(pool, client,
                               Keys(key_prefix or backing.key_prefix).board_definitions, made)
            if created_at is not None:
                await pool.execute("UPDATE boards SET created_at = $2 WHERE board = $1", board,
                                   datetime.fromisoformat(created_at.replace("Z", "+00:00")))
        finally:
            await client.aclose()
            await pool.close()

    asyncio.run(run())
    return made


def entry(user_id: str, points: int, at: str | int, *, board: str,
          event_id: str | None = None) -> StreamEntry:
    return StreamEntry(stream_id="0-1", event_id=event_id or "w-" + secrets.token_hex(8),
                       user_id=user_id, username=f"name of {user_id}", board=board,
                       points=points, source="test", ts_ms=at if isinstance(at, int) else ms(at),
                       ip="", request_id="")


def seed(backing: Backing, keys: Keys, entries: Sequence[StreamEntry],
         boards: Sequence[BoardDefinition]) -> None:
    """Persist ``entries`` and set the boards in Redis, as a worker that knows
    ``boards`` does."""

    async def run() -> None:
        client = backing.async_redis(decode_responses=True)
        pool = await create_pool(backing.database_url, max_size=2)
        try:
            async with pool.acquire() as connection:
                result = await persist_batch(connection, entries, PartitionCache(),
                                             {b.board: b for b in boards})
            await apply_and_ack(client, register_scripts(client), keys, group="persisters",
                                totals=result.totals, ack_ids=[])
        finally:
            await pool.close()
            await client.aclose()

    asyncio.run(run())


def sql(backing: Backing, query: str, *args: Any) -> list[Any]:
    async def run() -> list[Any]:
        connection = await asyncpg.connect(backing.database_url)
        try:
            return list(await connection.fetch(query, *args))
        finally:
            await connection.close()

    return asyncio.run(run())


def totals_in(backing: Backing, scope: str) -> dict[str, int]:
    """A scope's totals in Postgres ``scores`` as user id -> score."""
    return {r["user_id"]: r["score"] for r in sql(
        backing, "SELECT user_id, score FROM scores WHERE board = $1", scope)}


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)
