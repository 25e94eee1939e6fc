"""Prometheus series of the ingest process, and the middleware that feeds them.

The middleware is pure ASGI: it times each request, labels it by route
template (not raw path, so ids do not explode the series), gives it a request
id (``X-Request-ID`` in and out) and keeps all per-request state in the call.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_SECONDS = Histogram(
    "scoreboard_http_request_duration_seconds", "HTTP request latency",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
SCRIPT_OUTCOMES = Counter(
    "scoreboard_ingest_outcomes_total", "Hot-path decisions by endpoint and outcome",
    ["endpoint", "outcome"])


def script_outcome(endpoint: str, outcome: str) -> None:
    SCRIPT_OUTCOMES.labels(endpoint, "accepted" if outcome == "ok" else outcome).inc()


def _route_template(app: Any, scope: Scope) -> str:
    for route in getattr(app, "routes", []):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "unknown"))
    return "unmatched"


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            given: str = value.decode("latin-1")
            if 0 < len(given) <= 64 and given.replace("-", "").replace("_", "").isalnum():
                return given
    return secrets.token_hex(8)


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, *, router: Any) -> None:
        self.app = app
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_SECONDS.labels(_route_template(self.router, scope), scope["method"],
                                   str(status)).observe(time.perf_counter() - started)


async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
