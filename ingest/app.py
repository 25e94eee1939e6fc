"""The ingest Starlette app: routes, error handlers, and the lifespan that owns
the Redis client, the registered scripts, the Postgres pool and the keys.

Run with ``python -m ingest`` (the Procfile's line, ``ingest/__main__.py``); under
``uvicorn --factory ingest.app:create_app`` it works the same, with uvicorn's
own HTTP protocol (two writes per answer, ``ingest/one_write.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.exceptions
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest import (
    auth_routes,
    board_routes,
    health,
    me_routes,
    metrics,
    openapi,
    read_routes,
    score_routes,
)
from ingest.backlog import Backpressure
from ingest.board_cache import BoardCache
from ingest.failures import INTERNAL_ERROR, UNAVAILABLE, dependency_down, redis_full
from ingest.hot_path import HotRoute, IngestApp
from ingest.http import error_response
from ingest.redis_packing import HiredisPackingConnection
from ingest.script_batching import coalesce_hot_scripts
from ingest.state import IngestState
from scoreboard.board_reads import BoardReader
from scoreboard.boards_redis import RedisBoards
from scoreboard.cors import CORSMiddleware, parse_origins
from scoreboard.db import create_pool
from scoreboard.errors import RequestError
from scoreboard.jwt_tokens import JWTAuthority
from scoreboard.logs import configure_logging
from scoreboard.lua import register_scripts
from scoreboard.metrics import forget_this_process, sample_pool_forever
from scoreboard.redis_clients import cluster_unsettled, redis_client
from scoreboard.settings import Settings, load_settings
from scoreboard.signing_keys import load_action_keys, load_jwt_keys
from scoreboard.tracing import setup_tracing

logger = logging.getLogger(__name__)


async def _request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return error_response(exc)


async def _dependency_down(request: Request, exc: Exception) -> Response:
    return error_response(dependency_down(request.url.path, exc))


async def _redis_full(request: Request, exc: Exception) -> Response:
    return error_response(redis_full(request.url.path))


async def _http_error(request: Request, exc: Exception) -> Response:
    """The router's own refusals (no such route, a method the route does not
    take) in the error envelope, like every other error."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = RequestError(404, "not_found", f"no endpoint at {request.url.path}")
    elif exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        error = RequestError(405, "method_not_allowed",
                             f"{request.method} is not allowed on {request.url.path}"
                             f" (allowed: {allow})")
    else:
        error = RequestError(exc.status_code, "http_error", str(exc.detail))
    response = error_response(error)
    response.headers.update(exc.headers or {})
    return response


async def _internal_error(request: Request, exc: Exception) -> Response:
    """An unexpected failure: the envelope, nothing more (the traceback is logged)."""
    if cluster_unsettled(exc):  # a cluster's connections closed under the command
        return error_response(dependency_down(request.url.path, exc))
    return error_response(INTERNAL_ERROR)


def cors_origins(settings: Settings) -> frozenset[str] | None:
    """``CORS_ALLOWED_ORIGINS``, plus the spectator page's own origin (the
    broadcaster's address), which reads the board list and a followed player's
    neighbours from here."""
    allowed = parse_origins(settings.cors_allowed_origins)
    if allowed is None:
        return None
    port = settings.broadcaster_port
    return allowed | {f"http://{host}:{port}"
                      for host in {settings.broadcaster_host, "127.0.0.1", "localhost"}}


def create_app(settings: Settings | None = None) -> IngestApp:
    settings = settings or load_settings()
    if settings.redis_url is None or settings.database_url is None:
        raise RuntimeError("REDIS_URL and DATABASE_URL must be set (the run command sets them)")
    redis_url, database_url = settings.redis_url, settings.database_url
    tracing = setup_tracing("ingest", os.environ)  # None unless OTEL_* turn it on

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = redis_client(redis_url, cluster=settings.redis_cluster,
                              socket_connect_timeout=2, socket_timeout=5,
                              health_check_interval=30,
                              connection_class=HiredisPackingConnection)
        pool = await create_pool(database_url, max_size=10)
        keys = settings.keys
        # The coalescing channel is one connection to one server: not on a cluster.
        scripts, batcher = coalesce_hot_scripts(register_scripts(client), client) \
            if not settings.redis_cluster else (register_scripts(client), None)
        board_cache = BoardCache(client, keys.board_definitions)
        await board_cache.start(pool, service_max=settings.max_points_per_increment)
        backlog = Backpressure(client, streams=keys.streams, group=settings.consumer_group,
                               max_backlog=settings.max_backlog)
        app.state.ingest = IngestState(
            settings=settings, keys=keys, redis=client, scripts=scripts, pool=pool,
            boards=BoardReader(RedisBoards(client, scripts, keys), rank_mode=settings.rank_ties),
            jwt=JWTAuthority(load_jwt_keys(settings.jwt_keys_path), issuer=settings.jwt_issuer,
                             audience=settings.jwt_audience, ttl_s=settings.access_token_ttl_s),
            action_keys=load_action_keys(settings.action_keys_path),
            board_cache=board_cache, backlog=backlog, tracing=tracing)
        tasks = [asyncio.create_task(sample_pool_forever(pool), name="pool-sampler"),
                 asyncio.create_task(board_cache.refresh_forever(settings.board_refresh_s)),
                 asyncio.create_task(backlog.measure_forever(settings.backlog_check_ms / 1000))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await pool.close()
            if batcher is not None:
                await batcher.close()
            await client.aclose()
            forget_this_process(settings.prometheus_multiproc_dir)
            if tracing is not None:
                tracing.shutdown()

    # Served by ingest.hot_path ahead of the stack (POST only); routed too, see there.
    hot = {"/api/actions/token": score_routes.issue_action_token,
           "/api/scores/increment": score_routes.increment,
           "/api/scores/batch": score_routes.batch}
    routes = [
        Route("/api/auth/register", auth_routes.register, methods=["POST"]),
        Route("/api/auth/login", auth_routes.login, methods=["POST"]),
        Route("/api/auth/refresh", auth_routes.refresh, methods=["POST"]),
        Route("/api/auth/logout", auth_routes.logout, methods=["POST"]),
        Route("/.well-known/jwks.json", auth_routes.jwks, methods=["GET"]),
        *(Route(path, HotRoute(handler), methods=["POST"]) for path, handler in hot.items()),
        Route("/api/scores/top", read_routes.top, methods=["GET"]),
        Route("/api/scores/page", read_routes.page, methods=["GET"]),
        Route("/api/scores/ranks", read_routes.ranks, methods=["GET"]),
        Route("/api/scores/users/{user_id}", read_routes.user, methods=["GET"]),
        Route("/api/scores/around/{user_id}", read_routes.around, methods=["GET"]),
        Route("/api/boards", board_routes.boards, methods=["GET"]),
        Route("/api/boards/{board}", board_routes.board, methods=["GET"]),
        Route("/api/boards/{board}/periods", board_routes.periods, methods=["GET"]),
        Route("/api/me", me_routes.me, methods=["GET"]),
        Route("/api/me/rank", me_routes.my_rank, methods=["GET"]),
        Route("/api/me/around", me_routes.my_around, methods=["GET"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", metrics.metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
        Route("/docs", openapi.docs_page, methods=["GET"]),
        Route("/docs/{asset}", openapi.docs_asset, methods=["GET"]),
    ]
    app = IngestApp(routes=routes, lifespan=lifespan, exception_handlers={
        RequestError: _request_error, HTTPException: _http_error, Exception: _internal_error,
        redis.exceptions.OutOfMemoryError: _redis_full,
        **{kind: _dependency_down for kind in UNAVAILABLE}})
    origins = cors_origins(settings)
    record = metrics.RequestRecord(access_log=settings.access_log)
    app.add_middleware(CORSMiddleware, allowed_origins=origins)
    app.add_middleware(metrics.ObservabilityMiddleware, record=record)
    if tracing is not None:  # outermost: its span covers the whole request
        app.add_middleware(metrics.TracingMiddleware, tracing=tracing)
    app.configure_hot_path(hot, record=record, cors_origins=origins, tracing=tracing)
    configure_logging(settings.log_level)
    return app
