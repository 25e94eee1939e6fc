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


def error_response(error: RequestError) -> JSONResponse:
    """``{"error": {"code", "message"[, "field"]}}`` with the error's status."""
    body: dict[str, Any] = {"code": error.code, "message": error.detail}
    if error.field is not None:
        body["field"] = error.field
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    return JSONResponse({"error": body}, status_code=error.status, headers=headers)


_REQUIRED = object()


async def read_json(request: Request, *, max_bytes: int, empty: Any = _REQUIRED) -> Any:
    """The parsed body, refusing it (413) before parsing when over ``max_bytes``.

    An empty body is ``empty`` when given (an endpoint whose fields are all
    optional), else invalid JSON. A client that goes away mid-body gets 499 (it
    will never read it): the request is the client's failure, not the server's.

    ``Content-Length`` is checked first; a chunked body is counted as it
    arrives and abandoned at the cap, so an oversized body is never held whole.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, "invalid_request", "Content-Length is not a number")
        if int(declared) > max_bytes:
            raise RequestError(413, "body_too_large", f"body exceeds {max_bytes} bytes")
    chunks = []
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise RequestError(413, "body_too_large", f"body exceeds {max_bytes} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError(499, "client_closed_request",
                           "the client closed the connection before sending the body") from None
    if not received and empty is not _REQUIRED:
        return empty
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise RequestError(400, "invalid_json", "body is not valid JSON") from None
