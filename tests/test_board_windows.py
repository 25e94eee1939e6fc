"""Windows on real servers: each increment in every window's period by its accept
time, exactly once across redelivery; the best operator; reads of a window and a
period; the registry over HTTP and the admin command."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from scoreboard.keys import Keys
from scoreboard.stream_entry import parse_entry
from scoreboard.windows import WindowSpec
from tests.servers import PROJECT_DIR, Backing, SyncRedis, board_totals, fresh_name
from tests.window_support import entry, make_board, ms, now_ms, seed, sql, totals_in
from tests.worker_support import consumer_for


def fields_of(user_id: str, points: int, at: str, *, board: str) -> dict[str, str]:
    made = entry(user_id, points, at, board=board)
    return {"event_id": made.event_id, "user_id": user_id, "username": made.username,
            "board": board, "points": str(points), "source": "test", "ts": str(made.ts_ms),
            "ip": "", "request_id": "r"}


def test_increments_at_midnight_land_once_in_the_right_periods_across_redelivery(
        backing: Backing, redis_client: SyncRedis) -> None:
    """Just before and just after midnight in Berlin (Sunday to Monday: a new day
    and a new ISO week), through the worker's consumer; then the same stream
    entries delivered again, by a worker whose clock is past the boundary."""
    keys = Keys(fresh_name("wnd"))
    board = fresh_name("arena")
    make_board(backing, board, windows=("all_time", "daily", "weekly", "monthly"),
               timezone="Europe/Berlin", key_prefix=keys.prefix)
    before, after = "2026-11-29T22:59:59.900Z", "2026-11-29T23:00:00.100Z"
    raw = []
    for user, points, at in [("ann", 5, before), ("bob", 7, after), ("ann", 2, after)]:
        stream_id = redis_client.xadd(keys.stream, fields_of(user, points, at, board=board))
        raw.append((stream_id, fields_of(user, points, at, board=board)))

    async def scenario() -> list[Any]:
        async with consumer_for(backing, keys) as consumer:
            await consumer.ensure_group()
            delivered = await consumer._read(">")
            await consumer.handle(delivered)
            await consumer.finish_in_flight()
            await consumer.handle(delivered)  # redelivered after the boundary
            await consumer.finish_in_flight()
            return [parse_entry(i, f) for i, f in delivered if f]

    entries = asyncio.run(scenario())
    assert len(entries) == 3
    expected = {board: {"ann": 7, "bob": 7},
                f"{board}/daily/2026-11-29": {"ann": 5},
                f"{board}/daily/2026-11-30": {"bob": 7, "ann": 2},
                f"{board}/weekly/2026-W48": {"ann": 5},
                f"{board}/weekly/2026-W49": {"bob": 7, "ann": 2},
                f"{board}/monthly/2026-11": {"ann": 7, "bob": 7}}
    for scope, totals in expected.items():
        assert totals_in(backing, scope) == totals, scope
        assert board_totals(redis_client, keys, scope) == totals, scope
    counted = sql(backing, "SELECT count(*) AS n FROM actions WHERE board = $1", board)
    assert counted[0]["n"] == 3


def test_a_plain_board_writes_only_its_own_row(backing: Backing, keys: Keys) -> None:
    """A board with only all_time and sum: no scope rows (the plain path)."""
    board = fresh_name("plain")
    plain = make_board(backing, board)
    assert plain.plain
    seed(backing, keys, [entry("ann", 3, now_ms(), board=board)], [plain])
    assert sql(backing, "SELECT board FROM scores WHERE board LIKE $1", board + "%") == [
        (board,)]


def test_best_operator_keeps_the_best_result_and_who_reached_it_first(
        backing: Backing, keys: Keys, redis_client: SyncRedis) -> None:
    board = fresh_name("high")
    best = make_board(backing, board, windows=("all_time", "daily"), operator="best")
    day = "2026-11-20T"
    seed(backing, keys, [entry("ann", 5, day + "10:00:00Z", board=board),
                         entry("bob", 9, day + "11:00:00Z", board=board),
                         entry("ann", 9, day + "12:00:00Z", board=board)], [best])
    seed(backing, keys, [entry("ann", 3, day + "13:00:00Z", board=board),
                         entry("cat", 9, "2026-11-21T09:00:00Z", board=board)], [best])
    assert totals_in(backing, board) == {"ann": 9, "bob": 9, "cat": 9}
    assert totals_in(backing, f"{board}/daily/2026-11-20") == {"ann": 9, "bob": 9}
    assert totals_in(backing, f"{board}/daily/2026-11-21") == {"cat": 9}
    order = [m.split("|")[1] for m in redis_client.zrange(keys.board(board), 0, -1)]
    assert order == ["bob", "ann", "cat"]  # equal best: whoever reached it first


@pytest.fixture(scope="module")
def windowed(backing: Backing, keys: Keys) -> dict[str, Any]:
    """A Berlin board with daily and weekly windows, scores yesterday and today."""
    board = fresh_name("reads")
    made = make_board(backing, board, windows=("all_time", "daily", "weekly"),
                      timezone="Europe/Berlin")
    now = datetime.now(UTC)
    spec = made.spec
    today = spec.period_at("daily", now)
    assert today is not None and today.starts_at is not None
    yesterday = spec.period_at("daily", today.starts_at - timedelta(hours=1))
    assert yesterday is not None and yesterday.starts_at is not None
    old = int((yesterday.starts_at + timedelta(hours=1)).timestamp() * 1000)
    seed(backing, keys, [entry("ann", 10, old, board=board), entry("bob", 4, old, board=board),
                         entry("cat", 6, old, board=board),
                         entry("bob", 3, now_ms(), board=board),
                         entry("dan", 1, now_ms(), board=board)], [made])
    return {"board": board, "today": today.period, "yesterday": yesterday.period}


def get(ingest_url: str, path: str, **params: str) -> httpx.Response:
    return httpx.get(ingest_url + path, params=params, timeout=10)


def test_reads_of_a_window_and_a_period(ingest_url: str, windowed: dict[str, Any]) -> None:
    board, today, yesterday = windowed["board"], windowed["today"], windowed["yesterday"]
    current = get(ingest_url, "/api/scores/top", board=board, window="daily")
    assert current.status_code == 200 and current.headers["X-Board-Source"] == "redis"
    body = current.json()
    assert (body["board"], body["window"], body["period"]) == (board, "daily", today)
    assert [(e["user_id"], e["score"]) for e in body["entries"]] == [("bob", 3), ("dan", 1)]
    past = get(ingest_url, "/api/scores/top", board=board, window="daily", period=yesterday)
    assert past.headers["X-Board-Source"] == "postgres"
    assert [(e["rank"], e["user_id"], e["score"]) for e in past.json()["entries"]] == [
        (1, "ann", 10), (2, "cat", 6), (3, "bob", 4)]
    all_time = get(ingest_url, "/api/scores/top", board=board).json()
    assert "window" not in all_time  # all_time bodies are as before windows
    assert [e["user_id"] for e in all_time["entries"]] == ["ann", "bob", "cat", "dan"]
    rank = get(ingest_url, "/api/scores/users/bob", board=board, window="daily",
               period=yesterday).json()
    assert (rank["rank"], rank["score"], rank["period"]) == (3, 4, yesterday)
    around = get(ingest_url, "/api/scores/around/cat", board=board, window="daily",
                 period=yesterday, radius="1").json()
    assert [e["user_id"] for e in around["entries"]] == ["ann", "cat", "bob"]
    friends = get(ingest_url, "/api/scores/ranks", board=board, window="daily",
                  period=yesterday, user_ids="bob,ann").json()
    assert [(e["user_id"], e["rank"]) for e in friends["entries"]] == [("ann", 1), ("bob", 3)]
    first = get(ingest_url, "/api/scores/page", board=board, window="daily", period=yesterday,
                limit="2").json()
    second = get(ingest_url, "/api/scores/page", board=board, window="daily", period=yesterday,
                 limit="2", cursor=first["next_cursor"]).json()
    assert [e["user_id"] for e in first["entries"] + second["entries"]] == ["ann", "cat", "bob"]


@pytest.mark.parametrize(("params", "status", "code"), [
    ({"window": "monthly"}, 404, "window_not_found"),
    ({"window": "hourly"}, 422, "invalid_field"),
    ({"window": "daily", "period": "2026-13-01"}, 422, "invalid_field"),
    ({"window": "daily", "period": "2999-01-01"}, 404, "period_not_found"),
    ({"window": "weekly", "period": "2026-48"}, 422, "invalid_field"),
])
def test_refused_windows_and_periods(ingest_url: str, windowed: dict[str, Any],
                                     params: dict[str, str], status: int, code: str) -> None:
    refused = get(ingest_url, "/api/scores/top", board=windowed["board"], **params)
    assert refused.status_code == status and refused.json()["error"]["code"] == code


def test_unknown_board_with_a_window_is_404(ingest_url: str) -> None:
    refused = get(ingest_url, "/api/scores/top", board=fresh_name("nope"), window="daily")
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "board_not_found"


def test_the_registry_over_http(ingest_url: str, windowed: dict[str, Any]) -> None:
    board = windowed["board"]
    shown = get(ingest_url, f"/api/boards/{board}").json()
    assert shown["timezone"] == "Europe/Berlin" and shown["operator"] == "sum"
    windows = {w["window"]: w for w in shown["windows"]}
    assert set(windows) == {"all_time", "daily", "weekly"}
    assert windows["all_time"]["next_reset_at"] is None
    daily = windows["daily"]
    assert daily["current"]["period"] == windowed["today"]
    spec = WindowSpec(windows=("daily",), timezone="Europe/Berlin")
    assert daily["next_reset_at"] == daily["current"]["ends_at"] == spec.period_named(
        "daily", windowed["today"]).as_json()["ends_at"]
    listed = {b["board"]: b for b in get(ingest_url, "/api/boards").json()["boards"]}
    assert listed[board]["size"] == 4 and listed[board]["windows"] == shown["windows"]
    assert not any("/" in name for name in listed)  # periods are not boards
    missing = get(ingest_url, f"/api/boards/{fresh_name('nope')}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "board_not_found"


def run_admin(backing: Backing, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scoreboard.cli", "admin", *args],
                          cwd=PROJECT_DIR, env=backing.env(), capture_output=True, text=True,
                          timeout=60)


def test_admin_creates_changes_closes_and_lists_boards(backing: Backing, ingest_url: str,
                                                       api: Any, player: Any) -> None:
    board = fresh_name("season")
    made = run_admin(backing, "create-board", board, "--title", "Arena", "--window", "all_time",
                     "--window", "weekly", "--timezone", "Asia/Tokyo", "--turnover-hour", "5",
                     "--season", "s1=2026-09-01T00:00:00Z/2026-12-01T00:00:00Z",
                     "--season", "s2=2026-12-01T00:00:00Z/2027-03-01T00:00:00Z",
                     "--operator", "best")
    assert made.returncode == 0, made.stdout + made.stderr
    shown = orjson.loads(made.stdout.strip().splitlines()[-1])
    assert [w["window"] for w in shown["windows"]] == ["all_time", "weekly", "season"]
    assert (shown["title"], shown["operator"], shown["turnover_hour"]) == ("Arena", "best", 5)
    changed = run_admin(backing, "change-board", board, "--window", "all_time", "--window",
                        "daily", "--operator", "sum")
    assert changed.returncode == 0, changed.stdout + changed.stderr
    after = orjson.loads(changed.stdout.strip().splitlines()[-1])
    # unchanged options stay: the title, timezone, hour and seasons
    assert [w["window"] for w in after["windows"]] == ["all_time", "daily", "season"]
    assert (after["title"], after["timezone"], after["operator"]) == ("Arena", "Asia/Tokyo", "sum")
    bad = run_admin(backing, "change-board", board, "--timezone", "Mars/Olympus")
    assert bad.returncode == 2 and "IANA" in bad.stdout
    unknown = run_admin(backing, "change-board", fresh_name("nope"), "--title", "x")
    assert unknown.returncode == 1
    assert run_admin(backing, "close-board", board).returncode == 0
    listed = [orjson.loads(line) for line in run_admin(backing, "boards").stdout.splitlines()]
    assert next(b for b in listed if b["board"] == board)["open"] is False
    # ingest refuses increments to a closed board once its copy has it (BOARD_REFRESH_S)
    deadline = datetime.now(UTC) + timedelta(seconds=15)
    while True:
        refused = api.client.post("/api/actions/token", json={"board": board},
                                  headers=player.headers)
        if refused.status_code == 409 or datetime.now(UTC) > deadline:
            break
        time.sleep(0.3)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "board_closed"
    assert get(ingest_url, f"/api/boards/{board}").json()["open"] is False
    assert run_admin(backing, "open-board", board).returncode == 0


def test_seasons_count_only_inside_their_span(backing: Backing, keys: Keys) -> None:
    board = fresh_name("seasons")
    made = make_board(backing, board, windows=("all_time",), seasons=(
        "s1=2026-09-01T00:00:00Z/2026-10-01T00:00:00Z",))
    seed(backing, keys, [entry("ann", 2, "2026-09-30T23:59:59Z", board=board),
                         entry("ann", 3, "2026-10-01T00:00:00Z", board=board)], [made])
    assert totals_in(backing, f"{board}/season/s1") == {"ann": 2}
    assert totals_in(backing, board) == {"ann": 5}
    assert ms("2026-10-01T00:00:00Z") > ms("2026-09-30T23:59:59Z")
