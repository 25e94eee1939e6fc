"""The client's address, trusting ``X-Forwarded-For`` only from configured proxies."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

from scoreboard.settings import IPNetwork


def _trusted(address: str, proxies: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


@functools.lru_cache(maxsize=65536)
def client_address(peer: str | None, forwarded_for: str | None,
                   trusted_proxies: Sequence[IPNetwork]) -> str:
    """The address limits apply to.

    Pure, so its answers are kept (an LRU of 65,536): parsing addresses cost
    about 4% of an increment's CPU, and the same client sends the same headers
    request after request. ``trusted_proxies`` must be hashable (a tuple).

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
