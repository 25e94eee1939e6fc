"""Prometheus series of the ingest process, and the middleware that feeds them.

The middleware is pure ASGI: it times each request, labels it by route
template (not raw path, so ids do not explode the series), gives it a request
id (``X-Request-ID`` in and out) and keeps all per-request state in the call.
The id goes into the stream entry of an accepted increment, into every log
line written while the request is handled, and into the access log line
(``ingest.access``, one JSON object per request at INFO, unless
``ACCESS_LOG=false``).

Several server processes (``uvicorn --workers N``): with
``PROMETHEUS_MULTIPROC_DIR`` set, ``/metrics`` merges every process's values
(``scoreboard.metrics.exposition``).
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.access_log import AccessLog
from ingest.state import state_of
from scoreboard.logs import REQUEST_ID
from scoreboard.metrics import exposition, sample_pool
from scoreboard.tracing import Tracing, server_span

access_logger = logging.getLogger("ingest.access")

REQUEST_SECONDS = Histogram(
    "scoreboard_http_request_duration_seconds", "HTTP request latency",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
SCRIPT_OUTCOMES = Counter(
    "scoreboard_ingest_outcomes_total", "Hot-path decisions by endpoint and outcome",
    ["endpoint", "outcome"])


_outcome_children: dict[tuple[str, str], Any] = {}
_latency_children: dict[tuple[str, str, int], Any] = {}


def script_outcome(endpoint: str, outcome: str) -> None:
    """Count a hot-path decision. The labelled children are kept: ``labels()`` takes a
    lock and builds a key per call, a measurable share of a cheap request."""
    child = _outcome_children.get((endpoint, outcome))
    if child is None:
        child = _outcome_children[(endpoint, outcome)] = SCRIPT_OUTCOMES.labels(
            endpoint, "accepted" if outcome == "ok" else outcome)
    child.inc()


def _observe_latency(route: str, method: str, status: int, seconds: float) -> None:
    child = _latency_children.get((route, method, status))
    if child is None:
        child = _latency_children[(route, method, status)] = REQUEST_SECONDS.labels(
            route, method, str(status))
    child.observe(seconds)


def _route_template(scope: Scope) -> str:
    """The template of the route the router chose (it leaves it in ``scope["route"]``),
    so the path is matched once per request, not again here."""
    return str(getattr(scope.get("route"), "path", "unmatched"))


def _given_request_id(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            given: bytes = value
            return given
    return None


def request_id_of(given: bytes | None) -> str:
    """The client's ``X-Request-ID`` when usable (1-64 letters, digits, '-', '_'),
    else a new one."""
    if given is not None:
        text = given.decode("latin-1")
        if 0 < len(text) <= 64 and text.replace("-", "").replace("_", "").isalnum():
            return text
    # A trace id, not a secret: the process's PRNG, not a system call per request.
    return f"{random.getrandbits(64):016x}"


class RequestRecord:
    """What every request leaves behind, whichever path served it (the middleware
    below, or ``ingest.hot_path``): its latency by route template, its access line."""

    def __init__(self, *, access_log: bool = True) -> None:
        self.access_log = access_log
        self.access_lines = AccessLog()

    def finish(self, scope: Scope, *, route: str, request_id: str, status: int,
               started: float) -> None:
        elapsed = time.perf_counter() - started
        _observe_latency(route, scope["method"], status, elapsed)
        if self.access_log and access_logger.isEnabledFor(logging.INFO):
            client = scope.get("client")
            self.access_lines.write(
                request_id=request_id, method=scope["method"], path=scope["path"],
                route=route, status=status, duration_ms=round(elapsed * 1000, 3),
                peer=client[0] if client else None)


def begin_request(scope: Scope, request_id: str | None = None) -> str:
    """The request's id (``request_id``, else from its ``X-Request-ID``), left in
    ``scope["state"]`` and in the logging context."""
    if request_id is None:
        request_id = request_id_of(_given_request_id(scope))
    scope.setdefault("state", {})["request_id"] = request_id
    # Not reset on the way out: each request runs in a task of its own (with
    # a copy of the context), and the server's own line about an unhandled
    # error, written after this returns, should carry the id too.
    REQUEST_ID.set(request_id)
    return request_id


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, *, record: RequestRecord) -> None:
        self.app = app
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = begin_request(scope)
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
            self.record.finish(scope, route=_route_template(scope), request_id=request_id,
                               status=status, started=started)


class TracingMiddleware:
    """A SERVER span per request, named by its route template; installed only when
    tracing is on (off, requests do not pass through it at all)."""

    def __init__(self, app: ASGIApp, *, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with server_span(self.tracing, scope) as span:
            await self.app(scope, receive, send)
            route = _route_template(scope)
            span.update_name(f"{scope['method']} {route}")
            span.set_attribute("http.route", route)


async def metrics_endpoint(request: Request) -> Response:
    state = state_of(request)
    sample_pool(state.pool)
    body, content_type = exposition(state.settings.prometheus_multiproc_dir)
    return Response(body, media_type=content_type)
