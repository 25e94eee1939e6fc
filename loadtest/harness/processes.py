"""The system under test's processes, started as the Procfile starts them.

Each context manager starts ONE process on 127.0.0.1 (a free port unless
given), waits until it is ready, yields where it is and its pid, and on exit
stops it with SIGTERM (the process drains and closes its pools), then SIGKILL.
The tests start their processes with the same commands and helpers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import redis

from loadtest import BenchError
from scoreboard.embedded import free_port
from scoreboard.keys import Keys
from scoreboard.settings import load_settings

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent
WORKER_COMMAND = (sys.executable, "-m", "arq", "workers.main.WorkerSettings")
BROADCASTER_COMMAND = (sys.executable, "-m", "broadcaster")
INGEST_COMMAND = (sys.executable, "-m", "ingest")  # the Procfile's (ingest/__main__.py)
# uvicorn's options for an app served as ingest is, with uvicorn's own httptools
# protocol (``python -m ingest`` writes each answer in one call instead): no
# proxy-header rewriting (ingest reads X-Forwarded-For itself, from trusted proxies).
UVICORN_OPTIONS = ("--http", "httptools", "--no-proxy-headers")


def uvicorn_command(factory: str, port: int, *extra: str) -> list[str]:
    """``uvicorn --factory`` of ``factory`` on 127.0.0.1:``port``, uvloop, no access log."""
    return [sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1",
            "--port", str(port), "--loop", "uvloop", *extra, "--no-access-log"]


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
    """SIGTERM (a clean stop, as a process manager does), then SIGKILL after ``timeout_s``;
    a process started in a session of its own (``start_new_session``: one that starts
    children, as ``--workers N`` does) is killed with its whole group, so no child
    outlives it."""
    if process.poll() is not None:
        return
    leads_a_group = False
    with contextlib.suppress(ProcessLookupError):
        leads_a_group = os.getpgid(process.pid) == process.pid
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if leads_a_group:  # its children, if any outlived it (the group outlives its leader)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _log_tail(log_path: Path | None) -> str:
    return "" if log_path is None else f"; its log:\n{log_path.read_text()[-3000:]}"


def wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path | None = None,
               what: str = "the server", timeout_s: float = 30) -> None:
    """Poll ``url`` until it answers 200; fail (with the log's tail) if the process
    exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise BenchError(f"{what} exited with {process.returncode} while starting"
                             + _log_tail(log_path))
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not become ready within {timeout_s:g} s"
                             + _log_tail(log_path))
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)


@contextlib.contextmanager
def http_process(command: list[str], env: Mapping[str, str], log_path: Path, *, port: int,
                 ready_path: str, what: str) -> Iterator[tuple[str, int]]:
    """Any HTTP server of ours: start ``command`` (its output to ``log_path``), wait
    for ``ready_path`` on ``port``; yields (url, pid)."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, cwd=PROJECT_DIR, env=dict(env), stdout=log,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + ready_path, process, log_path, what)
        yield url, process.pid
    finally:
        stop_process(process)


@contextlib.contextmanager
def uvicorn_process(factory: str, env: Mapping[str, str], log_path: Path, *,
                    ready_path: str, what: str,
                    options: Sequence[str] = ("--http", "httptools")
                    ) -> Iterator[tuple[str, int]]:
    """ONE uvicorn process of ``factory`` with uvloop and ``options`` (by default
    uvicorn's httptools protocol)."""
    port = free_port()
    with http_process(uvicorn_command(factory, port, *options), env, log_path,
                      port=port, ready_path=ready_path, what=what) as found:
        yield found


def ingest_command(port: int, *extra: str) -> list[str]:
    """``python -m ingest`` (the Procfile's ingest line) on 127.0.0.1:``port``."""
    return [*INGEST_COMMAND, "--host", "127.0.0.1", "--port", str(port), *extra]


@contextlib.contextmanager
def ingest_process(env: Mapping[str, str], log_path: Path, *, factory: str | None = None,
                   ready_path: str = "/readyz", what: str = "ingest"
                   ) -> Iterator[tuple[str, int]]:
    """ONE ingest process, started as the Procfile starts it (``factory``: another app
    served the same way); yields (url, pid)."""
    port = free_port()
    extra = () if factory is None else ("--factory", factory)
    with http_process(ingest_command(port, *extra), env, log_path, port=port,
                      ready_path=ready_path, what=what) as found:
        yield found


@contextlib.contextmanager
def broadcaster_process(env: Mapping[str, str], log_path: Path, *, max_per_ip: int,
                        interval_ms: int = 100) -> Iterator[tuple[str, int]]:
    """ONE broadcaster (``python -m broadcaster``), by default at 10 snapshots/s;
    yields (url, pid)."""
    port = free_port()
    with http_process(list(BROADCASTER_COMMAND),
                      {**env, "BROADCASTER_HOST": "127.0.0.1", "BROADCASTER_PORT": str(port),
                       "SNAPSHOT_INTERVAL_MS": str(interval_ms),
                       "WS_MAX_PER_IP": str(max_per_ip)},
                      log_path, port=port, ready_path="/healthz",
                      what="the broadcaster") as found:
        yield found


def consumer_names(client: Any, stream: str, group: str) -> set[str]:
    """The consumers registered in ``group`` (none when the stream or group is missing)."""
    with contextlib.suppress(redis.ResponseError):
        return {c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                for c in client.xinfo_consumers(stream, group)}
    return set()


def group_caught_up(client: Any, stream: str, group: str) -> bool:
    """Every entry of ``stream`` delivered to ``group`` and acknowledged (true of a
    stream that does not exist: nothing was ever written to it). ``client``: sync."""
    try:
        info = client.xinfo_stream(stream)
        groups = {g["name"].decode() if isinstance(g["name"], bytes) else g["name"]: g
                  for g in client.xinfo_groups(stream)}
    except redis.ResponseError:
        return True
    found = groups.get(group)
    if found is None:
        return int(info["length"]) == 0
    return bool(found["pending"] == 0
                and found["last-delivered-id"] == info["last-generated-id"])


@contextlib.contextmanager
def worker_process(env: Mapping[str, str], log_path: Path, client: Any, keys: Keys, *,
                   name: str = "bench-worker", metrics_port: int = 0) -> Iterator[int]:
    """ONE worker (``arq workers.main.WorkerSettings``, as the Procfile runs it), ready
    once its consumer is registered in the group; yields its pid.

    ``client`` is a sync Redis client of the run's server. ``metrics_port`` 0 (the
    default) serves no metrics: another worker on this host may hold the usual port.
    On exit: SIGTERM, which lets the consumer finish its batch (arq's on_shutdown
    allows 30 s), then SIGKILL after 40 s."""
    group = load_settings(dict(env)).consumer_group
    with log_path.open("ab") as log:
        process = subprocess.Popen(WORKER_COMMAND, cwd=PROJECT_DIR, stdout=log,
                                   stderr=subprocess.STDOUT,
                                   env={**env, "CONSUMER_NAME": name,
                                        "WORKER_METRICS_HOST": "127.0.0.1",
                                        "WORKER_METRICS_PORT": str(metrics_port)})
    try:
        deadline = time.monotonic() + 30
        while name not in consumer_names(client, keys.stream, group):
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchError("the worker did not start" + _log_tail(log_path))
            time.sleep(0.1)
        yield process.pid
    finally:
        stop_process(process, timeout_s=40)


def run_job(module: str, job_path: Path, result_path: Path, timeout_s: float) -> None:
    """``python -m <module> JOB RESULT`` (a load generator in a process of its own,
    so its CPU is measured apart and nothing here disturbs it); fails unless it
    finishes with status 0 within ``timeout_s``."""
    process = subprocess.Popen([sys.executable, "-m", module, str(job_path), str(result_path)],
                               cwd=PROJECT_DIR)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{module} did not finish in time") from None
    finally:
        stop_process(process)
    if process.returncode != 0:
        raise BenchError(f"{module} failed with status {process.returncode}")
