"""The hot endpoints: action tokens, increments, game-backend batches.

Each does its cheap checks in Python (JWT, fields, the action token's HMAC)
and then exactly one Redis round trip: the endpoint's Lua script, which
either refuses with nothing written or writes everything (see ``lua/``).
"""

from __future__ import annotations

import secrets
import time

import orjson

from ingest import metrics
from ingest.bearer import unauthorized, verify_bearer
from ingest.hot_path import Answer, HotRequest
from ingest.state import IngestState
from ingest.validation import (
    BatchIncrement,
    IncrementRequest,
    invalid,
    parse_action_token_request,
    parse_batch,
    parse_increment,
)
from scoreboard import action_tokens, sharded_calls
from scoreboard.action_tokens import ExpiredActionToken
from scoreboard.dedup_marks import marked
from scoreboard.errors import ActionTokenError, RequestError
from scoreboard.jwt_tokens import Claims
from scoreboard.limits import retry_after_seconds
from scoreboard.tracing import client_span

BACKEND_SCOPE = "scores:write"


def _refusal(reason: str, retry_after_ms: int) -> RequestError:
    """Map a script's refusal reason to the API's status and code."""
    if reason == "revoked":
        return unauthorized("token_revoked", "access token has been revoked")
    if reason == "banned":
        return RequestError(403, "user_banned", "this user is banned")
    if reason == "address_limited":
        return RequestError(429, "address_limited",
                            "this address is limited after repeated invalid tokens",
                            retry_after_s=retry_after_seconds(retry_after_ms))
    if reason in ("token_used", "duplicate"):
        return RequestError(403, "action_token_used",
                            "action token was already used, or was never issued")
    if reason == "token_foreign":
        return RequestError(403, "action_token_foreign", "action token was issued to another user")
    if reason.startswith("limited"):
        scope = {"limited_user": "this user", "limited_ip": "this address",
                 "limited_backend": "this client"}.get(reason, "this caller")
        return RequestError(429, "rate_limited", f"too many requests from {scope}",
                            retry_after_s=retry_after_seconds(retry_after_ms))
    raise RuntimeError(f"unknown script result {reason!r}")


# Script refusals that count as token manipulation. Not "token_used": a token of
# ours, for this user, with neither its nonce nor its event in Redis has only
# outlived its Redis key (a retry of an accepted one is answered 202, "replayed").
TOKEN_FAILURES = {"token_foreign": "action_token_foreign"}


async def record_token_failure(state: IngestState, *, user_id: str, address: str,
                               failure: str) -> None:
    """Count a token-manipulation failure (lua/token_failure.lua decides flags and
    address limits; the worker's recorder escalates a repeat offence). ``user_id`` is
    empty when the subject is not authenticated."""
    settings, keys = state.settings, state.keys
    await sharded_calls.token_failure(
        state.scripts, state.redis, keys, user_id=user_id, address=address, failure=failure,
        window_ms=settings.token_failure_window_s * 1000,
        to_flag=settings.token_failures_to_flag,
        to_limit_address=settings.token_failures_to_limit_address,
        address_limit_ms=settings.address_limit_s * 1000,
        flag_ms=settings.flag_duration_s * 1000)
    # A flag or address limit decided here is not counted here: the worker's recorder
    # counts it when it writes its row (scoreboard_fraud_events_total counted it twice,
    # once per process, before).


async def record_rate_refusal(state: IngestState, *, user_id: str, address: str,
                              endpoint: str) -> None:
    """Count a per-user 429 (lua/rate_refusal.lua flags a user who keeps hammering
    through them); one extra Redis call, on the refusal path only."""
    settings, keys = state.settings, state.keys
    if settings.rate_refusals_to_flag <= 0:
        return
    await state.scripts.rate_refusal(
        keys, user_id=user_id, address=address, endpoint=endpoint,
        window_ms=settings.rate_refusal_window_s * 1000, to_flag=settings.rate_refusals_to_flag,
        flag_duration_ms=settings.flag_duration_s * 1000)


async def authenticate_counted(request: HotRequest, state: IngestState) -> Claims:
    """The bearer token's claims (``ingest.bearer``), counting forged access tokens
    against the address."""
    try:
        return verify_bearer(request.authorization, state)
    except RequestError as exc:
        if exc.code == "invalid_token":
            await record_token_failure(state, user_id="", address=request.address,
                                       failure=exc.code)
        raise


async def issue_action_token(request: HotRequest) -> Answer:
    state = request.state
    claims = await authenticate_counted(request, state)
    settings, keys = state.settings, state.keys
    wanted = parse_action_token_request(
        await request.json(max_bytes=settings.max_body_bytes, empty=None))
    board = await state.board_cache.get_open(wanted.board)
    action = wanted.action or board.default_action
    points = board.points_of(action)
    if points is None:
        raise invalid("action", f"{action!r} is not an action of board {board.board!r}")
    nonce = secrets.token_hex(16)
    address = request.address
    reason, retry_ms = await sharded_calls.action_token(
        state.scripts, keys, user_id=claims.sub, jti=claims.jti, nonce=nonce, address=address,
        user_rate=settings.action_token_rate, ip_rate=settings.ip_rate,
        token_ttl_ms=settings.action_token_ttl_s * 1000)
    metrics.script_outcome("action_token", reason)
    if reason == "limited_user":
        await record_rate_refusal(state, user_id=claims.sub, address=address,
                                  endpoint="action_token")
    if reason != "ok":
        raise _refusal(reason, int(retry_ms))
    key_id, key = next(reversed(state.action_keys.items()))  # the last one signs
    issued_ms = int(time.time() * 1000)
    token = action_tokens.encode(
        action_tokens.ActionToken(user_id=claims.sub, board=board.board, action=action,
                                  issued_ms=issued_ms, nonce=nonce, key_id=key_id), key)
    return Answer(200, orjson.dumps({
        "action_token": token, "board": board.board, "action": action, "points": points,
        "expires_at": (issued_ms + settings.action_token_ttl_s * 1000) / 1000}))


def _accepted(event_id: str) -> Answer:
    return Answer(202, b'{"event_id":' + orjson.dumps(event_id) + b',"status":"accepted"}')


async def _verified_token(state: IngestState, claims: Claims, text: str,
                          address: str) -> action_tokens.ActionToken | Answer:
    """The verified action token, or the original 202 of a late retry (an expired
    token whose increment was accepted in time). Forged and foreign tokens count as
    token manipulation; an expired one does not (a slow client is not an attacker)."""
    settings = state.settings
    try:
        return action_tokens.verify(text, keys=state.action_keys, user_id=claims.sub,
                                    now_ms=int(time.time() * 1000),
                                    ttl_ms=settings.action_token_ttl_s * 1000)
    except ExpiredActionToken as exc:
        event_id = "at-" + exc.token.nonce
        if (await marked(state.redis, state.keys.player(claims.sub).event_marks("player"),
                         [event_id], now_ms=int(time.time() * 1000),
                         ttl_ms=settings.dedup_ttl_s * 1000))[0]:
            metrics.script_outcome("increment", "replayed")
            return _accepted(event_id)
        metrics.script_outcome("increment", exc.code)
        raise RequestError(403, exc.code, exc.detail) from None
    except ActionTokenError as exc:
        metrics.script_outcome("increment", exc.code)
        await record_token_failure(state, user_id=claims.sub, address=address, failure=exc.code)
        raise RequestError(403, exc.code, exc.detail) from None


async def _points_of(state: IngestState, token: action_tokens.ActionToken,
                     body: IncrementRequest) -> int:
    """The points the token's action is worth; a ``points`` or ``board`` sent along
    that disagrees is refused (422), so an old client learns the contract changed."""
    board = await state.board_cache.get_open(token.board)
    points = board.points_of(token.action)
    if points is None:
        raise invalid("action_token",
                      f"action {token.action!r} is no longer an action of board {board.board!r}")
    if body.board is not None and body.board != token.board:
        raise invalid("board", f"must be {token.board!r} (the action token's board) or left out")
    if body.points is not None and body.points != points:
        raise invalid("points", f"must be {points} (the points of action {token.action!r} on "
                                f"board {token.board!r}) or left out")
    return points


async def increment(request: HotRequest) -> Answer:
    state = request.state
    claims = await authenticate_counted(request, state)
    settings, keys = state.settings, state.keys
    body = parse_increment(await request.json(max_bytes=settings.max_body_bytes),
                           max_points=settings.max_points_per_increment)
    address = request.address
    token = await _verified_token(state, claims, body.action_token, address)
    if isinstance(token, Answer):
        return token
    points = await _points_of(state, token, body)
    state.backlog.check()
    event_id = "at-" + token.nonce
    # With tracing on, the entry carries this span's context to the worker.
    with client_span(state.tracing, "increment.lua", **{"db.system": "redis"}) as traceparent:
        reason, retry_ms, _flagged_now = await sharded_calls.increment(
            state.scripts, keys, user_id=claims.sub, jti=claims.jti, nonce=token.nonce,
            address=address,
            event_id=event_id, board=token.board, points=points, username=claims.name,
            source="player", request_id=request.request_id,
            user_rate=settings.increment_rate, flagged_rate=settings.flagged_increment_rate,
            ip_rate=settings.ip_rate, dedup_ttl_ms=settings.dedup_ttl_s * 1000,
            rapid_max=settings.rapid_max_actions, rapid_window_ms=settings.rapid_window_ms,
            flag_duration_ms=settings.flag_duration_s * 1000, traceparent=traceparent)
    metrics.script_outcome("increment", reason)
    if reason == "replayed":  # a retry of an accepted increment: its original answer
        return _accepted(event_id)
    if reason in TOKEN_FAILURES:
        await record_token_failure(state, user_id=claims.sub, address=address,
                                   failure=TOKEN_FAILURES[reason])
    elif reason == "limited_user":
        await record_rate_refusal(state, user_id=claims.sub, address=address,
                                  endpoint="increment")
    if reason != "ok":
        raise _refusal(reason, retry_ms)
    # a flag taken here (rapid actions) is counted by the worker's recorder with its row
    return _accepted(event_id)


async def _check_board_maxima(state: IngestState, increments: list[BatchIncrement]) -> None:
    """Every board of the batch exists (404) and is open (409), and no ``points`` passes
    its maximum (422)."""
    maxima: dict[str, int] = {}
    for index, item in enumerate(increments):
        if item.board not in maxima:
            maxima[item.board] = (await state.board_cache.get_open(item.board)).max_points
        if item.points > maxima[item.board]:
            raise invalid(f"increments[{index}].points",
                          f"must be at most {maxima[item.board]} on board {item.board!r}")


async def batch(request: HotRequest) -> Answer:
    state = request.state
    claims = await authenticate_counted(request, state)
    if BACKEND_SCOPE not in claims.scopes:
        raise RequestError(403, "insufficient_scope", f"this endpoint needs scope {BACKEND_SCOPE}")
    settings, keys = state.settings, state.keys
    increments = parse_batch(await request.json(max_bytes=settings.max_body_bytes),
                             max_points=settings.max_points_per_increment,
                             max_increments=settings.max_batch_increments)
    await _check_board_maxima(state, increments)
    state.backlog.check()
    with client_span(state.tracing, "batch.lua", **{"db.system": "redis"}) as traceparent:
        reply = await sharded_calls.batch(
            state.scripts, state.redis, keys, backend_id=claims.sub, jti=claims.jti,
            address=request.address,
            request_id=request.request_id, rate=settings.backend_rate,
            dedup_ttl_ms=settings.dedup_ttl_s * 1000, traceparent=traceparent,
            items=increments)
    metrics.script_outcome("batch", reply.reason)
    if reply.reason != "ok":
        raise _refusal(reply.reason, reply.retry_after_ms)
    return Answer(202, orjson.dumps({
        "accepted": reply.accepted, "duplicates": reply.duplicates,
        "refused": [{"event_id": e, "reason": "user_banned"} for e in reply.refused]}))
