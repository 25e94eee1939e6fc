"""What the lifespan creates and every route and connection uses: the broadcaster's
resources, in one object that uvicorn also hands to each WebSocket connection."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broadcaster.hub import Hub
from broadcaster.periods import PeriodFollower
from broadcaster.snapshots import SnapshotService
from broadcaster.watches import WatchService
from scoreboard.settings import Settings


@dataclass
class BroadcasterState:
    settings: Settings
    redis: Any  # redis.asyncio.Redis
    hub: Hub
    snapshots: SnapshotService
    watches: WatchService  # the personal rank feed
    periods: PeriodFollower
    # Open WebSocket connections (broadcaster.ws_connection), for the keepalive sweep.
    sockets: set[Any] = field(default_factory=set)
