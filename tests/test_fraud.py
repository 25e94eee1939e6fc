"""Fraud rules, bans and moderation against real Redis, Postgres and processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from scoreboard.db import create_pool
from scoreboard.dedup_marks import mark_windows
from scoreboard.keys import Keys
from scoreboard.lua import register_scripts
from scoreboard.moderation import Moderation, restore_restrictions
from scoreboard.settings import Settings, load_settings
from tests.board_support import entry, seed
from tests.conftest import Api, Player, new_address
from tests.servers import (
    PROJECT_DIR,
    Backing,
    SyncRedis,
    board_totals,
    broadcaster_server,
    create_board,
    fresh_name,
    ingest_server,
)
from workers.fraud import FraudChecks, score_velocity


@asynccontextmanager
async def fraud_tools(backing: Backing, keys: Keys,
                      **env: str) -> AsyncIterator[tuple[Moderation, FraudChecks]]:
    client = backing.async_redis(decode_responses=True)
    pool = await create_pool(backing.database_url, max_size=3)
    moderation = Moderation(redis=client, pool=pool, scripts=register_scripts(client), keys=keys)
    settings = load_settings({"KEY_PREFIX": keys.prefix, **env})
    try:
        yield moderation, FraudChecks(moderation, settings, consumer="fraud-test")
    finally:
        await pool.close()
        await client.aclose()


def record_decisions(backing: Backing, keys: Keys, **env: str) -> None:
    async def run() -> None:
        async with fraud_tools(backing, keys, **env) as (_, checks):
            await checks.record_decisions()

    asyncio.run(run())


def events_of(backing: Backing, user_id: str) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        connection = await asyncpg.connect(backing.database_url)
        try:
            rows = await connection.fetch(
                "SELECT rule, severity, action, evidence::text AS evidence FROM fraud_events"
                " WHERE user_id = $1 ORDER BY id", user_id)
        finally:
            await connection.close()
        return [{**dict(r), "evidence": orjson.loads(r["evidence"])} for r in rows]

    return asyncio.run(run())


def increment(api: Api, player: Player, *, board: str = "global") -> httpx.Response:
    """One increment (the board's default action) through a fresh action token."""
    issued = api.post("/api/actions/token", json={"board": board}, headers=player.headers)
    assert issued.status_code == 200, issued.text
    return api.post("/api/scores/increment", headers=player.headers,
                    json={"action_token": issued.json()["action_token"]})


@pytest.fixture(scope="module")
def relaxed_url(backing: Backing) -> Iterator[str]:
    """An ingest whose per-user limits do not get in the way of the fraud patterns."""
    with ingest_server(backing.env(TRUSTED_PROXIES="127.0.0.1/32", INCREMENT_RATE="1000/60",
                                   ACTION_TOKEN_RATE="1000/60", TOKEN_FAILURES_TO_FLAG="3",
                                   TOKEN_FAILURES_TO_LIMIT_ADDRESS="5")) as url:
        yield url


@pytest.fixture
def relaxed(relaxed_url: str) -> Iterator[Api]:
    api = Api(relaxed_url)
    yield api
    api.close()


def test_rapid_actions_flag_the_user_and_the_script_holds_them_to_the_reduced_limit(
        relaxed: Api, redis_client: SyncRedis, keys: Keys, backing: Backing) -> None:
    player = relaxed.register_and_login()
    for _ in range(8):
        assert increment(relaxed, player).status_code == 202
    assert not redis_client.exists(keys.flagged(player.user_id))  # 8 in 10 s: allowed
    assert increment(relaxed, player).status_code == 202  # the 9th flags
    assert redis_client.get(keys.flagged(player.user_id)) == "rapid_actions"
    assert increment(relaxed, player).status_code == 202  # flagged limit: 1 a minute
    refused = increment(relaxed, player)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 30
    record_decisions(backing, keys)
    events = events_of(backing, player.user_id)
    assert [(e["rule"], e["severity"], e["action"]) for e in events] == [
        ("rapid_actions", "high", "flagged")]
    assert events[0]["evidence"] == {"accepted": 9, "window_ms": 10000, "rung": 1}


def test_actions_spread_over_more_than_the_window_are_not_flagged(
        backing: Backing, redis_client: SyncRedis, keys: Keys) -> None:
    """...and what the script keeps of them stays bounded and expires by itself: it
    trims the window's old entries and renews its expiry only now and then (fewer
    writes per increment), and gives the marks' window SET an expiry once."""
    with ingest_server(backing.env(TRUSTED_PROXIES="127.0.0.1/32", INCREMENT_RATE="1000/60",
                                   ACTION_TOKEN_RATE="1000/60", RAPID_WINDOW_MS="1000",
                                   RAPID_MAX_ACTIONS="3")) as url:
        api = Api(url)
        try:
            player = api.register_and_login()
            for _ in range(8):  # 8 actions, never more than 3 within a second
                last_sent = time.monotonic()
                assert increment(api, player).status_code == 202
                time.sleep(0.4)
            assert not redis_client.exists(keys.flagged(player.user_id))
            recent = keys.player(player.user_id).recent_actions(player.user_id)
            assert redis_client.zcard(recent) <= 3 + 3  # in the window, plus 3 stale at most
            # it outlives its newest entry's window (1 s from the last accept)
            left_ms = redis_client.pttl(recent)
            since_ms = (time.monotonic() - last_sent) * 1000
            assert 1000 - since_ms - 5 <= left_ms <= 2000
            ttl_ms = Settings().dedup_ttl_s * 1000
            marks = [m for m in mark_windows(keys.player(player.user_id).event_marks("player"),
                                             int(time.time() * 1000), ttl_ms)
                     if redis_client.exists(m)]
            assert marks and all(0 < redis_client.pttl(m) <= 2 * ttl_ms for m in marks)
        finally:
            api.close()


def forged(token: str) -> str:
    payload, _, signature = token.rpartition(".")
    return payload + "." + ("0" if signature[0] != "0" else "1") + signature[1:]


def test_repeated_token_manipulation_flags_the_user_first(relaxed: Api, redis_client: SyncRedis,
                                                          keys: Keys, backing: Backing) -> None:
    """The first offence is the ladder's first rung (a flag), not a ban: the
    escalation is tests/test_fraud_ladder.py's."""
    player = relaxed.register_and_login()
    assert increment(relaxed, player).status_code == 202
    for _ in range(3):  # three forged tokens (the threshold here)
        response = relaxed.post("/api/scores/increment", headers=player.headers,
                                json={"action_token": forged(relaxed.action_token(player))})
        assert response.status_code == 403
    assert redis_client.get(keys.flagged(player.user_id)) == "token_manipulation"
    assert 3500_000 < redis_client.pttl(keys.flagged(player.user_id)) <= 3600_000
    assert not redis_client.exists(keys.banned(player.user_id))
    record_decisions(backing, keys)
    events = events_of(backing, player.user_id)
    assert [(e["rule"], e["severity"], e["action"]) for e in events] == [
        ("token_manipulation", "critical", "flagged")]
    assert events[0]["evidence"]["rung"] == 1


def test_two_honest_mistakes_do_not_ban(relaxed: Api, redis_client: SyncRedis,
                                        keys: Keys) -> None:
    player = relaxed.register_and_login()
    token = relaxed.action_token(player)
    assert relaxed.post("/api/scores/increment", headers=player.headers,
                        json={"action_token": token}).status_code == 202
    for _ in range(2):  # a retried request: the original answer, not a failure
        assert relaxed.post("/api/scores/increment", headers=player.headers,
                            json={"action_token": token}).status_code == 202
    assert not redis_client.exists(keys.banned(player.user_id))
    assert not redis_client.exists(keys.token_failures_user(player.user_id))
    assert increment(relaxed, player).status_code == 202


def test_forged_access_tokens_limit_the_address_not_a_user(relaxed: Api, redis_client: SyncRedis,
                                                           keys: Keys) -> None:
    victim = relaxed.register_and_login()
    address = new_address()
    header, payload, _ = victim.access_token.split(".")
    for _ in range(5):
        response = relaxed.post("/api/actions/token", headers={
            "Authorization": f"Bearer {header}.{payload}.AAAA", "X-Forwarded-For": address})
        assert response.status_code == 401
    assert redis_client.exists(keys.address_limited(address))
    assert not redis_client.exists(keys.banned(victim.user_id))  # an unverified sub is not blamed
    # Honest users behind the same address (a household, carrier NAT) keep working ...
    victim.address = address
    assert increment(relaxed, victim).status_code == 202
    # ... a user with token failures of its own there is refused while the limit lasts.
    cheat = relaxed.register_and_login()
    cheat.address = address
    assert relaxed.post("/api/scores/increment", headers=cheat.headers, json={
        "action_token": forged(relaxed.action_token(cheat))}).status_code == 403
    limited = relaxed.post("/api/actions/token", headers=cheat.headers)
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "address_limited"
    # Limiting restarted the address's count: once the limit ends (its key expires),
    # one more failure does not limit it again; it takes the threshold anew.
    redis_client.delete(keys.address_limited(address))
    assert relaxed.post("/api/actions/token", headers={
        "Authorization": f"Bearer {header}.{payload}.AAAA", "X-Forwarded-For": address}
    ).status_code == 401
    assert not redis_client.exists(keys.address_limited(address))


def test_unusual_time_is_logged_once_and_never_blocks(backing: Backing, keys: Keys) -> None:
    night = int(datetime(2026, 11, 20, 3, 30, tzinfo=UTC).timestamp() * 1000)
    day = int(datetime(2026, 11, 20, 14, 0, tzinfo=UTC).timestamp() * 1000)
    owl, lark = fresh_name("owl"), fresh_name("lark")
    batch = [entry(owl, 2, night, board="global"), entry(owl, 3, night + 60_000, board="global"),
             entry(lark, 2, day, board="global")]

    async def run() -> None:
        async with fraud_tools(backing, keys) as (_, checks):
            await checks.check_batch(batch)
            await checks.check_batch(batch)  # a redelivery: still once

    asyncio.run(run())
    assert [(e["rule"], e["severity"], e["action"]) for e in events_of(backing, owl)] == [
        ("unusual_time", "medium", "logged")]
    assert events_of(backing, lark) == []


def test_points_beyond_the_boards_plausible_maximum_are_flagged_for_review(
        backing: Backing, keys: Keys) -> None:
    board, cheat, honest = fresh_name("capped"), fresh_name("cheat"), fresh_name("honest")

    async def run() -> None:
        connection = await asyncpg.connect(backing.database_url)
        await connection.execute("INSERT INTO boards (board, max_points_per_action)"
                                 " VALUES ($1, 50)", board)
        await connection.close()
        noon = int(datetime(2026, 11, 20, 12, tzinfo=UTC).timestamp() * 1000)
        async with fraud_tools(backing, keys) as (_, checks):
            await checks.check_batch([entry(cheat, 60, noon, board=board),
                                      entry(honest, 50, noon, board=board)])

    asyncio.run(run())
    events = events_of(backing, cheat)
    assert [(e["rule"], e["action"]) for e in events] == [("points_per_action", "review")]
    assert events[0]["evidence"]["points"] == 60
    assert events_of(backing, honest) == []


def test_score_velocity_flags_a_spike_against_the_users_own_history(
        backing: Backing, keys: Keys) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    spiky, steady, newcomer = fresh_name("spiky"), fresh_name("steady"), fresh_name("new")
    entries = []
    for back in range(1, 13):  # twelve hours of ordinary play
        at = int((hour - timedelta(hours=back)).timestamp() * 1000) + 60_000
        entries += [entry(spiky, 10 + back % 3, at, board="global"),
                    entry(steady, 10 + back % 3, at, board="global")]
    at = int(hour.timestamp() * 1000) + 60_000
    entries += [entry(spiky, 400, at, board="global"), entry(steady, 12, at, board="global"),
                entry(newcomer, 400, at, board="global")]
    seed(backing, keys, entries)

    async def run() -> list[str]:
        async with fraud_tools(backing, keys) as (moderation, checks):
            return await score_velocity(moderation, checks.settings, hour=hour)

    flagged = asyncio.run(run())
    assert spiky in flagged
    assert steady not in flagged and newcomer not in flagged  # no history: not judged
    (event,) = events_of(backing, spiky)
    assert (event["rule"], event["action"]) == ("score_velocity", "review")
    assert event["evidence"]["z"] > 3


def snapshot_users(message: str | bytes) -> dict[str, int]:
    return {e["user_id"]: e["score"] for e in orjson.loads(message)["entries"]}


def test_ban_drops_the_user_from_boards_and_spectators_unban_restores(
        api: Api, backing: Backing, keys: Keys, redis_client: SyncRedis) -> None:
    board = fresh_name("banboard")
    cheater = api.register_and_login()
    now = int(time.time() * 1000)
    seed(backing, keys, [entry(cheater.user_id, 50, now, board=board),
                         entry("bystander", 10, now, board=board)])
    with broadcaster_server(backing.env()) as url:

        async def run() -> None:
            async with connect(url.replace("http", "ws") + f"/ws?board={board}") as ws, \
                    fraud_tools(backing, keys) as (moderation, _):
                assert snapshot_users(await ws.recv()) == {cheater.user_id: 50, "bystander": 10}
                await moderation.restrict(cheater.user_id, "banned", reason="test")
                assert snapshot_users(await asyncio.wait_for(ws.recv(), 5)) == {"bystander": 10}
                await moderation.lift(cheater.user_id, "banned", reason="appeal")
                assert snapshot_users(await asyncio.wait_for(ws.recv(), 5)) == {
                    cheater.user_id: 50, "bystander": 10}

        asyncio.run(run())

    async def restrict(lift: bool) -> None:
        async with fraud_tools(backing, keys) as (moderation, _):
            if lift:
                await moderation.lift(cheater.user_id, "banned", reason="appeal")
            else:
                await moderation.restrict(cheater.user_id, "banned", reason="test")

    token = api.action_token(cheater)  # issued before the ban
    asyncio.run(restrict(lift=False))
    refused = api.post("/api/scores/increment", headers=cheater.headers,
                       json={"action_token": token})
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "user_banned")
    asyncio.run(restrict(lift=True))
    assert api.post("/api/scores/increment", headers=cheater.headers,
                    json={"action_token": token}).status_code == 202
    actions = [e["action"] for e in events_of(backing, cheater.user_id)]
    assert actions == ["banned", "lifted_banned", "banned", "lifted_banned"]


def test_shadow_ban_hides_the_user_from_others_but_not_from_themself(
        api: Api, backing: Backing, keys: Keys, redis_client: SyncRedis) -> None:
    board = fresh_name("shadow")
    sneaky = api.register_and_login()
    now = int(time.time() * 1000)
    seed(backing, keys, [entry(sneaky.user_id, 30, now, board=board),
                         entry("other", 20, now, board=board)])

    async def ban() -> None:
        async with fraud_tools(backing, keys) as (moderation, _):
            await moderation.restrict(sneaky.user_id, "shadow_banned", reason="test")

    asyncio.run(ban())
    top = api.get("/api/scores/top", params={"board": board}).json()
    assert [e["user_id"] for e in top["entries"]] == ["other"]
    assert api.get(f"/api/scores/users/{sneaky.user_id}",
                   params={"board": board}).status_code == 404  # to anyone else
    own = api.get(f"/api/scores/users/{sneaky.user_id}", params={"board": board},
                  headers=sneaky.headers)
    assert own.status_code == 200
    assert (own.json()["rank"], own.json()["score"]) == (1, 30)
    create_board(backing, board)
    assert increment(api, sneaky, board=board).status_code == 202  # not told


def test_removing_an_action_corrects_postgres_the_board_and_the_next_snapshot(
        backing: Backing, keys: Keys, redis_client: SyncRedis) -> None:
    board = fresh_name("removal")
    user = fresh_name("wrong")
    now = int(time.time() * 1000)
    bad = entry(user, 900, now, board=board)
    seed(backing, keys, [entry(user, 5, now - 1000, board=board), bad,
                         entry("rival", 100, now, board=board)])
    with broadcaster_server(backing.env()) as url:

        async def run() -> None:
            async with connect(url.replace("http", "ws") + f"/ws?board={board}") as ws, \
                    fraud_tools(backing, keys) as (moderation, _):
                assert snapshot_users(await ws.recv())[user] == 905
                totals = await moderation.remove_action(bad.event_id, reason="exploit")
                assert [(t.user_id, t.score) for t in totals] == [(user, 5)]
                after = snapshot_users(await asyncio.wait_for(ws.recv(), 5))
                assert after == {"rival": 100, user: 5}
                # its event stays counted (counted_events), its action is gone: nothing more
                assert await moderation.remove_action(bad.event_id, reason="again") == []

        asyncio.run(run())

    async def check() -> None:
        connection = await asyncpg.connect(backing.database_url)
        try:
            assert await connection.fetchval(
                "SELECT count(*) FROM actions WHERE event_id = $1", bad.event_id) == 0
            assert await connection.fetchval(
                "SELECT score FROM scores WHERE board = $1 AND user_id = $2", board, user) == 5
        finally:
            await connection.close()

    asyncio.run(check())
    assert board_totals(redis_client, keys, board)[user] == 5


def test_restrictions_are_restored_into_redis_from_postgres(
        backing: Backing, keys: Keys, redis_client: SyncRedis) -> None:
    user = fresh_name("restored")

    async def run() -> None:
        async with fraud_tools(backing, keys) as (moderation, _):
            await moderation.restrict(user, "flagged", reason="test", ttl_s=3600)
            await moderation.restrict(user, "banned", reason="test")
            redis_client.delete(keys.flagged(user), keys.banned(user))  # Redis lost them
            await restore_restrictions(moderation.redis, moderation.pool, keys)

    asyncio.run(run())
    assert redis_client.get(keys.banned(user)) == "test"
    assert 3500_000 < redis_client.pttl(keys.flagged(user)) <= 3600_000


def test_admin_command_bans_lists_and_unbans(backing: Backing, keys: Keys,
                                             redis_client: SyncRedis) -> None:
    user, board = fresh_name("admin"), fresh_name("admin_board")
    now = int(time.time() * 1000)
    first, second = entry(user, 3, now - 1000, board=board), entry(user, 4, now, board=board)
    seed(backing, keys, [first, second])
    env = backing.env()

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "scoreboard.cli", "admin", *args],
                              cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
                              timeout=60, check=False)

    listed_actions = admin("actions", user)
    assert listed_actions.returncode == 0, listed_actions.stderr
    rows = [orjson.loads(line) for line in listed_actions.stdout.splitlines()]
    assert [(r["event_id"], r["points"], r["board"]) for r in rows] == [
        (first.event_id, 3, board), (second.event_id, 4, board)]  # newest last
    assert admin("actions", user, "--board", board, "--limit", "1").stdout.count("\n") == 1
    for refused in (admin("ban", "nobody-" + user), admin("actions", "nobody-" + user),
                    admin("events", "--user", "nobody-" + user),
                    admin("actions", user, "--board", "no-such-board")):
        assert refused.returncode == 1
        assert refused.stderr.startswith("unknown "), refused.stderr
    # The same event id from another source: the command must be told which.
    other = second._replace(source="backend:other", points=5, user_id=user + "-b")
    seed(backing, keys, [other])
    ambiguous = admin("remove-action", second.event_id)
    assert ambiguous.returncode == 1
    assert "say which with --source" in ambiguous.stderr, ambiguous.stderr
    assert admin("actions", user).stdout.count("\n") == 2  # nothing removed
    assert admin("remove-action", second.event_id, "--source", "test").returncode == 0
    assert [orjson.loads(line)["event_id"] for line in admin("actions", user + "-b").stdout
            .splitlines()] == [second.event_id]  # the other source's action stays
    assert [orjson.loads(line)["event_id"] for line in admin("actions", user).stdout
            .splitlines()] == [first.event_id]
    assert admin("ban", user, "--reason", "chargeback fraud").returncode == 0
    assert redis_client.exists(keys.banned(user))
    listed = admin("events", "--user", user)
    assert listed.returncode == 0
    assert [orjson.loads(line)["action"] for line in listed.stdout.splitlines()] == [
        "action_removed", "banned"]  # newest last
    assert admin("unban", user).returncode == 0
    assert not redis_client.exists(keys.banned(user))
    missing = admin("remove-action", "no-such-event")
    assert missing.returncode == 1
    assert "no action 'no-such-event'" in missing.stderr


def test_commands_refuse_unknown_boards_and_say_what_they_do(backing: Backing) -> None:
    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "scoreboard.cli", *args],
                              cwd=PROJECT_DIR, env=backing.env(), capture_output=True,
                              text=True, timeout=60, check=False)

    unknown = command("rebuild-board", fresh_name("typo"))
    assert unknown.returncode == 1 and unknown.stderr.startswith("unknown board")
    assert command("rebuild-board", "global").returncode == 0
    assert "newest last" in command("admin", "events", "--help").stdout
    assert "event ids" in command("admin", "--help").stdout
    assert "recompute a board" in command("rebuild-board", "--help").stdout
