"""The board at a past moment (``as_of``) against real Postgres: the same answer
as summing every action up to then, with or without checkpoints; ties as the
live board orders them; removed actions and today's bans honoured; the
checkpoint horizon below unacknowledged stream entries."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from scoreboard.history_checkpoints import (
    LOCK,
    build_checkpoint,
    committed_horizon,
    write_due_checkpoints,
)
from scoreboard.history_reads import top_as_of
from scoreboard.keys import Keys
from scoreboard.lua import register_scripts
from scoreboard.moderation import Moderation
from tests.history_support import (
    Action,
    drop_database,
    expected_top,
    fresh_database,
    persist,
    with_pool,
)
from tests.servers import Backing, fresh_name

NOW = datetime.now(UTC).replace(microsecond=0)
START = (NOW - timedelta(days=120)).replace(hour=0, minute=0, second=0)
DAY = timedelta(days=1)


@pytest.fixture
def database(backing: Backing) -> Iterator[str]:
    url = fresh_database(backing)
    yield url
    drop_database(backing, url)


def random_actions(seed: int, count: int = 800, users: int = 25) -> list[Action]:
    """Actions over 100 days, with many equal totals and some equal times."""
    rng = random.Random(seed)
    actions = []
    for _ in range(count):
        moment = START + timedelta(milliseconds=rng.randrange(100 * 86_400_000))
        actions.append(Action(f"u{rng.randrange(users):02d}", rng.choice((1, 1, 2, 5)), moment))
    # the same time for several players: ties broken by user id
    tied = START + timedelta(days=50, milliseconds=123)
    actions += [Action(user, 3, tied) for user in ("u90", "u91", "u92")]
    actions.append(Action("x-other-board", 50, START + DAY, board="other"))
    return actions


def top(url: str, moment: datetime, limit: int = 100, board: str = "arena"
        ) -> list[dict[str, object]]:
    async def work(pool: Any) -> list[dict[str, object]]:
        page = await top_as_of(pool, board, moment, limit, rank_mode="competition")
        return [entry.as_json() for entry in page.entries]
    return with_pool(url, work)


def write_checkpoints(url: str, *, hours: int = 24, horizon: datetime = NOW) -> list[datetime]:
    return with_pool(url, lambda pool: write_due_checkpoints(
        pool, horizon=horizon, interval=timedelta(hours=hours), limit=1000))


def moments_to_check() -> list[datetime]:
    rng = random.Random(7)
    chosen = [START - DAY, START + timedelta(days=50, milliseconds=123),
              START + timedelta(days=50, milliseconds=122), NOW]
    chosen += [START + timedelta(milliseconds=rng.randrange(101 * 86_400_000))
               for _ in range(12)]
    return chosen


def test_as_of_is_the_sum_of_every_action_up_to_then(database: str) -> None:
    actions = random_actions(1)
    persist(database, actions, boards=("arena", "other"))
    for moment in moments_to_check():  # no checkpoint yet: a replay of everything
        assert top(database, moment) == expected_top(actions, moment), moment
    written = write_checkpoints(database)
    assert len(written) > 100
    for moment in [*moments_to_check(), *written[40:43],
                   *(w - timedelta(milliseconds=1) for w in written[60:62])]:
        assert top(database, moment) == expected_top(actions, moment), moment
        assert top(database, moment, limit=5) == expected_top(actions, moment, limit=5)
    assert top(database, NOW, board="other") == expected_top(actions, NOW, board="other")


def test_checkpoints_written_later_agree_with_earlier_ones(database: str) -> None:
    """Six-hour checkpoints, in two runs (the second continuing the first)."""
    actions = random_actions(2)
    persist(database, actions, boards=("arena", "other"))
    first = write_checkpoints(database, hours=6, horizon=START + timedelta(days=30))
    second = write_checkpoints(database, hours=6)
    assert first and second and second[0] == first[-1] + timedelta(hours=6)
    for moment in moments_to_check():
        assert top(database, moment) == expected_top(actions, moment), moment


def test_ties_are_ordered_as_on_the_live_board(database: str) -> None:
    """Equal scores: who reached it first, then user id; competition ranks."""
    t0 = START + timedelta(days=3)
    actions = [Action("u-a", 10, t0), Action("u-c", 10, t0 + timedelta(seconds=1)),
               Action("u-b", 10, t0 + timedelta(seconds=1)), Action("u-d", 5, t0),
               Action("u-e", 4, t0 - DAY), Action("u-e", 1, t0 + timedelta(seconds=2))]
    persist(database, actions)
    write_checkpoints(database, horizon=t0 + timedelta(milliseconds=500))
    assert [(e["user_id"], e["rank"], e["score"]) for e in top(database, t0 + DAY)] == [
        ("u-a", 1, 10), ("u-b", 1, 10), ("u-c", 1, 10), ("u-d", 4, 5), ("u-e", 4, 5)]


def _moderation(backing: Backing, url: str, pool: Any, client: Any) -> Moderation:
    return Moderation(redis=client, pool=pool, scripts=register_scripts(client),
                      keys=Keys(fresh_name("sbhist")))


def moderate(backing: Backing, url: str, what: str, *args: str) -> Any:
    async def work(pool: Any) -> Any:
        client = backing.async_redis(decode_responses=True)
        try:
            moderation = _moderation(backing, url, pool, client)
            if what == "remove":
                return await moderation.remove_action(args[0], reason="test")
            if what == "ban":
                return await moderation.restrict(args[0], args[1], reason="test")
            return await moderation.lift(args[0], args[1], reason="test")
        finally:
            await client.aclose()
    return with_pool(url, work)


def test_a_removed_action_is_gone_from_every_checkpoint(backing: Backing, database: str) -> None:
    """x: 4 + 6 + 1 (reached on day 3), y: 10 + 1 (day 2.5). Removing x's last point
    leaves x at 10 reached on day 2, before y's 10: the tie order changes too."""
    d = START + timedelta(days=10)
    removed = Action("x", 1, d + 3 * DAY, event_id="ev-removed")
    actions = [Action("x", 4, d + DAY), Action("x", 6, d + 2 * DAY), removed,
               Action("y", 10, d + 2.5 * DAY), Action("y", 1, d + 8 * DAY)]
    persist(database, actions)
    write_checkpoints(database)
    assert [e["user_id"] for e in top(database, d + 5 * DAY)] == ["x", "y"]
    moderate(backing, database, "remove", "ev-removed")
    kept = [a for a in actions if a is not removed]
    for moment in (d + 3 * DAY, d + 5 * DAY, d + 8 * DAY, NOW):
        assert top(database, moment) == expected_top(kept, moment), moment
    assert [e["user_id"] for e in top(database, d + 5 * DAY)] == ["x", "y"]
    assert top(database, d + 5 * DAY)[0]["score"] == 10
    # checkpoints written after the removal agree
    with_pool(database, lambda pool: pool.execute("DELETE FROM history_checkpoints"))
    write_checkpoints(database)
    assert top(database, d + 5 * DAY) == expected_top(kept, d + 5 * DAY)


@pytest.mark.parametrize("kind", ["banned", "shadow_banned"])
def test_players_banned_now_are_left_out_of_the_past(backing: Backing, database: str,
                                                     kind: str) -> None:
    actions = random_actions(3, count=200, users=8)
    persist(database, actions, boards=("arena", "other"))
    write_checkpoints(database)
    moment = START + timedelta(days=60)
    leader = str(expected_top(actions, moment)[0]["user_id"])
    moderate(backing, database, "ban", leader, kind)
    assert top(database, moment) == expected_top(actions, moment, hidden=frozenset({leader}))
    moderate(backing, database, "lift", leader, kind)
    assert top(database, moment) == expected_top(actions, moment)


def test_checkpoints_stop_short_of_unacknowledged_entries(backing: Backing) -> None:
    """An entry pending in the consumer group may still be persisted with its own
    accept time: no checkpoint may cover that time."""
    keys = Keys(fresh_name("sbhist"))

    async def run() -> tuple[datetime, datetime, int]:
        client = backing.async_redis(decode_responses=True)
        try:
            await client.xgroup_create(keys.stream, "persisters", id="0", mkstream=True)
            lag = timedelta(seconds=30)
            empty = await committed_horizon(client, keys, now=NOW, lag=lag)
            entry_id = await client.xadd(keys.stream, {"event_id": "e"},
                                         id=f"{int((NOW - DAY).timestamp() * 1000)}-0")
            undelivered = await committed_horizon(client, keys, now=NOW, lag=lag)
            await client.xreadgroup("persisters", "c1", {keys.stream: ">"}, count=10)
            pending = await committed_horizon(client, keys, now=NOW, lag=lag)
            assert pending == undelivered
            await client.xack(keys.stream, "persisters", entry_id)
            assert await committed_horizon(client, keys, now=NOW, lag=lag) == empty
            return empty, pending, int(entry_id.split("-")[0])
        finally:
            await client.aclose()

    empty, pending, entry_ms = asyncio.run(run())
    assert empty == NOW - timedelta(seconds=30)
    assert pending == datetime.fromtimestamp(entry_ms / 1000, UTC) - timedelta(seconds=30)


def test_a_checkpoint_is_written_once(database: str) -> None:
    persist(database, [Action("u1", 3, START + DAY)])

    async def twice(pool: Any) -> list[int | None]:
        async with pool.acquire() as connection:
            return [await build_checkpoint(connection, START + 2 * DAY),
                    await build_checkpoint(connection, START + 2 * DAY)]

    assert with_pool(database, twice) == [1, None]


def test_a_removal_during_a_checkpoint_build_is_not_missed(database: str) -> None:
    """The removal's delete is made while a build holds the lock: the build still
    sees the row (not committed yet), and the removal's correction waits for the
    build to commit, then corrects the new checkpoint too."""
    d = START + timedelta(days=5)
    actions = [Action("x", 5, d, event_id="ev-kept"), Action("x", 7, d + DAY, event_id="ev-gone"),
               Action("y", 6, d + DAY)]
    persist(database, actions)
    build_at = d + 3 * DAY

    async def work(pool: Any) -> list[Any]:
        async with pool.acquire() as builder, pool.acquire() as remover, \
                pool.acquire() as watcher:
            async with builder.transaction():
                await builder.execute(LOCK)  # as a build in progress holds it
                removal = asyncio.create_task(remover.execute(
                    "DELETE FROM actions WHERE event_id = 'ev-gone'"))
                while not await watcher.fetchval(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                        " AND NOT granted"):
                    assert not removal.done(), removal
                    await asyncio.sleep(0.01)
                await build_checkpoint(builder, build_at)  # inside: the row is still seen
            await removal
            rows: list[Any] = await watcher.fetch(
                "SELECT user_id, total FROM history_checkpoint_totals WHERE at = $1"
                " ORDER BY user_id", build_at)
            return rows

    assert [tuple(row) for row in with_pool(database, work)] == [("x", 5), ("y", 6)]
    kept = [a for a in actions if a.event_id != "ev-gone"]
    assert top(database, build_at + DAY) == expected_top(kept, build_at + DAY)
