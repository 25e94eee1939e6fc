"""Small pieces both clients share: the auth header, the live feed's address."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from scoreboard_client.models import Session

# Told about every HTTP attempt: (method, name, status or None when no answer
# came, seconds, answer's length, the transport error or None). A load test
# turns these into its request statistics.
RequestObserver = Callable[[str, str, int | None, float, int, BaseException | None], None]

REFRESH_MARGIN_S = 10.0  # refresh an access token this long before it expires


def auth_headers(session: Session | None) -> dict[str, str]:
    if session is None:
        return {}
    return {"Authorization": f"Bearer {session.access_token}"}


def live_url_for(base_url: str) -> str:
    """The broadcaster's ``ws://`` address beside ingest's: same host, port + 1
    (8000 -> 8001, as ``make run`` and the compose file run them)."""
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    port = (parts.port or (443 if parts.scheme == "https" else 80)) + 1
    return urlunsplit((scheme, f"{parts.hostname}:{port}", "", "", ""))


def observe(observer: RequestObserver | None, call: Any, status: int | None, started: float,
            length: int, error: BaseException | None = None) -> None:
    if observer is not None:
        observer(call.method, call.name or call.path, status, time.perf_counter() - started,
                 length, error)
