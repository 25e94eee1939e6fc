"""The OpenAPI description: generated from the routes (a route without a
description fails), served with a docs page, and true of the real server
(schemathesis: no 5xx, every answer's status, type, headers and body as
described)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Mount, Route

from broadcaster.app import create_app as broadcaster_app
from ingest.api_docs import BROADCASTER_ENDPOINTS, OPERATIONS
from ingest.app import create_app
from ingest.openapi import UndocumentedRoute, build_openapi, route_operations
from scoreboard.keys import Keys
from scoreboard.settings import load_settings
from tests.board_support import entry, seed
from tests.conftest import Api, Player, new_address
from tests.servers import Backing, fresh_name

EXAMPLES_PER_OPERATION = 50
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


async def _handler(request: Any) -> Any:
    raise AssertionError("never called")


def app_routes() -> list[Any]:
    settings = load_settings({"REDIS_URL": "redis://unused", "DATABASE_URL": "postgresql://x"})
    return list(create_app(settings).routes)


def test_every_route_is_described_and_every_description_routed() -> None:
    routed = route_operations(app_routes())
    assert sorted(routed) == sorted(OPERATIONS)
    document = build_openapi(app_routes())
    assert document["openapi"] == "3.1.0"
    for path_item in document["paths"].values():
        for operation in path_item.values():
            assert operation["description"].strip() and operation["summary"].strip()
            assert operation["responses"]


def test_every_broadcaster_endpoint_is_described() -> None:
    """The broadcaster's routes (its WebSocket is served below the router, by its
    connection protocol) against the table the document's text is made from."""
    settings = load_settings({"REDIS_URL": "redis://unused"})
    routed = {route.path for route in broadcaster_app(settings).routes
              if isinstance(route, Route | Mount)}
    assert routed | {"/ws"} == set(BROADCASTER_ENDPOINTS)
    text = build_openapi(app_routes())["info"]["description"]
    for path, what in BROADCASTER_ENDPOINTS.items():
        assert f"* `{path}`: {what}" in text


def test_a_route_without_a_description_fails_the_build() -> None:
    routes = [*app_routes(), Route("/api/new-thing", _handler, methods=["POST"])]
    with pytest.raises(UndocumentedRoute, match="POST /api/new-thing: no description"):
        build_openapi(routes)
    blank = {**OPERATIONS, "GET /healthz": {**OPERATIONS["GET /healthz"], "description": " "}}
    with pytest.raises(UndocumentedRoute, match="GET /healthz: no description"):
        build_openapi(app_routes(), blank)
    stale = {**OPERATIONS, "GET /api/gone": {"description": "x", "responses": {}}}
    with pytest.raises(UndocumentedRoute, match="GET /api/gone: described but not routed"):
        build_openapi(app_routes(), stale)


def test_openapi_json_and_the_docs_page_are_served_without_any_cdn(api: Api) -> None:
    document = api.get("/openapi.json")
    assert document.status_code == 200
    spec = document.json()
    assert "/api/me/around" in spec["paths"] and "Snapshot" in spec["components"]["schemas"]
    assert "/ws?board=" in spec["info"]["description"]  # the live feed's section
    page = api.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http" not in page.text.replace('lang="en"', "")  # every asset is local
    for asset in ("/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"):
        served = api.get(asset)
        assert served.status_code == 200 and len(served.content) > 10_000
    missing = api.get("/docs/nothing.js")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")


def test_the_real_server_keeps_to_its_description(ingest_url: str, api: Api,
                                                  backend: Player) -> None:
    """Every operation, ``EXAMPLES_PER_OPERATION`` generated requests each, as the
    game backend (a token with every scope); logout last, as it revokes the token."""
    schema = schemathesis.openapi.from_url(ingest_url + "/openapi.json")
    headers = {"Authorization": f"Bearer {backend.access_token}",
               "X-Forwarded-For": new_address()}
    results = list(schema.get_all_operations())
    assert all(isinstance(result, Ok) for result in results), results
    operations = sorted((result.ok() for result in results if isinstance(result, Ok)),
                        key=lambda op: op.path == "/api/auth/logout")
    # schemathesis leaves out the operation that serves the schema itself
    assert sorted(op.label for op in operations) == sorted(set(OPERATIONS)
                                                           - {"GET /openapi.json"})
    for operation in operations:
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(), forwarded=st.sampled_from([headers]))
        def check(case: Any, forwarded: dict[str, str]) -> None:
            response = case.call(base_url=ingest_url, headers=forwarded)
            case.validate_response(response, checks=CHECKS)

        check()


def test_the_happy_paths_keep_to_the_description(
        ingest_url: str, api: Api, backing: Backing, keys: Keys, player: Player,
        backend: Player) -> None:
    """What generated requests rarely reach: a real action token spent, a batch
    accepted, a refresh, a player's own entry."""
    schema = schemathesis.openapi.from_url(ingest_url + "/openapi.json")

    def call(method: str, path: str, who: Player, **parts: Any) -> int:
        case = schema[path][method].Case(**parts)
        response = case.call(base_url=ingest_url, headers=who.headers)
        case.validate_response(response, checks=CHECKS)
        status: int = response.status_code
        return status

    assert call("POST", "/api/actions/token", player, body={}) == 200
    token = api.action_token(player)
    assert call("POST", "/api/scores/increment", player, body={"action_token": token}) == 202
    batch = {"increments": [{"user_id": "p-openapi", "points": 3, "event_id":
                             f"openapi-{player.user_id}", "username": "Ada"}]}
    assert call("POST", "/api/scores/batch", backend, body=batch) == 202
    board = fresh_name("openapi")
    seed(backing, keys, [entry(player.user_id, 7, int(time.time() * 1000), board=board),
                         entry("p-openapi", 9, int(time.time() * 1000), board=board)])
    for path in ("/api/scores/users/{user_id}", "/api/scores/around/{user_id}"):
        assert call("GET", path, player, path_parameters={"user_id": "p-openapi"},
                    query={"board": board}) == 200
    for path in ("/api/me/rank", "/api/me/around"):
        assert call("GET", path, player, query={"board": board}) == 200
    assert call("GET", "/api/scores/page", player, query={"board": board, "limit": 1}) == 200
    assert call("POST", "/api/auth/refresh", player,
                body={"refresh_token": player.refresh_token}) == 200
