"""What the lifespan creates and every route uses: the ingest process's resources."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from ingest.backlog import Backpressure
from ingest.board_cache import BoardCache
from scoreboard.board_reads import BoardReader
from scoreboard.client_address import client_address, forwarded_for
from scoreboard.jwt_tokens import JWTAuthority
from scoreboard.keys import Keys
from scoreboard.lua import Scripts
from scoreboard.settings import Settings
from scoreboard.tracing import Tracing

ADDRESS_CACHE_SIZE = 65536  # (peer, X-Forwarded-For) answers kept; emptied when full


@dataclass
class IngestState:
    settings: Settings
    keys: Keys
    redis: Any  # redis.asyncio.Redis
    scripts: Scripts
    pool: Any  # asyncpg.Pool
    jwt: JWTAuthority
    action_keys: dict[str, bytes]  # key id -> secret, the last one signs
    boards: BoardReader
    board_cache: BoardCache
    backlog: Backpressure
    tracing: Tracing | None = None  # None: tracing off (the default)
    top_cache: dict[tuple[str, int], tuple[float, dict[str, Any]]] = field(default_factory=dict)
    addresses: dict[tuple[str | None, str | None], str] = field(default_factory=dict)


def state_of(request: Request) -> IngestState:
    state: IngestState = request.app.state.ingest
    return state


def request_client(request: Request, state: IngestState) -> str:
    peer = request.client.host if request.client else None
    return client_of(state, peer, forwarded_for(request.headers.getlist("x-forwarded-for")))


def client_of(state: IngestState, peer: str | None, forwarded: str | None) -> str:
    """``client_address`` of the peer and its joined ``X-Forwarded-For`` lines."""
    key = (peer, forwarded)
    # The answer is kept per (peer, header): parsing addresses cost about 4% of an
    # increment's CPU, and a client sends the same headers request after request.
    found = state.addresses.get(key)
    if found is None:
        if len(state.addresses) >= ADDRESS_CACHE_SIZE:
            state.addresses.clear()
        found = state.addresses[key] = client_address(*key, state.settings.trusted_proxies)
    return found
