"""Players a worker knows: the batch writes a player's row only when it must.

The pure rules (``workers.players``) without a server, then ``persist_batch``
with one ``KnownPlayers`` across batches on a real Postgres: names follow the
backend's latest one, a registered account keeps its own, the boards get the
name in Postgres, and a rolled-back batch leaves no player "known".
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import pytest

from scoreboard.stream_entry import StreamEntry
from tests.servers import Backing, fresh_name
from workers.persist import PartitionCache, PersistResult, persist_batch
from workers.players import KnownPlayers, requested_names

BOARD = "global"
T = TypeVar("T")


def entry(user_id: str, username: str, ts_ms: int = 1_764_547_200_000, *,
          points: int = 2) -> StreamEntry:
    return StreamEntry(stream_id=f"{ts_ms}-0", event_id="ev-" + secrets.token_hex(8),
                       user_id=user_id, username=username, board=BOARD, points=points,
                       source="backend:players-test", ts_ms=ts_ms, ip="", request_id="")


# --- the pure rules ---------------------------------------------------------------------


def test_the_latest_entry_names_the_player_and_an_empty_name_asks_for_the_id() -> None:
    entries = [entry("a", "Ann", 2), entry("a", "Annie", 3), entry("a", "Old", 1),
               entry("b", "", 5), entry("c", "First", 7), entry("c", "Second", 7)]
    assert requested_names(entries) == {"a": "Annie", "b": "b", "c": "Second"}


def test_only_unknown_players_and_new_names_are_written() -> None:
    known = KnownPlayers()
    assert known.to_write({"a": "Ann", "b": "b"}) == {"a": "Ann", "b": "b"}
    known.learn([("a", "Ann", False), ("b", "b", False), ("r", "Registered", True)])
    assert known.to_write({"a": "Ann", "b": "b", "r": "Other"}) == {}
    # a new name renames a backend's player; its id never renames it; an account keeps its own
    assert known.to_write({"a": "Annie", "b": "Bee", "r": "Other"}) == {"a": "Annie", "b": "Bee"}
    assert known.to_write({"a": "a"}) == {}


def test_past_capacity_the_players_learned_longest_ago_are_forgotten() -> None:
    known = KnownPlayers(capacity=2)
    known.learn([("a", "A", False), ("b", "B", False)])
    known.learn([("a", "A2", False), ("c", "C", False)])  # a learned again: now the newest
    assert (len(known), known.name("a"), known.name("b"), known.name("c")) == (2, "A2", None, "C")
    with pytest.raises(ValueError):
        KnownPlayers(capacity=0)


# --- on a real Postgres -----------------------------------------------------------------


def on_database(backing: Backing, work: Callable[[Any], Awaitable[T]]) -> T:
    async def run() -> T:
        connection = await asyncpg.connect(backing.database_url)
        try:
            return await work(connection)
        finally:
            await connection.close()
    return asyncio.run(run())


def names_of(result: PersistResult) -> dict[str, str]:
    return {t.user_id: t.username for t in result.totals}


def test_names_follow_the_backend_and_the_boards_get_the_name_in_postgres(
        backing: Backing) -> None:
    ann, account = fresh_name("ann"), fresh_name("account")
    known, partitions = KnownPlayers(), PartitionCache()

    async def scenario(connection: Any) -> list[dict[str, str]]:
        await connection.execute("INSERT INTO users (user_id, username, password_hash)"
                                 " VALUES ($1, 'Own name', 'x')", account)
        batches = [[entry(ann, "Ann"), entry(account, "Backend's name")],
                   [entry(ann, "Ann"), entry(account, "")],  # nothing to write
                   [entry(ann, "Annie")],  # a new name
                   [entry(ann, "")]]  # no name: keeps the known one
        results = []
        for batch in batches:
            result = await persist_batch(connection, batch, partitions, players=known)
            results.append(names_of(result))
        return results

    assert on_database(backing, scenario) == [{ann: "Ann", account: "Own name"},
                                              {ann: "Ann", account: "Own name"},
                                              {ann: "Annie"}, {ann: "Annie"}]
    rows = on_database(backing, lambda c: c.fetch(
        "SELECT user_id, username FROM users WHERE user_id = ANY($1)", [ann, account]))
    assert {r["user_id"]: r["username"] for r in rows} == {ann: "Annie", account: "Own name"}
    assert (known.name(ann), known.name(account)) == ("Annie", "Own name")


def test_a_rolled_back_batch_leaves_its_new_players_unknown(backing: Backing) -> None:
    """The players' rows are written in the batch's transaction; when a later
    statement of it fails, they are gone, and the next batch writes them."""
    bea = fresh_name("bea")
    known, partitions = KnownPlayers(), PartitionCache()

    async def scenario(connection: Any) -> tuple[int, int]:
        # points 0 passes the staging table but not the CHECK of actions
        with pytest.raises(asyncpg.CheckViolationError):
            await persist_batch(connection, [entry(bea, "Bea", points=0)], partitions,
                                players=known)
        assert known.name(bea) is None
        result = await persist_batch(connection, [entry(bea, "Bea")], partitions, players=known)
        assert names_of(result) == {bea: "Bea"} and known.name(bea) == "Bea"
        users = await connection.fetchval("SELECT count(*) FROM users WHERE user_id = $1", bea)
        return users, result.inserted

    assert on_database(backing, scenario) == (1, 1)


def test_two_processes_creating_the_same_new_player_both_get_its_row(backing: Backing) -> None:
    """Each has its own cache; the second's insert meets the first's row (committed
    after its statement began, or before) and still reports the player's name."""
    cid = fresh_name("cid")

    async def scenario() -> list[dict[str, str]]:
        first = await asyncpg.connect(backing.database_url)
        second = await asyncpg.connect(backing.database_url)
        try:
            batches = [persist_batch(connection, [entry(cid, "Cid")], PartitionCache(),
                                     players=KnownPlayers()) for connection in (first, second)]
            return [names_of(r) for r in await asyncio.gather(*batches)]
        finally:
            await first.close()
            await second.close()

    assert asyncio.run(scenario()) == [{cid: "Cid"}, {cid: "Cid"}]
