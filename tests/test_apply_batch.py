"""``lua/apply_batch.lua``: a persisted batch's boards, usernames, XACK and notices in one call."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson

from scoreboard.board_writes import BoardTotal, apply_and_ack
from scoreboard.keys import Keys
from scoreboard.lua import register_scripts
from scoreboard.script_calls import ApplyBatchScript
from tests.script_support import Recording
from tests.servers import Backing, SyncRedis, board_totals, fresh_name

REACHED = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def total(board: str, user_id: str, score: int, version: int, username: str = "") -> BoardTotal:
    return BoardTotal(board=board, user_id=user_id, score=score, reached_at=REACHED,
                      version=version, username=username or user_id)


def test_call_shape_names_each_board_and_user_once_and_the_ban_prefixes() -> None:
    keys = Keys("p")
    totals = [total("weekly", "u1", 5, 1), total("global", "u2", 7, 3, "Ann"),
              total("weekly", "u2", 9, 2, "Ann")]
    recording = Recording(reply=0)
    asyncio.run(ApplyBatchScript(recording)(keys, group="g", totals=totals,
                                            ack_ids=["1-0", "1-1"]))
    script_keys, args = recording.calls[0]
    assert script_keys[:9] == [
        keys.stream, keys.usernames, keys.boards,
        keys.board("global"), keys.board_entries("global"), keys.board_revision("global"),
        keys.board("weekly"), keys.board_entries("weekly"), keys.board_revision("weekly")]
    assert script_keys[9:] == [keys.banned_prefix, keys.shadow_banned_prefix]
    assert keys.banned_prefix + "u1" == keys.banned("u1")
    assert keys.shadow_banned_prefix + "u1" == keys.shadow_banned("u1")
    assert args[:2] == ["g", keys.board_changes]
    reached_ms = int(REACHED.timestamp() * 1000)
    assert orjson.loads(args[2]) == {
        "boards": ["global", "weekly"],
        "totals": [["u2", 7, reached_ms, 3],  # global's, then weekly's, four values each
                   ["u1", 5, reached_ms, 1, "u2", 9, reached_ms, 2]],
        "names": ["u1", "u1", "u2", "Ann"],  # each user once
        "ack": ["1-0", "1-1"]}


def test_totals_acks_and_notices_in_one_call_and_a_stale_replay_changes_nothing(
        backing: Backing, redis_client: SyncRedis) -> None:
    keys = Keys(fresh_name("apply"))
    ids = [redis_client.xadd(keys.stream, {"n": str(i)}) for i in range(3)]
    redis_client.xgroup_create(keys.stream, "g", id="0")
    redis_client.xreadgroup("g", "c", {keys.stream: ">"})
    redis_client.set(keys.banned("cheat"), "1")
    pubsub = redis_client.pubsub()
    pubsub.subscribe(keys.board_changes)

    async def scenario() -> None:
        client = backing.async_redis(decode_responses=True)
        scripts = register_scripts(client)
        try:
            await apply_and_ack(client, scripts, keys, group="g", ack_ids=ids, totals=[
                total("global", "ann", 10, 2, "Ann"), total("weekly", "bob", 4, 1),
                total("global", "cheat", 99, 1), total("weekly", "cheat", 99, 1)])
            # an older version of ann's total, delivered late: ignored
            await client.script_flush()  # and the script is gone: reloaded, nothing half-done
            await apply_and_ack(client, scripts, keys, group="g", ack_ids=[],
                                totals=[total("global", "ann", 3, 1, "Ann")])
        finally:
            await client.aclose()

    asyncio.run(scenario())
    assert board_totals(redis_client, keys, "global") == {"ann": 10}
    assert board_totals(redis_client, keys, "weekly") == {"bob": 4}
    assert redis_client.hgetall(keys.usernames) == {"ann": "Ann", "bob": "bob", "cheat": "cheat"}
    assert redis_client.smembers(keys.boards) == {"global", "weekly"}
    assert redis_client.xpending(keys.stream, "g")["pending"] == 0
    assert [redis_client.get(keys.board_revision(b)) for b in ("global", "weekly")] == ["2", "1"]
    notices = []
    while (message := pubsub.get_message(timeout=1)) is not None:
        if message["type"] == "message":
            notices.append(message["data"])
    pubsub.close()
    assert notices == ["global", "weekly", "global"]


def test_a_batch_past_one_chunk_applies_each_total_as_one_by_one_would(
        backing: Backing, redis_client: SyncRedis) -> None:
    """1,200 totals in one call (the script works in chunks of 500): new users, newer
    and older versions, a total down to 0, a banned user taken off, one user twice."""
    keys = Keys(fresh_name("apply"))
    earlier = datetime(2026, 1, 1, tzinfo=UTC)
    first = [BoardTotal(board="global", user_id=f"u{i}", score=i + 1, reached_at=earlier,
                        version=5, username=f"u{i}") for i in range(1_200)]
    then = [total("global", f"u{i}", 1_000 + i, 6) for i in range(0, 1_200, 2)]  # newer
    then += [total("global", f"u{i}", 7, 4) for i in range(1, 1_200, 4)]  # older: ignored
    then += [total("global", "u3", 0, 9), total("global", "u5", 50, 7),
             total("global", "u5", 40, 8)]  # u3 down to 0; u5 twice, 8 wins
    redis_client.set(keys.banned("u7"), "1")

    async def scenario() -> None:
        client = backing.async_redis(decode_responses=True)
        scripts = register_scripts(client)
        try:
            await apply_and_ack(client, scripts, keys, group="g", ack_ids=[], totals=first)
            redis_client.set(keys.banned("u9"), "1")
            await apply_and_ack(client, scripts, keys, group="g", ack_ids=[], totals=then)
        finally:
            await client.aclose()

    asyncio.run(scenario())
    expected = {f"u{i}": (1_000 + i if i % 2 == 0 else i + 1) for i in range(1_200)}
    del expected["u3"], expected["u7"], expected["u9"]
    expected["u5"] = 40
    assert board_totals(redis_client, keys, "global") == expected
    members = dict(redis_client.zrange(keys.board("global"), 0, -1, withscores=True))
    assert len(members) == len(expected)  # no user left with an old member beside the new
    reached_ms = int(REACHED.timestamp() * 1000)
    assert f"{reached_ms:013d}|u0" in members and f"{reached_ms:013d}|u5" in members
    assert redis_client.hget(keys.board_entries("global"), "u5").startswith("8|")
    assert redis_client.hget(keys.board_entries("global"), "u3") is None
