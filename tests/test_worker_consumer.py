"""The stream consumer, in process, against real Redis and Postgres."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from scoreboard.board_writes import rebuild_board
from scoreboard.keys import Keys
from scoreboard.stream_entry import parse_entry
from scoreboard.stream_trim import trim_acknowledged
from tests.servers import Backing, SyncRedis, board_totals, fresh_name, user_total
from tests.worker_support import consumer_for, run_until
from workers.persist import PartitionCache, persist_batch


@pytest.fixture
def worker_keys() -> Keys:
    """A key prefix of the test's own: its own stream, group and boards."""
    return Keys(fresh_name("wtest"))


def entry_fields(user_id: str, points: int, *, board: str = "global", ts_ms: int | None = None,
                 event_id: str | None = None, username: str = "") -> dict[str, str]:
    return {"event_id": event_id or "e-" + secrets.token_hex(8), "user_id": user_id,
            "username": username, "board": board, "points": str(points), "source": "test",
            "ts": str(ts_ms if ts_ms is not None else int(datetime.now(UTC).timestamp() * 1000)),
            "ip": "2001:db8::1", "request_id": "r1"}


async def fetch(backing: Backing, query: str, *args: Any) -> list[Any]:
    connection = await asyncpg.connect(backing.database_url)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


def pending(redis_client: SyncRedis, keys: Keys) -> int:
    info = redis_client.xpending(keys.stream, "persisters")
    return int(info["pending"])


def test_batch_lands_in_actions_scores_and_board(backing: Backing, redis_client: SyncRedis,
                                                worker_keys: Keys) -> None:
    users = [fresh_name("wu") for _ in range(3)]
    expected: dict[str, int] = {}
    for i in range(30):
        user = users[i % 3]
        redis_client.xadd(worker_keys.stream, entry_fields(user, i + 1, username=f"name-{user}"))
        expected[user] = expected.get(user, 0) + i + 1

    async def scenario() -> None:
        async with consumer_for(backing, worker_keys) as consumer:
            await consumer.ensure_group()
            await run_until(consumer, lambda: _no_lag(consumer, worker_keys))

    asyncio.run(scenario())
    rows = asyncio.run(fetch(backing, "SELECT user_id, score FROM scores WHERE user_id = ANY($1)"
                                      " AND board = 'global'", users))
    assert {r["user_id"]: r["score"] for r in rows} == expected
    assert board_totals(redis_client, worker_keys, "global") == expected
    assert redis_client.hget(worker_keys.usernames, users[0]) == f"name-{users[0]}"
    count = asyncio.run(fetch(backing, "SELECT count(*) AS n FROM actions WHERE user_id = ANY($1)",
                              users))[0]["n"]
    assert count == 30
    assert pending(redis_client, worker_keys) == 0
    assert int(redis_client.get(worker_keys.board_revision("global")) or 0) >= 1


async def _no_lag(consumer: Any, keys: Keys) -> bool:
    groups = await consumer.redis.xinfo_groups(keys.stream)
    last = await consumer.redis.xrevrange(keys.stream, count=1)
    if not groups or not last:
        return False
    group = groups[0]
    return bool(group["last-delivered-id"] == last[0][0] and int(group["pending"]) == 0)


def test_commit_without_ack_then_redelivery_counts_once(
        backing: Backing, redis_client: SyncRedis, worker_keys: Keys) -> None:
    """The crash window: committed in Postgres, boards not set, not acknowledged."""
    user = fresh_name("wu")
    for points in (5, 7):
        redis_client.xadd(worker_keys.stream, entry_fields(user, points))

    async def scenario() -> None:
        async with consumer_for(backing, worker_keys, name="crashy") as consumer:
            await consumer.ensure_group()
            raw = await consumer._read(">")
            entries = [parse_entry(i, f) for i, f in raw if f]
            async with consumer.pool.acquire() as connection:
                await persist_batch(connection, entries, PartitionCache())
            # "crash": nothing set in Redis, nothing acknowledged
        assert pending(redis_client, worker_keys) == 2
        assert user_total(redis_client, worker_keys, "global", user) is None
        async with consumer_for(backing, worker_keys, name="crashy") as restarted:
            await run_until(restarted, lambda: _no_lag(restarted, worker_keys))

    asyncio.run(scenario())
    rows = asyncio.run(fetch(backing, "SELECT count(*) AS n, sum(points) AS s FROM actions"
                                      " WHERE user_id = $1", user))
    assert (rows[0]["n"], rows[0]["s"]) == (2, 12)
    assert user_total(redis_client, worker_keys, "global", user) == 12
    score = asyncio.run(fetch(backing, "SELECT score FROM scores WHERE user_id = $1", user))
    assert score[0]["score"] == 12


def test_month_end_action_redelivered_lands_once_in_its_partition(
        backing: Backing, redis_client: SyncRedis, worker_keys: Keys) -> None:
    """23:59:59.999 on a month's last day; the month has no partition yet."""
    user = fresh_name("wu")
    year = datetime.now(UTC).year + 2
    last_ms = int(datetime(year, 7, 1, tzinfo=UTC).timestamp() * 1000) - 1  # June 30, 23:59:59.999
    fields = entry_fields(user, 3, ts_ms=last_ms)
    redis_client.xadd(worker_keys.stream, fields)

    async def scenario() -> None:
        async with consumer_for(backing, worker_keys, name="month-end") as consumer:
            await consumer.ensure_group()
            raw = await consumer._read(">")
            async with consumer.pool.acquire() as connection:
                await persist_batch(connection, [parse_entry(i, f) for i, f in raw if f],
                                    PartitionCache())
        # redelivered later (after midnight): the row's time is the entry's, not the clock's
        async with consumer_for(backing, worker_keys, name="month-end") as restarted:
            await run_until(restarted, lambda: _no_lag(restarted, worker_keys))

    asyncio.run(scenario())
    rows = asyncio.run(fetch(backing, "SELECT tableoid::regclass::text AS part, created_at"
                                      " FROM actions WHERE user_id = $1", user))
    assert len(rows) == 1
    assert rows[0]["part"] == f"actions_y{year}m06"
    assert rows[0]["created_at"] == datetime(year, 6, 30, 23, 59, 59, 999000, tzinfo=UTC)


def test_poison_entry_is_dead_lettered_after_max_deliveries_and_batch_persists(
        backing: Backing, redis_client: SyncRedis, worker_keys: Keys) -> None:
    user = fresh_name("wu")
    good = [entry_fields(user, p) for p in (1, 2, 3)]
    poison = entry_fields(user, 3_000_000_000)  # parses, but Postgres refuses (integer)
    ids = [redis_client.xadd(worker_keys.stream, f) for f in (good[0], poison, good[1], good[2])]

    async def dead_lettered() -> bool:
        return bool(redis_client.xlen(worker_keys.dead_letters) >= 1
                    and pending(redis_client, worker_keys) == 0)

    async def scenario() -> None:
        async with consumer_for(backing, worker_keys, claim_idle_ms=50, max_deliveries=3,
                                reclaim_every_s=0.05) as consumer:
            await consumer.ensure_group()
            await run_until(consumer, dead_lettered)

    asyncio.run(scenario())
    rows = asyncio.run(fetch(backing, "SELECT sum(points) AS s, count(*) AS n FROM actions"
                                      " WHERE user_id = $1", user))
    assert (rows[0]["n"], rows[0]["s"]) == (3, 6)
    (_, dead), = redis_client.xrange(worker_keys.dead_letters)
    assert dead["original_id"] == ids[1]
    assert dead["event_id"] == poison["event_id"]
    assert int(dead["deliveries"]) > 3
    assert "delivered" in dead["reason"]
    assert user_total(redis_client, worker_keys, "global", user) == 6


def test_malformed_entry_is_dead_lettered_at_once(backing: Backing, redis_client: SyncRedis,
                                                  worker_keys: Keys) -> None:
    user = fresh_name("wu")
    redis_client.xadd(worker_keys.stream, {"event_id": "x", "points": "many"})
    redis_client.xadd(worker_keys.stream, entry_fields(user, 4))

    async def scenario() -> None:
        async with consumer_for(backing, worker_keys) as consumer:
            await consumer.ensure_group()
            await run_until(consumer, lambda: _no_lag(consumer, worker_keys))

    asyncio.run(scenario())
    (_, dead), = redis_client.xrange(worker_keys.dead_letters)
    assert dead["reason"].startswith("malformed")
    assert user_total(redis_client, worker_keys, "global", user) == 4


def test_trim_keeps_pending_and_removes_acknowledged(backing: Backing,
                                                     redis_client: SyncRedis,
                                                     worker_keys: Keys) -> None:
    user = fresh_name("wu")
    for points in range(1, 6):
        redis_client.xadd(worker_keys.stream, entry_fields(user, points))

    async def scenario() -> None:
        async with consumer_for(backing, worker_keys) as consumer:
            await consumer.ensure_group()
            await run_until(consumer, lambda: _no_lag(consumer, worker_keys))
            # two more, delivered but not acknowledged (a consumer that died)
            kept = [await consumer.redis.xadd(worker_keys.stream, entry_fields(user, 1))
                    for _ in range(2)]
            await consumer.redis.xreadgroup("persisters", "dead", {worker_keys.stream: ">"})
            await consumer.redis.xadd(worker_keys.stream, entry_fields(user, 1))  # undelivered
            await trim_acknowledged(consumer.redis, worker_keys.stream)
            remaining = [i for i, _ in await consumer.redis.xrange(worker_keys.stream)]
            assert remaining[:2] == kept
            assert len(remaining) == 3

    asyncio.run(scenario())


def test_rebuild_gives_the_same_board_as_incremental_updates(
        backing: Backing, redis_client: SyncRedis, worker_keys: Keys) -> None:
    board = fresh_name("b")
    users = [fresh_name("wu") for _ in range(20)]
    for i in range(200):
        redis_client.xadd(worker_keys.stream, entry_fields(users[i % 20], (i * 7) % 13 + 1,
                                                           board=board))

    async def scenario() -> None:
        async with consumer_for(backing, worker_keys) as consumer:
            await consumer.ensure_group()
            await run_until(consumer, lambda: _no_lag(consumer, worker_keys))
            incremental = await consumer.redis.zrange(worker_keys.board(board), 0, -1,
                                                      withscores=True)
            entries = await consumer.redis.hgetall(worker_keys.board_entries(board))
            await consumer.redis.zadd(worker_keys.board(board), {"0000000000001|x": -999_999})
            await consumer.redis.zrem(worker_keys.board(board), incremental[0][0])  # drift
            members = await rebuild_board(consumer.redis, consumer.pool, consumer.scripts,
                                          worker_keys, board)
            rebuilt = await consumer.redis.zrange(worker_keys.board(board), 0, -1,
                                                  withscores=True)
            assert members == 20
            assert rebuilt == incremental
            assert await consumer.redis.hgetall(worker_keys.board_entries(board)) == entries

    asyncio.run(scenario())


def test_restart_drains_more_pending_entries_than_one_batch_then_reads_new(
        backing: Backing, redis_client: SyncRedis, worker_keys: Keys) -> None:
    user = fresh_name("wu")
    for _ in range(10):
        redis_client.xadd(worker_keys.stream, entry_fields(user, 1))
    redis_client.xgroup_create(worker_keys.stream, "persisters", id="0")
    # a consumer named "pager" read them all and died before acknowledging
    redis_client.xreadgroup("persisters", "pager", {worker_keys.stream: ">"})
    redis_client.xadd(worker_keys.stream, entry_fields(user, 100))  # and one new

    async def scenario() -> None:
        async with consumer_for(backing, worker_keys, name="pager", batch_max=3) as consumer:
            await run_until(consumer, lambda: _no_lag(consumer, worker_keys))

    asyncio.run(scenario())
    assert user_total(redis_client, worker_keys, "global", user) == 110


async def _wait_for(condition: Any, what: str, timeout_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("in_flight", [2, 1])
def test_a_batch_commits_while_the_one_before_waits_and_is_acknowledged_after_it(
        backing: Backing, redis_client: SyncRedis, worker_keys: Keys, in_flight: int) -> None:
    """Two batches in Postgres at once (WORKER_IN_FLIGHT=2): batch A waits on a row
    lock held elsewhere, batch B commits meanwhile, and B is not acknowledged (nor
    on the board) before A is. With one in flight B waits behind A. Then every
    entry counts once."""
    blocked, others = fresh_name("wu"), [fresh_name("wu") for _ in range(3)]
    redis_client.xadd(worker_keys.stream, entry_fields(blocked, 1))  # gives it a scores row

    async def scenario() -> None:
        async with consumer_for(backing, worker_keys, batch_max=5,
                                in_flight=in_flight) as consumer:
            await consumer.ensure_group()
            await run_until(consumer, lambda: _no_lag(consumer, worker_keys))
        holder = await asyncpg.connect(backing.database_url)
        holding = holder.transaction()
        await holding.start()
        await holder.execute("SELECT 1 FROM scores WHERE board = 'global' AND user_id = $1"
                             " FOR UPDATE", blocked)
        batch_a = [entry_fields(blocked if i == 0 else others[0], 2) for i in range(5)]
        batch_b = [entry_fields(others[1 + i % 2], 3) for i in range(5)]
        for fields in batch_a + batch_b:
            redis_client.xadd(worker_keys.stream, fields)
        b_events = [f["event_id"] for f in batch_b]

        async def b_committed() -> bool:
            return len(await fetch(backing, "SELECT 1 FROM actions WHERE event_id = ANY($1)",
                                   b_events)) == 5

        async with consumer_for(backing, worker_keys, batch_max=5,
                                in_flight=in_flight) as consumer:
            task = asyncio.create_task(consumer.run())
            try:
                if in_flight == 2:
                    await _wait_for(b_committed, "batch B committed while A waits")
                    await asyncio.sleep(0.3)  # time for a wrong early XACK to show
                    assert pending(redis_client, worker_keys) == 10
                    assert user_total(redis_client, worker_keys, "global", others[1]) is None
                else:
                    await asyncio.sleep(1.0)
                    assert not await b_committed()
                await holding.rollback()
                await holder.close()
                await _wait_for(lambda: _no_lag(consumer, worker_keys), "drained")
            finally:
                consumer.stop()
                await asyncio.wait_for(task, 30)

    asyncio.run(scenario())
    assert user_total(redis_client, worker_keys, "global", blocked) == 3
    assert board_totals(redis_client, worker_keys, "global") == {
        blocked: 3, others[0]: 8, others[1]: 9, others[2]: 6}
    rows = asyncio.run(fetch(backing, "SELECT user_id, score FROM scores WHERE board = 'global'"
                                      " AND user_id = ANY($1)", [blocked, *others]))
    assert {r["user_id"]: r["score"] for r in rows} == {
        blocked: 3, others[0]: 8, others[1]: 9, others[2]: 6}
    assert pending(redis_client, worker_keys) == 0
