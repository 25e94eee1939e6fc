"""Forged and stale access tokens against the real ingest process.

Every attack is sent to both Bearer endpoints of the hot path, the action
token issue and the increment, and must get ``401`` with the error envelope
while the stream stays as it was. The increment attempts carry a genuine,
unused action token of the player, so a refusal for any reason other than the
access token would show up as a different status; that the token is still
usable afterwards proves the refusal consumed nothing.

Tokens are crafted with the suite's real signing key (``backing.jwt_keys_dir``)
where the attack needs a valid signature; a control test proves a correctly
crafted token is accepted, so the refusals are the server's doing, not a
broken helper's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from scoreboard.jwt_tokens import SigningKey
from scoreboard.keys import Keys
from scoreboard.settings import Settings, load_settings
from scoreboard.signing_keys import load_jwt_keys
from tests.conftest import Api, Player
from tests.servers import Backing, stream_entries

ENDPOINTS = ["/api/actions/token", "/api/scores/increment"]


@pytest.fixture(scope="module")
def signing_key(backing: Backing) -> SigningKey:
    """The key the ingest process signs with (the newest in its key folder)."""
    return load_jwt_keys(backing.jwt_keys_dir)[-1]


@pytest.fixture(scope="module")
def ingest_settings(backing: Backing) -> Settings:
    """The settings the suite's ingest process reads, for its issuer and audience."""
    return load_settings(backing.env(TRUSTED_PROXIES="127.0.0.1/32"))


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def claims_for(player: Player, settings: Settings, **overrides: Any) -> dict[str, Any]:
    """The claims the service itself would put in ``player``'s access token."""
    now = int(time.time())
    claims: dict[str, Any] = {"iss": settings.jwt_issuer, "aud": settings.jwt_audience,
                              "sub": player.user_id, "iat": now, "exp": now + 600,
                              "jti": secrets.token_hex(16), "name": player.username,
                              "scope": "", "sid": str(uuid.uuid4())}
    claims.update(overrides)
    return claims


def sign_rs256(claims: dict[str, Any], key: SigningKey) -> str:
    return jwt.encode(claims, key.private_key, algorithm="RS256", headers={"kid": key.kid})


# Each attack builds a token from (the player, the real signing key, the ingest settings).
Attack = Callable[[Player, SigningKey, Settings], str]


def alg_none(alg: str) -> Attack:
    def build(player: Player, key: SigningKey, settings: Settings) -> str:
        header = {"alg": alg, "typ": "JWT", "kid": key.kid}
        return f"{b64url_json(header)}.{b64url_json(claims_for(player, settings))}."
    return build


def hs256_with_public_key(player: Player, key: SigningKey, settings: Settings) -> str:
    """The key-confusion attack: HMAC keyed with the (public) RSA key's PEM.

    pyjwt refuses to do this, so the token is put together by hand."""
    public_pem = key.public_key.public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = (f"{b64url_json({'alg': 'HS256', 'typ': 'JWT', 'kid': key.kid})}."
                     f"{b64url_json(claims_for(player, settings))}")
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def tampered_subject(player: Player, key: SigningKey, settings: Settings) -> str:
    """The player's own genuine token with ``sub`` changed and the signature kept."""
    header, _, signature = player.access_token.split(".")
    payload = jwt.decode(player.access_token, options={"verify_signature": False})
    assert payload["sub"] == player.user_id
    payload["sub"] = "u_" + secrets.token_hex(8)
    return f"{header}.{b64url_json(payload)}.{signature}"


def expired(player: Player, key: SigningKey, settings: Settings) -> str:
    now = int(time.time())
    return sign_rs256(claims_for(player, settings, iat=now - 1_000, exp=now - 60), key)


def wrong_audience(player: Player, key: SigningKey, settings: Settings) -> str:
    return sign_rs256(claims_for(player, settings, aud="some-other-api"), key)


def wrong_issuer(player: Player, key: SigningKey, settings: Settings) -> str:
    return sign_rs256(claims_for(player, settings, iss="https://attacker.example"), key)


def fresh_key(kid: str | None) -> Attack:
    """Signed by a key the service never had, under an unknown or a borrowed ``kid``."""
    def build(player: Player, key: SigningKey, settings: Settings) -> str:
        stranger = SigningKey(kid=kid or key.kid, private_key=rsa.generate_private_key(
            public_exponent=65537, key_size=2048))
        return sign_rs256(claims_for(player, settings), stranger)
    return build


def missing_jti(player: Player, key: SigningKey, settings: Settings) -> str:
    claims = claims_for(player, settings)
    del claims["jti"]
    return sign_rs256(claims, key)


ATTACKS: list[Any] = [
    pytest.param(alg_none("none"), "invalid_token", id="alg-none"),
    pytest.param(alg_none("None"), "invalid_token", id="alg-None"),
    pytest.param(hs256_with_public_key, "invalid_token", id="hs256-keyed-with-public-pem"),
    pytest.param(tampered_subject, "invalid_token", id="tampered-sub"),
    pytest.param(expired, "token_expired", id="expired"),
    pytest.param(wrong_audience, "invalid_token", id="wrong-aud"),
    pytest.param(wrong_issuer, "invalid_token", id="wrong-iss"),
    pytest.param(fresh_key("k-unknown"), "invalid_token", id="unknown-kid"),
    pytest.param(fresh_key(None), "invalid_token", id="real-kid-other-key"),
    pytest.param(missing_jti, "invalid_token", id="missing-jti"),
]


def post(api: Api, path: str, player: Player, authorization: str | None,
         action_token: str) -> httpx.Response:
    headers = {"X-Forwarded-For": player.address}
    if authorization is not None:
        headers["Authorization"] = authorization
    body = {"action_token": action_token} if path.endswith("increment") else None
    return api.post(path, json=body, headers=headers)


def assert_unauthorized(response: httpx.Response, code: str) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


@pytest.mark.parametrize(("attack", "code"), ATTACKS)
@pytest.mark.parametrize("path", ENDPOINTS)
def test_forged_access_token_is_refused(api: Api, player: Player, signing_key: SigningKey,
                                        ingest_settings: Settings, stream_length: Any,
                                        attack: Attack, code: str, path: str) -> None:
    action_token = api.action_token(player)
    forged = attack(player, signing_key, ingest_settings)
    before = stream_length()
    assert_unauthorized(post(api, path, player, f"Bearer {forged}", action_token), code)
    assert stream_length() == before
    # The genuine token still works, and the action token was not consumed.
    accepted = post(api, "/api/scores/increment", player, f"Bearer {player.access_token}",
                    action_token)
    assert accepted.status_code == 202, accepted.text
    assert stream_length() == before + 1


@pytest.mark.parametrize("authorization", [
    pytest.param(None, id="no-header"),
    pytest.param("", id="empty"),
    pytest.param("Bearer", id="scheme-only"),
    pytest.param("Token abc.def.ghi", id="other-scheme"),
    pytest.param("Basic dXNlcjpwYXNz", id="basic-auth"),
])
@pytest.mark.parametrize("path", ENDPOINTS)
def test_missing_access_token_is_refused(api: Api, player: Player, stream_length: Any,
                                         authorization: str | None, path: str) -> None:
    action_token = api.action_token(player)
    before = stream_length()
    assert_unauthorized(post(api, path, player, authorization, action_token), "missing_token")
    assert stream_length() == before


def test_revoked_access_token_is_refused_after_logout(api: Api, player: Player,
                                                      stream_length: Any,
                                                      redis_client: redis.Redis,
                                                      keys: Keys) -> None:
    action_token = api.action_token(player)
    jti = jwt.decode(player.access_token, options={"verify_signature": False})["jti"]
    logout = api.post("/api/auth/logout", headers=player.headers)
    assert logout.status_code == 204, logout.text
    assert redis_client.exists(keys.player(player.user_id).revoked_jti(jti)) == 1
    before = stream_length()
    for path in ENDPOINTS:
        assert_unauthorized(post(api, path, player, f"Bearer {player.access_token}",
                                 action_token), "token_revoked")
    assert_unauthorized(api.post("/api/auth/logout", headers=player.headers), "token_revoked")
    assert stream_length() == before
    # The unused action token is still there: only the access token was refused.
    assert redis_client.exists(keys.player(player.user_id).action_token(
        action_token_nonce(action_token))) == 1


def action_token_nonce(action_token: str) -> str:
    payload_text = action_token.rpartition(".")[0]
    payload = json.loads(base64.urlsafe_b64decode(payload_text + "=" * (-len(payload_text) % 4)))
    nonce: str = payload["n"]
    return nonce


def test_correctly_signed_token_for_a_new_subject_is_accepted(
        api: Api, player: Player, signing_key: SigningKey, ingest_settings: Settings,
        stream_length: Any, redis_client: redis.Redis, keys: Keys) -> None:
    """The control: the crafting helpers make tokens the service accepts, so the
    refusals above are caused by what each attack changes."""
    new_sub = "u_" + secrets.token_hex(8)
    token = sign_rs256(claims_for(player, ingest_settings, sub=new_sub, name="crafted"),
                       signing_key)
    headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": player.address}
    issued = api.post("/api/actions/token", headers=headers)
    assert issued.status_code == 200, issued.text
    before = stream_length()
    response = api.post("/api/scores/increment",
                        json={"action_token": issued.json()["action_token"]},
                        headers=headers)
    assert response.status_code == 202, response.text
    assert stream_length() == before + 1
    event_id = response.json()["event_id"]
    stream: Any = stream_entries(redis_client, keys)
    entry = next(fields for _, fields in stream if fields.get("event_id") == event_id)
    assert (entry["user_id"], entry["username"], entry["points"]) == (new_sub, "crafted", "1")
