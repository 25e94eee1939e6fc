"""`make run`'s command on the embedded default, end to end, twice over one data folder."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from loadtest.harness.processes import wait_ready
from scoreboard.embedded import free_port
from scoreboard.keys import Keys
from scoreboard.ranking import totals_by_user
from tests.servers import PROJECT_DIR, SyncRedis


@contextmanager
def _running(data_dir: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update({"DATA_DIR": str(data_dir), "INGEST_PORT": str(port),
                "BROADCASTER_PORT": str(free_port()), "SCRYPT_N": "1024"})
    with log.open("ab") as output:
        process = subprocess.Popen([sys.executable, "-m", "scoreboard.cli", "run"],
                                   cwd=PROJECT_DIR, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield process
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    wait_ready(url + "/readyz", process, log, "the run command", timeout_s=60)


def _stop(process: subprocess.Popen[bytes]) -> int:
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    return process.wait(timeout=60)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.single_node("make run is single-node by design")
def test_run_starts_everything_persists_and_stops_cleanly(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "run.log"
    with _running(data_dir, port, log) as process:
        _wait_ready(url, process, log)
        credentials = {"username": "runner", "password": "long enough"}
        registered = httpx.post(url + "/api/auth/register", json=credentials)
        assert registered.status_code == 201
        login_user_id = registered.json()["user_id"]
        access = httpx.post(url + "/api/auth/login", json=credentials).json()["access_token"]
        headers = {"Authorization": f"Bearer {access}"}
        token = httpx.post(url + "/api/actions/token", headers=headers).json()["action_token"]
        response = httpx.post(url + "/api/scores/increment", headers=headers,
                              json={"action_token": token})
        assert response.status_code == 202
        redis_url = re.search(r"embedded redis on (redis://[0-9.:]+/0)", log.read_text())
        assert redis_url, log.read_text()
        client: SyncRedis = redis.Redis.from_url(redis_url.group(1), decode_responses=True)
        deadline = time.monotonic() + 20
        board: list[Any] = []
        while not board:  # the worker persists it, then sets the board
            assert time.monotonic() < deadline, "the worker never updated the board"
            time.sleep(0.2)
            board = client.zrange(Keys("sb").board("global"), 0, -1, withscores=True)
        client.close()
        assert totals_by_user(board) == {login_user_id: 1}  # global's default: play = 1
        status = _stop(process)
    assert status == 0 or status == -signal.SIGINT, log.read_text()
    assert not _port_open(port)
    for path in ("redis/appendonly.aof", "postgres/pgdata/PG_VERSION", "keys/jwt",
                 "keys/action-token-keys"):
        assert (data_dir / path).exists(), path

    # Second run on the same folder: same keys, same data; the account still logs in.
    # Stopped by a SIGINT to the run process alone (kill -INT, a process manager),
    # not to its whole group as a terminal's Ctrl-C: it still stops everything.
    with _running(data_dir, port, log) as process:
        _wait_ready(url, process, log)
        login = httpx.post(url + "/api/auth/login", json=credentials)
        assert login.status_code == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert not _port_open(port)
