"""Register, login, refresh (rotation and reuse detection), logout, JWKS and the
per-address auth limit, against a real ingest process, Redis and Postgres."""

from __future__ import annotations

import asyncio
import re
import secrets
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import jwt
import pytest

from tests.conftest import Api, Player, new_address
from tests.servers import Backing, fresh_name, ingest_server

USER_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
ACCESS_TOKEN_TTL_S = 900  # the default; the suite does not override it
AUDIENCE = "live-scoreboard-api"


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is the error envelope with ``status`` and ``code``; returns the error."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert error["code"] == code, body
    assert isinstance(error["message"], str) and error["message"], body
    return error


def assert_session(response: httpx.Response) -> dict[str, Any]:
    """The 200 body of login and refresh."""
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in",
                         "user_id"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == ACCESS_TOKEN_TTL_S
    assert isinstance(body["access_token"], str) and body["access_token"].count(".") == 2
    assert isinstance(body["refresh_token"], str) and body["refresh_token"]
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    return body


def refresh(api: Api, refresh_token: str, address: str) -> httpx.Response:
    return api.post("/api/auth/refresh", json={"refresh_token": refresh_token},
                    headers={"X-Forwarded-For": address})


def action_token_status(api: Api, access_token: str, address: str) -> httpx.Response:
    return api.post("/api/actions/token", headers={
        "Authorization": f"Bearer {access_token}", "X-Forwarded-For": address})


# register


def test_register_answers_201_with_user_id_and_username(api: Api) -> None:
    username = fresh_name("Reg")
    response = api.post("/api/auth/register",
                        json={"username": username, "password": secrets.token_urlsafe(12)},
                        headers={"X-Forwarded-For": new_address()})
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"user_id", "username"}
    assert body["username"] == username
    assert USER_ID.fullmatch(body["user_id"])


def test_username_taken_is_409_case_insensitively(api: Api) -> None:
    address = new_address()
    username = fresh_name("Taken")
    api.register(username, secrets.token_urlsafe(12), address)
    for again in (username, username.lower(), username.upper()):
        response = api.post("/api/auth/register",
                            json={"username": again, "password": secrets.token_urlsafe(12)},
                            headers={"X-Forwarded-For": address})
        assert_error(response, 409, "username_taken")


@pytest.mark.parametrize(("fields", "field"), [
    ({"username": "ab", "password": "long enough"}, "username"),
    ({"username": "has space", "password": "long enough"}, "username"),
    ({"username": "x" * 33, "password": "long enough"}, "username"),
    ({"username": 12345, "password": "long enough"}, "username"),
    ({"password": "long enough"}, "username"),
    ({"username": "{fresh}", "password": "short"}, "password"),
    ({"username": "{fresh}", "password": "p" * 129}, "password"),
    ({"username": "{fresh}", "password": 123456789}, "password"),
    ({"username": "{fresh}"}, "password"),
    ({"username": "{fresh}", "password": "long enough", "email": "a@b.c"}, "email"),
])
def test_register_refuses_bad_fields_naming_the_field(api: Api, fields: dict[str, Any],
                                                      field: str) -> None:
    address, username = new_address(), fresh_name("bad")
    body = {name: username if value == "{fresh}" else value for name, value in fields.items()}
    response = api.post("/api/auth/register", json=body, headers={"X-Forwarded-For": address})
    error = assert_error(response, 422, "invalid_field")
    assert error["field"] == field
    assert error["message"].startswith(f"{field}:")
    # Nothing was written: the name is still free.
    api.register(username, secrets.token_urlsafe(12), address)


def test_register_refuses_a_body_that_is_not_an_object(api: Api) -> None:
    response = api.post("/api/auth/register", json=["user", "password"],
                        headers={"X-Forwarded-For": new_address()})
    assert assert_error(response, 422, "invalid_field")["field"] == "body"


# login


def test_login_answers_the_session_shape(api: Api) -> None:
    address, username, password = new_address(), fresh_name("login"), secrets.token_urlsafe(12)
    user_id = api.register(username, password, address)
    response = api.post("/api/auth/login", json={"username": username, "password": password},
                        headers={"X-Forwarded-For": address})
    body = assert_session(response)
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == user_id == body["user_id"]
    assert claims["name"] == username
    assert action_token_status(api, body["access_token"], address).status_code == 200


def test_wrong_password_and_unknown_user_are_the_same_401(api: Api, player: Player) -> None:
    wrong = api.post("/api/auth/login",
                     json={"username": player.username, "password": player.password + "x"},
                     headers={"X-Forwarded-For": player.address})
    unknown = api.post("/api/auth/login",
                       json={"username": fresh_name("nobody"), "password": player.password},
                       headers={"X-Forwarded-For": player.address})
    wrong_error = assert_error(wrong, 401, "invalid_credentials")
    unknown_error = assert_error(unknown, 401, "invalid_credentials")
    assert wrong_error == unknown_error  # nothing tells which one was wrong


# refresh


def test_refresh_issues_a_working_pair_and_spends_the_old_token(api: Api,
                                                                player: Player) -> None:
    response = refresh(api, player.refresh_token, player.address)
    body = assert_session(response)
    assert body["refresh_token"] != player.refresh_token
    assert body["access_token"] != player.access_token
    new_claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert new_claims["sub"] == player.user_id
    assert action_token_status(api, body["access_token"], player.address).status_code == 200
    # The new refresh token works in turn.
    assert_session(refresh(api, body["refresh_token"], player.address))


def test_reused_refresh_token_revokes_the_whole_family(api: Api, player: Player) -> None:
    second = assert_session(refresh(api, player.refresh_token, player.address))
    third = assert_session(refresh(api, second["refresh_token"], player.address))
    assert action_token_status(api, third["access_token"], player.address).status_code == 200

    # The first token was spent: presenting it again is the sign of a copy.
    assert_error(refresh(api, player.refresh_token, player.address), 401,
                 "refresh_token_reused")

    # The newest refresh token of that family no longer works ...
    assert_error(refresh(api, third["refresh_token"], player.address), 401,
                 "invalid_refresh_token")
    # ... and neither does any access token the family issued.
    for access_token in (third["access_token"], second["access_token"], player.access_token):
        assert_error(action_token_status(api, access_token, player.address), 401,
                     "token_revoked")


def test_reuse_does_not_touch_other_sessions_of_the_user(api: Api, player: Player) -> None:
    other = api.login(player.user_id, player.username, player.password, player.address)
    assert_session(refresh(api, player.refresh_token, player.address))
    assert_error(refresh(api, player.refresh_token, player.address), 401,
                 "refresh_token_reused")
    assert action_token_status(api, other.access_token, player.address).status_code == 200
    assert_session(refresh(api, other.refresh_token, player.address))


def test_unknown_refresh_token_is_401(api: Api) -> None:
    response = refresh(api, "rt_" + secrets.token_urlsafe(32), new_address())
    assert_error(response, 401, "invalid_refresh_token")


def test_refresh_without_a_token_is_422(api: Api) -> None:
    response = api.post("/api/auth/refresh", json={},
                        headers={"X-Forwarded-For": new_address()})
    assert assert_error(response, 422, "invalid_field")["field"] == "refresh_token"


# logout


def test_logout_revokes_the_access_token_and_the_session(api: Api, player: Player,
                                                         backing: Backing) -> None:
    response = api.post("/api/auth/logout", headers=player.headers)
    assert response.status_code == 204, response.text
    assert response.content == b""

    assert_error(api.post("/api/actions/token", headers=player.headers), 401, "token_revoked")
    assert_error(api.post("/api/auth/logout", headers=player.headers), 401, "token_revoked")
    assert_error(refresh(api, player.refresh_token, player.address), 401,
                 "invalid_refresh_token")

    claims = jwt.decode(player.access_token, options={"verify_signature": False})

    async def revoked_row() -> Any:
        connection = await asyncpg.connect(backing.database_url, timeout=10)
        try:
            return await connection.fetchrow(
                "SELECT user_id, expires_at FROM revoked_tokens WHERE jti = $1",
                claims["jti"], timeout=10)
        finally:
            await connection.close()

    row = asyncio.run(revoked_row())
    assert row is not None
    assert row["user_id"] == player.user_id
    expires_at: datetime = row["expires_at"]
    assert int(expires_at.timestamp()) == claims["exp"]

    # Logging out ends that session only: the password still opens a new one.
    again = api.login(player.user_id, player.username, player.password, player.address)
    assert action_token_status(api, again.access_token, player.address).status_code == 200


def test_logout_without_a_bearer_is_401(api: Api) -> None:
    response = api.post("/api/auth/logout", headers={"X-Forwarded-For": new_address()})
    assert_error(response, 401, "missing_token")


# JWKS


def test_jwks_publishes_the_key_that_signs_access_tokens(api: Api, player: Player) -> None:
    response = api.get("/.well-known/jwks.json")
    assert response.status_code == 200, response.text
    keys = response.json()["keys"]
    assert keys
    for key in keys:
        assert key["alg"] == "RS256"
        assert key["kty"] == "RSA"
        assert "d" not in key  # public parts only
    kid = jwt.get_unverified_header(player.access_token)["kid"]
    matching = [key for key in keys if key["kid"] == kid]
    assert len(matching) == 1
    # The published key really verifies the token.
    public_key = jwt.PyJWK(matching[0]).key
    claims = jwt.decode(player.access_token, public_key, algorithms=["RS256"], audience=AUDIENCE)
    assert claims["sub"] == player.user_id


# the per-address limit on the unauthenticated endpoints


def test_auth_attempts_are_limited_per_address(backing: Backing) -> None:
    with ingest_server(backing.env(TRUSTED_PROXIES="127.0.0.1/32", AUTH_IP_RATE="3/60")) as url:
        api = Api(url)
        try:
            username, password = fresh_name("limited"), secrets.token_urlsafe(12)
            api.register(username, password, new_address())
            address = new_address()
            attempts = [
                {"username": username, "password": password + "wrong"},
                {"username": username, "password": password + "wrong"},
                {"username": username, "password": password},
                {"username": username, "password": password},  # right, but over the limit
            ]
            statuses = [api.post("/api/auth/login", json=attempt,
                                 headers={"X-Forwarded-For": address}).status_code
                        for attempt in attempts[:3]]
            assert statuses == [401, 401, 200]
            response = api.post("/api/auth/login", json=attempts[3],
                                headers={"X-Forwarded-For": address})
            assert_error(response, 429, "rate_limited")
            assert 1 <= int(response.headers["retry-after"]) <= 20  # one every 20 s
            # Another address is not affected.
            other = api.post("/api/auth/login", json=attempts[3],
                             headers={"X-Forwarded-For": new_address()})
            assert other.status_code == 200, other.text
        finally:
            api.close()
