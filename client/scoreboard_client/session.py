"""Small pieces both clients share: the auth header, the live feed's address."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from scoreboard_client.models import Session

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
