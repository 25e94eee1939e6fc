"""The fraud rules added with the simulator, against real Redis, Postgres and processes:
rate-limit hammering (ingest's 429 path), cadence regularity and farms (the
worker's per-batch checks). Each fires on its pattern and stays quiet on the
honest pattern next to it; docs/fraud.md describes them."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import asyncpg
import pytest

from scoreboard.keys import Keys
from scoreboard.stream_entry import StreamEntry
from tests.conftest import Api, Player, new_address
from tests.servers import Backing, SyncRedis, fresh_name, ingest_server
from tests.test_fraud import events_of, fraud_tools, increment, record_decisions
from tests.waiting import wait_for
from tests.worker_support import wait_caught_up, worker_process

INCREMENT, ACTION_TOKEN = "/api/scores/increment", "/api/actions/token"
NOON_MS = 1_795_003_200_000  # 2026-11-18 12:00 UTC: far from the unusual-time hours


def restrictions_of(backing: Backing, user_id: str) -> list[tuple[str, str]]:
    async def run() -> list[tuple[str, str]]:
        connection = await asyncpg.connect(backing.database_url)
        try:
            rows = await connection.fetch(
                "SELECT kind, reason FROM user_restrictions WHERE user_id = $1 ORDER BY id",
                user_id)
        finally:
            await connection.close()
        return [(r["kind"], r["reason"]) for r in rows]

    return asyncio.run(run())


def decisions_of(backing: Backing, user_id: str) -> list[tuple[str, str, str]]:
    """The user's fraud events that decided something: the unusual-time rule's
    "logged" rows (real time of day in the end-to-end tests) are left out."""
    return [(e["rule"], e["severity"], e["action"]) for e in events_of(backing, user_id)
            if e["action"] != "logged"]


def play(user_id: str, ts_ms: int, *, ip: str = "", source: str = "player",
         points: int = 1) -> StreamEntry:
    """A persisted stream entry, as the worker hands it to its per-batch checks."""
    return StreamEntry(stream_id="0-1", event_id="at-" + secrets.token_hex(8), user_id=user_id,
                       username=user_id, board="global", points=points, source=source,
                       ts_ms=ts_ms, ip=ip or new_address(), request_id="")


def check_batches(backing: Backing, keys: Keys, batches: Sequence[Sequence[StreamEntry]],
                  **env: str) -> None:
    """Run the worker's per-batch checks over ``batches``, then record the decisions."""

    async def run() -> None:
        async with fraud_tools(backing, keys, **env) as (_, checks):
            for batch in batches:
                await checks.check_batch(batch)
            await checks.record_decisions()

    asyncio.run(run())


# ----------------------------------------------------------------------- rate-limit hammering
# The suite's ingest runs the default limits: 5 increments and 10 action tokens a
# minute per user, and RATE_REFUSALS_TO_FLAG=20 within RATE_REFUSAL_WINDOW_S=60.


def test_hammering_through_429s_flags_the_user(api: Api, redis_client: SyncRedis, keys: Keys,
                                               backing: Backing) -> None:
    player = api.register_and_login()
    for _ in range(5):
        assert increment(api, player).status_code == 202
    token = api.action_token(player)
    for attempt in range(20):  # a script retrying at once, never honouring Retry-After
        assert not redis_client.exists(keys.flagged(player.user_id)), attempt
        refused = api.post(INCREMENT, headers=player.headers, json={"action_token": token})
        assert refused.status_code == 429
    assert redis_client.get(keys.flagged(player.user_id)) == "rate_hammering"
    assert 3_500_000 < redis_client.pttl(keys.flagged(player.user_id)) <= 3_600_000
    record_decisions(backing, keys)
    (event,) = events_of(backing, player.user_id)
    assert (event["rule"], event["severity"], event["action"]) == (
        "rate_hammering", "high", "flagged")
    assert event["evidence"] == {"refusals": 20, "window_ms": 60_000, "last": "increment",
                                 "rung": 1}
    assert restrictions_of(backing, player.user_id) == [("flagged", "rate_hammering")]


def test_hammering_the_action_token_endpoint_counts_too(api: Api, redis_client: SyncRedis,
                                                        keys: Keys) -> None:
    player = api.register_and_login()
    for _ in range(10):
        assert api.post(ACTION_TOKEN, headers=player.headers).status_code == 200
    for _ in range(20):
        assert api.post(ACTION_TOKEN, headers=player.headers).status_code == 429
    assert redis_client.get(keys.flagged(player.user_id)) == "rate_hammering"


def test_a_client_that_meets_a_few_429s_is_not_flagged(api: Api, redis_client: SyncRedis,
                                                       keys: Keys, backing: Backing) -> None:
    """A burst past the limit and a few impatient retries: 19 refusals, one short."""
    player = api.register_and_login()
    for _ in range(5):
        assert increment(api, player).status_code == 202
    token = api.action_token(player)
    for _ in range(19):
        assert api.post(INCREMENT, headers=player.headers,
                        json={"action_token": token}).status_code == 429
    assert not redis_client.exists(keys.flagged(player.user_id))
    record_decisions(backing, keys)
    assert events_of(backing, player.user_id) == []


def test_refusals_of_a_shared_address_do_not_count_against_its_users(
        backing: Backing, redis_client: SyncRedis, keys: Keys) -> None:
    """Only the per-user limit counts: an address over its own limit (many players
    behind one NAT) says nothing about any one of them."""
    with ingest_server(backing.env(TRUSTED_PROXIES="127.0.0.1/32", IP_RATE="3/60",
                                   ACTION_TOKEN_RATE="1000/60")) as url:
        api = Api(url)
        try:
            player = api.register_and_login()
            for _ in range(3):
                assert api.post(ACTION_TOKEN, headers=player.headers).status_code == 200
            for _ in range(25):
                refused = api.post(ACTION_TOKEN, headers=player.headers)
                assert refused.status_code == 429
            assert not redis_client.exists(keys.flagged(player.user_id))
        finally:
            api.close()


# ----------------------------------------------------------------------- cadence regularity
# Defaults: the last CADENCE_ACTIONS=8 accepted actions, within CADENCE_WINDOW_S=900,
# with gaps whose std/mean is under CADENCE_MAX_CV=0.003.


def test_a_fixed_cadence_is_flagged_once_and_a_steady_human_is_not(
        backing: Backing, keys: Keys, redis_client: SyncRedis) -> None:
    bot, grinder = fresh_name("cadence_bot"), fresh_name("grinder")
    gaps_s = [13.2, 14.9, 13.6, 14.1, 13.0, 14.6, 13.9, 14.4, 13.3]  # a human: 13-15 s
    bot_times = [NOON_MS + i * 12_000 + (i * 7) % 11 for i in range(10)]  # ms of jitter
    human_times = [NOON_MS + int(sum(gaps_s[:i]) * 1000) for i in range(10)]
    entries = sorted([play(bot, t) for t in bot_times] + [play(grinder, t) for t in human_times],
                     key=lambda e: e.ts_ms)
    batches = [entries[i:i + 3] for i in range(0, len(entries), 3)]
    check_batches(backing, keys, batches)
    check_batches(backing, keys, batches)  # a redelivery flags nothing twice
    assert redis_client.get(keys.flagged(bot)) == "cadence_regularity"
    (event,) = events_of(backing, bot)
    assert (event["rule"], event["severity"], event["action"]) == (
        "cadence_regularity", "high", "flagged")
    assert event["evidence"]["actions"] == 8 and event["evidence"]["cv"] < 0.003
    assert 11_990 < event["evidence"]["mean_gap_ms"] < 12_010
    assert restrictions_of(backing, bot) == [("flagged", "cadence_regularity")]
    assert not redis_client.exists(keys.flagged(grinder))
    assert events_of(backing, grinder) == []


def test_seven_regular_actions_are_not_enough_and_backends_are_not_judged(
        backing: Backing, keys: Keys, redis_client: SyncRedis) -> None:
    short, backend_player = fresh_name("short"), fresh_name("backend_player")
    batch = [play(short, NOON_MS + i * 10_000) for i in range(7)]
    batch += [play(backend_player, NOON_MS + i * 10_000, source="backend:game1")
              for i in range(12)]
    check_batches(backing, keys, [batch])
    assert not redis_client.exists(keys.flagged(short))
    assert not redis_client.exists(keys.flagged(backend_player))


# ----------------------------------------------------------------------- farms
# Defaults: FARM_MIN_ACCOUNTS=5 busy accounts (FARM_BUSY_ACTIONS=30 accepts within the
# fixed FARM_WINDOW_S=600 window) making FARM_BUSY_SHARE=0.8 of the address's active
# accounts. NOON_MS starts a window (a multiple of 600 s).


def busy(users: Sequence[str], ip: str, actions: int) -> list[StreamEntry]:
    """``actions`` accepts of each of ``users`` from ``ip``, 12-16 s apart (irregular:
    the cadence rule stays out of it), in one window."""
    return [play(u, NOON_MS + 1000 + i * 12_000 + random.Random(i * 1000 + j).randrange(4000),
                 ip=ip)
            for i in range(actions) for j, u in enumerate(users)]


def test_five_busy_accounts_of_one_address_are_a_farm_a_household_is_not(
        backing: Backing, keys: Keys, redis_client: SyncRedis) -> None:
    farm_ip, home_ip = new_address(), new_address()
    farm = [fresh_name("farm") for _ in range(5)]
    home = [fresh_name("home") for _ in range(6)]  # six casual players, 15 actions each
    check_batches(backing, keys, [busy(farm[:4], farm_ip, 30) + busy(home, home_ip, 15)])
    assert not any(redis_client.exists(keys.flagged(u)) for u in farm + home)  # four so far
    check_batches(backing, keys, [busy(farm[4:], farm_ip, 30)])
    for user in farm:
        assert redis_client.get(keys.flagged(user)) == "farm"
        (event,) = events_of(backing, user)
        assert (event["rule"], event["action"]) == ("farm", "flagged")
        assert event["evidence"]["address"] == farm_ip
        assert event["evidence"]["accounts"] == 5
    assert not any(redis_client.exists(keys.flagged(u)) for u in home)
    assert all(events_of(backing, u) == [] for u in home)


def test_a_campus_address_is_judged_by_its_accounts_not_their_number(
        backing: Backing, keys: Keys, redis_client: SyncRedis) -> None:
    """80 players behind one address, 12 of them at a grinder's pace: not a farm."""
    campus_ip = new_address()
    grinders = [fresh_name("grind") for _ in range(12)]
    casuals = [fresh_name("casual") for _ in range(68)]
    played = busy(grinders, campus_ip, 40) + busy(casuals, campus_ip, 10)
    check_batches(backing, keys, [sorted(played, key=lambda e: e.ts_ms)])  # as they happen
    assert not any(redis_client.exists(keys.flagged(u)) for u in grinders + casuals)
    assert all(events_of(backing, u) == [] for u in grinders[:3] + casuals[:3])


def test_accounts_spread_beyond_the_window_or_sent_by_a_backend_are_not_a_farm(
        backing: Backing, keys: Keys, redis_client: SyncRedis) -> None:
    address, backend_address = new_address(), new_address()
    spread = [fresh_name("spread") for _ in range(5)]
    # one account every 151 s: never five within 600 s
    check_batches(backing, keys, [[play(u, NOON_MS + i * 151_000 + j * 3000
                                        + random.Random(j).randrange(1000), ip=address)
                                   for j in range(30)] for i, u in enumerate(spread)])
    players = [fresh_name("gp") for _ in range(20)]
    check_batches(backing, keys, [[play(u, NOON_MS, ip=backend_address, source="backend:g")
                                   for u in players]])
    assert not any(redis_client.exists(keys.flagged(u)) for u in spread + players)


# ----------------------------------------------------------------------- end to end
# A real ingest and a real worker process on a key prefix of their own, with the
# time compressed (actions every 0.6 s instead of every 12 s).


@dataclass
class System:
    api: Api
    keys: Keys


@pytest.fixture(scope="module")
def compressed(backing: Backing) -> Iterator[System]:
    prefix = fresh_name("fraudx")
    env = backing.env(KEY_PREFIX=prefix, TRUSTED_PROXIES="127.0.0.1/32",
                      INCREMENT_RATE="1000/60", ACTION_TOKEN_RATE="1000/60",
                      RAPID_MAX_ACTIONS="1000", CADENCE_ACTIONS="6", CADENCE_MAX_CV="0.2",
                      # plain gaps: at a CV of 0.2, gaps reduced to whole periods
                      # would call the test's human (0.7 to 1.6 s) a timer
                      CADENCE_MAX_MULTIPLE="1",
                      FARM_BUSY_ACTIONS="2",
                      CONSUMER_NAME="fraud-extra-worker", WORKER_METRICS_PORT="0",
                      WORKER_BLOCK_MS="200")
    with ingest_server(env) as url, worker_process(env):
        api = Api(url)
        try:
            yield System(api=api, keys=backing.keys_for(prefix))
        finally:
            api.close()


def send_at(api: Api, player: Player, offsets_s: Sequence[float]) -> None:
    """One increment at each offset from now (tokens fetched beforehand)."""
    tokens = [api.action_token(player) for _ in offsets_s]
    start = time.monotonic() + 0.2
    for token, offset in zip(tokens, offsets_s, strict=True):
        time.sleep(max(0.0, start + offset - time.monotonic()))
        response = api.post(INCREMENT, headers=player.headers, json={"action_token": token})
        assert response.status_code == 202, response.text


def test_end_to_end_a_regular_script_is_flagged_and_held_to_the_flagged_limit(
        compressed: System, backing: Backing, redis_client: SyncRedis) -> None:
    api, keys = compressed.api, compressed.keys
    bot, human = api.register_and_login(), api.register_and_login()
    # CADENCE_MAX_CV 0.2 of 1 s gaps: the bot stays regular unless the machine delays its
    # requests by 200 ms (std) or so; the human's gaps (0.7 to 1.6 s) have a CV near 0.4.
    send_at(api, bot, [i * 1.0 for i in range(6)])
    send_at(api, human, [0, 0.7, 2.2, 3.0, 4.6, 5.3])
    wait_for(lambda: redis_client.exists(keys.flagged(bot.user_id)), timeout_s=15)
    wait_for(lambda: decisions_of(backing, bot.user_id), timeout_s=15)  # the recorder wrote it
    assert decisions_of(backing, bot.user_id) == [("cadence_regularity", "high", "flagged")]
    assert restrictions_of(backing, bot.user_id) == [("flagged", "cadence_regularity")]
    assert increment(api, bot).status_code == 202  # the flagged limit: 1 a minute
    assert increment(api, bot).status_code == 429
    wait_caught_up(redis_client, keys)  # the human's batch was checked and acknowledged
    assert not redis_client.exists(keys.flagged(human.user_id))
    assert decisions_of(backing, human.user_id) == []


def test_end_to_end_a_farm_behind_one_address_is_flagged(
        compressed: System, backing: Backing, redis_client: SyncRedis) -> None:
    api, keys = compressed.api, compressed.keys
    farm_ip, home_ip = new_address(), new_address()
    farm, home = [api.register_and_login() for _ in range(5)], [
        api.register_and_login() for _ in range(3)]
    for player in farm:
        player.address = farm_ip
    for player in home:
        player.address = home_ip
    for player in [*farm, *farm, *home]:  # two each (FARM_BUSY_ACTIONS=2 here), one each
        assert increment(api, player).status_code == 202
    wait_for(lambda: all(redis_client.exists(keys.flagged(p.user_id)) for p in farm),
             timeout_s=15)
    wait_for(lambda: all(decisions_of(backing, p.user_id) for p in farm), timeout_s=15)
    assert all(decisions_of(backing, p.user_id) == [("farm", "high", "flagged")] for p in farm)
    wait_caught_up(redis_client, keys)  # the household's batch was checked and acknowledged
    assert not any(redis_client.exists(keys.flagged(p.user_id)) for p in home)
    assert all(decisions_of(backing, p.user_id) == [] for p in home)


# ----------------------------------------------------------------------- tireless play
# Defaults: accepts in TIRELESS_HOURS=18 of the last 24 hours flag the user.


def test_play_through_eighteen_hours_is_tireless_a_long_day_of_play_is_not(
        backing: Backing, keys: Keys, redis_client: SyncRedis) -> None:
    bot, player = fresh_name("tireless"), fresh_name("longday")
    hour = 3_600_000
    start = NOON_MS - 12 * hour
    # the bot: a few accepts in each of 18 hours (irregular, so cadence stays out of it)
    bot_batches = [[play(bot, start + h * hour + random.Random(h * 10 + k).randrange(hour))
                    for k in range(3)] for h in range(18)]
    # the player: 12 hours in two long sessions with a night between
    player_batches = [[play(player, start + h * hour + random.Random(h * 10 + k).randrange(hour))
                       for k in range(3)] for h in (*range(0, 8), *range(14, 18))]
    check_batches(backing, keys, [[e for e in sorted(b, key=lambda e: e.ts_ms)]
                                  for b in player_batches + bot_batches[:17]])
    assert not redis_client.exists(keys.flagged(bot))  # 17 hours so far
    check_batches(backing, keys, [sorted(bot_batches[17], key=lambda e: e.ts_ms)])
    assert redis_client.get(keys.flagged(bot)) == "tireless"
    (event,) = [e for e in events_of(backing, bot) if e["action"] != "logged"]
    assert (event["rule"], event["action"], event["evidence"]["active_hours"]) == (
        "tireless", "flagged", 18)
    assert not redis_client.exists(keys.flagged(player))
    assert [e for e in events_of(backing, player) if e["action"] != "logged"] == []
