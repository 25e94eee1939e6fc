"""Spectators of a window follow its current period.

``{"type": "subscribe", "board": "arena", "window": "daily"}`` on /ws (and
``/sse?board=arena&window=daily``) watches the daily window's current period,
whose snapshots the hub keys by the period's scope (``arena/daily/2026-12-02``,
see scoreboard/windows.py). At the period's end the spectators of the old
scope are moved to the new one, which starts empty, and get its first snapshot
(versions start again with the new period; each snapshot names its period).
Past periods are not pushed: they no longer change, and are read over HTTP
(``/api/scores/top?window=daily&period=...``).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from broadcaster.hub import Hub
from broadcaster.snapshots import SnapshotService
from scoreboard.board_defs import DefinitionCache
from scoreboard.keys import Keys
from scoreboard.redis_clients import REDIS_FAILURES
from scoreboard.windows import ALL_TIME, SCOPE_SEPARATOR, TargetError, resolve_target, split_scope

logger = logging.getLogger(__name__)

ROLLOVER_CHECK_S = 1.0


class PeriodFollower:
    def __init__(self, *, redis: Any, keys: Keys, hub: Hub, snapshots: SnapshotService,
                 refresh_s: float) -> None:
        self.hub = hub
        self.snapshots = snapshots
        self.definitions = DefinitionCache(redis, keys.board_definitions, refresh_s=refresh_s)

    async def scope_of(self, board: str, window: str, now: datetime | None = None) -> str:
        """Where the current period of ``window`` of ``board`` is kept; ``TargetError``
        for an unknown board or window, or a window with no period running."""
        if window == ALL_TIME:
            return board
        found = (await self.definitions.for_boards({board})).get(board)
        if found is None:
            raise TargetError("board_not_found", "board", f"board {board!r} does not exist")
        return resolve_target(board, found.spec, window, None, now or datetime.now(UTC)).scope

    async def rollover(self, now: datetime | None = None) -> int:
        """Move the spectators of every ended period to its window's current one;
        returns how many moved. A window with no period now (between seasons) keeps
        showing its last one."""
        moved = 0
        for old in [name for name in self.hub.boards if SCOPE_SEPARATOR in name]:
            board, window, _ = split_scope(old)
            try:
                new = await self.scope_of(board, window, now)
            except TargetError:
                continue
            if new == old:
                continue
            snapshot = await self.snapshots.current(new)
            for spectator in list(self.hub.boards.get(old, ())):
                move_to = getattr(spectator, "move_to", None)
                if move_to is not None:  # a WebSocket: its watched players move too
                    move_to(new)
                else:
                    self.hub.join(spectator, new)
                    spectator.version_sent = -1
                    spectator.offer(snapshot)
                moved += 1
        return moved

    async def rollover_forever(self) -> None:
        while True:
            await asyncio.sleep(ROLLOVER_CHECK_S)
            try:
                await self.rollover()
            except REDIS_FAILURES as exc:
                logger.warning("period rollover check failed: %r", exc)
