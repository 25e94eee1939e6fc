"""What the operations tests share (and the trace and Prometheus tests reuse):
scraping and reading Prometheus text, waiting for a condition, reading JSON
logs, posting increments through the player path, and the three processes on
a fresh key prefix."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from scoreboard.embedded import free_port
from tests.conftest import Api, Player
from tests.servers import (
    Backing,
    broadcaster_server,
    fresh_name,
    ingest_server,
    wait_until_ready,
)
from tests.worker_support import worker_process

Families = dict[str, list[tuple[str, dict[str, str], float]]]


def scrape(url: str) -> Families:
    """Family name -> its samples (sample name, labels, value)."""
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: [(s.name, s.labels, s.value) for s in family.samples]
            for family in text_string_to_metric_families(response.text)}


def family_name(sample_name: str) -> str:
    """The family a sample name belongs to, as the parser names families."""
    for suffix in ("_total", "_bucket", "_count", "_sum", "_created"):
        if sample_name.endswith(suffix):
            return sample_name[: -len(suffix)]
    return sample_name


def value(families: Families, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(v for sample, sample_labels, v in families.get(family_name(name), [])
               if sample == name and labels.items() <= sample_labels.items())


def log_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a process's log; a line that is not JSON fails the test."""
    lines = []
    for line in path.read_text().splitlines():
        if line.strip():
            lines.append(json.loads(line))
    return lines


def increments(api: Api, player: Player, count: int, *, board: str = "global",
               request_id: str | None = None) -> list[httpx.Response]:
    responses = []
    for _ in range(count):
        headers = dict(player.headers)
        if request_id is not None:
            headers["X-Request-ID"] = request_id
        issued = api.post("/api/actions/token", json={"board": board}, headers=headers)
        assert issued.status_code == 200, issued.text
        response = api.post("/api/scores/increment", headers=headers, json={
            "action_token": issued.json()["action_token"]})
        assert response.status_code == 202, response.text
        responses.append(response)
    return responses


@contextmanager
def system(backing: Backing, tmp_path: Path, **overrides: str) -> Iterator[dict[str, str]]:
    """Ingest, worker (metrics on a free port) and broadcaster on a fresh key prefix.

    Yields their URLs and the environment used. Logs go to ``tmp_path``."""
    metrics_port = free_port()
    env = backing.env(KEY_PREFIX=fresh_name("sbops"), TRUSTED_PROXIES="127.0.0.1/32",
                      WORKER_METRICS_PORT=str(metrics_port), CONSUMER_NAME="ops-worker",
                      **overrides)
    with ExitStack() as stack:
        ingest = stack.enter_context(ingest_server(env))
        broadcaster = stack.enter_context(broadcaster_server(env))
        os.environ["WORKER_TEST_LOG"] = str(tmp_path / "worker.log")
        try:
            worker = stack.enter_context(worker_process(env))
        finally:
            del os.environ["WORKER_TEST_LOG"]
        worker_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        wait_until_ready(worker_metrics, worker)
        yield {"ingest": ingest, "broadcaster": broadcaster, "worker_metrics": worker_metrics,
               "key_prefix": env["KEY_PREFIX"]}
