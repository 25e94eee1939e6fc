"""The README's quick tour, run as pasted against a real ``scoreboard run``
(what ``make run`` runs: embedded Redis and Postgres, ingest, worker,
broadcaster), and the operators' commands beside that run.

The tour's block is taken from README.md as it is; only the two ports are
replaced by the free ones this run uses. Each ``# ->`` line must have the
shape (the same fields) of what the command before it printed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from scoreboard.embedded import free_port
from tests.servers import PROJECT_DIR

pytestmark = pytest.mark.single_node("the quick tour is make run, single-node by design")

README = PROJECT_DIR / "README.md"


@dataclass(frozen=True)
class Run:
    ingest: str
    broadcaster: str
    worker_metrics: str
    data_dir: Path
    console: Path
    env: dict[str, str]


def _run_env(data_dir: Path, **ports: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "DATABASE_URL", "KEY_PREFIX")}
    env.update({"DATA_DIR": str(data_dir), **{k: str(v) for k, v in ports.items()}})
    return env


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("tour")
    ingest, broadcaster, metrics = free_port(), free_port(), free_port()
    env = _run_env(root / "data", INGEST_PORT=ingest, BROADCASTER_PORT=broadcaster,
                   WORKER_METRICS_PORT=metrics)
    console = root / "console.log"
    with console.open("wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "scoreboard.cli", "run"],
                                   cwd=PROJECT_DIR, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    started = Run(ingest=f"http://127.0.0.1:{ingest}",
                  broadcaster=f"http://127.0.0.1:{broadcaster}",
                  worker_metrics=f"http://127.0.0.1:{metrics}", data_dir=root / "data",
                  console=console, env=env)
    try:
        deadline = time.monotonic() + 90
        while not _answers(started.ingest + "/readyz") or not _answers(
                started.broadcaster + "/healthz") or not _answers(
                started.worker_metrics + "/metrics"):
            assert process.poll() is None, console.read_text()
            assert time.monotonic() < deadline, console.read_text()
            time.sleep(0.2)
        yield started
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C, as in a terminal
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def tour_block() -> str:
    text = README.read_text()
    start = text.index("```sh\n", text.index("## Quick tour of the API")) + len("```sh\n")
    return text[start:text.index("```", start)]


def json_values(output: str) -> list[Any]:
    """The JSON values printed one after another (curl prints no newline)."""
    decoder, values, position = json.JSONDecoder(), [], 0
    while position < len(output):
        if output[position].isspace():
            position += 1
            continue
        value, position = decoder.raw_decode(output, position)
        values.append(value)
    return values


def shape(value: Any) -> Any:
    """Field names, nested: what a documented example and an answer must share."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return None


@pytest.fixture(scope="module")
def tour(run: Run) -> list[Any]:
    ingest_port, broadcaster_port = run.ingest.rsplit(":", 1)[1], run.broadcaster.rsplit(":", 1)[1]
    script = tour_block().replace("127.0.0.1:8000", f"127.0.0.1:{ingest_port}").replace(
        "127.0.0.1:8001", f"127.0.0.1:{broadcaster_port}")
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=PROJECT_DIR,
                          env=run.env, capture_output=True, text=True, timeout=90,
                          check=False)
    assert done.returncode == 0, done.stderr
    return json_values(done.stdout)


def test_quick_tour_works_as_pasted(tour: list[Any]) -> None:
    documented = [json.loads(line.split("# -> ", 1)[1].split("   (")[0])
                  for line in tour_block().splitlines() if line.startswith("# -> ")]
    assert len(tour) == len(documented)
    for printed, example in zip(tour, documented, strict=True):
        assert shape(printed) == shape(example), (printed, example)
    registered, me, accepted, rank, top, snapshot = tour
    assert me["user_id"] == registered["user_id"] == rank["user_id"]
    assert accepted["status"] == "accepted"
    assert (rank["rank"], rank["score"]) == (1, 1)
    assert top["entries"][0]["username"] == "alice"
    assert snapshot["type"] == "snapshot"
    assert snapshot["entries"][0]["user_id"] == registered["user_id"]


def test_health_and_admin_find_the_running_servers(run: Run, tour: list[Any],
                                                   tmp_path: Path) -> None:
    def command(*args: str, env: dict[str, str] = run.env) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", *args], cwd=PROJECT_DIR, env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    deadline = time.monotonic() + 30
    while (health := command("workers.health")).returncode != 0:
        assert time.monotonic() < deadline, health.stderr
        time.sleep(0.5)
    nothing_running = command("workers.health", env=_run_env(tmp_path / "empty"))
    assert nothing_running.returncode == 1
    assert "no `scoreboard run` is running" in nothing_running.stderr

    user_id, accepted = tour[0]["user_id"], tour[2]
    listed = command("scoreboard.cli", "admin", "actions", user_id)
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["event_id"] for line in listed.stdout.splitlines()] == [
        accepted["event_id"]]
    unknown = command("scoreboard.cli", "admin", "ban", "no-such-user")
    assert (unknown.returncode, unknown.stderr.strip()) == (1, "unknown user 'no-such-user'")
    # They used the running servers: no second embedded server was started.
    assert not re.search(r"embedded (redis|postgres) on", listed.stderr + unknown.stderr)


HONCHO_LINE = re.compile(r"^\d\d:\d\d:\d\d (?P<process>[a-z]+(?:\.\d+)?)\s*\| (?P<text>.*)$")


def test_console_is_one_json_line_per_event_and_starts_with_every_url(
        run: Run, tour: list[Any]) -> None:
    console = run.console.read_text()
    assert "\x1b[" not in console and "\\u001b" not in console  # no colour codes
    banner_urls = [run.ingest, f"{run.ingest}/docs", f"{run.ingest}/openapi.json",
                   f"{run.broadcaster}/", run.broadcaster.replace("http", "ws") + "/ws?board=",
                   f"{run.ingest}/metrics", f"{run.broadcaster}/metrics",
                   f"{run.worker_metrics}/metrics"]
    head = console.split(" system ", 1)[0]  # before honcho starts the processes
    for url in banner_urls:
        assert url in head, url
    seen: set[tuple[str, str]] = set()
    messages: dict[str, list[str]] = {}
    for line in console.splitlines():
        match = HONCHO_LINE.match(line)
        if match is None or match["process"] == "system":
            continue  # the banner and honcho's own lines about starting processes
        entry = json.loads(match["text"])  # every line a process prints is JSON
        assert {"ts", "level", "logger", "message"} <= set(entry)
        assert "color_message" not in entry
        key = (match["process"], match["text"])
        assert key not in seen, f"printed twice: {line}"
        seen.add(key)
        messages.setdefault(match["process"].split(".")[0], []).append(entry["message"])
    starting = [m for m in messages["worker"] if m.startswith("Starting worker")]
    assert len(starting) == 1  # arq's first line: JSON, once
    assert any("POST /api/scores/increment 202" in m for m in messages["ingest"])


def test_examples_run_against_the_running_servers(run: Run, tour: list[Any]) -> None:
    live = run.broadcaster.replace("http", "ws")

    def example(name: str, *args: str) -> str:
        done = subprocess.run([sys.executable, f"examples/{name}", *args], cwd=PROJECT_DIR,
                              env=run.env, capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    played = example("play.py", "--api", run.ingest, "--live", live, "--username", "bob",
                     "--password", "long enough", "--turns", "2")
    assert played.count("accepted: at-") == 2 and "live global v" in played
    created = subprocess.run([sys.executable, "-m", "scoreboard.cli", "create-backend", "game"],
                             cwd=PROJECT_DIR, env=run.env, capture_output=True, text=True,
                             timeout=60, check=True).stdout
    password = created.rsplit(": ", 1)[1].strip()
    posted = example("backend_batch.py", "--api", run.ingest, "--username", "game",
                     "--password", password, "--board", "global")
    assert "accepted 5, duplicates 0; sent again: accepted 0, duplicates 5" in posted
    watched = example("watch.py", "--live", live, "--board", "global", "--count", "1")
    assert watched.startswith("v") and "alice" in watched
