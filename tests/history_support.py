"""A fresh migrated database per history test, actions put in through the
worker's own write path, and the board at a moment computed the slow, obvious
way (every action up to then, summed in Python) to compare with ``as_of``."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg

from scoreboard.db import create_pool, with_database
from scoreboard.migrate import ensure_database, migrate
from scoreboard.ranking import epoch_ms
from scoreboard.stream_entry import StreamEntry
from tests.servers import Backing, fresh_name
from workers.persist import PartitionCache, persist_batch

T = TypeVar("T")


def fresh_database(backing: Backing) -> str:
    """A new migrated database on the suite's server (retention drops partitions:
    never in the shared one); returns its URL."""
    name = fresh_name("sbhist")
    asyncio.run(ensure_database(backing.admin_database_url, name))
    url = with_database(backing.admin_database_url, name)
    asyncio.run(migrate(url))
    return url


def drop_database(backing: Backing, url: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(backing.admin_database_url, timeout=30)
        try:
            name = url.rsplit("/", 1)[1].split("?")[0]
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()
    asyncio.run(run())


def with_pool(url: str, work: Callable[[Any], Awaitable[T]]) -> T:
    async def run() -> T:
        pool = await create_pool(url, max_size=4)
        try:
            return await work(pool)
        finally:
            await pool.close()
    return asyncio.run(run())


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@dataclass(frozen=True)
class Action:
    user_id: str
    points: int
    moment: datetime
    board: str = "arena"
    event_id: str = ""

    def entry(self) -> StreamEntry:
        return StreamEntry(stream_id="0-1", event_id=self.event_id or secrets.token_hex(8),
                           user_id=self.user_id, username=f"name of {self.user_id}",
                           board=self.board, points=self.points, source="test",
                           ts_ms=epoch_ms(self.moment), ip="", request_id="")


def persist(url: str, actions: Sequence[Action], boards: Iterable[str] = ("arena",)) -> None:
    """Register ``boards`` and persist ``actions`` as a worker does (in batches)."""
    async def work(pool: Any) -> None:
        for board in boards:
            await pool.execute("INSERT INTO boards (board) VALUES ($1) ON CONFLICT DO NOTHING",
                               board)
        partitions = PartitionCache()
        async with pool.acquire() as connection:
            for start in range(0, len(actions), 500):
                await persist_batch(connection, [a.entry() for a in actions[start:start + 500]],
                                    partitions)
    with_pool(url, work)


def expected_top(actions: Sequence[Action], moment: datetime, *, board: str = "arena",
                 limit: int = 100, hidden: frozenset[str] = frozenset()
                 ) -> list[dict[str, object]]:
    """The board at ``moment`` from scratch: competition ranks, the live board's order."""
    totals: dict[str, int] = {}
    reached: dict[str, int] = {}
    for action in actions:
        if action.board != board or action.moment > moment or action.user_id in hidden:
            continue
        totals[action.user_id] = totals.get(action.user_id, 0) + action.points
        reached[action.user_id] = max(reached.get(action.user_id, 0), epoch_ms(action.moment))
    order = sorted(totals, key=lambda user: (-totals[user], reached[user], user))[:limit]
    entries: list[dict[str, object]] = []
    for index, user in enumerate(order):
        rank = index + 1
        if index and totals[user] == totals[order[index - 1]]:
            rank = int(str(entries[-1]["rank"]))
        entries.append({"rank": rank, "user_id": user, "username": f"name of {user}",
                        "score": totals[user]})
    return entries
