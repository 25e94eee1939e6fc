"""RS256 access tokens: issue, verify (with a per-process cache), publish as JWKS.

Verification pins the algorithm to RS256, requires ``exp iat iss aud sub jti``
with exact ``iss``/``aud`` matches, and picks the key by ``kid`` among the
current and previous signing keys only; an unknown ``kid`` is refused before
any signature work. A verified token is cached until its expiry, so the hot
path pays for RSA once per token, not once per request. Revocation is not
decided here: the ``jti`` is checked in Redis by the scripts of each request.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from jwt.algorithms import RSAAlgorithm

from scoreboard.errors import JWTError

ALGORITHM = "RS256"
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "jti"]


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: RSAPrivateKey

    @property
    def public_key(self) -> RSAPublicKey:
        return self.private_key.public_key()


@dataclass(frozen=True)
class Claims:
    sub: str
    name: str
    scopes: frozenset[str]
    jti: str
    sid: str
    exp: int


@dataclass(frozen=True)
class IssuedToken:
    token: str
    jti: str
    expires_in: int


class JWTAuthority:
    """Issues and verifies the service's access tokens.

    ``keys`` is ordered oldest first; the last one signs, the last two verify
    (current and previous, so a rotation never logs anyone out).
    """

    def __init__(self, keys: Sequence[SigningKey], *, issuer: str, audience: str,
                 ttl_s: int, cache_size: int = 50_000) -> None:
        if not keys:
            raise ValueError("at least one signing key is needed")
        self._signing_key = keys[-1]
        self._verify_keys = {k.kid: k.public_key for k in keys[-2:]}
        self._issuer = issuer
        self._audience = audience
        self._ttl_s = ttl_s
        self._cache: OrderedDict[str, Claims] = OrderedDict()
        self._cache_size = cache_size

    def issue(self, *, sub: str, name: str, scopes: Sequence[str], sid: str,
              now: float | None = None) -> IssuedToken:
        issued_at = int(time.time() if now is None else now)
        jti = secrets.token_hex(16)
        claims = {"iss": self._issuer, "aud": self._audience, "sub": sub, "iat": issued_at,
                  "exp": issued_at + self._ttl_s, "jti": jti, "name": name,
                  "scope": " ".join(sorted(scopes)), "sid": sid}
        token = jwt.encode(claims, self._signing_key.private_key, algorithm=ALGORITHM,
                           headers={"kid": self._signing_key.kid})
        return IssuedToken(token=token, jti=jti, expires_in=self._ttl_s)

    def verify(self, token: str) -> Claims:
        """Return the token's claims or raise :class:`JWTError` (code ``token_expired``
        or ``invalid_token``)."""
        now = time.time()
        cached = self._cache.get(token)
        if cached is not None:
            if cached.exp > now:
                return cached
            del self._cache[token]
            raise JWTError("token_expired", "access token has expired")
        claims = self._verify_uncached(token)
        self._cache[token] = claims
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return claims

    def _verify_uncached(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise JWTError("invalid_token", "access token is malformed") from None
        if header.get("alg") != ALGORITHM:
            raise JWTError("invalid_token", "access token algorithm is not accepted")
        key = self._verify_keys.get(header.get("kid"))  # type: ignore[arg-type]
        if key is None:
            raise JWTError("invalid_token", "access token key id is unknown")
        try:
            payload: dict[str, Any] = jwt.decode(
                token, key, algorithms=[ALGORITHM], audience=self._audience,
                issuer=self._issuer, options={"require": REQUIRED_CLAIMS, "strict_aud": True})
        except jwt.ExpiredSignatureError:
            raise JWTError("token_expired", "access token has expired") from None
        except jwt.PyJWTError as exc:
            raise JWTError("invalid_token", f"access token is invalid: {exc}") from None
        sub, jti = payload["sub"], payload["jti"]
        if not (isinstance(sub, str) and sub and isinstance(jti, str) and jti):
            raise JWTError("invalid_token", "access token subject or id is invalid")
        scope = payload.get("scope", "")
        return Claims(sub=sub, name=str(payload.get("name", "")),
                      scopes=frozenset(scope.split()) if isinstance(scope, str) else frozenset(),
                      jti=jti, sid=str(payload.get("sid", "")), exp=int(payload["exp"]))

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The public keys that verify tokens (current and previous), as a JWKS."""
        keys = []
        for kid, public_key in reversed(self._verify_keys.items()):
            jwk: dict[str, Any] = RSAAlgorithm.to_jwk(public_key, as_dict=True)
            jwk.update({"kid": kid, "alg": ALGORITHM, "use": "sig"})
            keys.append(jwk)
        return {"keys": keys}
