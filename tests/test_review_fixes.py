"""Fixes found in review, each against the real ingest process: every
``X-Forwarded-For`` line is read, zone ids are refused, and a client that
abandons its body mid-upload is counted as the client's failure (499), not 500.
"""

from __future__ import annotations

import re
import socket
import time

import httpx

from scoreboard.keys import Keys
from tests.conftest import Api, Player, new_address
from tests.servers import SyncRedis, stream_entries


def address_seen(api: Api, player: Player, forwarded: list[str], redis_client: SyncRedis,
                 keys: Keys) -> str:
    """The address ingest recorded for an increment sent with these X-Forwarded-For lines."""
    auth = ("Authorization", f"Bearer {player.access_token}")
    lines = [("X-Forwarded-For", line) for line in forwarded]
    issued = api.post("/api/actions/token", headers=[auth, *lines])
    assert issued.status_code == 200, issued.text
    response = api.post("/api/scores/increment", headers=[auth, *lines],
                        json={"action_token": issued.json()["action_token"]})
    assert response.status_code == 202, response.text
    entry = next(f for _, f in stream_entries(redis_client, keys)
                 if f.get("event_id") == response.json()["event_id"])
    address: str = entry["ip"]
    return address


def test_every_forwarded_for_line_is_read(api: Api, player: Player, redis_client: SyncRedis,
                                          keys: Keys) -> None:
    """A proxy that appends its own line: the client's spoofed first line is not believed."""
    spoofed, real = new_address(), new_address()
    assert address_seen(api, player, [spoofed, real], redis_client, keys) == real
    assert address_seen(api, player, [f"{spoofed}, {spoofed}", real], redis_client, keys) == real


def test_forwarded_for_with_a_zone_id_is_not_an_address(api: Api, player: Player,
                                                         redis_client: SyncRedis,
                                                         keys: Keys) -> None:
    assert address_seen(api, player, ["fe80::1%eth0"], redis_client, keys) == "127.0.0.1"


def status_count(metrics_text: str, route: str, status: str) -> float:
    pattern = re.compile(r'scoreboard_http_request_duration_seconds_count\{([^}]*)\} (\S+)')
    total = 0.0
    for labels, value in pattern.findall(metrics_text):
        if f'route="{route}"' in labels and f'status="{status}"' in labels:
            total += float(value)
    return total


def test_abandoned_body_counts_as_the_clients_failure(ingest_url: str, player: Player) -> None:
    route = "/api/scores/increment"
    before = httpx.get(ingest_url + "/metrics").text
    host, port = ingest_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"POST {route} HTTP/1.1\r\nHost: {host}\r\n"
                     f"Authorization: Bearer {player.access_token}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                     '{"action_token": "'.encode())
        time.sleep(0.2)  # the server is now waiting for the rest of the body
    deadline = time.monotonic() + 10
    while True:
        after = httpx.get(ingest_url + "/metrics").text
        if status_count(after, route, "499") > status_count(before, route, "499"):
            break
        assert time.monotonic() < deadline, "the abandoned request was never counted as 499"
        time.sleep(0.1)
    assert status_count(after, route, "500") == status_count(before, route, "500")
