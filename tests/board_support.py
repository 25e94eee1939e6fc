"""Putting known scores on a board through the worker's own write path."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence

from scoreboard.board_writes import apply_and_ack
from scoreboard.db import create_pool
from scoreboard.keys import Keys
from scoreboard.lua import register_scripts
from scoreboard.stream_entry import StreamEntry
from tests.servers import Backing
from workers.persist import PartitionCache, persist_batch


def entry(user_id: str, points: int, ts_ms: int, *, board: str,
          username: str = "") -> StreamEntry:
    return StreamEntry(stream_id="0-1", event_id="seed-" + secrets.token_hex(8),
                       user_id=user_id, username=username or f"name of {user_id}", board=board,
                       points=points, source="test", ts_ms=ts_ms, ip="", request_id="")


def seed(backing: Backing, keys: Keys, entries: Sequence[StreamEntry]) -> None:
    """Persist ``entries`` in Postgres and set the board in Redis, as a worker does."""

    async def run() -> None:
        client = backing.async_redis(decode_responses=True)
        pool = await create_pool(backing.database_url, max_size=2)
        try:
            async with pool.acquire() as connection:
                result = await persist_batch(connection, entries, PartitionCache())
            await apply_and_ack(client, register_scripts(client), keys, group="persisters",
                                totals=result.totals, ack_ids=[])
        finally:
            await pool.close()
            await client.aclose()

    asyncio.run(run())
