"""The OpenAPI 3.1 document, built from the app's routes and ``ingest.api_docs``,
and the ``/openapi.json`` and ``/docs`` endpoints.

:func:`build_openapi` is pure: it walks the routes, takes each one's entry of
:data:`ingest.api_docs.OPERATIONS`, and refuses (:class:`UndocumentedRoute`) a
route or method without a description, or a description of a route that
does not exist. The WebSocket and SSE feed, served by the broadcaster, is
described in the document's ``info.description`` and its message schemas in
``components.schemas`` (``Snapshot``, ``Subscribe``, ``FeedError``, and the rank
feed's ``Watch``, ``Unwatch``, ``Unwatched``, ``Rank``, ``Overtaken``).

The docs page is Swagger UI from the ``swagger-ui-py`` wheel, served by
ingest itself under ``/docs/``: it works offline, without any CDN.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from importlib.resources import files
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from ingest.api_docs import BROADCASTER_ENDPOINTS, OPERATIONS, Operation
from ingest.api_schemas import SCHEMAS
from ingest.http import JSONResponse
from scoreboard.errors import RequestError

VERSION = "1.0.0"
DOCS_ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript"}

LIVE_FEED_TEMPLATE = """
## Live feed (broadcaster, default port 8001)

The broadcaster serves the same boards live; its messages are JSON objects
whose schemas are under *Schemas* below.

* **WebSocket** `GET /ws?board=global`. On connect the server sends the current
  [`Snapshot`](#model-Snapshot) `{"type": "snapshot", "board", "version", "ts",
  "entries": [{"rank", "user_id", "username", "score"}]}`, then a new one whenever the
  board's top N changes, at most once per `SNAPSHOT_INTERVAL_MS` (leading and
  trailing edge). `version` only grows; `ts` is the server's time in ms. Send
  [`Subscribe`](#model-Subscribe) `{"type": "subscribe", "board": "weekly"}` to switch
  boards; any other message is answered with a [`FeedError`](#model-FeedError) and
  changes nothing. The server pings; a client that does not answer or cannot keep up
  is disconnected (reconnect and you get the current snapshot). A handshake from an
  Origin not in `WS_ALLOWED_ORIGINS`, for an invalid board, or beyond `WS_MAX_PER_IP`
  connections from one address is refused.
* **Follow one player** on the same WebSocket: send [`Watch`](#model-Watch)
  `{"type": "watch", "user_id": "..."}` and get a [`Rank`](#model-Rank) `{"type": "rank",
  "user_id", "rank", "score", "above", "below"}` at once and whenever that player's
  rank, score or the players right above and below change (throttled like snapshots),
  and an [`Overtaken`](#model-Overtaken) `{"type": "overtaken", "by": {...}}` when someone
  passes them. [`Unwatch`](#model-Unwatch) stops it. At most `WS_MAX_WATCHES` players per
  connection; an unknown player, a malformed id or one too many is a `FeedError`.
* **Server-Sent Events** `GET /sse?board=global`: the same snapshots as
  `event: snapshot` with the snapshot as `data:`, and `: keepalive` comments;
  `&watch=<user id>` (repeatable) adds `event: rank` and `event: overtaken`.
* **Spectator page** `GET /`: the live board in a browser.

Every endpoint of the broadcaster:

{endpoints}

## Errors

Every refusal is `{"error": {"code": "<snake_case>", "message": "<text>"}}` (plus
`field` on 422) and writes nothing; 429 and 503 carry `Retry-After`.
"""


def live_feed_text(endpoints: Mapping[str, str] = BROADCASTER_ENDPOINTS) -> str:
    listed = "\n".join(f"* `{path}`: {what}" for path, what in endpoints.items())
    return LIVE_FEED_TEMPLATE.replace("{endpoints}", listed)


class UndocumentedRoute(Exception):
    """A route without a description, or a description without a route."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems)
        self.problems = problems

    def __str__(self) -> str:
        return "; ".join(self.problems)


def route_operations(routes: Iterable[BaseRoute]) -> list[str]:
    """``"METHOD /path"`` of every HTTP route (HEAD, added by Starlette to GET, left out)."""
    found = []
    for route in routes:
        if isinstance(route, Route):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    found.append(f"{method} {route.path}")
    return found


def build_openapi(routes: Iterable[BaseRoute],
                  operations: Mapping[str, Operation] = OPERATIONS) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``, described by ``operations``."""
    routed = route_operations(routes)
    problems = [f"{key}: no description in ingest/api_docs.py" for key in routed
                if not str(operations.get(key, {}).get("description", "")).strip()]
    problems += [f"{key}: described but not routed" for key in operations if key not in routed]
    if problems:
        raise UndocumentedRoute(problems)
    paths: dict[str, dict[str, Any]] = {}
    for key in routed:
        method, path = key.split(" ", 1)
        operation = {"operationId": _operation_id(method, path), **operations[key]}
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Live scoreboard API", "version": VERSION,
                 "description": "Verified score increments, ranked leaderboards and live"
                                " spectators. Ingest (this server, default port 8000)"
                                " serves the HTTP API below.\n" + live_feed_text()},
        "servers": [{"url": "/"}],
        "x-broadcaster": {"default_url": "http://127.0.0.1:8001",
                          "endpoints": BROADCASTER_ENDPOINTS,
                          "messages": {"server": ["Snapshot", "FeedError", "Rank",
                                                  "Overtaken", "Unwatched"],
                                       "client": ["Subscribe", "Watch", "Unwatch"]}},
        "tags": [{"name": "accounts"}, {"name": "me"}, {"name": "scores"},
                 {"name": "boards"}, {"name": "operations"}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "JWT"}}},
    }


def _operation_id(method: str, path: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", path)
    return method.lower() + "".join(word.capitalize() for word in words)


async def openapi_json(request: Request) -> Response:
    cached: dict[str, Any] | None = getattr(request.app.state, "openapi", None)
    if cached is None:
        cached = build_openapi(request.app.routes)
        request.app.state.openapi = cached
    return JSONResponse(cached)


DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Live scoreboard API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="docs"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#docs", deepLinking: true,
                             defaultModelsExpandDepth: 1});
</script>
</body>
</html>
"""


async def docs_page(request: Request) -> Response:
    return HTMLResponse(DOCS_PAGE)


async def docs_asset(request: Request) -> Response:
    """Swagger UI's script and style, from the installed ``swagger-ui-py`` wheel."""
    name = request.path_params["asset"]
    if name not in DOCS_ASSETS:
        raise RequestError(404, "not_found", f"no docs asset {name!r}")
    content = files("swagger_ui").joinpath("static", name).read_bytes()
    return Response(content, media_type=DOCS_ASSETS[name],
                    headers={"Cache-Control": "public, max-age=3600"})
