"""Python client of the live scoreboard service, async and sync.

    from scoreboard_client import ScoreboardClient
    with ScoreboardClient("http://127.0.0.1:8000") as client:
        client.login("alice", "correct horse")
        client.score()                      # an action token, then the increment
        print(client.my_rank())
        for snapshot in client.live("global"):
            print(snapshot.entries)

``AsyncScoreboardClient`` has the same methods as coroutines.
"""

from __future__ import annotations

from scoreboard_client.aio import AsyncScoreboardClient
from scoreboard_client.errors import (
    ApiError,
    Forbidden,
    NotFound,
    RateLimited,
    ScoreboardClientError,
    TransportError,
    Unauthorized,
    Unavailable,
)
from scoreboard_client.live import AsyncLiveFeed, SyncLiveFeed
from scoreboard_client.models import (
    Accepted,
    ActionToken,
    BatchResult,
    BoardPage,
    Entry,
    Increment,
    Me,
    Session,
    Snapshot,
    UserRank,
)
from scoreboard_client.retry import RetryPolicy
from scoreboard_client.session import RequestObserver
from scoreboard_client.sync import ScoreboardClient

__all__ = [
    "Accepted", "ActionToken", "ApiError", "AsyncLiveFeed", "AsyncScoreboardClient",
    "BatchResult", "BoardPage", "Entry", "Forbidden", "Increment", "Me", "NotFound",
    "RateLimited", "RequestObserver", "RetryPolicy", "ScoreboardClient",
    "ScoreboardClientError", "Session", "Snapshot", "SyncLiveFeed", "TransportError",
    "Unauthorized", "Unavailable", "UserRank",
]
