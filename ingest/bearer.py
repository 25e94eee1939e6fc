"""The ``Authorization: Bearer`` header to verified claims, or a 401."""

from __future__ import annotations

from starlette.requests import Request

from ingest.state import IngestState
from scoreboard.errors import JWTError, RequestError
from scoreboard.jwt_tokens import Claims


def unauthorized(code: str, message: str) -> RequestError:
    return RequestError(401, code, message)


def authenticate(request: Request, state: IngestState) -> Claims:
    """Verify the access token's signature and claims (no I/O).

    Whether its ``jti`` is revoked is answered by Redis: inside the request's
    Lua script on the hot endpoints, by :func:`ensure_not_revoked` elsewhere.
    """
    return verify_bearer(request.headers.get("authorization", ""), state)


def verify_bearer(header: str, state: IngestState) -> Claims:
    """:func:`authenticate` of an ``Authorization`` header's value."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("missing_token", "Authorization: Bearer <access token> is required")
    try:
        return state.jwt.verify(token.strip())
    except JWTError as exc:
        raise unauthorized(exc.code, exc.detail) from None


async def ensure_not_revoked(state: IngestState, claims: Claims) -> None:
    if await state.redis.exists(state.keys.player(claims.sub).revoked_jti(claims.jti)):
        raise unauthorized("token_revoked", "access token has been revoked")
