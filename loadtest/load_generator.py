"""The closed-loop HTTP load generator of the benchmarks, run as a process of its own.

    python -m loadtest.load_generator JOB.json RESULT.json

``JOB`` names the target, the requests to send (headers and body; one
action token each, so each is sent once), the concurrency, the warm-up and the window, and the
process ids whose CPU use to record (ingest's, and optionally ``redis_pids``:
every Redis process of a cluster, as ``redis_pid_<pid>``; ``redis_url``'s INFO
covers one server only); ``RESULT`` receives counts per status,
the latencies of the 202s and the CPU each party used during the window.

Why a process of its own: on a small machine the client competes with the
server for the same cores. Apart, its CPU can be measured (and a reader can
see whether it, not the server, was the limit), and nothing the benchmark
does between runs disturbs the measured window.

Why its own HTTP client by default (``client: "raw"``, the harness's,
``loadtest/harness/http.py``): measured on the
2-core machine the benchmark was written on, httpx cost 1.3 ms of CPU per
request with a connection each, and about 10 ms with 64 connections in one
shared pool (against a trivial ASGI app); one ingest request costs about
0.5 ms. The raw client keeps one HTTP/1.1 keep-alive connection per worker,
writes pre-encoded request bytes and parses the answer with httptools (the
parser uvicorn itself uses), about 30 to 70 µs per request. ``client: "httpx"`` remains
for comparison: one ``AsyncClient`` per worker, never a shared pool.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis

from loadtest.harness.command import job_main
from loadtest.harness.cpu import machine_busy_s, process_cpu_s, redis_info
from loadtest.harness.http import INCREMENT_PATH, HttpConnection, encode_post, open_connection

DRAIN_TIMEOUT_S = 30  # requests still in flight after the window get this long


# --- The closed loop -------------------------------------------------------------------


async def drive(job: dict[str, Any]) -> dict[str, Any]:
    """``concurrency`` workers, each sending its next request when the previous
    one has answered, until the window closes or the requests run out.

    The window's edges are the moments the CPU snapshots are taken, so counts
    and CPU use describe the same interval. Requests in flight at the end are
    awaited (their 202s are in the stream) but are not counted in the window.
    """
    host = urlsplit(job["url"]).netloc
    raw_client = job["client"] == "raw"
    path = job.get("path", INCREMENT_PATH)
    cycle = bool(job.get("cycle"))  # repeatable requests: send them round and round
    pending: collections.deque[Any] = collections.deque(
        encode_post(host, path, headers, body.encode()) if raw_client
        else (headers, body) for headers, body in job["requests"])
    redis_client = redis.Redis.from_url(job["redis_url"])
    finished: list[tuple[float, str, float]] = []  # (done, status, latency s)
    stop, exhausted = asyncio.Event(), asyncio.Event()
    snapshots: list[dict[str, float]] = []

    def snapshot() -> None:
        snapshots.append({"t": time.perf_counter(),
                          "ingest_cpu_s": process_cpu_s(job["ingest_pid"]),
                          "generator_cpu_s": time.process_time(),
                          "machine_busy_s": machine_busy_s(),
                          **{f"redis_{k}": v for k, v in redis_info(redis_client).items()},
                          **{f"redis_pid_{pid}": process_cpu_s(pid)
                             for pid in job.get("redis_pids", [])}})

    async def raw_worker() -> None:
        connection: HttpConnection | None = None
        try:
            while not stop.is_set():
                if not pending:
                    exhausted.set()
                    return
                request = pending.popleft()
                if cycle:
                    pending.append(request)
                sent = time.perf_counter()
                try:
                    if connection is None or connection.closed:
                        connection = await open_connection(job["url"])
                    status = str((await connection.post(request))[0])
                except OSError as exc:
                    status = type(exc).__name__
                done = time.perf_counter()
                finished.append((done, status, done - sent))
        finally:
            if connection is not None:
                connection.close()

    async def httpx_worker() -> None:
        async with httpx.AsyncClient(base_url=job["url"], timeout=30.0) as client:
            while not stop.is_set():
                if not pending:
                    exhausted.set()
                    return
                headers, body = pending.popleft()
                if cycle:
                    pending.append((headers, body))
                sent = time.perf_counter()
                try:
                    response = await client.post(path, content=body, headers={
                        **headers, "Content-Type": "application/json"})
                    status = str(response.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                done = time.perf_counter()
                finished.append((done, status, done - sent))

    worker = raw_worker if raw_client else httpx_worker
    workers = [asyncio.create_task(worker()) for _ in range(job["concurrency"])]
    try:
        await asyncio.sleep(job["warmup_s"])
        if exhausted.is_set():
            raise RuntimeError("the requests ran out during the warm-up")
        snapshot()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(exhausted.wait(), timeout=job["duration_s"])
        snapshot()
    finally:
        stop.set()
        _, stuck = await asyncio.wait(workers, timeout=DRAIN_TIMEOUT_S)
        for task in stuck:
            task.cancel()
        redis_client.close()
    start, end = snapshots
    in_window = [(status, latency) for done, status, latency in finished
                 if start["t"] <= done <= end["t"]]
    return {
        "window_s": end["t"] - start["t"],
        "exhausted": exhausted.is_set() and end["t"] - start["t"] < job["duration_s"] - 0.05,
        "window_statuses": dict(collections.Counter(status for status, _ in in_window)),
        "total_statuses": dict(collections.Counter(status for _, status, _ in finished)),
        "stuck": len(stuck),
        "latencies_ms": sorted(latency * 1000 for status, latency in in_window
                               if status == "202"),
        "cpu_s": {name: end[name] - start[name] for name in start if name != "t"},
    }


def main(argv: list[str]) -> int:
    return job_main("loadtest.load_generator", drive, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
