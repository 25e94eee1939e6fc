"""The spec's straightforward design, as the end-to-end benchmark's baseline.

    uvicorn --factory loadtest.baseline_server:create_app   (started by loadtest.bench_e2e)

Benchmark code, not product: the thing ``loadtest.bench_e2e`` measures the
service against. Per POST /api/scores/increment, in the request:

1. the same Python checks as ingest (the same code): the access token
   (RS256, cached per token), the body, the action token's HMAC;
2. one Postgres transaction: INSERT the audit row into ``actions``, then
   upsert the user's total in ``scores`` (the same tables, created by the
   project's own migrations in a database of the baseline's own);
3. after the commit, the top-10 query (the ``scores_rank`` index);
4. PUBLISH of that top 10 on a Redis channel (``<prefix>:baseline-top``);
5. 202 with the same body as ingest.

It does less than the service, which favours it: the action token is not
consumed (no one-time use), there are no rate limits, no de-duplication,
no fraud rules, the top 10 carries no display names, and nobody relays the
published top 10 to WebSocket spectators. Settings come from the same
environment variables as ingest (``DATABASE_URL`` names the baseline's
database); the Postgres pool has ingest's size (10) unless
``BASELINE_POOL_SIZE`` says otherwise.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as redis_asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest.bearer import unauthorized
from ingest.http import JSONResponse, error_response, read_json
from ingest.validation import parse_increment
from scoreboard import action_tokens
from scoreboard.client_address import client_address
from scoreboard.db import create_pool
from scoreboard.errors import ActionTokenError, JWTError, RequestError
from scoreboard.jwt_tokens import JWTAuthority
from scoreboard.keys import Keys
from scoreboard.settings import Settings, load_settings
from scoreboard.signing_keys import load_action_keys, load_jwt_keys

INSERT_ACTION = """
INSERT INTO actions (event_id, created_at, user_id, board, points, source, client_addr)
VALUES ($1, now(), $2, $3, $4, 'player', $5)
"""
UPSERT_SCORE = """
INSERT INTO scores (board, user_id, score, reached_at) VALUES ($1, $2, $3, now())
ON CONFLICT (board, user_id) DO UPDATE
SET score = scores.score + EXCLUDED.score, reached_at = now(), version = scores.version + 1
"""
TOP_10 = """
SELECT user_id, score FROM scores WHERE board = $1
ORDER BY score DESC, reached_at, user_id LIMIT 10
"""


def channel_name(prefix: str) -> str:
    """Where the baseline publishes each top 10."""
    return f"{Keys(prefix).tag}:baseline-top"


@dataclass
class Baseline:
    settings: Settings
    pool: Any
    redis: Any
    jwt: JWTAuthority
    action_keys: dict[str, bytes]
    channel: str


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or load_settings()
    if settings.redis_url is None or settings.database_url is None:
        raise RuntimeError("REDIS_URL and DATABASE_URL must be set")
    redis_url, database_url = settings.redis_url, settings.database_url
    pool_size = int(os.environ.get("BASELINE_POOL_SIZE", "10"))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = redis_asyncio.Redis.from_url(redis_url, socket_connect_timeout=2,
                                              socket_timeout=5)
        pool = await create_pool(database_url, max_size=pool_size)
        app.state.baseline = Baseline(
            settings=settings, pool=pool, redis=client,
            jwt=JWTAuthority(load_jwt_keys(settings.jwt_keys_path), issuer=settings.jwt_issuer,
                             audience=settings.jwt_audience, ttl_s=settings.access_token_ttl_s),
            action_keys=load_action_keys(settings.action_keys_path),
            channel=channel_name(settings.key_prefix))
        try:
            yield
        finally:
            await pool.close()
            await client.aclose()

    async def increment(request: Request) -> Response:
        state: Baseline = request.app.state.baseline
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("missing_token", "Authorization: Bearer <access token> is required")
        try:
            claims = state.jwt.verify(token.strip())
        except JWTError as exc:
            raise unauthorized(exc.code, exc.detail) from None
        body = parse_increment(await read_json(request, max_bytes=state.settings.max_body_bytes),
                               max_points=state.settings.max_points_per_increment)
        try:
            action = action_tokens.verify(body.action_token, keys=state.action_keys,
                                          user_id=claims.sub, now_ms=int(time.time() * 1000),
                                          ttl_ms=state.settings.action_token_ttl_s * 1000)
        except ActionTokenError as exc:
            raise RequestError(403, exc.code, exc.detail) from None
        event_id = "at-" + action.nonce
        # The baseline keeps the spec's first design: the client's points (default 1).
        points, board = body.points or 1, body.board or action.board
        address = client_address(request.client.host if request.client else None,
                                 request.headers.get("x-forwarded-for"),
                                 state.settings.trusted_proxies)
        async with state.pool.acquire() as connection:
            async with connection.transaction():
                await connection.execute(INSERT_ACTION, event_id, claims.sub, board, points,
                                         address)
                await connection.execute(UPSERT_SCORE, board, claims.sub, points)
            top = await connection.fetch(TOP_10, board)
        await state.redis.publish(state.channel, orjson.dumps({
            "type": "top", "board": board, "ts": int(time.time() * 1000),
            "entries": [{"rank": rank, "user_id": row["user_id"], "score": row["score"]}
                        for rank, row in enumerate(top, 1)]}))
        return JSONResponse({"event_id": event_id, "status": "accepted"}, status_code=202)

    async def healthz(request: Request) -> Response:
        state: Baseline = request.app.state.baseline
        await state.pool.fetchval("SELECT 1")
        await state.redis.ping()
        return JSONResponse({"status": "ok"})

    async def request_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestError)
        return error_response(exc)

    return Starlette(routes=[Route("/api/scores/increment", increment, methods=["POST"]),
                             Route("/healthz", healthz, methods=["GET"])],
                     lifespan=lifespan, exception_handlers={RequestError: request_error})
