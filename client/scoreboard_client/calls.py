"""Each API call as data (sans-I/O): what to send and how to read the answer.

The async and the sync client send the same :class:`Call` objects, so the API
is written once here; they differ only in how bytes move. Retrying is decided
by :mod:`scoreboard_client.retry`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from scoreboard_client.errors import ApiError
from scoreboard_client.models import (
    Accepted,
    ActionToken,
    BatchResult,
    BoardPage,
    Increment,
    Me,
    Session,
    UserRank,
)

T = TypeVar("T")
DEFAULT_BOARD = "global"


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    params: dict[str, str] | None = None
    body: Any = None
    authenticated: bool = False
    # Safe to send again after an attempt whose answer was lost: the service
    # counts it once (one-time tokens, event ids) or it changes nothing.
    retry_when_unsure: bool = True
    # The answer to a repeat of an attempt that may have been accepted: a
    # refusal saying "already done" means the lost attempt went through.
    after_lost_answer: Callable[[ApiError], T | None] | None = None
    name: str | None = None  # the path's template, for statistics (default: the path)


def _query(**values: object) -> dict[str, str]:
    return {name: str(value) for name, value in values.items() if value is not None}


def register(username: str, password: str) -> Call[dict[str, Any]]:
    return Call("POST", "/api/auth/register", dict,
                body={"username": username, "password": password}, retry_when_unsure=False)


def login(username: str, password: str) -> Call[Session]:
    return Call("POST", "/api/auth/login", Session.from_json,
                body={"username": username, "password": password})


def refresh(refresh_token: str) -> Call[Session]:
    # A lost answer spends the token: sending it again would revoke the session.
    return Call("POST", "/api/auth/refresh", Session.from_json,
                body={"refresh_token": refresh_token}, retry_when_unsure=False)


def logout() -> Call[None]:
    return Call("POST", "/api/auth/logout", lambda _: None, authenticated=True)


def me() -> Call[Me]:
    return Call("GET", "/api/me", Me.from_json, authenticated=True)


def my_rank(board: str) -> Call[UserRank]:
    return Call("GET", "/api/me/rank", UserRank.from_json, params=_query(board=board),
                authenticated=True)


def my_around(board: str, radius: int) -> Call[BoardPage]:
    return Call("GET", "/api/me/around", BoardPage.from_json,
                params=_query(board=board, radius=radius), authenticated=True)


def action_token(board: str | None, action: str | None) -> Call[ActionToken]:
    body = {name: value for name, value in (("board", board), ("action", action)) if value}
    return Call("POST", "/api/actions/token", ActionToken.from_json, body=body or None,
                authenticated=True)


def _already_spent(error: ApiError) -> Accepted | None:
    return Accepted(event_id=None, repeated=True) if error.code == "action_token_used" else None


def increment(token: str) -> Call[Accepted]:
    """One-time token: resending it is safe; if the lost attempt was accepted, the
    resend is refused as used, which means accepted."""
    return Call("POST", "/api/scores/increment", Accepted.from_json,
                body={"action_token": token}, authenticated=True,
                after_lost_answer=_already_spent)


def batch(increments: list[Increment]) -> Call[BatchResult]:
    """Each ``event_id`` counts once: a resent batch reports its repeats as duplicates."""
    return Call("POST", "/api/scores/batch", BatchResult.from_json,
                body={"increments": [item.as_json() for item in increments]},
                authenticated=True)


def top(board: str, limit: int) -> Call[BoardPage]:
    return Call("GET", "/api/scores/top", BoardPage.from_json,
                params=_query(board=board, limit=limit))


def page(board: str, limit: int, cursor: str | None) -> Call[BoardPage]:
    return Call("GET", "/api/scores/page", BoardPage.from_json,
                params=_query(board=board, limit=limit, cursor=cursor))


def user(user_id: str, board: str) -> Call[UserRank]:
    return Call("GET", f"/api/scores/users/{user_id}", UserRank.from_json,
                params=_query(board=board), name="/api/scores/users/{user_id}")


def around(user_id: str, board: str, radius: int) -> Call[BoardPage]:
    return Call("GET", f"/api/scores/around/{user_id}", BoardPage.from_json,
                params=_query(board=board, radius=radius), name="/api/scores/around/{user_id}")


def ranks(user_ids: list[str], board: str) -> Call[BoardPage]:
    return Call("GET", "/api/scores/ranks", BoardPage.from_json,
                params=_query(board=board, user_ids=",".join(user_ids)))
