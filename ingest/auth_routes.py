"""Register, login, refresh (rotating, with reuse detection), logout, JWKS.

Refresh tokens are opaque random strings; only their SHA-256 is stored. Each
login starts a family; a refresh spends the presented token and issues the
next one in the family. A spent token presented again means it was copied:
the whole family is revoked, and so is every access token it issued that is
still unexpired.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from ingest.bearer import authenticate, ensure_not_revoked, unauthorized
from ingest.http import JSONResponse, read_json
from ingest.state import IngestState, request_client, state_of
from ingest.validation import parse_credentials, parse_refresh
from scoreboard.errors import RequestError
from scoreboard.limits import retry_after_seconds
from scoreboard.passwords import hash_password, verify_password

REFRESH_PREFIX = "rt_"
# Verified when the username is unknown, so both paths cost one scrypt.
_DUMMY_HASH_CACHE: dict[tuple[int, int, int], str] = {}


async def limit_auth_attempts(request: Request, state: IngestState) -> None:
    """Per-address limit on the unauthenticated endpoints (password guessing)."""
    rate = state.settings.auth_ip_rate
    address = request_client(request, state)
    at_address = state.keys.at_address(address)
    reason, retry_ms = await state.scripts.rate_limit(
        at_address, rate_key=at_address.ip_rate("auth", address), rate=rate)
    if reason != "ok":
        raise RequestError(429, "rate_limited", "too many attempts from this address",
                           retry_after_s=retry_after_seconds(retry_ms))


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def _issue_session(connection: Any, state: IngestState, *, user_id: str, username: str,
                         scopes: list[str], family_id: uuid.UUID) -> dict[str, Any]:
    """A new access token and a new refresh token of ``family_id``."""
    access = state.jwt.issue(sub=user_id, name=username, scopes=scopes, sid=str(family_id))
    refresh = REFRESH_PREFIX + secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    await connection.execute(
        "INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at,"
        " access_jti, access_expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
        _token_hash(refresh), family_id, user_id,
        now + timedelta(seconds=state.settings.refresh_token_ttl_s),
        access.jti, now + timedelta(seconds=access.expires_in))
    return {"access_token": access.token, "refresh_token": refresh, "token_type": "Bearer",
            "expires_in": access.expires_in, "user_id": user_id}


async def revoke_access_tokens(state: IngestState, connection: Any,
                               tokens: list[tuple[str, str, datetime]]) -> None:
    """Revoke ``(jti, user_id, expires_at)`` access tokens: Redis for the hot path,
    Postgres as the durable record that restores Redis."""
    now = datetime.now(UTC)
    live = [(jti, user_id, expires) for jti, user_id, expires in tokens if expires > now]
    if not live:
        return
    async with state.redis.pipeline(transaction=False) as pipe:
        for jti, user_id, expires in live:
            ttl_ms = max(1, int((expires - now).total_seconds() * 1000))
            pipe.set(state.keys.player(user_id).revoked_jti(jti), "1", px=ttl_ms)
        await pipe.execute()
    await connection.executemany(
        "INSERT INTO revoked_tokens (jti, user_id, expires_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (jti) DO NOTHING", live)


async def register(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, max_bytes=state.settings.max_body_bytes)
    credentials = parse_credentials(body)
    await limit_auth_attempts(request, state)
    settings = state.settings
    password_hash = await asyncio.to_thread(hash_password, credentials.password,
                                            n=settings.scrypt_n, r=settings.scrypt_r,
                                            p=settings.scrypt_p)
    user_id = "u_" + secrets.token_hex(8)
    try:
        await state.pool.execute(
            "INSERT INTO users (user_id, username, password_hash) VALUES ($1, $2, $3)",
            user_id, credentials.username, password_hash)
    except asyncpg.UniqueViolationError:
        raise RequestError(409, "username_taken", "that username is already registered") from None
    return JSONResponse({"user_id": user_id, "username": credentials.username}, status_code=201)


async def login(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, max_bytes=state.settings.max_body_bytes)
    credentials = parse_credentials(body)
    await limit_auth_attempts(request, state)
    row = await state.pool.fetchrow(
        "SELECT user_id, username, password_hash, scopes FROM users"
        " WHERE lower(username) = lower($1) AND password_hash IS NOT NULL", credentials.username)
    settings = state.settings
    params = (settings.scrypt_n, settings.scrypt_r, settings.scrypt_p)
    if params not in _DUMMY_HASH_CACHE:
        _DUMMY_HASH_CACHE[params] = hash_password(secrets.token_hex(8), n=params[0], r=params[1],
                                                  p=params[2])
    stored = row["password_hash"] if row else _DUMMY_HASH_CACHE[params]
    valid = await asyncio.to_thread(verify_password, credentials.password, stored)
    if row is None or not valid:
        raise unauthorized("invalid_credentials", "username or password is wrong")
    async with state.pool.acquire() as connection:
        body = await _issue_session(connection, state, user_id=row["user_id"],
                                    username=row["username"], scopes=list(row["scopes"]),
                                    family_id=uuid.uuid4())
    return JSONResponse(body)


async def refresh(request: Request) -> Response:
    state = state_of(request)
    token = parse_refresh(await read_json(request, max_bytes=state.settings.max_body_bytes))
    await limit_auth_attempts(request, state)
    async with state.pool.acquire() as connection, connection.transaction():
        row = await connection.fetchrow(
            "SELECT r.family_id, r.user_id, r.expires_at, r.used_at, r.revoked_at,"
            " u.username, u.scopes FROM refresh_tokens r JOIN users u USING (user_id)"
            " WHERE r.token_hash = $1 FOR UPDATE OF r", _token_hash(token))
        if row is None or row["revoked_at"] is not None or row["expires_at"] <= datetime.now(UTC):
            raise unauthorized("invalid_refresh_token", "refresh token is invalid or expired")
        if row["used_at"] is not None:
            # Reuse: someone holds a copy. Kill the family and its live access tokens.
            issued = await connection.fetch(
                "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1"
                " RETURNING access_jti, user_id, access_expires_at", row["family_id"])
            await revoke_access_tokens(state, connection, [
                (r["access_jti"], r["user_id"], r["access_expires_at"]) for r in issued])
            return_error = unauthorized("refresh_token_reused",
                                        "refresh token was already used; its session is revoked")
        else:
            await connection.execute(
                "UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1",
                _token_hash(token))
            body = await _issue_session(connection, state, user_id=row["user_id"],
                                        username=row["username"], scopes=list(row["scopes"]),
                                        family_id=row["family_id"])
            return JSONResponse(body)
    raise return_error  # raised after the revocation is committed


async def logout(request: Request) -> Response:
    state = state_of(request)
    claims = authenticate(request, state)
    await ensure_not_revoked(state, claims)
    async with state.pool.acquire() as connection, connection.transaction():
        await revoke_access_tokens(state, connection, [
            (claims.jti, claims.sub, datetime.fromtimestamp(claims.exp, UTC))])
        if claims.sid:
            try:
                family_id = uuid.UUID(claims.sid)
            except ValueError:
                family_id = None
            if family_id is not None:
                await connection.execute(
                    "UPDATE refresh_tokens SET revoked_at = now()"
                    " WHERE family_id = $1 AND revoked_at IS NULL", family_id)
    return Response(status_code=204)


async def jwks(request: Request) -> Response:
    return JSONResponse(state_of(request).jwt.jwks(),
                        headers={"Cache-Control": "public, max-age=300"})
