"""Browser-ready ingest: every refusal in the error envelope (the router's 404
and 405 too), and CORS for an allow-list of origins."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scoreboard.cors import parse_origins
from scoreboard.keys import Keys
from tests.board_support import entry, seed
from tests.conftest import Api, Player
from tests.servers import Backing, fresh_name, ingest_server

GAME = "https://game.example"


@pytest.fixture(scope="module")
def cors_url(backing: Backing) -> Iterator[str]:
    env = backing.env(TRUSTED_PROXIES="127.0.0.1/32",
                      CORS_ALLOWED_ORIGINS=f"{GAME}, https://other.example")
    with ingest_server(env) as url:
        yield url


@pytest.fixture
def web(cors_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cors_url, timeout=10) as client:
        yield client


def assert_envelope(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]


def test_unknown_route_is_404_in_the_envelope(api: Api) -> None:
    assert_envelope(api.get("/api/nope"), 404, "not_found")
    assert_envelope(api.post("/nothing/here", json={}), 404, "not_found")


def test_wrong_method_is_405_in_the_envelope_with_allow(api: Api) -> None:
    response = api.get("/api/scores/increment")
    assert_envelope(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"
    assert_envelope(api.client.delete("/api/scores/top"), 405, "method_not_allowed")


def test_preflight_from_an_allowed_origin_is_answered(web: httpx.Client) -> None:
    response = web.options("/api/scores/increment", headers={
        "Origin": GAME, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == GAME
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed_headers = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed_headers and "content-type" in allowed_headers
    assert response.headers["vary"] == "Origin"


def test_preflight_from_another_origin_is_refused_in_the_envelope(web: httpx.Client) -> None:
    response = web.options("/api/scores/increment", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert_envelope(response, 403, "origin_not_allowed")
    assert "access-control-allow-origin" not in response.headers


def test_answers_to_an_allowed_origin_carry_cors_headers(web: httpx.Client,
                                                         player: Player) -> None:
    top = web.get("/api/scores/top", headers={"Origin": GAME})
    assert top.status_code == 200
    assert top.headers["access-control-allow-origin"] == GAME
    exposed = top.headers["access-control-expose-headers"].lower()
    assert "retry-after" in exposed and "x-request-id" in exposed
    refused = web.post("/api/actions/token", headers={"Origin": GAME})
    assert_envelope(refused, 401, "missing_token")
    assert refused.headers["access-control-allow-origin"] == GAME
    me = web.get("/api/me", headers={**player.headers, "Origin": GAME})
    assert me.status_code == 200 and me.headers["access-control-allow-origin"] == GAME


def test_other_origins_and_no_origin_get_no_cors_headers(web: httpx.Client,
                                                         api: Api) -> None:
    other = web.get("/api/scores/top", headers={"Origin": "https://evil.example"})
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers
    assert "access-control-allow-origin" not in web.get("/api/scores/top").headers
    # the suite's own ingest allows no origin at all (the default)
    closed = api.client.options("/api/scores/top", headers={
        "Origin": GAME, "Access-Control-Request-Method": "GET"})
    assert_envelope(closed, 403, "origin_not_allowed")


def test_origin_list_parsing() -> None:
    assert parse_origins("") == frozenset()
    assert parse_origins(" https://a.example/ ,https://b.example") == frozenset(
        {"https://a.example", "https://b.example"})
    assert parse_origins("https://a.example,*") is None


def test_board_list_for_the_spectator_page_origin(backing: Backing, keys: Keys,
                                                  api: Api) -> None:
    board = fresh_name("listed")
    now = int(time.time() * 1000)
    seed(backing, keys, [entry("one", 1, now, board=board), entry("two", 2, now, board=board)])
    spectator_origin = "http://127.0.0.1:8001"  # the broadcaster's default address
    listed = api.get("/api/boards", headers={"Origin": spectator_origin})
    assert listed.status_code == 200
    assert listed.headers["access-control-allow-origin"] == spectator_origin
    sizes = {b["board"]: b["size"] for b in listed.json()["boards"]}
    assert sizes[board] == 2 and "global" in sizes
    names = [b["board"] for b in listed.json()["boards"]]
    assert names == sorted(names)


def test_an_unexpected_failure_is_a_500_in_the_envelope(backing: Backing,
                                                       tmp_path: Path) -> None:
    """The metrics folder of a multi-process ingest vanishes under it: /metrics
    cannot be built, and the answer is still the envelope (and says nothing more)."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    with ingest_server(backing.env(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))) as url:
        shutil.rmtree(metrics_dir)
        response = httpx.get(url + "/metrics", timeout=10)
    assert_envelope(response, 500, "internal_error")
    assert response.json()["error"]["message"] == "the server failed unexpectedly"
