"""Unit tests of the JWT authority (scoreboard/jwt_tokens.py): no servers.

Deterministic apart from the cache-expiry test, which waits out a real
two-second token.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from scoreboard.errors import JWTError
from scoreboard.jwt_tokens import JWTAuthority, SigningKey

ISSUER, AUDIENCE = "live-scoreboard", "live-scoreboard-api"


@pytest.fixture(scope="module")
def rsa_keys() -> list[SigningKey]:
    return [SigningKey(kid=f"kid-{n}", private_key=rsa.generate_private_key(
        public_exponent=65537, key_size=2048)) for n in range(3)]


def authority(keys: list[SigningKey], ttl_s: int = 900) -> JWTAuthority:
    return JWTAuthority(keys, issuer=ISSUER, audience=AUDIENCE, ttl_s=ttl_s)


def craft(key: SigningKey, *, drop: tuple[str, ...] = (), **overrides: Any) -> str:
    """A token signed by ``key`` with the usual claims, some overridden or dropped."""
    now = int(time.time())
    claims: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u_alice", "iat": now,
                              "exp": now + 600, "jti": secrets.token_hex(16), "name": "alice",
                              "scope": "", "sid": "s1"}
    claims.update(overrides)
    for name in drop:
        del claims[name]
    return jwt.encode(claims, key.private_key, algorithm="RS256", headers={"kid": key.kid})


def jwt_refusal(auth: JWTAuthority, token: str) -> JWTError:
    with pytest.raises(JWTError) as caught:
        auth.verify(token)
    return caught.value


def test_jwt_issue_and_verify(rsa_keys: list[SigningKey]) -> None:
    auth = authority(rsa_keys[:1])
    issued = auth.issue(sub="u_alice", name="alice", scopes=["scores:write", "a"], sid="fam-1")
    assert issued.expires_in == 900
    claims = auth.verify(issued.token)
    assert (claims.sub, claims.name, claims.jti, claims.sid) == ("u_alice", "alice", issued.jti,
                                                                 "fam-1")
    assert claims.scopes == frozenset({"scores:write", "a"})
    assert abs(claims.exp - (time.time() + 900)) < 5
    header = jwt.get_unverified_header(issued.token)
    assert header["alg"] == "RS256" and header["kid"] == "kid-0"


def test_jwt_each_issue_has_a_fresh_jti(rsa_keys: list[SigningKey]) -> None:
    auth = authority(rsa_keys[:1])
    first, second = (auth.issue(sub="u", name="n", scopes=[], sid="s") for _ in range(2))
    assert first.jti != second.jti and first.token != second.token


def test_jwt_cache_returns_the_same_claims(rsa_keys: list[SigningKey]) -> None:
    auth = authority(rsa_keys[:1])
    token = auth.issue(sub="u_alice", name="alice", scopes=[], sid="s").token
    first = auth.verify(token)
    assert auth.verify(token) is first


def test_jwt_cache_does_not_outlive_the_token(rsa_keys: list[SigningKey]) -> None:
    auth = authority(rsa_keys[:1], ttl_s=2)
    issued = auth.issue(sub="u_alice", name="alice", scopes=[], sid="s")
    assert auth.verify(issued.token).sub == "u_alice"  # now cached
    time.sleep(max(0.0, auth.verify(issued.token).exp - time.time()) + 0.05)
    assert jwt_refusal(auth, issued.token).code == "token_expired"


def test_jwt_cache_is_bounded(rsa_keys: list[SigningKey]) -> None:
    auth = JWTAuthority(rsa_keys[:1], issuer=ISSUER, audience=AUDIENCE, ttl_s=900, cache_size=2)
    tokens = [auth.issue(sub=f"u{n}", name="n", scopes=[], sid="s").token for n in range(3)]
    first = auth.verify(tokens[0])
    auth.verify(tokens[1])
    auth.verify(tokens[2])  # evicts tokens[0]
    again = auth.verify(tokens[0])
    assert again == first and again is not first


def test_jwt_expired_token_is_refused(rsa_keys: list[SigningKey]) -> None:
    auth = authority(rsa_keys[:1])
    issued = auth.issue(sub="u_alice", name="alice", scopes=[], sid="s",
                        now=time.time() - 901)
    assert jwt_refusal(auth, issued.token).code == "token_expired"
    crafted = craft(rsa_keys[0], iat=int(time.time()) - 100, exp=int(time.time()) - 10)
    assert jwt_refusal(auth, crafted).code == "token_expired"


@pytest.mark.parametrize("overrides", [
    pytest.param({"aud": "another-api"}, id="wrong-aud"),
    pytest.param({"aud": [AUDIENCE, "another-api"]}, id="aud-list"),
    pytest.param({"iss": "someone-else"}, id="wrong-iss"),
    pytest.param({"sub": ""}, id="empty-sub"),
    pytest.param({"sub": 42}, id="sub-not-string"),
    pytest.param({"jti": ""}, id="empty-jti"),
    pytest.param({"jti": 42}, id="jti-not-string"),
    pytest.param({"iat": int(time.time()) + 3600}, id="issued-in-the-future"),
])
def test_jwt_with_bad_claims_is_invalid(rsa_keys: list[SigningKey],
                                        overrides: dict[str, Any]) -> None:
    auth = authority(rsa_keys[:1])
    assert auth.verify(craft(rsa_keys[0])).sub == "u_alice"  # the crafted baseline is good
    assert jwt_refusal(auth, craft(rsa_keys[0], **overrides)).code == "invalid_token"


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud", "sub", "jti"])
def test_jwt_missing_required_claim_is_invalid(rsa_keys: list[SigningKey], claim: str) -> None:
    auth = authority(rsa_keys[:1])
    assert jwt_refusal(auth, craft(rsa_keys[0], drop=(claim,))).code == "invalid_token"


def test_jwt_signed_by_an_unknown_key_is_invalid(rsa_keys: list[SigningKey]) -> None:
    auth = authority(rsa_keys[:1])
    stranger = SigningKey(kid="kid-0", private_key=rsa_keys[2].private_key)  # known kid, wrong key
    assert jwt_refusal(auth, craft(stranger)).code == "invalid_token"
    unknown = jwt_refusal(auth, craft(rsa_keys[2]))  # kid-2 is not in the authority
    assert unknown.code == "invalid_token" and "key id" in str(unknown)


def test_jwt_without_kid_or_with_other_algorithms_is_invalid(rsa_keys: list[SigningKey]) -> None:
    auth = authority(rsa_keys[:1])
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "iat": int(time.time()),
              "exp": int(time.time()) + 60, "jti": "j"}
    no_kid = jwt.encode(claims, rsa_keys[0].private_key, algorithm="RS256")
    assert jwt_refusal(auth, no_kid).code == "invalid_token"
    ps256 = jwt.encode(claims, rsa_keys[0].private_key, algorithm="PS256",
                       headers={"kid": "kid-0"})
    assert jwt_refusal(auth, ps256).code == "invalid_token"
    hs256 = jwt.encode(claims, "a-shared-secret-of-at-least-32-bytes!", algorithm="HS256",
                       headers={"kid": "kid-0"})
    assert jwt_refusal(auth, hs256).code == "invalid_token"


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "a.b", "...."])
def test_jwt_malformed_is_invalid(rsa_keys: list[SigningKey], token: str) -> None:
    assert jwt_refusal(authority(rsa_keys[:1]), token).code == "invalid_token"


def test_jwt_previous_key_still_verifies_after_rotation(rsa_keys: list[SigningKey]) -> None:
    before = authority(rsa_keys[:1])
    old_token = before.issue(sub="u_alice", name="alice", scopes=[], sid="s").token
    rotated = authority(rsa_keys[:2])
    assert rotated.verify(old_token).sub == "u_alice"
    new_token = rotated.issue(sub="u_bob", name="bob", scopes=[], sid="s").token
    assert jwt.get_unverified_header(new_token)["kid"] == "kid-1"
    assert rotated.verify(new_token).sub == "u_bob"


def test_jwt_key_older_than_previous_no_longer_verifies(rsa_keys: list[SigningKey]) -> None:
    oldest_token = authority(rsa_keys[:1]).issue(sub="u", name="n", scopes=[], sid="s").token
    previous_token = authority(rsa_keys[:2]).issue(sub="u", name="n", scopes=[], sid="s").token
    twice_rotated = authority(rsa_keys[:3])
    assert jwt_refusal(twice_rotated, oldest_token).code == "invalid_token"
    assert twice_rotated.verify(previous_token).sub == "u"


def test_jwks_lists_current_and_previous_keys(rsa_keys: list[SigningKey]) -> None:
    jwks = authority(rsa_keys).jwks()
    assert [k["kid"] for k in jwks["keys"]] == ["kid-2", "kid-1"]
    for entry in jwks["keys"]:
        assert (entry["kty"], entry["alg"], entry["use"]) == ("RSA", "RS256", "sig")
        assert "d" not in entry and "p" not in entry  # public halves only
        key = next(k for k in rsa_keys if k.kid == entry["kid"])
        public = RSAAlgorithm.from_jwk(entry)
        assert public.public_numbers() == key.public_key.public_numbers()  # type: ignore[union-attr]
    single = authority(rsa_keys[:1]).jwks()
    assert [k["kid"] for k in single["keys"]] == ["kid-0"]


def test_jwks_keys_verify_issued_tokens(rsa_keys: list[SigningKey]) -> None:
    auth = authority(rsa_keys[:2])
    token = auth.issue(sub="u_alice", name="alice", scopes=[], sid="s").token
    entry = next(k for k in auth.jwks()["keys"]
                 if k["kid"] == jwt.get_unverified_header(token)["kid"])
    payload = jwt.decode(token, RSAAlgorithm.from_jwk(entry), algorithms=["RS256"],  # type: ignore[arg-type]
                         audience=AUDIENCE, issuer=ISSUER)
    assert payload["sub"] == "u_alice"


def test_jwt_authority_needs_a_key() -> None:
    with pytest.raises(ValueError):
        JWTAuthority([], issuer=ISSUER, audience=AUDIENCE, ttl_s=60)
