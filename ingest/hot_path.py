"""The hot POSTs (increment, action token, batch) served as pure ASGI, ahead of
Starlette's middleware stack and router.

Why: profiled under load, the layers a request crosses before and after our
own code (Starlette's error middleware, two exception-handling wrappers, the
router's walk over every route, the request and response objects, a ``send``
wrapper per layer, each called twice per response) cost about as much CPU as
the increment's own work; they kept the player endpoints near 0.3 of a bare
Starlette route. These three paths are exact, POST-only and known in advance,
so :class:`IngestApp` finds them in a dict before the stack and serves them
here, doing for them what the stack does, with the same helpers:

- the request id (``X-Request-ID`` in and out), the latency histogram and the
  access line (``ingest.metrics``: ``begin_request``, ``RequestRecord``);
- CORS headers on the answer to an allowed ``Origin`` (a preflight is an
  ``OPTIONS``: the stack answers it);
- the server span, when tracing is on, as ``TracingMiddleware`` makes it;
- the error envelope of every refusal, 503 for a storage outage or a full
  Redis (``ingest.failures``), and 500 for anything else, after which the
  exception is raised again so the server logs its traceback, as Starlette's
  error middleware does.

Any other method or path (405 for a GET of these paths, redirects) takes the
stack. The routes stay in the router, with :class:`HotRoute` as endpoint: the
OpenAPI document is built from them, and a server mounted under a root path
reaches them through the stack, whose middleware then does the above.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NamedTuple

from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from ingest.failures import INTERNAL_ERROR, answer_for
from ingest.http import (
    REQUIRED,
    check_declared_length,
    client_closed,
    error_body,
    parse_body,
    too_large,
)
from ingest.metrics import RequestRecord, begin_request, request_id_of
from ingest.state import IngestState, client_of
from scoreboard.client_address import forwarded_for
from scoreboard.cors import origin_allowed, response_headers
from scoreboard.errors import RequestError
from scoreboard.tracing import Tracing, server_span

Headers = list[tuple[bytes, bytes]]
JSON_TYPE = (b"content-type", b"application/json")


class Answer(NamedTuple):
    """A hot handler's answer: its status and JSON body."""

    status: int
    body: bytes


class HotRequest:
    """What the hot handlers read of a request, from one pass over its headers."""

    __slots__ = ("_address", "_content_length", "_forwarded", "_peer", "_receive",
                 "authorization", "origin", "request_id", "state")

    def __init__(self, scope: Scope, receive: Receive, state: IngestState,
                 request_id: str | None = None) -> None:
        """``request_id``: the one already given to the request (through the stack);
        None: this request's, from its ``X-Request-ID`` (``ingest.metrics``)."""
        self.state = state
        self._receive = receive
        authorization = content_length = origin = given_id = None
        forwarded: list[str] = []
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is None:
                    authorization = value.decode("latin-1")
            elif name == b"content-length":
                if content_length is None:
                    content_length = value.decode("latin-1")
            elif name == b"x-forwarded-for":
                forwarded.append(value.decode("latin-1"))
            elif name == b"x-request-id":
                if given_id is None:
                    given_id = value
            elif name == b"origin" and origin is None:
                origin = value.decode("latin-1")
        self.request_id = request_id or request_id_of(given_id)
        self.origin = origin
        self.authorization = authorization or ""
        self._content_length = content_length
        self._forwarded = forwarded
        client = scope.get("client")
        self._peer: str | None = client[0] if client else None
        self._address: str | None = None

    @property
    def address(self) -> str:
        """The client's address (``scoreboard.client_address``, trusted proxies)."""
        if self._address is None:
            self._address = client_of(self.state, self._peer, forwarded_for(self._forwarded))
        return self._address

    async def json(self, *, max_bytes: int, empty: Any = REQUIRED) -> Any:
        """The parsed body, with ``ingest.http.read_json``'s rules: 413 past
        ``max_bytes`` (declared or counted), 499 if the client leaves mid-body, 400
        for a body that is not JSON; an empty body is ``empty`` when given."""
        check_declared_length(self._content_length, max_bytes)
        chunks = []
        received = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                if chunk:
                    received += len(chunk)
                    if received > max_bytes:
                        raise too_large(max_bytes)
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            elif message["type"] == "http.disconnect":
                raise client_closed()
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return parse_body(raw, empty)


Handler = Callable[[HotRequest], Awaitable[Answer]]


async def answer(handler: Handler, request: HotRequest, path: str) -> tuple[Answer, Headers]:
    """The handler's answer, or the envelope of what it raised (with ``Retry-After``
    when the refusal has one); an unexpected exception is raised on."""
    try:
        return await handler(request), []
    except Exception as exc:
        error = answer_for(exc, path)
        if error is None:
            raise
        return refusal(error)


def refusal(error: RequestError) -> tuple[Answer, Headers]:
    extra = ([] if error.retry_after_s is None
             else [(b"retry-after", str(error.retry_after_s).encode())])
    return Answer(error.status, error_body(error)), extra


async def send_answer(send: Send, reply: Answer, headers: Sequence[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": reply.status,
                "headers": [JSON_TYPE, (b"content-length", b"%d" % len(reply.body)),
                            *headers]})
    await send({"type": "http.response.body", "body": reply.body})


class HotRoute:
    """A hot handler as the router's endpoint (an ASGI app): reached only through
    the middleware stack, which adds the request id, metrics and CORS itself."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: IngestState = scope["app"].state.ingest
        request = HotRequest(scope, receive, state, scope["state"]["request_id"])
        reply, headers = await answer(self.handler, request, scope["path"])
        await send_answer(send, reply, headers)


class IngestApp(Starlette):
    """Starlette, with POSTs to the hot paths served before its stack (see above).
    ``configure_hot_path`` is called once the app is built."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hot_handlers: dict[str, Handler] = {}
        self.record = RequestRecord()
        self.cors_origins: frozenset[str] | None = frozenset()
        self.tracing: Tracing | None = None

    def configure_hot_path(self, handlers: Mapping[str, Handler], *, record: RequestRecord,
                           cors_origins: frozenset[str] | None,
                           tracing: Tracing | None) -> None:
        self.hot_handlers = dict(handlers)
        self.record = record
        self.cors_origins = cors_origins
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.hot_handlers.get(scope["path"])
            if handler is not None:
                scope["app"] = self
                if self.tracing is None:
                    await self._serve(handler, scope, receive, send)
                    return
                with server_span(self.tracing, scope) as span:
                    await self._serve(handler, scope, receive, send)
                    span.update_name(f"POST {scope['path']}")
                    span.set_attribute("http.route", scope["path"])
                return
        await super().__call__(scope, receive, send)

    async def _serve(self, handler: Handler, scope: Scope, receive: Receive,
                     send: Send) -> None:
        started = time.perf_counter()
        request = HotRequest(scope, receive, self.state.ingest)
        request_id = begin_request(scope, request.request_id)
        path = scope["path"]
        headers: Headers = [(b"x-request-id", request_id.encode())]
        if request.origin is not None and origin_allowed(request.origin, self.cors_origins):
            headers += response_headers(request.origin)
        status = 500
        extra: Headers = []
        try:
            try:
                # answer()'s work written out: the handler's await is one coroutine
                # less deep, and every coroutine on it is resumed when Redis replies.
                reply = await handler(request)
            except Exception as exc:
                error = answer_for(exc, path)
                if error is None:
                    reply, extra = refusal(INTERNAL_ERROR)
                    await send_answer(send, reply, [*headers, *extra])
                    raise
                reply, extra = refusal(error)
            status = reply.status
            await send_answer(send, reply, [*headers, *extra] if extra else headers)
        finally:
            self.record.finish(scope, route=path, request_id=request_id, status=status,
                               started=started)
