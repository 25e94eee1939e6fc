"""The flood's load generator: game-backend batches at full speed, in a process of its own.

    python -m loadtest.flood_driver JOB.json RESULT.json

``connections`` keep-alive connections each POST /api/scores/batch closed loop
(the next batch as soon as the previous one is answered) from ``start_at``
until ``end_at`` (``time.monotonic()``, one clock for every process of the
machine, so the orchestrator's samples line up with these counts). A 503
``overloaded`` does not slow a connection down: the flood is the worst client,
one that ignores ``Retry-After``, so the figures show what refusing costs.

Every batch's increments follow from (run, connection, sequence number) alone
(:func:`batch_increments`), so the result carries only which batches were
answered 202 and the orchestrator rebuilds exactly what was accepted; with
each 202 the driver also checks that the whole batch was accepted (no
duplicate, no refusal), since the run's event ids are new and its players not
banned. ``RESULT``: answers per status and per ``BUCKET_S`` of the window, the
accepted batches, and any batch only partly accepted.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import orjson

from loadtest.harness.command import job_main
from loadtest.harness.http import HttpConnection, encode_post, open_connection

BATCH_PATH = "/api/scores/batch"
BUCKET_S = 0.25  # the orchestrator samples the backlog at this period too


def batch_increments(run: str, connection: int, seq: int, size: int, users: int
                     ) -> list[dict[str, Any]]:
    """Batch ``seq`` of ``connection``: event ids unique to the run, players spread
    over ``users`` ids, 1 to 3 points (so a total says more than a count)."""
    increments = []
    for i in range(size):
        n = seq * size + i
        user = (n * 7919 + connection * 104_729) % users
        increments.append({"user_id": f"flood-{user}", "points": 1 + n % 3,
                           "event_id": f"{run}-{connection}-{seq}-{i}"})
    return increments


async def flood_connection(job: dict[str, Any], connection: int, counts: Counter[str],
                           buckets: dict[int, Counter[str]], accepted: list[list[int]],
                           partial: list[list[Any]]) -> None:
    url, start_at, end_at = job["url"], float(job["start_at"]), float(job["end_at"])
    host, headers = urlsplit(url).netloc, {"Authorization": job["authorization"]}
    link: HttpConnection | None = None
    seq = 0
    while time.monotonic() < end_at:
        body = orjson.dumps({"increments": batch_increments(
            job["run"], connection, seq, int(job["batch"]), int(job["users"]))})
        try:
            if link is None or link.closed:
                link = await open_connection(url)
            status, answer = await link.post(encode_post(host, BATCH_PATH, headers, body))
            outcome = str(status)
        except OSError as exc:
            outcome, answer = type(exc).__name__, b""
        if outcome == "503" and b'"overloaded"' not in answer:
            outcome = "503-other"
        if outcome == "202":
            accepted.append([connection, seq])
            if orjson.loads(answer)["accepted"] != int(job["batch"]):
                partial.append([connection, seq, answer.decode()])
        counts[outcome] += 1
        buckets.setdefault(int((time.monotonic() - start_at) / BUCKET_S), Counter())[outcome] += 1
        seq += 1
    if link is not None:
        link.close()


async def drive(job: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(max(0.0, float(job["start_at"]) - time.monotonic()))
    counts: Counter[str] = Counter()
    buckets: dict[int, Counter[str]] = {}
    accepted: list[list[int]] = []
    partial: list[list[Any]] = []
    await asyncio.gather(*(flood_connection(job, c, counts, buckets, accepted, partial)
                           for c in range(int(job["connections"]))))
    return {"counts": dict(counts), "accepted": accepted, "partial": partial,
            "buckets": {str(k): dict(v) for k, v in sorted(buckets.items())},
            "finished_at": time.monotonic()}


if __name__ == "__main__":
    sys.exit(job_main("loadtest.flood_driver", drive, sys.argv[1:]))
