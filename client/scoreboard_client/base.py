"""What the async and the sync client share: where the service is, the session,
the retry policy, and the I/O-free halves of sending a call."""

from __future__ import annotations

import time
from typing import Any

import httpx

from scoreboard_client.calls import Call
from scoreboard_client.flow import Answer, Lost
from scoreboard_client.models import Session
from scoreboard_client.retry import RetryPolicy
from scoreboard_client.session import (
    REFRESH_MARGIN_S,
    RequestObserver,
    auth_headers,
    live_url_for,
    observe,
)


class ClientBase:
    """A player's or a game backend's session with the service.

    ``base_url`` is ingest (the HTTP API); ``live_url`` the broadcaster
    (default: ingest's host, port + 1, as ``make run`` runs them). The access
    token is refreshed by itself before it expires, or once when refused as
    expired. Calls that the service counts once are retried after a lost
    answer, and every call after 429/503 (see :mod:`scoreboard_client.retry`).
    ``on_request`` is told about every HTTP attempt (for load tests' statistics).
    """

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, live_url: str | None = None,
                 retry: RetryPolicy | None = None, session: Session | None = None,
                 on_request: RequestObserver | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.live_url = live_url or live_url_for(self.base_url)
        self.retry = retry or RetryPolicy()
        self.session = session
        self.on_request = on_request

    def _refresh_first(self, call: Call[Any]) -> bool:
        """Whether the access token should be renewed before ``call`` is sent."""
        return (call.authenticated and self.session is not None
                and self.session.expires_at - time.time() < REFRESH_MARGIN_S)

    def _request_options(self, call: Call[Any]) -> dict[str, Any]:
        return {"params": call.params, "json": call.body,
                "headers": auth_headers(self.session) if call.authenticated else None}

    def _answer(self, call: Call[Any], response: httpx.Response, started: float) -> Answer:
        observe(self.on_request, call, response.status_code, started, len(response.content))
        body = response.json() if response.content else None
        return Answer(response.status_code, body, response.headers.get("retry-after"))

    def _lost(self, call: Call[Any], error: httpx.TransportError, started: float) -> Lost:
        observe(self.on_request, call, None, started, 0, error)
        return Lost(self.base_url + call.path, error, unsent=isinstance(error, httpx.ConnectError))
