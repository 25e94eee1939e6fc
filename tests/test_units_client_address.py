"""Unit tests of the client address behind trusted proxies (scoreboard/client_address.py).

No servers: the peer, the X-Forwarded-For header and the trusted networks are arguments.
"""

from __future__ import annotations

import ipaddress

from scoreboard.client_address import client_address
from scoreboard.settings import IPNetwork

PROXIES: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.1/32"),
                                  ipaddress.ip_network("10.0.0.0/8"),
                                  ipaddress.ip_network("fd00::/8"))


def test_untrusted_peer_ignores_forwarded_for() -> None:
    assert client_address("203.0.113.9", "198.51.100.1", PROXIES) == "203.0.113.9"
    assert client_address("203.0.113.9", "10.0.0.1, 127.0.0.1", PROXIES) == "203.0.113.9"


def test_peer_without_forwarded_for_is_the_client() -> None:
    assert client_address("127.0.0.1", None, PROXIES) == "127.0.0.1"
    assert client_address("127.0.0.1", "", PROXIES) == "127.0.0.1"
    assert client_address("127.0.0.1", " , ", PROXIES) == "127.0.0.1"
    assert client_address(None, "198.51.100.1", PROXIES) == "unknown"


def test_no_trusted_proxies_means_forwarded_for_is_never_used() -> None:
    assert client_address("127.0.0.1", "198.51.100.1", ()) == "127.0.0.1"


def test_trusted_proxy_uses_the_rightmost_untrusted_hop() -> None:
    # The left-most entry is whatever the client claimed; the proxy appended the real one.
    assert client_address("127.0.0.1", "6.6.6.6, 198.51.100.1", PROXIES) == "198.51.100.1"
    assert client_address("127.0.0.1", "198.51.100.1", PROXIES) == "198.51.100.1"


def test_chain_of_trusted_proxies_is_walked_past() -> None:
    assert client_address("127.0.0.1", "6.6.6.6, 198.51.100.1, 10.1.2.3, 10.0.0.7",
                          PROXIES) == "198.51.100.1"
    assert client_address("127.0.0.1", "2001:db8::1, fd00::2", PROXIES) == "2001:db8::1"


def test_chain_of_only_trusted_hops_gives_the_leftmost() -> None:
    assert client_address("127.0.0.1", "10.0.0.3, 10.0.0.2", PROXIES) == "10.0.0.3"


def test_garbage_hop_stops_the_walk_at_the_last_good_one() -> None:
    assert client_address("127.0.0.1", "198.51.100.1, not-an-ip", PROXIES) == "127.0.0.1"
    assert client_address("127.0.0.1", "198.51.100.1, junk, 10.0.0.2", PROXIES) == "10.0.0.2"
    # garbage left of the real client is never reached
    assert client_address("127.0.0.1", "junk, 198.51.100.1", PROXIES) == "198.51.100.1"


def test_forwarded_for_zone_ids_are_refused() -> None:
    """``fe80::1%eth0`` is one address under endless spellings: never a client address."""
    assert client_address("127.0.0.1", "fe80::1%eth0", PROXIES) == "127.0.0.1"
    assert client_address("127.0.0.1", "198.51.100.1, fe80::1%25x", PROXIES) == "127.0.0.1"
