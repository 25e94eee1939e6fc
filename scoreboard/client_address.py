"""The client's address, trusting ``X-Forwarded-For`` only from configured proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from scoreboard.settings import IPNetwork


def _trusted(address: str, proxies: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def forwarded_for(lines: Iterable[str]) -> str | None:
    """Every ``X-Forwarded-For`` line of a request as one list (None when there is
    none): a proxy may append a line of its own instead of extending the first."""
    return ", ".join(lines) or None


def client_address(peer: str | None, forwarded_for: str | None,
                   trusted_proxies: Sequence[IPNetwork]) -> str:
    """The address limits apply to. Pure, so callers may keep its answers (ingest
    does, see ``ingest.state.request_client``).

    The peer is the client unless it is a trusted proxy; then walk
    ``X-Forwarded-For`` from the right (the hop the proxy itself saw) past any
    further trusted proxies. A spoofed left-most entry is never reached while a
    trusted proxy appends what it saw.
    """
    address = peer or "unknown"
    if not forwarded_for or not _trusted(address, trusted_proxies):
        return address
    for hop in reversed([part.strip() for part in forwarded_for.split(",") if part.strip()]):
        if "%" in hop:  # an IPv6 zone id: one address under endless spellings
            return address
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return address  # garbage from here on: stop at the last good hop
        address = hop
        if not _trusted(hop, trusted_proxies):
            return hop
    return address
