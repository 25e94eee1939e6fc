"""The broadcaster's Starlette app: ``/ws``, ``/sse``, the spectator page, health, metrics.

WebSocket (``GET /ws?board=global``): refused before the handshake (HTTP 403)
for a foreign Origin, an invalid board, or an address over its connection
cap. Then the current snapshot, then throttled snapshots; the client may send
``{"type": "subscribe", "board": "..."}`` to switch boards. Incoming
messages are capped (uvicorn closes with 1009 above the cap), compression is
off, the server pings and closes a client that does not answer, and a client
that cannot take a snapshot within the send timeout is disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import redis.asyncio as redis_asyncio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from broadcaster.hub import DROPPED, Hub, Subscriber
from broadcaster.snapshots import SnapshotService
from scoreboard.boards_redis import RedisBoards
from scoreboard.keys import Keys
from scoreboard.logs import configure_logging
from scoreboard.lua import register_scripts
from scoreboard.names import BOARD_PATTERN, DEFAULT_BOARD
from scoreboard.settings import Settings, load_settings

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
SSE_KEEPALIVE_S = 15.0


def _origin_allowed(settings: Settings, origin: str | None) -> bool:
    """Browsers always send Origin, so a page of a foreign site is refused; a client
    without Origin (a bot, a game server) is not a browser page and is let in."""
    allowed = settings.allowed_origins
    return allowed is None or origin is None or origin in allowed


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or load_settings()
    if settings.redis_url is None:
        raise RuntimeError("REDIS_URL must be set (the run command sets it)")
    redis_url = settings.redis_url
    hub = Hub(max_per_address=settings.ws_max_per_ip,
              on_board_empty=lambda board: app.state.snapshots.forget(board))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = redis_asyncio.Redis.from_url(redis_url, socket_connect_timeout=2,
                                              health_check_interval=30)
        keys = Keys(settings.key_prefix)
        service = SnapshotService(
            redis=client, boards=RedisBoards(client, register_scripts(client), keys), keys=keys,
            hub=hub, size=settings.snapshot_size, interval_s=settings.snapshot_interval_ms / 1000,
            poll_s=settings.revision_poll_ms / 1000, rank_mode=settings.rank_ties)
        app.state.snapshots = service
        tasks = [asyncio.create_task(service.listen()), asyncio.create_task(service.poll())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for subscriber in [s for members in hub.boards.values() for s in members]:
                hub.close(subscriber)
            await client.aclose()

    async def websocket_endpoint(websocket: WebSocket) -> None:
        service: SnapshotService = websocket.app.state.snapshots
        board = websocket.query_params.get("board", DEFAULT_BOARD)
        address = websocket.client.host if websocket.client else "unknown"
        if not _origin_allowed(settings, websocket.headers.get("origin")) \
                or not BOARD_PATTERN.fullmatch(board):
            await websocket.close(code=POLICY_VIOLATION)  # before accept: HTTP 403
            return
        if not hub.admit(address):
            DROPPED.labels("address_cap").inc()
            await websocket.close(code=TRY_AGAIN_LATER)
            return
        subscriber = Subscriber(address=address, transport="websocket",
                                send=websocket.send_text)
        try:
            await websocket.accept()
            hub.join(subscriber, board)
            subscriber.offer(await service.current(board))
            sender = asyncio.create_task(subscriber.deliver(settings.ws_send_timeout_s))
            receiver = asyncio.create_task(_receive(websocket, subscriber, hub, service))
            done, pending = await asyncio.wait({sender, receiver},
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if sender in done and isinstance(sender.exception(), TimeoutError):
                DROPPED.labels("slow").inc()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(websocket.close(code=TRY_AGAIN_LATER), 1)
        finally:
            hub.close(subscriber)
            hub.release(address)

    async def sse_endpoint(request: Request) -> Response:
        service: SnapshotService = request.app.state.snapshots
        board = request.query_params.get("board", DEFAULT_BOARD)
        if not BOARD_PATTERN.fullmatch(board):
            return JSONResponse({"error": {"code": "invalid_field",
                                           "message": "board: invalid board name"}}, 422)
        address = request.client.host if request.client else "unknown"
        if not hub.admit(address):
            DROPPED.labels("address_cap").inc()
            return JSONResponse({"error": {"code": "too_many_connections",
                                           "message": "too many connections from this address"}},
                                429, headers={"Retry-After": "5"})
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)

        async def put(payload: str) -> None:
            await queue.put(payload)

        subscriber = Subscriber(address=address, transport="sse", send=put)
        hub.join(subscriber, board)
        subscriber.offer(await service.current(board))

        async def events() -> AsyncIterator[str]:
            sender = asyncio.create_task(subscriber.deliver(settings.ws_send_timeout_s))
            try:
                while not sender.done():
                    try:
                        payload = await asyncio.wait_for(queue.get(), SSE_KEEPALIVE_S)
                    except TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    yield f"event: snapshot\ndata: {payload}\n\n"
            finally:
                sender.cancel()
                hub.close(subscriber)
                hub.release(address)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "spectators": sum(
            len(m) for m in hub.boards.values())})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/", page),
        Route("/spectator.js", lambda r: FileResponse(STATIC / "spectator.js",
                                                       media_type="text/javascript")),
        # Every file of static/ (the page's scripts and styles) at /static/<name>.
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        WebSocketRoute("/ws", websocket_endpoint),
        Route("/sse", sse_endpoint),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
    ]
    configure_logging(settings.log_level)
    app = Starlette(routes=routes, lifespan=lifespan)
    return app


async def _receive(websocket: WebSocket, subscriber: Subscriber, hub: Hub,
                   service: SnapshotService) -> None:
    """Client messages: ``{"type": "subscribe", "board": "..."}`` switches boards;
    anything else gets an error message and changes nothing."""
    try:
        while True:
            text = await websocket.receive_text()
            try:
                message = orjson.loads(text)
                board = message["board"] if message.get("type") == "subscribe" else None
            except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
                board = None
            if not isinstance(board, str) or not BOARD_PATTERN.fullmatch(board):
                await websocket.send_text(orjson.dumps({
                    "type": "error", "code": "invalid_message",
                    "message": 'expected {"type": "subscribe", "board": "<board name>"}'}
                ).decode())
                continue
            hub.join(subscriber, board)
            subscriber.offer(await service.current(board))
    except (WebSocketDisconnect, RuntimeError):
        return
