"""Cross-origin requests from browsers (CORS), as pure ASGI middleware.

A web game served from another origin calls the API with ``fetch``; the
browser first sends a preflight (``OPTIONS`` with ``Origin`` and
``Access-Control-Request-Method``) for anything but the simplest requests.
Origins are an allow-list (``CORS_ALLOWED_ORIGINS``, comma-separated, ``*`` for
any). Credentials are bearer tokens in a header, never cookies, so no
``Access-Control-Allow-Credentials`` is sent and echoing the origin is safe.

A preflight from an allowed origin is answered ``204`` here without reaching
the app; one from any other origin gets ``403 origin_not_allowed`` in the
error envelope. Other requests run as usual; an allowed origin's answer gets
the headers that let the page read it (and ``Retry-After``, ``X-Request-ID``,
``X-Board-Source``). Requests without ``Origin`` are not touched.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, X-Request-ID"
EXPOSED_HEADERS = "Retry-After, X-Request-ID, X-Board-Source"
PREFLIGHT_MAX_AGE_S = 600

Headers = list[tuple[bytes, bytes]]


def parse_origins(raw: str) -> frozenset[str] | None:
    """``CORS_ALLOWED_ORIGINS`` to a set of origins; None means any origin."""
    origins = frozenset(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    return None if "*" in origins else origins


def origin_allowed(origin: str, allowed: frozenset[str] | None) -> bool:
    return allowed is None or origin in allowed


def preflight_headers(origin: str) -> Headers:
    return [(b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", ALLOWED_METHODS.encode()),
            (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
            (b"access-control-max-age", str(PREFLIGHT_MAX_AGE_S).encode()),
            (b"vary", b"Origin")]


def response_headers(origin: str) -> Headers:
    return [(b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-expose-headers", EXPOSED_HEADERS.encode()),
            (b"vary", b"Origin")]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None


class CORSMiddleware:
    def __init__(self, app: ASGIApp, *, allowed_origins: frozenset[str] | None) -> None:
        self.app = app
        self.allowed_origins = allowed_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = _header(scope, b"origin") if scope["type"] == "http" else None
        if origin is None:
            await self.app(scope, receive, send)
            return
        allowed = origin_allowed(origin, self.allowed_origins)
        if scope["method"] == "OPTIONS" and _header(
                scope, b"access-control-request-method") is not None:
            if allowed:
                await _answer(send, 204, preflight_headers(origin), b"")
            else:
                await _answer(send, 403, [(b"content-type", b"application/json"),
                                          (b"vary", b"Origin")], orjson.dumps({"error": {
                                  "code": "origin_not_allowed",
                                  "message": f"origin {origin!r} is not in CORS_ALLOWED_ORIGINS"}}))
            return
        if not allowed:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = _merged(message.get("headers", []),
                                             response_headers(origin))
            await send(message)

        await self.app(scope, receive, send_with_cors)


def _merged(headers: Iterable[tuple[bytes, bytes]], extra: Headers) -> Headers:
    """``headers`` with CORS headers of the app's own replaced by ``extra`` (a second
    ``Vary`` line is allowed and adds to the first)."""
    names = {name for name, _ in extra if name != b"vary"}
    return [*(h for h in headers if h[0].lower() not in names), *extra]


async def _answer(send: Send, status: int, headers: Headers, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
