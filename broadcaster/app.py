"""The broadcaster's Starlette app: ``/sse``, the spectator page, health, metrics.

``/ws`` is not a Starlette route: uvicorn hands every WebSocket upgrade on
this port to ``broadcaster.ws_connection.SpectatorConnection``, which writes
snapshots to the socket directly. Both reach the same ``BroadcasterState``:
the lifespan builds it and puts it in the app's state and in uvicorn's
lifespan state (which uvicorn passes to each WebSocket connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from broadcaster.hub import Hub
from broadcaster.periods import PeriodFollower
from broadcaster.snapshots import SnapshotService
from broadcaster.sse import SseEndpoint
from broadcaster.state import BroadcasterState
from broadcaster.watches import WatchService
from broadcaster.ws_connection import keep_alive
from scoreboard.boards_redis import RedisBoards
from scoreboard.logs import configure_logging
from scoreboard.lua import register_scripts
from scoreboard.metrics import exposition, forget_this_process
from scoreboard.redis_clients import cluster_pubsub, redis_client
from scoreboard.settings import Settings, load_settings
from scoreboard.tracing import Tracing, setup_tracing

STATIC = Path(__file__).resolve().parent / "static"
READY_TIMEOUT_S = 2.0


def build_state(settings: Settings, client: Any,
                tracing: Tracing | None = None) -> BroadcasterState:
    keys = settings.keys
    hub = Hub(max_per_address=settings.ws_max_per_ip)
    scripts = register_scripts(client)
    snapshots = SnapshotService(
        redis=client, boards=RedisBoards(client, scripts, keys), keys=keys,
        hub=hub, size=settings.snapshot_size, interval_s=settings.snapshot_interval_ms / 1000,
        poll_s=settings.revision_poll_ms / 1000, rank_mode=settings.rank_ties,
        tracing=tracing,
        pubsub=functools.partial(cluster_pubsub, client) if settings.redis_cluster else None)
    hub.on_board_empty.append(snapshots.forget)
    watches = WatchService(scripts=scripts, keys=keys, rank_mode=settings.rank_ties,
                           interval_s=settings.snapshot_interval_ms / 1000)
    snapshots.change_listeners.append(watches.notice)
    periods = PeriodFollower(redis=client, keys=keys, hub=hub, snapshots=snapshots,
                             refresh_s=settings.board_refresh_s)
    return BroadcasterState(settings=settings, redis=client, hub=hub, snapshots=snapshots,
                            watches=watches, periods=periods)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or load_settings()
    if settings.redis_url is None:
        raise RuntimeError("REDIS_URL must be set (the run command sets it)")
    redis_url = settings.redis_url

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        client = redis_client(redis_url, cluster=settings.redis_cluster,
                              socket_connect_timeout=2, health_check_interval=30)
        tracing = setup_tracing("broadcaster", os.environ)  # None unless OTEL_* turn it on
        state = build_state(settings, client, tracing)
        app.state.broadcaster = state
        tasks = [asyncio.create_task(state.snapshots.listen(), name="change-notices"),
                 asyncio.create_task(state.snapshots.poll(), name="revision-poll"),
                 asyncio.create_task(keep_alive(state), name="keepalive"),
                 asyncio.create_task(state.periods.rollover_forever(), name="period-rollover")]
        try:
            yield {"broadcaster": state}  # uvicorn hands this to each WebSocket connection
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks)
            state.hub.close_all()
            await client.aclose()
            if tracing is not None:
                tracing.shutdown()
            forget_this_process(settings.prometheus_multiproc_dir)

    routes = [
        Route("/", page),
        Route("/spectator.js", script),
        # Every file of static/ (the page's scripts and styles) at /static/<name>.
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/sse", SseEndpoint()),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
    ]
    configure_logging(settings.log_level)
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error})


_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (unknown path, wrong method) in the error envelope."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": {"code": _ERROR_CODES.get(exc.status_code, "http_error"),
                                   "message": exc.detail}},
                        status_code=exc.status_code, headers=exc.headers)


def _state(request: Request) -> BroadcasterState:
    state: BroadcasterState = request.app.state.broadcaster
    return state


async def page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html")


async def script(request: Request) -> Response:
    return FileResponse(STATIC / "spectator.js", media_type="text/javascript")


async def healthz(request: Request) -> Response:
    """Liveness, with this process's id and spectator count (processes share the port)."""
    return JSONResponse({"status": "ok", "pid": os.getpid(),
                         "spectators": _state(request).hub.spectators()})


async def readyz(request: Request) -> Response:
    """200 when Redis answers (snapshots come from it), else 503 with Retry-After."""
    try:
        await asyncio.wait_for(_state(request).redis.ping(), READY_TIMEOUT_S)
    except Exception:  # any failure to answer means not ready
        return JSONResponse({"status": "unavailable", "down": ["redis"]}, status_code=503,
                            headers={"Retry-After": "1"})
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> Response:
    body, content_type = exposition(_state(request).settings.prometheus_multiproc_dir)
    return Response(body, media_type=content_type)
