"""Archives of closed periods on real servers: the archive job, reads after the
Redis keys are gone, the periods listing with winners, a late entry, and what
moderation does to open periods and to archives (README, "Archives and
moderation")."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import pytest

from scoreboard.archives import archive_periods
from scoreboard.db import create_pool
from scoreboard.keys import Keys
from scoreboard.lua import register_scripts
from scoreboard.moderation import Moderation
from tests.servers import Backing, SyncRedis, board_totals, fresh_name
from tests.window_support import entry, make_board, now_ms, seed, sql, totals_in

T = TypeVar("T")


def with_moderation(backing: Backing, keys: Keys,
                    work: Callable[[Moderation], Awaitable[T]]) -> T:
    async def run() -> T:
        client = backing.async_redis(decode_responses=True)
        pool = await create_pool(backing.database_url, max_size=2)
        try:
            return await work(Moderation(redis=client, pool=pool,
                                         scripts=register_scripts(client), keys=keys))
        finally:
            await pool.close()
            await client.aclose()

    return asyncio.run(run())


def archive(backing: Backing, keys: Keys) -> list[str]:
    async def work(moderation: Moderation) -> list[str]:
        return await archive_periods(moderation.redis, moderation.pool, keys,
                                     now=datetime.now(UTC), grace_s=300, key_ttl_s=60,
                                     service_max=1000)

    return with_moderation(backing, keys, work)


@pytest.fixture(scope="module")
def archived(backing: Backing, keys: Keys) -> dict[str, Any]:
    board = fresh_name("weekly")
    made = make_board(backing, board, windows=("all_time", "daily"),
                      created_at="2026-11-25T12:00:00Z")
    ann_old = entry("ann", 10, "2026-11-28T10:00:00Z", board=board)
    ann_now = entry("ann", 2, now_ms(), board=board)
    seed(backing, keys, [ann_old, entry("bob", 4, "2026-11-28T11:00:00Z", board=board),
                         entry("cat", 3, "2026-11-29T09:00:00Z", board=board), ann_now], [made])
    return {"board": board, "definition": made, "scopes": archive(backing, keys),
            "ann_old": ann_old.event_id, "ann_now": ann_now.event_id}


def get(ingest_url: str, path: str, **params: str) -> httpx.Response:
    return httpx.get(ingest_url + path, params=params, timeout=10)


def test_the_job_archives_every_ended_period_once(backing: Backing, keys: Keys,
                                                 redis_client: SyncRedis,
                                                 archived: dict[str, Any]) -> None:
    board = archived["board"]
    scope = f"{board}/daily/2026-11-28"
    assert f"{board}/daily/2026-11-25" in archived["scopes"] and scope in archived["scopes"]
    today = datetime.now(UTC).date().isoformat()
    assert f"{board}/daily/{today}" not in archived["scopes"]  # still open
    assert archive(backing, keys) == []  # a second run finds nothing new
    row = sql(backing, "SELECT players, starts_at, ends_at FROM board_periods WHERE scope = $1",
              scope)[0]
    assert row["players"] == 2
    assert 0 < redis_client.ttl(keys.board(scope)) <= 60
    assert not redis_client.sismember(keys.boards, scope)


def test_an_archive_reads_the_same_after_its_redis_keys_expire(
        ingest_url: str, redis_client: SyncRedis, keys: Keys,
        archived: dict[str, Any]) -> None:
    board = archived["board"]
    scope = f"{board}/daily/2026-11-28"
    redis_client.delete(keys.board(scope), keys.board_entries(scope),
                        keys.board_revision(scope))
    top = get(ingest_url, "/api/scores/top", board=board, window="daily", period="2026-11-28")
    assert top.status_code == 200 and top.headers["X-Board-Source"] == "postgres"
    assert [(e["user_id"], e["score"]) for e in top.json()["entries"]] == [("ann", 10),
                                                                           ("bob", 4)]


def test_the_periods_listing_newest_first_with_winners(ingest_url: str,
                                                      archived: dict[str, Any]) -> None:
    board = archived["board"]
    listing = get(ingest_url, f"/api/boards/{board}/periods", window="daily", limit="100")
    assert listing.status_code == 200
    body = listing.json()
    assert body["window"] == "daily" and body["current"]["period"] == datetime.now(
        UTC).date().isoformat()
    periods = body["periods"]
    ends = [p["ends_at"] for p in periods]
    assert ends == sorted(ends, reverse=True) and periods[-1]["period"] == "2026-11-25"
    by_id = {p["period"]: p for p in periods}
    assert [w["user_id"] for w in by_id["2026-11-28"]["winners"]] == ["ann", "bob"]
    assert by_id["2026-11-29"]["winners"] == [{"user_id": "cat", "username": "name of cat",
                                               "score": 3}]
    assert by_id["2026-11-26"]["players"] == 0 and by_id["2026-11-26"]["winners"] == []
    older = get(ingest_url, f"/api/boards/{board}/periods", window="daily",
                before=by_id["2026-11-28"]["ends_at"]).json()["periods"]
    assert [p["period"] for p in older] == ["2026-11-27", "2026-11-26", "2026-11-25"]
    for params, code in [({"window": "weekly"}, "window_not_found"),
                         ({}, "invalid_field"), ({"window": "daily", "limit": "0"},
                                                 "invalid_field")]:
        refused = get(ingest_url, f"/api/boards/{board}/periods", **params)
        assert refused.json()["error"]["code"] == code


def test_a_late_entry_counts_everywhere_but_in_a_frozen_period(
        backing: Backing, keys: Keys, redis_client: SyncRedis,
        archived: dict[str, Any]) -> None:
    """A worker that was down past the grace persists an entry accepted in an
    archived period: it counts on all_time, the archive stays as it was."""
    board = archived["board"]
    scope = f"{board}/daily/2026-11-28"
    before = totals_in(backing, board)["dan"] if "dan" in totals_in(backing, board) else 0
    seed(backing, keys, [entry("dan", 50, "2026-11-28T20:00:00Z", board=board)],
         [archived["definition"]])
    assert totals_in(backing, scope) == {"ann": 10, "bob": 4}
    assert totals_in(backing, board)["dan"] == before + 50
    assert not redis_client.exists(keys.board(scope))  # no key brought back


def test_moderation_on_open_periods_and_archives(backing: Backing, keys: Keys,
                                                 ingest_url: str, redis_client: SyncRedis,
                                                 archived: dict[str, Any]) -> None:
    """remove-action corrects all_time and open periods, never an archive; a ban
    hides the player from archives (read-time) while it holds."""
    board = archived["board"]
    archived_scope = f"{board}/daily/2026-11-28"
    today = f"{board}/daily/{datetime.now(UTC).date().isoformat()}"
    assert totals_in(backing, today)["ann"] == 2
    all_time = totals_in(backing, board)["ann"]

    async def remove(moderation: Moderation) -> None:
        assert await moderation.remove_action(archived["ann_old"], reason="test")
        assert await moderation.remove_action(archived["ann_now"], reason="test")

    with_moderation(backing, keys, remove)
    assert totals_in(backing, board).get("ann", 0) == all_time - 12 == 0
    assert "ann" not in totals_in(backing, today)  # the open period corrected ...
    assert "ann" not in board_totals(redis_client, keys, today)
    assert totals_in(backing, archived_scope)["ann"] == 10  # ... the archive frozen

    def winners() -> list[str]:
        listing = get(ingest_url, f"/api/boards/{board}/periods", window="daily",
                      limit="100").json()
        return [w["user_id"] for p in listing["periods"] if p["period"] == "2026-11-28"
                for w in p["winners"]]

    async def ban(moderation: Moderation) -> None:
        await moderation.restrict("bob", "banned", reason="test")

    async def unban(moderation: Moderation) -> None:
        await moderation.lift("bob", "banned", reason="test")

    # The archive's Redis keys expire (here: now), and lifting must not bring them back.
    redis_client.delete(keys.board(archived_scope), keys.board_entries(archived_scope),
                        keys.board_revision(archived_scope))
    with_moderation(backing, keys, ban)
    try:
        assert winners() == ["ann"]
        top = get(ingest_url, "/api/scores/top", board=board, window="daily",
                  period="2026-11-28").json()
        assert [e["user_id"] for e in top["entries"]] == ["ann"]
    finally:
        with_moderation(backing, keys, unban)
    assert winners() == ["ann", "bob"]
    assert not redis_client.exists(keys.board(archived_scope))  # lifting recreates no key
