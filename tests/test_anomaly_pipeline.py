"""The anomaly score against real processes: accounts seeded through ingest and
the worker into Postgres ``actions``, then one pass of the score
(``score_and_review``, what the worker's job and ``scoreboard anomaly-score``
run). It fires on the bot (the board's top action every time, a machine's
rhythm) and is quiet on the honest players next to it; its review carries the
score, and ``scoreboard admin review`` shows it."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import orjson
import pytest

from scoreboard.anomaly_scoring import score_and_review
from scoreboard.db import create_pool
from scoreboard.keys import Keys
from scoreboard.review import review
from scoreboard.settings import load_settings
from tests.conftest import Api, Player
from tests.servers import Backing, SyncRedis, create_board, fresh_name, ingest_server
from tests.worker_support import wait_caught_up, worker_process
from workers.jobs import anomaly_job

HONEST_PLAYERS, ACTIONS_EACH = 30, 20


@pytest.fixture(scope="module")
def system(backing: Backing) -> Iterator[tuple[Api, Keys, str]]:
    prefix = fresh_name("anomaly")
    # Limits raised and the rules off: the pass alone is judged here, on traffic
    # compressed into seconds.
    env = backing.env(KEY_PREFIX=prefix, TRUSTED_PROXIES="127.0.0.1/32",
                      INCREMENT_RATE="1000/60", ACTION_TOKEN_RATE="1000/60",
                      RAPID_MAX_ACTIONS="1000", CADENCE_ACTIONS="0", TOP_ACTION_RUN="0",
                      FARM_MIN_ACCOUNTS="0", ANOMALY_SCORING="false",
                      CONSUMER_NAME="anomaly-worker", WORKER_METRICS_PORT="0",
                      WORKER_BLOCK_MS="200")
    board = create_board(backing, fresh_name("anomaly_board"),
                         (("play", 1), ("win", 5), ("jackpot", 10)), key_prefix=prefix)
    with ingest_server(env) as url, worker_process(env):
        api = Api(url)
        try:
            yield api, backing.keys_for(prefix), board
        finally:
            api.close()


def play(api: Api, player: Player, board: str, actions: list[str], gaps_s: list[float]) -> None:
    for action, gap in zip(actions, gaps_s, strict=True):
        time.sleep(gap)
        token = api.post("/api/actions/token", headers=player.headers,
                         json={"board": board, "action": action})
        assert token.status_code == 200, token.text
        response = api.post("/api/scores/increment", headers=player.headers,
                            json={"action_token": token.json()["action_token"]})
        assert response.status_code == 202, response.text


def anomaly_events(backing: Backing, user_ids: list[str]) -> dict[str, list[Any]]:
    async def run() -> dict[str, list[Any]]:
        connection = await asyncpg.connect(backing.database_url)
        try:
            rows = await connection.fetch(
                "SELECT user_id, action, evidence FROM fraud_events WHERE rule = 'anomaly'"
                " AND user_id = ANY($1)", user_ids)
        finally:
            await connection.close()
        found: dict[str, list[Any]] = {}
        for row in rows:
            evidence = row["evidence"]
            found.setdefault(row["user_id"], []).append(
                (row["action"], orjson.loads(evidence) if isinstance(evidence, str) else evidence))
        return found

    return asyncio.run(run())


def test_the_anomaly_score_reviews_the_bot_and_not_the_players_beside_it(
        system: tuple[Api, Keys, str], backing: Backing, redis_client: SyncRedis) -> None:
    api, keys, board = system
    rng = random.Random(14)
    bot = api.register_and_login()
    honest = [api.register_and_login() for _ in range(HONEST_PLAYERS)]
    runs = [threading.Thread(target=play, args=(api, bot, board, ["jackpot"] * ACTIONS_EACH,
                                                [0.4] * ACTIONS_EACH))]
    for player in honest:
        actions = ["play"] * (ACTIONS_EACH - 3) + ["win"] * 3
        rng.shuffle(actions)
        runs.append(threading.Thread(target=play, args=(
            api, player, board, actions, [rng.uniform(0.2, 1.0) for _ in actions])))
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    wait_caught_up(redis_client, keys)
    # One "hour" of activity a day: seconds of traffic that straddled an hour's edge
    # would give some accounts two active hours and half the rates, a split of the
    # population the test is not about.
    # ANOMALY_MIN_SCORE 0.72, not the default 0.65: in a population of 31 the most
    # extreme of the honest players scored 0.63-0.67 in trial runs (the forest
    # isolates someone in any small crowd; docs/fraud.md: its precision), the bot
    # 0.82-0.83.
    settings = load_settings({"KEY_PREFIX": keys.prefix, "ANOMALY_SCORING": "true",
                              "ANOMALY_WINDOW_S": "300", "ANOMALY_EVERY_S": "300",
                              "ACTIVITY_HOUR_S": "86400", "ANOMALY_MIN_SCORE": "0.72"})

    async def one_pass() -> tuple[list[Any], list[dict[str, Any]], int]:
        pool = await create_pool(backing.database_url, max_size=2)
        client = backing.async_redis(decode_responses=True)
        try:
            scored = await score_and_review(pool, settings)
            listed = await review(pool, hours=1, limit=1000)
            # the worker's job: a pass when due (none since), then not again this period
            ctx = {"settings": settings, "redis": client, "keys": keys, "pool": pool}
            first = await anomaly_job(ctx)
            again = await anomaly_job(ctx)
            assert again == 0
        finally:
            await client.aclose()
            await pool.close()
        return scored, listed, first

    scored, listed, first = asyncio.run(one_pass())
    seeded = {bot.user_id} | {p.user_id for p in honest}
    ours = {s.user_id: s for s in scored if s.user_id in seeded}
    assert len(ours) == HONEST_PLAYERS + 1
    assert ours[bot.user_id].reviewed, sorted(s.score for s in ours.values())
    assert max(ours.values(), key=lambda s: s.score).user_id == bot.user_id
    assert [p.user_id for p in honest if ours[p.user_id].reviewed] == [], " ".join(
        f"{s.score:.3f}" for s in sorted(ours.values(), key=lambda s: s.score))
    events = anomaly_events(backing, [bot.user_id] + [p.user_id for p in honest])
    assert list(events) == [bot.user_id]
    ((action, evidence),) = events[bot.user_id]  # the job's pass, same period: no second row
    assert action == "review"
    assert evidence["score"] == pytest.approx(ours[bot.user_id].score, abs=1e-4)
    assert evidence["features"]["points_per_action"] == 10.0
    assert first >= 0
    (entry,) = [e for e in listed if e["user_id"] == bot.user_id]
    assert entry["rules"] == {"anomaly": 1}
    assert entry["anomaly_score"] == pytest.approx(evidence["score"])
    assert not redis_client.exists(keys.flagged(bot.user_id))  # a review restricts nothing
    # ``scoreboard anomaly-score``: the same pass from the command line, one JSON line
    # an account; the bot stands above every player seeded beside it
    done = subprocess.run([sys.executable, "-m", "scoreboard.cli", "anomaly-score"],
                          env=backing.env(ACTIVITY_HOUR_S="86400"), capture_output=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = [orjson.loads(line) for line in done.stdout.splitlines() if line.startswith(b"{")]
    by_user = {line["user_id"]: line["score"] for line in lines}
    assert by_user[bot.user_id] > max(by_user[p.user_id] for p in honest)
