"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from ingest.http import JSONResponse
from ingest.state import state_of

READY_TIMEOUT_S = 2.0


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """200 when Redis and Postgres both answer, else 503 naming what is down."""
    state = state_of(request)
    checks = {"redis": state.redis.ping(), "postgres": state.pool.fetchval("SELECT 1")}
    down = []
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check, READY_TIMEOUT_S)
        except Exception:  # any failure to answer means not ready
            down.append(name)
    if down:
        return JSONResponse({"status": "unavailable", "down": down}, status_code=503,
                            headers={"Retry-After": "1"})
    return JSONResponse({"status": "ok"})
