"""The parts of the ingest benchmark beside the increment figure: the action-token
endpoint, game-backend batches, and the anchor every ingest figure is compared to,
a bare Starlette route on the same stack.

The anchor (``bare_app``): one uvicorn process on the stack the issue names
(``loadtest.harness.processes.UVICORN_OPTIONS``: uvloop, uvicorn's httptools
protocol, no proxy-header rewriting, no access log of uvicorn's; ingest itself
runs the same with its one-write protocol, ``ingest/one_write.py``, which the
anchor does not get) serving a Starlette app whose route at
the increment's path reads the JSON body, parses it with orjson and answers 202
with a small JSON body (plus ``/healthz`` for the harness's readiness check).
Driven by the same client with the same requests in the same run, its rate is
what one process of this stack can do with no work of ours at all; ``ingest ÷
bare`` is the share of that our endpoint keeps.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from loadtest import BenchError
from scoreboard.accounts import create_backend_account

ACCEPTED = b'{"status":"accepted"}'


async def _bare_increment(request: Request) -> Response:
    orjson.loads(await request.body())
    return Response(ACCEPTED, status_code=202, media_type="application/json")


async def _healthz(request: Request) -> Response:
    return Response(b"ok")


def bare_app() -> Starlette:
    """The anchor: the increment's path, a JSON body parsed, 202 (``--factory``)."""
    return Starlette(routes=[Route("/api/scores/increment", _bare_increment, methods=["POST"]),
                             Route("/healthz", _healthz, methods=["GET"])])


def backend_headers(url: str, database_url: str) -> dict[str, str]:
    """A game-backend login (scope ``scores:write``), made as the CLI makes one."""
    name = f"bench_backend_{time.time_ns() % 10**9}"
    _, password = asyncio.run(create_backend_account(database_url, name, scrypt_n=1024,
                                                     scrypt_r=8, scrypt_p=1))
    login = httpx.post(url + "/api/auth/login", json={"username": name, "password": password},
                       timeout=30)
    if login.status_code != 200:
        raise BenchError(f"backend login: {login.status_code} {login.text[:300]}")
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


def batch_requests(headers: dict[str, str], batches: int,
                   size: int) -> list[tuple[dict[str, str], str]]:
    """``batches`` bodies of ``size`` increments each, every event id new (all accepted),
    over 10,000 player ids on the default board."""
    run = time.time_ns() % 10**9
    return [(headers, orjson.dumps({"increments": [
        {"user_id": f"bp{(b * size + i) % 10_000}", "points": 1 + i % 9,
         "event_id": f"bench{run}-{b}-{i}"} for i in range(size)]}).decode())
        for b in range(batches)]


def token_requests(players: list[dict[str, str]],
                   count: int) -> list[tuple[dict[str, str], str]]:
    """Action-token requests (the default board and action), round-robin over players."""
    return [(players[i % len(players)], "{}") for i in range(count)]


def rate(result: dict[str, Any]) -> float:
    return float(result["window_statuses"].get("202" if "202" in result["window_statuses"]
                                               else "200", 0)) / float(result["window_s"])


def cpu_per_request_us(result: dict[str, Any]) -> float:
    done = sum(v for k, v in result["window_statuses"].items() if k in ("200", "202"))
    return 1e6 * float(result["cpu_s"]["ingest_cpu_s"]) / done if done else 0.0


def report_line(label: str, result: dict[str, Any], bare_rps: float | None,
                per: int = 1) -> str:
    """One row: requests/s (x ``per`` items), the server's CPU per request, ÷ bare."""
    rps = rate(result)
    others = {k: v for k, v in result["window_statuses"].items() if k not in ("200", "202")}
    cpu_us = cpu_per_request_us(result)
    done = rps * float(result["window_s"])
    redis_us = 1e6 * float(result["cpu_s"].get("redis_cpu_s", 0.0)) / done if done else 0.0
    line = (f"  {label:<34} {rps:>9,.0f} /s  CPU {cpu_us:>5,.0f} µs/request"
            f" (redis-server {redis_us:,.0f} µs)")
    if per > 1:
        line += (f"  = {rps * per:,.0f} increments/s ({cpu_us / per:.1f} µs each in the "
                 f"server, {redis_us / per:.1f} µs in Redis)")
    if bare_rps:
        line += f"  ÷ bare {rps / bare_rps:.2f}"
    if others:
        line += f"  other outcomes {others}"
    return line
