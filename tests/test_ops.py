"""Operating the system: metrics endpoints, request ids in logs, and a headless
Locust run, all against real processes (the deployment files: test_deploy_files)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY
from websockets.sync.client import connect as ws_connect

from loadtest.harness.processes import ingest_command, ingest_process
from scoreboard.db import create_pool
from scoreboard.embedded import free_port
from scoreboard.keys import Keys
from scoreboard.metrics import count_fraud_event
from tests.conftest import Api, Player
from tests.ops_support import (
    Families,
    family_name,
    increments,
    log_lines,
    scrape,
    system,
    value,
)
from tests.servers import (
    PROJECT_DIR,
    Backing,
    create_board,
    fresh_name,
    stop_process,
    stream_entries,
    wait_until_ready,
)
from tests.waiting import wait_for
from tests.worker_support import worker_process
from workers.stream_metrics import WorkerMetrics, undelivered_count

OPS = PROJECT_DIR / "ops"

# The series the issue names, by the process that must serve them.
INGEST_SERIES = ["scoreboard_http_request_duration_seconds", "scoreboard_ingest_outcomes_total",
                 "scoreboard_db_pool_in_use", "scoreboard_db_pool_max"]
WORKER_SERIES = ["scoreboard_stream_length", "scoreboard_stream_lag",
                 "scoreboard_stream_lag_seconds", "scoreboard_stream_pending",
                 "scoreboard_worker_batch_size", "scoreboard_worker_batch_seconds",
                 "scoreboard_worker_persisted_total", "scoreboard_worker_dead_lettered_total",
                 "scoreboard_redis_up", "scoreboard_postgres_up", "scoreboard_db_pool_in_use",
                 "scoreboard_db_pool_max", "scoreboard_fraud_events_total"]
BROADCASTER_SERIES = ["scoreboard_spectators", "scoreboard_snapshots_sent_total",
                      "scoreboard_snapshots_built_total", "scoreboard_spectators_dropped_total"]



# --- metrics of the three processes -----------------------------------------------------------


def test_metrics_endpoints_carry_the_named_series(backing: Backing, tmp_path: Path,
                                                  backend: Player) -> None:
    with system(backing, tmp_path) as urls:
        api = Api(urls["ingest"])
        try:
            board = create_board(backing, fresh_name("ops"), key_prefix=urls["key_prefix"])
            player = api.register_and_login()
            with ws_connect(urls["broadcaster"].replace("http", "ws") + f"/ws?board={board}",
                            open_timeout=10) as spectator:
                first = orjson.loads(spectator.recv(timeout=10))
                assert first["type"] == "snapshot"
                increments(api, player, 3, board=board)
                batch = api.post("/api/scores/batch", headers=backend.headers, json={
                    "increments": [{"user_id": fresh_name("gp"), "points": 5, "board": board,
                                    "event_id": fresh_name("ev")} for _ in range(4)]})
                assert batch.status_code == 202, batch.text
                refused = api.post("/api/scores/increment", headers=player.headers, json={
                    "action_token": "not-a-token", "board": board})
                assert refused.status_code == 403
                update = orjson.loads(spectator.recv(timeout=10))  # the workers' change
                assert update["type"] == "snapshot" and update["entries"]

                worker: Families = wait_for(
                    # (not the stream length: the minutely trim job may have run)
                    lambda: (w := scrape(urls["worker_metrics"])) and value(
                        w, "scoreboard_worker_persisted_total") >= 7 and value(
                        w, "scoreboard_stream_pending", group="persisters") == 0 and w,
                    "the worker persisted the 7 increments and refreshed its gauges")
                broadcaster = scrape(urls["broadcaster"] + "/metrics")
            ingest = scrape(urls["ingest"] + "/metrics")
        finally:
            api.close()

    for name in INGEST_SERIES:
        assert family_name(name) in ingest, f"ingest does not serve {name}"
    for name in WORKER_SERIES:
        assert family_name(name) in worker, f"worker does not serve {name}"
    for name in BROADCASTER_SERIES:
        assert family_name(name) in broadcaster, f"broadcaster does not serve {name}"

    # Latency by route template and status; Lua outcomes by reason.
    assert value(ingest, "scoreboard_http_request_duration_seconds_count",
                 route="/api/scores/increment", status="202") == 3
    assert value(ingest, "scoreboard_http_request_duration_seconds_count",
                 route="/api/scores/batch", status="202") == 1
    assert value(ingest, "scoreboard_ingest_outcomes_total", endpoint="increment",
                 outcome="accepted") == 3
    assert value(ingest, "scoreboard_ingest_outcomes_total", endpoint="batch",
                 outcome="accepted") == 1
    assert value(ingest, "scoreboard_db_pool_max") == 10
    # The worker's view of the stream once everything is persisted.
    assert value(worker, "scoreboard_stream_lag", group="persisters") == 0
    assert value(worker, "scoreboard_stream_pending", group="persisters") == 0
    assert value(worker, "scoreboard_worker_batch_size_count") >= 1
    assert value(worker, "scoreboard_worker_batch_seconds_count") >= 1
    assert value(worker, "scoreboard_redis_up") == 1
    assert value(worker, "scoreboard_postgres_up") == 1
    # workers/main.py: a connection per batch in flight (WORKER_IN_FLIGHT, 2 by
    # default) on each shard's stream, and 3 for the fraud checks and the scheduled jobs
    assert value(worker, "scoreboard_db_pool_max") == 3 + 2 * backing.redis_shards
    # Spectators: one was connected and got at least two snapshots.
    assert value(broadcaster, "scoreboard_snapshots_sent_total") >= 2
    assert value(broadcaster, "scoreboard_snapshots_built_total") >= 1

    # Every series the alert rules and the dashboard use is served by some process.
    served = set(ingest) | set(worker) | set(broadcaster) | {"up"}
    for path in (OPS / "alerts.yml", OPS / "grafana" / "dashboard.json"):
        used = {family_name(n) for n in re.findall(r"\b(scoreboard_[a-z_]+|up)\b",
                                                   path.read_text())}
        assert used - served == set(), f"{path.name} uses series nobody serves"


def test_fraud_events_are_counted_by_rule_and_severity() -> None:
    before = REGISTRY.get_sample_value("scoreboard_fraud_events_total",
                                       {"rule": "ops_test_rule", "severity": "high"}) or 0
    count_fraud_event("ops_test_rule", "high")
    count_fraud_event("ops_test_rule", "high")
    assert REGISTRY.get_sample_value("scoreboard_fraud_events_total",
                                     {"rule": "ops_test_rule", "severity": "high"}) == before + 2


def test_lag_counts_undelivered_entries_on_redis_6_and_7(backing: Backing) -> None:
    """The portable count agrees with what was read, page by page and past the
    cap; on Redis 7 it also agrees with XINFO GROUPS ``lag``."""

    async def scenario() -> None:
        client = backing.async_redis(decode_responses=True)
        pool = await create_pool(backing.database_url, max_size=2)
        keys = Keys(fresh_name("sblag"))
        try:
            for number in range(25):
                await client.xadd(keys.stream, {"n": str(number)})
            await client.xgroup_create(keys.stream, "persisters", id="0")
            await client.xreadgroup("persisters", "c1", {keys.stream: ">"}, count=10)
            group = (await client.xinfo_groups(keys.stream))[0]
            last = group["last-delivered-id"]
            assert await undelivered_count(client, keys.stream, last, pending=10, page=4) == 15
            assert await undelivered_count(client, keys.stream, last, pending=10,
                                           page=7) == 15
            # Past the cap: the upper bound XLEN - pending (exact here: nothing acked).
            assert await undelivered_count(client, keys.stream, last, pending=10, page=4,
                                           cap=8) == 15
            if group.get("lag") is not None:  # Redis 7
                assert group["lag"] == 15

            metrics = WorkerMetrics(redis=client, pool=pool, keys=keys)
            await metrics.refresh()
            assert REGISTRY.get_sample_value("scoreboard_stream_lag",
                                             {"group": "persisters"}) == 15
            assert REGISTRY.get_sample_value("scoreboard_stream_pending",
                                             {"group": "persisters"}) == 10
            assert REGISTRY.get_sample_value("scoreboard_stream_length",
                                             {"stream": "increments"}) == 25
            age = REGISTRY.get_sample_value("scoreboard_stream_lag_seconds",
                                            {"group": "persisters"})
            assert age is not None and 0 <= age < 60

            await client.xreadgroup("persisters", "c1", {keys.stream: ">"}, count=100)
            group = (await client.xinfo_groups(keys.stream))[0]
            assert await undelivered_count(client, keys.stream, group["last-delivered-id"],
                                           pending=25) == 0
            await metrics.refresh()
            assert REGISTRY.get_sample_value("scoreboard_stream_lag",
                                             {"group": "persisters"}) == 0
            assert REGISTRY.get_sample_value("scoreboard_stream_lag_seconds",
                                             {"group": "persisters"}) == 0
            assert REGISTRY.get_sample_value("scoreboard_postgres_up") == 1
            assert REGISTRY.get_sample_value("scoreboard_redis_up") == 1
        finally:
            await client.delete(keys.stream)
            await client.aclose()
            await pool.close()

    asyncio.run(scenario())


# --- request ids from ingest's access log to the stream, Postgres and the worker's log ---------


def test_request_id_travels_from_ingest_logs_to_the_entry_and_worker_logs(
        backing: Backing, tmp_path: Path) -> None:
    ingest_log = tmp_path / "ingest.log"
    env = backing.env(KEY_PREFIX=fresh_name("sbrid"), TRUSTED_PROXIES="127.0.0.1/32",
                      LOG_LEVEL="INFO", WORKER_METRICS_PORT="0")
    keys = backing.keys_for(env["KEY_PREFIX"])
    with ingest_process(env, ingest_log) as (url, _):
        api = Api(url)
        try:
            player = api.register_and_login()
            response, = increments(api, player, 1, request_id="trace-0001")
            generated, = increments(api, player, 1)
        finally:
            api.close()
    assert response.headers["x-request-id"] == "trace-0001"
    generated_id = generated.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", generated_id)

    # Ingest logs only JSON; its access line of each request carries the id.
    lines = log_lines(ingest_log)
    access = [line for line in lines if line["logger"] == "ingest.access"]
    increment_lines = {line["request_id"]: line for line in access
                       if line["route"] == "/api/scores/increment"}
    assert increment_lines["trace-0001"]["status"] == 202
    assert increment_lines["trace-0001"]["method"] == "POST"
    assert increment_lines["trace-0001"]["duration_ms"] > 0
    assert generated_id in increment_lines
    assert all("request_id" in line for line in access)

    # The stream entry carries it; the worker persists it with the action.
    client: Any = backing.sync_redis(decode_responses=True)
    try:
        entries = stream_entries(client, keys)
        assert [fields["request_id"] for _, fields in entries] == ["trace-0001", generated_id]
        # An entry the worker cannot use is dead-lettered, and its error line
        # names the request it came from.
        client.xadd(keys.shard(0).stream, {"event_id": "broken-1", "request_id": "trace-0002"})
        worker_log = tmp_path / "worker.log"
        os.environ["WORKER_TEST_LOG"] = str(worker_log)
        try:
            with worker_process(env):
                wait_for(lambda: client.xlen(keys.shard(0).dead_letters) == 1, "dead-lettered")
                rows = wait_for(lambda: _request_ids_in_postgres(
                    backing.database_url, [fields["event_id"] for _, fields in entries]),
                    "the two actions persisted")
        finally:
            del os.environ["WORKER_TEST_LOG"]
    finally:
        client.delete(keys.shard(0).stream, keys.shard(0).dead_letters)
        client.close()
    assert sorted(rows) == sorted(["trace-0001", generated_id])
    ours = [json.loads(line) for line in worker_log.read_text().splitlines()
            if line.startswith("{") and "dead-lettered" in line]
    assert ours and ours[0]["request_id"] == "trace-0002"
    assert ours[0]["event_id"] == "broken-1"
    assert ours[0]["level"] == "error"


def _request_ids_in_postgres(database_url: str, event_ids: list[str]) -> list[str] | None:
    import asyncpg

    async def read() -> list[str]:
        connection = await asyncpg.connect(database_url, timeout=10)
        try:
            rows = await connection.fetch(
                "SELECT request_id FROM actions WHERE event_id = ANY($1::text[])", event_ids)
        finally:
            await connection.close()
        return [row["request_id"] for row in rows]

    found = asyncio.run(read())
    return found if len(found) == len(event_ids) else None


# --- ingest as several processes: multiprocess metrics ------------------------------------


def _live_members(group: int) -> list[int]:
    """The processes of process group ``group`` that are not zombies (killed processes
    whose parent is gone wait for PID 1 to reap them)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group and fields[0] != "Z":
                members.append(int(stat.parent.name))
    return members


def test_ingest_with_two_processes_merges_their_metrics(backing: Backing,
                                                        tmp_path: Path) -> None:
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = backing.env(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    port = free_port()
    process = subprocess.Popen(  # a session of its own: stop_process kills its children too
        [*ingest_command(port), "--workers", "2"], cwd=PROJECT_DIR, env=env,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url + "/healthz", process)
        # Both processes must have started (each opens its pool and samples it).
        wait_for(lambda: value(scrape(url + "/metrics"), "scoreboard_db_pool_max") == 20,
                 "both ingest processes report their pool (10 + 10)")
        for _ in range(40):  # a connection each, so both processes take some
            assert httpx.get(url + "/api/scores/top?board=global", timeout=5).status_code == 200
        merged = scrape(url + "/metrics")
        writers = {path.name.rsplit("_", 1)[-1] for path in metrics_dir.glob("*.db")}
    finally:
        stop_process(process)
    wait_for(lambda: not _live_members(process.pid), "no process of the group outlives the stop")
    assert value(merged, "scoreboard_http_request_duration_seconds_count",
                 route="/api/scores/top", status="200") == 40
    assert len(writers) >= 2, writers


# --- Locust -----------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_locust_headless_run_has_no_failures(backing: Backing, tmp_path: Path) -> None:
    """20 s of players, a game server and spectators against ingest + worker +
    broadcaster: Locust exits 0, nothing failed, every kind of request ran."""
    with system(backing, tmp_path) as urls:
        board = create_board(backing, fresh_name("locust"), key_prefix=urls["key_prefix"])
        env = backing.env(KEY_PREFIX=urls["key_prefix"], BROADCASTER_URL=urls["broadcaster"],
                          LOADTEST_BOARD=board)
        result = subprocess.run(
            [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless",
             "-u", "10", "-r", "10", "--run-time", "20s", "--host", urls["ingest"],
             "--exit-code-on-error", "1", "--csv", str(tmp_path / "locust"),
             "--only-summary", "--stop-timeout", "5"],
            cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=150)
        persisted = scrape(urls["worker_metrics"])
    output = result.stdout[-4000:] + result.stderr[-4000:]
    assert result.returncode == 0, output
    with (tmp_path / "locust_stats.csv").open() as stats_file:
        rows = {row["Name"]: row for row in csv.DictReader(stats_file)}
    assert int(rows["Aggregated"]["Failure Count"]) == 0, output
    for name in ("/api/auth/register", "/api/auth/login", "/api/actions/token",
                 "/api/scores/increment", "/api/scores/batch", "connect",
                 "snapshot delivery"):
        assert int(rows[name]["Request Count"]) > 0, f"no {name} in the run:\n{output}"
    assert value(persisted, "scoreboard_worker_persisted_total") > 0
