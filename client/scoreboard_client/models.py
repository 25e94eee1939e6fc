"""The service's answers as typed values (extra fields are ignored, so a newer
service does not break an older client)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Session:
    access_token: str
    refresh_token: str
    expires_at: float  # time.time() when the access token expires
    user_id: str | None

    @classmethod
    def from_json(cls, body: dict[str, Any], *, now: float | None = None) -> Session:
        issued = time.time() if now is None else now
        return cls(access_token=body["access_token"], refresh_token=body["refresh_token"],
                   expires_at=issued + float(body["expires_in"]), user_id=body.get("user_id"))


@dataclass(frozen=True)
class Me:
    user_id: str
    username: str
    scopes: list[str]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Me:
        return cls(user_id=body["user_id"], username=body["username"],
                   scopes=list(body.get("scopes", [])))


@dataclass(frozen=True)
class ActionToken:
    action_token: str
    expires_at: float
    board: str | None = None
    action: str | None = None
    points: int | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ActionToken:
        return cls(action_token=body["action_token"], expires_at=float(body["expires_at"]),
                   board=body.get("board"), action=body.get("action"), points=body.get("points"))


@dataclass(frozen=True)
class Accepted:
    """An increment in the service's stream: it will be counted exactly once.

    ``repeated`` is True when an earlier attempt's answer was lost and the retry
    found the token already spent by that attempt (so ``event_id`` may be None)."""

    event_id: str | None
    repeated: bool = False

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Accepted:
        return cls(event_id=body.get("event_id"))


@dataclass(frozen=True)
class Increment:
    """One increment of a game backend's batch; ``event_id`` is its idempotency key."""

    user_id: str
    points: int
    event_id: str
    board: str | None = None
    username: str | None = None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"user_id": self.user_id, "points": self.points,
                                "event_id": self.event_id}
        if self.board is not None:
            body["board"] = self.board
        if self.username is not None:
            body["username"] = self.username
        return body


@dataclass(frozen=True)
class BatchResult:
    accepted: int
    duplicates: int
    refused: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> BatchResult:
        return cls(accepted=int(body["accepted"]), duplicates=int(body["duplicates"]),
                   refused=list(body.get("refused", [])))


@dataclass(frozen=True)
class Entry:
    rank: int
    user_id: str
    username: str
    score: int

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Entry:
        return cls(rank=int(body["rank"]), user_id=body["user_id"], username=body["username"],
                   score=int(body["score"]))


@dataclass(frozen=True)
class BoardPage:
    """A slice of a board: the top, a page, around a user, ranks of a list."""

    board: str
    version: int | None
    size: int | None
    entries: list[Entry]
    next_cursor: str | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> BoardPage:
        return cls(board=body["board"], version=body.get("version"), size=body.get("size"),
                   entries=[Entry.from_json(e) for e in body.get("entries", [])],
                   next_cursor=body.get("next_cursor"))


@dataclass(frozen=True)
class UserRank:
    board: str
    version: int | None
    user_id: str
    username: str
    rank: int
    score: int

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> UserRank:
        return cls(board=body["board"], version=body.get("version"), user_id=body["user_id"],
                   username=body["username"], rank=int(body["rank"]), score=int(body["score"]))


@dataclass(frozen=True)
class Snapshot:
    """A live snapshot of a board's top N (``version`` only grows)."""

    board: str
    version: int
    ts: int
    entries: list[Entry]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Snapshot:
        return cls(board=body["board"], version=int(body["version"]), ts=int(body["ts"]),
                   entries=[Entry.from_json(e) for e in body.get("entries", [])])
