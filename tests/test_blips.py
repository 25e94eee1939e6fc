"""Blips: the embedded Redis SIGKILLed under load comes back, and the worker carries on.

``ServerWatch`` (what ``make run`` uses) restarts the server on the same port
and data folder; it replays its AOF. Meanwhile ingest answers 503 and the
load retries those batches with the same event ids, as the API asks of
clients. The worker process is never restarted: it rides out the outage,
acknowledges nothing early, and at the end every accepted increment is in
Postgres and on the board exactly once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from scoreboard.embedded import EmbeddedRedis, free_port
from scoreboard.supervise import Backoff, Restarter, ServerWatch, supervised_procfile
from tests.load_support import BOARD, assert_exactly_once, system, wait_settled
from tests.servers import PROJECT_DIR, Backing, SyncRedis
from tests.test_run_command import _running, _stop, _wait_ready
from tests.waiting import wait_for
from tests.worker_support import worker_process


@pytest.mark.single_node("kills and restarts an embedded single Redis (make run's ServerWatch); "
                         "the cluster's failover is tests/test_cluster_worker.py")
def test_redis_sigkilled_under_load_comes_back_and_every_202_lands_once(
        backing: Backing, tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    watch = ServerWatch(Backoff(base_s=0.5, cap_s=2.0), every_s=0.2)
    watch.watch("redis", server)
    client: SyncRedis = redis.Redis.from_url(url, decode_responses=True)
    try:
        with system(backing, redis_url=url) as sys_, \
                worker_process(sys_.worker_env("blip")) as worker:
            sys_.load.retry_unavailable = True
            with sys_.load.running():
                # the worker is up and persisting (a board it wrote), under load
                wait_for(lambda: client.zcard(sys_.keys.board(BOARD)) > 0,
                         "the worker never wrote the board", timeout_s=60)
                wait_for(lambda: sys_.load.accepted_events >= 200,
                         "no load accepted", timeout_s=30)
                killed_pid = server.pid
                assert killed_pid is not None
                os.kill(killed_pid, signal.SIGKILL)
                wait_for(lambda: server.pid != killed_pid and server.alive(),
                         "the watch did not restart redis", timeout_s=30)
                accepted_at_restart = sys_.load.accepted_events
                wait_for(lambda: sys_.load.accepted_events > accepted_at_restart + 200,
                         "ingest did not accept again after the restart", timeout_s=60)
            assert worker.poll() is None, "the worker must ride the outage out, not exit"
            wait_settled(client, sys_.keys)
            assert not sys_.load.refused
            assert_exactly_once(sys_, client)
            assert worker.poll() is None
    finally:
        client.close()
        watch.stop()
        server.stop()


def test_supervised_procfile_wraps_each_command_and_keeps_the_rest() -> None:
    text = "# comment\nweb: uvicorn app --port ${PORT:-8000}\n\nworker: arq w.S\n"
    assert supervised_procfile(text, python="/py").splitlines() == [
        "# comment",
        "web: exec /py -m scoreboard.supervise web -- uvicorn app --port ${PORT:-8000}",
        "",
        "worker: exec /py -m scoreboard.supervise worker -- arq w.S"]


def test_backoff_doubles_to_its_cap_and_starts_again_after_a_stable_run() -> None:
    backoff = Backoff(base_s=1, cap_s=8, stable_s=30)
    assert [backoff.next_delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]
    assert backoff.failures_after(3, ran_for_s=2) == 4
    assert backoff.failures_after(3, ran_for_s=45) == 1


def test_restarter_restarts_a_command_that_dies_and_stops_on_sigterm(tmp_path: Path) -> None:
    """The real wrapper process around a command that exits at once every time."""
    starts = tmp_path / "starts"
    command = [sys.executable, "-c",
               f"open({str(starts)!r}, 'a').write('x'); raise SystemExit(3)"]
    log = tmp_path / "wrapper.log"
    with log.open("wb") as output:
        wrapper = subprocess.Popen(
            [sys.executable, "-m", "scoreboard.supervise", "--base-s", "0.1", "--cap-s", "0.4",
             "dying", "--", *command], cwd=PROJECT_DIR, stdout=output, stderr=output)
        try:
            wait_for(lambda: starts.exists() and len(starts.read_text()) >= 4,
                     "the command was not restarted", timeout_s=30)
            assert wrapper.poll() is None
            wrapper.send_signal(signal.SIGTERM)
            # Stopped in a backoff wait: 0. Stopped while a restarted command was
            # starting (its Python takes longer than the 0.1-0.4 s waits on a loaded
            # machine): the SIGTERM is passed on and its status returned, 128 + 15.
            assert wrapper.wait(timeout=10) in (0, 128 + signal.SIGTERM)
        finally:
            if wrapper.poll() is None:
                wrapper.kill()
                wrapper.wait()
    text = log.read_text()
    assert "dying exited unexpectedly with status 3" in text
    assert "restart 1 in 0.1 s" in text and "restart 3 in 0.4 s" in text


def test_restarter_passes_a_stop_on_and_returns_the_command_status() -> None:
    restarter = Restarter("sleeper", [sys.executable, "-c", "import time; time.sleep(30)"],
                          Backoff(base_s=0.1))
    stopper = threading.Timer(0.5, restarter.stop, args=(signal.SIGTERM,))
    stopper.start()
    assert restarter.run() == 128 + signal.SIGTERM  # the sleeper got the SIGTERM
    assert restarter.restarts == 0


def test_compose_restarts_every_long_running_service() -> None:
    services = yaml.safe_load((PROJECT_DIR / "docker-compose.yml").read_text())["services"]
    for name, service in services.items():
        if name not in ("migrate", "migrate-cluster", "redis-cluster-init"):  # one-shots:
            assert service.get("restart") == "unless-stopped", name  # they run once, exit 0


def _pids_with(argument: str, mark: str) -> list[int]:
    """Processes whose command line has ``argument`` and whose command line or
    environment has ``mark`` (the supervising wrappers left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if argument in command and (mark in command or mark in environ) \
                and "scoreboard.supervise" not in command:
            found.append(int(entry.name))
    return found


def _one_pid(argument: str, mark: str, log: Path) -> int:
    """The one process matching (waiting for a restart in progress to settle)."""
    wait_for(lambda: len(_pids_with(argument, mark)) == 1,
             f"not exactly one {argument}: {_pids_with(argument, mark)}\n{log.read_text()}",
             timeout_s=60)
    return _pids_with(argument, mark)[0]


@pytest.mark.single_node("make run is single-node by design")
def test_make_run_restarts_a_killed_worker_and_a_killed_redis(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "run.log"
    with _running(data_dir, port, log) as process:
        _wait_ready(url, process, log)
        redis_url = re.search(r"embedded redis on redis://([0-9.:]+)/0", log.read_text())
        assert redis_url, log.read_text()
        redis_pid = _one_pid("redis-server", redis_url.group(1), log)
        os.kill(redis_pid, signal.SIGKILL)
        wait_for(lambda: "embedded redis is back" in log.read_text(),
                 "redis was not restarted:\n" + log.read_text(), timeout_s=60)
        _wait_ready(url, process, log)
        worker_pid = _one_pid("arq workers.main.WorkerSettings", str(data_dir), log)
        os.kill(worker_pid, signal.SIGKILL)
        wait_for(lambda: "worker exited unexpectedly" in log.read_text(),
                 "the worker's death was not noticed:\n" + log.read_text(), timeout_s=60)
        assert _one_pid("arq workers.main.WorkerSettings", str(data_dir), log) != worker_pid
        # The restarted worker persists: an increment reaches the board.
        credentials = {"username": "blip", "password": "long enough"}
        user_id = httpx.post(url + "/api/auth/register", json=credentials).json()["user_id"]
        access = httpx.post(url + "/api/auth/login", json=credentials).json()["access_token"]
        headers = {"Authorization": f"Bearer {access}"}
        token = httpx.post(url + "/api/actions/token", headers=headers).json()["action_token"]
        response = httpx.post(url + "/api/scores/increment", headers=headers,
                              json={"action_token": token})
        assert response.status_code == 202, response.text
        wait_for(lambda: httpx.get(url + f"/api/scores/users/{user_id}").status_code == 200,
                 "the restarted worker never persisted the increment:\n" + log.read_text(),
                 timeout_s=60)
        assert _stop(process) == 0, log.read_text()
    text = log.read_text()
    assert "embedded redis died; restarting it" in text
    assert "worker exited unexpectedly with status -9" in text


def test_wrapper_whose_manager_is_killed_stops_its_command(tmp_path: Path) -> None:
    """honcho SIGKILLed: its wrappers must not go on restarting commands for ever."""
    pid_file = tmp_path / "child.pid"
    command = tmp_path / "command.py"
    command.write_text("import os, sys, time\n"
                       "open(sys.argv[1], 'w').write(str(os.getpid()))\ntime.sleep(60)\n")
    manager_script = tmp_path / "manager.py"
    manager_script.write_text(
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-m', 'scoreboard.supervise', 'sleeper', '--',"
        " sys.executable, sys.argv[1], sys.argv[2]])\n"
        "time.sleep(60)\n")
    manager = subprocess.Popen([sys.executable, str(manager_script), str(command),
                                str(pid_file)], cwd=PROJECT_DIR)
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text() != "",
                 "the command never started", timeout_s=30)
        child = int(pid_file.read_text())
        manager.kill()
        manager.wait()
        wait_for(lambda: not Path(f"/proc/{child}").exists()
                 or "zombie" in Path(f"/proc/{child}/status").read_text(),
                 "the command outlived its manager", timeout_s=30)
    finally:
        if manager.poll() is None:
            manager.kill()
            manager.wait()
