"""JSON in and out: the error envelope, orjson responses, the capped body reader."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from scoreboard.errors import RequestError


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_body(error: RequestError) -> bytes:
    """``{"error": {"code", "message"[, "field"]}}``: the envelope of every refusal."""
    body: dict[str, Any] = {"code": error.code, "message": error.detail}
    if error.field is not None:
        body["field"] = error.field
    return orjson.dumps({"error": body})


def error_response(error: RequestError) -> Response:
    """The envelope with the error's status (and ``Retry-After`` when it has one)."""
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    return Response(error_body(error), status_code=error.status, headers=headers,
                    media_type="application/json")


REQUIRED = object()


def check_declared_length(declared: str | None, max_bytes: int) -> None:
    """A ``Content-Length`` that is not a number is refused (400), one over
    ``max_bytes`` too (413), before any of the body is read."""
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, "invalid_request", "Content-Length is not a number")
        if int(declared) > max_bytes:
            raise RequestError(413, "body_too_large", f"body exceeds {max_bytes} bytes")


def too_large(max_bytes: int) -> RequestError:
    return RequestError(413, "body_too_large", f"body exceeds {max_bytes} bytes")


def client_closed() -> RequestError:
    """The client went away mid-body: 499, its failure, not the server's."""
    return RequestError(499, "client_closed_request",
                        "the client closed the connection before sending the body")


def parse_body(raw: bytes, empty: Any = REQUIRED) -> Any:
    """``raw`` parsed as JSON (400 if it is not); an empty body is ``empty`` when
    given (an endpoint whose fields are all optional)."""
    if not raw and empty is not REQUIRED:
        return empty
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RequestError(400, "invalid_json", "body is not valid JSON") from None


async def read_json(request: Request, *, max_bytes: int, empty: Any = REQUIRED) -> Any:
    """The parsed body, refusing it (413) before parsing when over ``max_bytes``.

    An empty body is ``empty`` when given (an endpoint whose fields are all
    optional), else invalid JSON. A client that goes away mid-body gets 499 (it
    will never read it): the request is the client's failure, not the server's.

    ``Content-Length`` is checked first; a chunked body is counted as it
    arrives and abandoned at the cap, so an oversized body is never held whole.
    """
    check_declared_length(request.headers.get("content-length"), max_bytes)
    chunks = []
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise too_large(max_bytes)
            chunks.append(chunk)
    except ClientDisconnect:
        raise client_closed() from None
    return parse_body(b"".join(chunks), empty)
