"""Migrations and the monthly partitions of ``actions``, on fresh databases."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from scoreboard.db import with_database
from scoreboard.migrate import ensure_database, migrate, migration_files
from tests.servers import Backing, fresh_name

ALL_MIGRATIONS = [path.name for _, path in migration_files()]


@pytest.fixture
def fresh_database(backing: Backing) -> Iterator[str]:
    """The URL of a new, empty database; dropped after the test."""
    name = fresh_name("sbmig")
    asyncio.run(ensure_database(backing.admin_database_url, name))
    yield with_database(backing.admin_database_url, name)

    async def drop() -> None:
        connection = await asyncpg.connect(backing.admin_database_url, timeout=10)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
                                     timeout=30)
        finally:
            await connection.close()

    asyncio.run(drop())


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[Any]:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        yield connection
    finally:
        await connection.close()


def add_months(month: date, months: int) -> date:
    index = month.year * 12 + month.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def partition_name(month: date) -> str:
    return f"actions_y{month:%Y}m{month:%m}"


async def actions_partitions(connection: Any) -> set[str]:
    rows = await connection.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'actions'::regclass", timeout=10)
    return {row["relname"] for row in rows}


async def insert_action(connection: Any, created_at: datetime) -> None:
    await connection.execute(
        "INSERT INTO actions (event_id, created_at, user_id, board, points, source)"
        " VALUES ($1, $2, 'u_test', 'global', 1, 'test')",
        fresh_name("ev"), created_at, timeout=10)


def test_there_are_migrations_to_apply() -> None:
    assert ALL_MIGRATIONS
    assert ALL_MIGRATIONS == sorted(ALL_MIGRATIONS)


def test_migrating_twice_applies_nothing_the_second_time(fresh_database: str) -> None:
    assert asyncio.run(migrate(fresh_database)) == ALL_MIGRATIONS
    assert asyncio.run(migrate(fresh_database)) == []

    async def recorded() -> list[str]:
        async with connected(fresh_database) as connection:
            rows = await connection.fetch(
                "SELECT name FROM schema_migrations ORDER BY version", timeout=10)
        return [row["name"] for row in rows]

    assert asyncio.run(recorded()) == ALL_MIGRATIONS


def test_the_suite_database_is_fully_migrated(backing: Backing) -> None:
    assert asyncio.run(migrate(backing.database_url)) == []


def test_concurrent_migrations_apply_each_file_once(fresh_database: str) -> None:
    async def both() -> tuple[list[str], list[str]]:
        first, second = await asyncio.gather(migrate(fresh_database), migrate(fresh_database))
        return first, second

    first, second = asyncio.run(both())
    # One of them applied everything while the other waited on the lock.
    assert sorted([first, second], key=len) == [[], ALL_MIGRATIONS]

    async def recorded() -> list[tuple[int, str]]:
        async with connected(fresh_database) as connection:
            rows = await connection.fetch(
                "SELECT version, name FROM schema_migrations ORDER BY version", timeout=10)
        return [(row["version"], row["name"]) for row in rows]

    assert [name for _, name in asyncio.run(recorded())] == ALL_MIGRATIONS


def test_partitions_exist_for_this_month_and_the_next_two(fresh_database: str) -> None:
    asyncio.run(migrate(fresh_database))

    async def check() -> tuple[date, set[str]]:
        async with connected(fresh_database) as connection:
            today: date = await connection.fetchval("SELECT current_date", timeout=10)
            return today, await actions_partitions(connection)

    today, partitions = asyncio.run(check())
    this_month = today.replace(day=1)
    expected = {partition_name(add_months(this_month, n)) for n in range(3)}
    assert expected <= partitions


def test_a_month_without_a_partition_is_refused_until_it_is_created(
        fresh_database: str) -> None:
    asyncio.run(migrate(fresh_database))

    async def scenario() -> None:
        async with connected(fresh_database) as connection:
            today: date = await connection.fetchval("SELECT current_date", timeout=10)
            later = add_months(today.replace(day=1), 5)
            created_at = datetime(later.year, later.month, 15, 12, tzinfo=UTC)
            assert partition_name(later) not in await actions_partitions(connection)

            with pytest.raises(asyncpg.CheckViolationError, match="no partition"):
                await insert_action(connection, created_at)

            made = await connection.fetchval(
                "SELECT ensure_actions_partitions($1, 1)", later, timeout=10)
            assert made == 1
            assert partition_name(later) in await actions_partitions(connection)
            await insert_action(connection, created_at)
            # The row landed in that month's partition, and creating it again is a no-op.
            count = await connection.fetchval(
                f'SELECT count(*) FROM "{partition_name(later)}"', timeout=10)
            assert count == 1
            assert await connection.fetchval(
                "SELECT ensure_actions_partitions($1, 1)", later, timeout=10) == 0
            # The partition's upper bound is exclusive: the next month still has none.
            with pytest.raises(asyncpg.CheckViolationError):
                following = add_months(later, 1)
                await insert_action(connection,
                                    datetime(following.year, following.month, 15, tzinfo=UTC))

    asyncio.run(scenario())


def test_counted_events_starts_with_the_first_copy_of_every_persisted_event(
        fresh_database: str, tmp_path: Path) -> None:
    """Migration 005 on a database that already has actions (one event twice)."""
    before_005 = tmp_path / "sql"
    before_005.mkdir()
    for number, path in migration_files():
        if number < 5:
            (before_005 / path.name).write_text(path.read_text())
    asyncio.run(migrate(fresh_database, before_005))
    first = datetime.now(UTC).replace(microsecond=0)
    later = first.replace(second=(first.second + 1) % 60)

    async def scenario() -> list[tuple[str, datetime]]:
        async with connected(fresh_database) as connection:
            for created_at in (later, first):  # the same event counted twice before 005
                await connection.execute(
                    "INSERT INTO actions (event_id, created_at, user_id, board, points, source)"
                    " VALUES ('ev-twice', $1, 'u_test', 'global', 1, 'backend:x')", created_at)
            await insert_action(connection, first)
        assert await migrate(fresh_database) == [n for n in ALL_MIGRATIONS
                                                  if n not in os.listdir(before_005)]
        async with connected(fresh_database) as connection:
            rows = await connection.fetch("SELECT event_id, created_at FROM counted_events"
                                          " ORDER BY source, event_id", timeout=10)
        return [(r["event_id"], r["created_at"]) for r in rows]

    rows = asyncio.run(scenario())
    assert len(rows) == 2
    assert ("ev-twice", min(first, later)) in rows
