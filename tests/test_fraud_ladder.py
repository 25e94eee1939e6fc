"""The automatic ladder and the end of restrictions, against real Redis, Postgres
and an ingest process (docs/fraud.md, "The ladder"): an offence flags, the next
bans for a while, the next bans; restrictions end by themselves, a ban that
ends puts the user back on the boards at once, and an expired row no longer
blocks the next one. Next to each, the honest pattern that must stay quiet:
retries of an accepted increment and tokens used late."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import orjson
import pytest

from scoreboard.keys import Keys
from scoreboard.moderation import restore_restrictions
from tests.board_support import entry, seed
from tests.conftest import Api, Player
from tests.servers import (
    PROJECT_DIR,
    Backing,
    SyncRedis,
    board_totals,
    fresh_name,
    ingest_server,
)
from tests.test_fraud import events_of, forged, fraud_tools, increment, record_decisions
from tests.waiting import wait_for

# Short rungs so that the test sees them end; the worker side gets the same values.
LADDER = {"FLAG_DURATION_S": "1", "TEMP_BAN_S": "2", "TOKEN_FAILURES_TO_FLAG": "3"}


@pytest.fixture(scope="module")
def ladder_url(backing: Backing) -> Iterator[str]:
    with ingest_server(backing.env(TRUSTED_PROXIES="127.0.0.1/32", INCREMENT_RATE="1000/60",
                                   ACTION_TOKEN_RATE="1000/60", ACTION_TOKEN_TTL_S="1",
                                   **LADDER)) as url:
        yield url


@pytest.fixture
def ladder(ladder_url: str) -> Iterator[Api]:
    api = Api(ladder_url)
    yield api
    api.close()


def restrictions(backing: Backing, user_id: str) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        connection = await asyncpg.connect(backing.database_url)
        try:
            rows = await connection.fetch(
                "SELECT kind, reason, level, ended_by, lift_reason, appealed,"
                " expires_at IS NULL AS for_good, lifted_at IS NULL AS active"
                " FROM user_restrictions WHERE user_id = $1 ORDER BY id", user_id)
        finally:
            await connection.close()
        return [dict(r) for r in rows]

    return asyncio.run(run())


def sweep(backing: Backing, keys: Keys) -> int:
    """One run of the recorder's sweep (workers/fraud.py: every second in a worker)."""
    async def run() -> int:
        async with fraud_tools(backing, keys, **LADDER) as (_, checks):
            return await checks.expire_restrictions()

    return asyncio.run(run())


def forge(api: Api, player: Player, times: int) -> None:
    for _ in range(times):
        response = api.post("/api/scores/increment", headers=player.headers,
                            json={"action_token": forged(api.action_token(player))})
        assert response.status_code == 403


def offence(api: Api, player: Player, backing: Backing, keys: Keys, redis_client: SyncRedis,
            times: int) -> None:
    """Forged tokens until the script flags the user, then the recorder's rung."""
    forge(api, player, times)
    assert redis_client.get(keys.flagged(player.user_id)) == "token_manipulation"
    record_decisions(backing, keys, **LADDER)


def test_offences_climb_flag_then_temporary_ban_then_ban(
        ladder: Api, backing: Backing, keys: Keys, redis_client: SyncRedis) -> None:
    player = ladder.register_and_login()
    board = fresh_name("ladder")
    seed(backing, keys, [entry(player.user_id, 7, int(time.time() * 1000), board=board)])
    offence(ladder, player, backing, keys, redis_client, 3)  # rung 1: a flag of 1 s
    assert not redis_client.exists(keys.banned(player.user_id))
    assert board_totals(redis_client, keys, board) == {player.user_id: 7}
    wait_for(lambda: not redis_client.exists(keys.flagged(player.user_id)), timeout_s=15)
    # the failure count still stands: the next failure is the second offence
    offence(ladder, player, backing, keys, redis_client, 1)
    assert redis_client.get(keys.banned(player.user_id)) == "token_manipulation"
    assert 0 < redis_client.pttl(keys.banned(player.user_id)) <= 2000  # TEMP_BAN_S
    assert board_totals(redis_client, keys, board) == {}  # off the board at once
    refused = ladder.post("/api/actions/token", headers=player.headers)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "user_banned")
    # The temporary ban ends: the sweep puts the user back without an increment of theirs.
    wait_for(lambda: sweep(backing, keys) >= 0 and board_totals(
        redis_client, keys, board) == {player.user_id: 7}, timeout_s=15)
    offence(ladder, player, backing, keys, redis_client, 1)  # rung 3: for good
    assert redis_client.pttl(keys.banned(player.user_id)) == -1
    assert board_totals(redis_client, keys, board) == {}
    decided = [(e["action"], e["evidence"]["rung"]) for e in events_of(backing, player.user_id)]
    assert decided == [("flagged", 1), ("banned", 2), ("banned", 3)]
    rows = restrictions(backing, player.user_id)
    assert [(r["kind"], r["level"], r["ended_by"], r["active"], r["for_good"]) for r in rows] == [
        ("flagged", 1, "expired", False, False), ("banned", 2, "expired", False, False),
        ("banned", 3, None, True, True)]


def test_an_appeal_lifts_with_who_and_why_and_resets_the_ladder(
        ladder: Api, backing: Backing, keys: Keys, redis_client: SyncRedis) -> None:
    player = ladder.register_and_login()
    board = fresh_name("appeal")
    seed(backing, keys, [entry(player.user_id, 5, int(time.time() * 1000), board=board)])
    offence(ladder, player, backing, keys, redis_client, 3)
    wait_for(lambda: not redis_client.exists(keys.flagged(player.user_id)), timeout_s=15)
    offence(ladder, player, backing, keys, redis_client, 1)
    assert redis_client.exists(keys.banned(player.user_id))

    async def appeal() -> int:
        async with fraud_tools(backing, keys, **LADDER) as (moderation, _):
            return await moderation.lift(player.user_id, "banned", reason="shared device",
                                         by="alice", appeal=True)

    assert asyncio.run(appeal()) == 1
    assert board_totals(redis_client, keys, board) == {player.user_id: 5}  # the board corrected
    banned_row = restrictions(backing, player.user_id)[1]
    assert (banned_row["ended_by"], banned_row["lift_reason"], banned_row["appealed"]) == (
        "alice", "shared device", True)
    lifted = events_of(backing, player.user_id)[-1]
    assert (lifted["action"], lifted["evidence"]["by"], lifted["evidence"]["reason"]) == (
        "lifted_banned", "alice", "shared device")
    redis_client.delete(keys.token_failures_user(player.user_id))
    wait_for(lambda: not redis_client.exists(keys.flagged(player.user_id)), timeout_s=15)
    offence(ladder, player, backing, keys, redis_client, 3)  # a fresh start: rung 1 again
    assert not redis_client.exists(keys.banned(player.user_id))
    assert events_of(backing, player.user_id)[-1]["evidence"]["rung"] == 1


def test_honest_retries_and_late_tokens_never_count(
        ladder: Api, backing: Backing, keys: Keys, redis_client: SyncRedis) -> None:
    """The issue's new user: the same increment re-sent 11 times, and 10 tokens used
    after they expired. Neither is manipulation (compare the forged tokens above)."""
    player = ladder.register_and_login()
    token = ladder.action_token(player)
    for _ in range(12):  # the original and 11 retries: each gets the original answer
        response = ladder.post("/api/scores/increment", headers=player.headers,
                               json={"action_token": token})
        assert response.status_code == 202, response.text
    late = [ladder.action_token(player) for _ in range(10)]
    time.sleep(1.1)  # ACTION_TOKEN_TTL_S=1: every one of them has expired
    for token in late:
        response = ladder.post("/api/scores/increment", headers=player.headers,
                               json={"action_token": token})
        assert (response.status_code, response.json()["error"]["code"]) == (
            403, "action_token_expired")
    assert not redis_client.exists(keys.token_failures_user(player.user_id))
    assert not redis_client.exists(keys.flagged(player.user_id))
    assert not redis_client.exists(keys.banned(player.user_id))
    record_decisions(backing, keys, **LADDER)
    assert events_of(backing, player.user_id) == []
    assert increment(ladder, player).status_code == 202


def test_an_expired_row_no_longer_blocks_the_next_restriction(
        backing: Backing, keys: Keys, redis_client: SyncRedis) -> None:
    user, steady = fresh_name("expired"), fresh_name("steady")

    async def run() -> None:
        async with fraud_tools(backing, keys, **LADDER) as (moderation, checks):
            await moderation.restrict(user, "flagged", reason="first", ttl_s=1)
            await moderation.restrict(steady, "flagged", reason="long", ttl_s=3600)
            await asyncio.sleep(1.1)
            await moderation.restrict(user, "flagged", reason="second", ttl_s=3600)
            await checks.expire_restrictions()
            redis_client.delete(keys.flagged(user), keys.flagged(steady))  # Redis lost them
            await restore_restrictions(moderation.redis, moderation.pool, keys)

    asyncio.run(run())
    assert [(r["reason"], r["ended_by"], r["active"]) for r in restrictions(backing, user)] == [
        ("first", "expired", False), ("second", None, True)]
    assert redis_client.get(keys.flagged(user)) == "second"  # the new one was recorded
    # quiet: a restriction that has not ended is left alone by the sweep
    assert [(r["ended_by"], r["active"]) for r in restrictions(backing, steady)] == [
        (None, True)]
    assert redis_client.get(keys.flagged(steady)) == "long"


def test_admin_review_lists_the_evidence_and_undo_corrects_the_board(
        ladder: Api, backing: Backing, keys: Keys, redis_client: SyncRedis) -> None:
    player, quiet = ladder.register_and_login(), ladder.register_and_login()
    board = fresh_name("review")
    now = int(time.time() * 1000)
    seed(backing, keys, [entry(player.user_id, 9, now, board=board),
                         entry(quiet.user_id, 4, now, board=board)])
    offence(ladder, player, backing, keys, redis_client, 3)
    wait_for(lambda: not redis_client.exists(keys.flagged(player.user_id)), timeout_s=15)
    offence(ladder, player, backing, keys, redis_client, 1)  # a temporary ban
    assert board_totals(redis_client, keys, board) == {quiet.user_id: 4}
    env = backing.env(**LADDER)

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "scoreboard.cli", "admin", *args],
                              cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
                              timeout=60, check=False)

    listed = admin("review", "--limit", "500")
    assert listed.returncode == 0, listed.stderr
    accounts = {a["user_id"]: a for a in map(orjson.loads, listed.stdout.splitlines())}
    assert quiet.user_id not in accounts  # no evidence, not listed
    mine = accounts[player.user_id]
    assert mine["rules"] == {"token_manipulation": 2}
    assert mine["points"] == 9
    assert [(r["kind"], r["rung"]) for r in mine["restrictions"]] == [("banned", 2)]
    ban_event = next(e for e in events_rows(backing, player.user_id) if e["action"] == "banned")
    undone = admin("undo", str(ban_event["id"]), "--by", "bob", "--reason", "family member")
    assert undone.returncode == 0, undone.stderr
    assert orjson.loads(undone.stdout)["undone"] == "banned"
    assert board_totals(redis_client, keys, board) == {player.user_id: 9, quiet.user_id: 4}
    assert not redis_client.exists(keys.banned(player.user_id))
    rows = restrictions(backing, player.user_id)
    assert [(r["ended_by"], r["lift_reason"], r["appealed"]) for r in rows][-1] == (
        "bob", "family member", True)
    again = [orjson.loads(line) for line in admin("review").stdout.splitlines()]
    assert [a["restrictions"] for a in again if a["user_id"] == player.user_id] == [[]]
    # refused: a moderator's own decision is not an automatic one to undo
    manual = next(e for e in events_rows(backing, player.user_id) if e["rule"] == "manual")
    refused = admin("undo", str(manual["id"]), "--reason", "x")
    assert refused.returncode == 1
    assert "not an automatic flag or ban" in refused.stderr


def events_rows(backing: Backing, user_id: str) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        connection = await asyncpg.connect(backing.database_url)
        try:
            rows = await connection.fetch(
                "SELECT id, rule, action FROM fraud_events WHERE user_id = $1 ORDER BY id",
                user_id)
        finally:
            await connection.close()
        return [dict(r) for r in rows]

    return asyncio.run(run())
