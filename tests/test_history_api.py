"""``as_of`` over HTTP and on the command line, every refusal, and retention
(old partitions dropped by the worker's job; ``as_of`` exact after the floor,
refused before it) against real Postgres and a real ingest process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from scoreboard.errors import RequestError
from scoreboard.history import parse_as_of
from scoreboard.settings import load_settings
from tests.history_support import (
    Action,
    drop_database,
    expected_top,
    fresh_database,
    persist,
    with_pool,
)
from tests.servers import PROJECT_DIR, Backing, ingest_server
from workers import jobs

NOW = datetime.now(UTC).replace(microsecond=0)


def month_start(months_back: int) -> datetime:
    index = NOW.year * 12 + NOW.month - 1 - months_back
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def z(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def history_actions() -> list[Action]:
    """Five months back to now: a few players, each month changing the leader."""
    actions = []
    for back in range(5, -1, -1):
        first = month_start(back) + timedelta(days=1, hours=back)
        for index, user in enumerate(("ann", "bob", "cy", "dee")):
            points = 1 + (index * 3 + back * 5) % 7
            moment = first + timedelta(hours=index)
            if moment < NOW - timedelta(minutes=5):
                actions.append(Action(user, points, moment))
    return actions


@pytest.fixture(scope="module")
def seeded(backing: Backing) -> Iterator[tuple[str, list[Action]]]:
    """A database of its own with five months of actions (read only: see ``dropping``)."""
    database = fresh_database(backing)
    actions = history_actions()
    persist(database, actions)
    yield database, actions
    drop_database(backing, database)


@pytest.fixture(scope="module")
def api_url(backing: Backing, seeded: tuple[str, list[Action]]) -> Iterator[str]:
    with ingest_server(backing.env(DATABASE_URL=seeded[0])) as url:
        yield url


@pytest.fixture
def dropping(backing: Backing) -> Iterator[tuple[str, list[Action], str]]:
    """Like ``seeded`` and ``api_url``, for a test that drops partitions."""
    database = fresh_database(backing)
    actions = history_actions()
    persist(database, actions)
    with ingest_server(backing.env(DATABASE_URL=database)) as url:
        yield database, actions, url
    drop_database(backing, database)


def get_top(url: str, **params: Any) -> httpx.Response:
    return httpx.get(url + "/api/scores/top", params=params, timeout=30)


def test_top_as_of_answers_the_board_as_it_stood(api_url: str,
                                                 seeded: tuple[str, list[Action]]) -> None:
    _, actions = seeded
    for back in (4, 2, 0):
        moment = month_start(back) + timedelta(days=2)
        if moment > NOW:
            continue
        response = get_top(api_url, board="arena", as_of=z(moment), limit=3)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["entries"] == expected_top(actions, moment, limit=3)
        assert body["as_of"] == z(moment) and body["version"] is None
        assert body["next_cursor"] is None and body["size"] == 4
        assert response.headers["x-board-source"] == "postgres"
    offset = get_top(api_url, board="arena", as_of=(month_start(2) + timedelta(
        days=2)).astimezone().isoformat())
    assert offset.json()["as_of"] == z(month_start(2) + timedelta(days=2))
    before_anything = get_top(api_url, board="arena", as_of="2000-01-01T00:00:00Z").json()
    assert before_anything["entries"] == [] and before_anything["size"] == 0


@pytest.mark.parametrize(("params", "status", "code", "field"), [
    ({"as_of": "yesterday"}, 422, "invalid_field", "as_of"),
    ({"as_of": "2026-11-30T12:00:00"}, 422, "invalid_field", "as_of"),  # no time zone
    ({"as_of": "2026-11-30"}, 422, "invalid_field", "as_of"),
    ({"as_of": ""}, 422, "invalid_field", "as_of"),
    ({"as_of": "0001-01-01T00:00:00+01:00"}, 422, "invalid_field", "as_of"),
    ({"as_of": "2999-01-01T00:00:00Z"}, 422, "as_of_in_future", "as_of"),
    ({"as_of": "2026-11-30T12:00:00Z", "cursor": "x"}, 422, "invalid_field", "cursor"),
    ({"as_of": "2026-11-30T12:00:00Z", "radius": "2"}, 422, "invalid_field", "radius"),
    ({"as_of": "2026-11-30T12:00:00Z", "limit": "101"}, 422, "invalid_field", "limit"),
    ({"as_of": "2026-11-30T12:00:00Z", "board": "no such"}, 422, "invalid_field", "board"),
    ({"as_of": "2026-11-30T12:00:00Z", "board": "nowhere"}, 404, "board_not_found", None),
])
def test_as_of_refusals(api_url: str, params: dict[str, str], status: int, code: str,
                        field: str | None) -> None:
    response = get_top(api_url, **{"board": "arena", **params})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error.get("field") == field


def test_a_future_as_of_is_refused_even_a_second_ahead() -> None:
    with pytest.raises(RequestError) as refused:
        parse_as_of(z(NOW + timedelta(seconds=1)), now=NOW, earliest=None)
    assert refused.value.code == "as_of_in_future"
    assert parse_as_of(z(NOW), now=NOW, earliest=None) == NOW


def run_cli(backing: Backing, database: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scoreboard.cli", *args], cwd=PROJECT_DIR,
                          env=backing.env(DATABASE_URL=database), capture_output=True,
                          text=True, timeout=60, check=False)


def test_history_command(backing: Backing,
                         dropping: tuple[str, list[Action], str]) -> None:
    database, actions, _ = dropping
    moment = month_start(3) + timedelta(days=3)
    done = run_cli(backing, database, "history", "arena", "--as-of", z(moment), "--limit", "2")
    assert done.returncode == 0, done.stderr
    import json
    assert [json.loads(line) for line in done.stdout.splitlines()] == expected_top(
        actions, moment, limit=2)
    future = run_cli(backing, database, "history", "arena", "--as-of", "2999-01-01T00:00:00Z")
    assert future.returncode == 1 and "after now" in future.stderr
    unknown = run_cli(backing, database, "history", "nowhere", "--as-of", z(moment))
    assert unknown.returncode == 1 and "does not exist" in unknown.stderr
    naive = run_cli(backing, database, "history", "arena", "--as-of", "2026-11-30T12:00:00")
    assert naive.returncode == 1 and "time zone" in naive.stderr
    too_many = run_cli(backing, database, "history", "arena", "--as-of", z(moment),
                       "--limit", "0")
    assert too_many.returncode == 2 and "from 1 to" in too_many.stderr
    wrote = run_cli(backing, database, "history-checkpoints", "--until", z(moment))
    assert wrote.returncode == 0 and "history checkpoints written:" in wrote.stdout
    again = run_cli(backing, database, "history", "arena", "--as-of", z(moment), "--limit", "2")
    assert again.stdout == done.stdout


def partitions(database: str) -> list[str]:
    rows = with_pool(database, lambda pool: pool.fetch("SELECT name FROM actions_partitions()"))
    return [row["name"] for row in rows]


def job_context(backing: Backing, pool: Any, **env: str) -> dict[str, Any]:
    return {"pool": pool, "settings": load_settings({"DATABASE_URL": "x", **env})}


def test_retention_drops_old_partitions_and_keeps_as_of_exact(
        backing: Backing, dropping: tuple[str, list[Action], str]) -> None:
    database, actions, api_url = dropping
    before = partitions(database)
    assert len(before) >= 6
    kept_from = month_start(2)
    # the default keeps everything
    assert with_pool(database, lambda pool: jobs.retention_job(job_context(backing, pool))) == 0
    dropped = with_pool(database, lambda pool: jobs.retention_job(
        job_context(backing, pool, RETENTION_MONTHS="2")))
    assert dropped == 3  # five, four and three months back
    after = partitions(database)
    assert after == before[3:]
    floor = with_pool(database, lambda pool: pool.fetchval("SELECT earliest FROM history_floor"))
    assert floor == kept_from
    # exact from the floor on: the totals of the dropped months are in the checkpoint
    for moment in (kept_from, kept_from + timedelta(days=1, hours=2, minutes=30),
                   month_start(1) + timedelta(days=5), NOW):
        response = get_top(api_url, board="arena", as_of=z(moment))
        assert response.status_code == 200
        assert response.json()["entries"] == expected_top(actions, moment), moment
    # before it: refused, saying from when it can answer
    refused = get_top(api_url, board="arena",
                      as_of=z(kept_from - timedelta(milliseconds=1)))
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "as_of_before_retention"
    assert z(kept_from).removesuffix("Z") in refused.json()["error"]["message"]
    # the command says so too
    old = run_cli(backing, database, "history", "arena", "--as-of", "2000-01-01T00:00:00Z")
    assert old.returncode == 1 and "no longer kept" in old.stderr
    # no checkpoint before the floor is left, and the checkpoint job carries on from it
    written = with_pool(database, lambda pool: pool.fetchval(
        "SELECT count(*) FROM history_checkpoints WHERE at < $1", kept_from))
    assert written == 0
    again = with_pool(database, lambda pool: jobs.retention_job(
        job_context(backing, pool, RETENTION_MONTHS="2")))
    assert again == 0


def test_the_checkpoint_job_writes_up_to_the_horizon(
        backing: Backing, dropping: tuple[str, list[Action], str]) -> None:

    from scoreboard.keys import Keys
    from tests.servers import fresh_name
    database, actions, _ = dropping

    async def work(pool: Any) -> int:
        client = backing.async_redis(decode_responses=True)
        try:
            ctx = {**job_context(backing, pool, HISTORY_CHECKPOINT_HOURS="24",
                                 HISTORY_CHECKPOINTS_PER_RUN="500"),
                   "redis": client, "keys": Keys(fresh_name("sbhist"))}
            return await jobs.history_checkpoints_job(ctx)
        finally:
            await client.aclose()

    assert with_pool(database, work) > 150
    latest = with_pool(database, lambda pool: pool.fetchval(
        "SELECT max(at) FROM history_checkpoints"))
    assert NOW - timedelta(days=1, minutes=6) < latest <= NOW - timedelta(minutes=5)
    assert with_pool(database, work) == 0
    moment = month_start(1) + timedelta(days=1, hours=1, minutes=1)
    from scoreboard.history_reads import top_as_of
    page = with_pool(database, lambda pool: top_as_of(pool, "arena", moment, 10,
                                                      rank_mode="competition"))
    assert [e.as_json() for e in page.entries] == expected_top(actions, moment)
