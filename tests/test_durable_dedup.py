"""An event counts once forever, not only while its Redis marker lives.

Ingest remembers an accepted event id in Redis for ``DEDUP_TTL_S``; the
worker records ``(source, event_id)`` in ``counted_events`` in the same
transaction as the action. These tests take the marker away (as its expiry
or a Redis that lost its data would) and replay old events through the real
batch endpoint, with a real worker process, then read Postgres and the board.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime
from typing import Any

import asyncpg
import jwt
import pytest

from scoreboard.errors import ConfigError
from scoreboard.settings import load_settings
from scoreboard.stream_entry import StreamEntry, unpacked
from tests.load_support import BOARD, System, system, wait_settled
from tests.servers import (
    Backing,
    SyncRedis,
    board_totals,
    forget_marks,
    fresh_name,
    stream_total,
)
from tests.worker_support import worker_process
from workers.persist import PartitionCache, persist_batch


async def _rows(database_url: str, query: str, *args: Any) -> list[Any]:
    connection = await asyncpg.connect(database_url)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


def counted(sys_: System, redis_client: SyncRedis,
            users: list[str]) -> tuple[dict[str, int], int, dict[str, int]]:
    """Per user: ``scores`` total; the number of ``actions`` rows; the board's total."""
    scores = asyncio.run(_rows(sys_.database_url, "SELECT user_id, score FROM scores"
                               " WHERE board = $1 AND user_id = ANY($2)", BOARD, users))
    actions = asyncio.run(_rows(sys_.database_url, "SELECT count(*) AS n FROM actions"
                                " WHERE user_id = ANY($1)", users))
    return ({r["user_id"]: r["score"] for r in scores}, actions[0]["n"],
            board_totals(redis_client, sys_.keys, BOARD))


def increments(users: list[str]) -> list[dict[str, Any]]:
    return [{"user_id": user, "points": 7, "event_id": fresh_name("old-ev"), "board": BOARD}
            for user in users]


def forget_markers(redis_client: SyncRedis, sys_: System, batch: list[dict[str, Any]]) -> None:
    backend = jwt.decode(sys_.load.token, options={"verify_signature": False})["sub"]
    removed = sum(forget_marks(redis_client, sys_.keys.player(i["user_id"]).event_marks(
        f"backend:{backend}"), [i["event_id"]]) for i in batch)
    assert removed == len(batch)  # the markers were there, and now they are gone


def test_old_event_replayed_after_its_marker_is_gone_counts_nothing(
        backing: Backing, redis_client: SyncRedis) -> None:
    with system(backing) as sys_, worker_process(sys_.worker_env("dedup")):
        users = [fresh_name("player") for _ in range(3)]
        batch = increments(users)
        first = sys_.post_batch(batch)
        assert first.json() == {"accepted": 3, "duplicates": 0, "refused": []}
        wait_settled(redis_client, sys_.keys)
        before = counted(sys_, redis_client, users)
        assert before == ({u: 7 for u in users}, 3, {u: 7 for u in users})

        # While the marker lives, ingest itself answers "duplicate".
        assert sys_.post_batch(batch).json()["duplicates"] == 3
        forget_markers(redis_client, sys_, batch)
        replay = sys_.post_batch(batch)
        # Ingest cannot tell any more (no Postgres on its path): the entries are
        # accepted into the stream, and the worker persists them as nothing.
        assert replay.status_code == 202
        assert replay.json()["accepted"] == 3
        wait_settled(redis_client, sys_.keys)
        assert counted(sys_, redis_client, users) == before
        # A new event of the same users still counts.
        fresh = increments(users[:1])
        assert sys_.post_batch(fresh).json()["accepted"] == 1
        wait_settled(redis_client, sys_.keys)
        assert counted(sys_, redis_client, users)[0][users[0]] == 14


def test_two_copies_of_one_event_waiting_in_the_stream_count_once(
        backing: Backing, redis_client: SyncRedis) -> None:
    """Both copies reach the worker, probably in one batch: the earliest counts."""
    with system(backing) as sys_:
        users = [fresh_name("player") for _ in range(2)]
        batch = increments(users)
        assert sys_.post_batch(batch).json()["accepted"] == 2
        forget_markers(redis_client, sys_, batch)
        assert sys_.post_batch(batch).json()["accepted"] == 2
        assert stream_total(redis_client, sys_.keys) == 4
        with worker_process(sys_.worker_env("dedup-two")):
            wait_settled(redis_client, sys_.keys)
        sevens = {u: 7 for u in users}
        assert counted(sys_, redis_client, users) == (sevens, 2, sevens)
        # each user's first copy: the earlier of its two entries in its shard's stream
        first_ids = [min((i for i, f in redis_client.xrange(sys_.keys.player(u).stream)
                          if unpacked(f)["user_id"] == u),  # batch entries are packed
                         key=lambda i: tuple(map(int, i.split("-"))))
                     for u in users]
        rows = asyncio.run(_rows(sys_.database_url, "SELECT stream_id FROM actions"
                                 " WHERE user_id = ANY($1)", users))
        assert sorted(r["stream_id"] for r in rows) == sorted(first_ids)


def _entry(source: str, event_id: str, user_id: str, ts_ms: int) -> StreamEntry:
    return StreamEntry(stream_id=f"{ts_ms}-0", event_id=event_id, user_id=user_id, username="",
                       board=BOARD, points=3, source=source, ts_ms=ts_ms, ip="", request_id="")


def test_the_record_is_per_source_and_survives_a_later_acceptance_time(
        backing: Backing) -> None:
    """Two backends may use the same event id, even accepted in the same millisecond
    (migration 006); one backend's replay a day later (a new ``created_at``, so a
    new ``actions`` key) still counts nothing."""
    user, event_id = fresh_name("player"), "ev-" + secrets.token_hex(6)
    now_ms = int(datetime.now(UTC).timestamp() * 1000)

    async def scenario() -> list[tuple[int, list[int]]]:
        connection = await asyncpg.connect(backing.database_url)
        partitions = PartitionCache()
        try:
            results = []
            for source, ts_ms in (("backend:a", now_ms), ("backend:a", now_ms + 86_400_000),
                                  ("backend:b", now_ms)):
                result = await persist_batch(connection, [_entry(source, event_id, user, ts_ms)],
                                             partitions)
                results.append((result.inserted, [t.score for t in result.totals]))
            return results
        finally:
            await connection.close()

    # inserted rows, and the committed total handed to the board (even when nothing is new)
    assert asyncio.run(scenario()) == [(1, [3]), (0, [3]), (1, [6])]
    rows = asyncio.run(_rows(backing.database_url, "SELECT source, created_at FROM"
                             " counted_events WHERE event_id = $1 ORDER BY source", event_id))
    assert [r["source"] for r in rows] == ["backend:a", "backend:b"]
    assert rows[0]["created_at"] == datetime.fromtimestamp(now_ms / 1000, UTC)


def test_a_dedup_window_shorter_than_an_action_token_is_refused_at_start() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({"DEDUP_TTL_S": "30", "ACTION_TOKEN_TTL_S": "60"})
    assert refused.value.variable == "DEDUP_TTL_S"
    assert load_settings({"DEDUP_TTL_S": "60", "ACTION_TOKEN_TTL_S": "60"}).dedup_ttl_s == 60
    assert load_settings({}).dedup_ttl_s == 600
