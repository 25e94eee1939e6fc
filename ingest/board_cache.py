"""Board definitions as ingest sees them: an in-process copy of the Redis HASH.

Ingest reads no Postgres on a request, and not even Redis for a board it knows:
the whole HASH is read at start and again every ``BOARD_REFRESH_S`` by a task of
the lifespan (a changed action's points reach every process within that). A
board not in the copy is looked up in Redis once (one HGET, so a board created a
moment ago works at once) and, when Redis has it, kept.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from scoreboard.board_defs import BoardDefinition, from_json, publish_boards
from scoreboard.errors import RequestError

logger = logging.getLogger(__name__)


def board_not_found(board: str) -> RequestError:
    return RequestError(404, "board_not_found",
                        f"board {board!r} does not exist (boards are created by an operator)")


def board_closed(board: str) -> RequestError:
    return RequestError(409, "board_closed",
                        f"board {board!r} is closed: it takes no more increments")


class BoardCache:
    def __init__(self, redis: Any, definitions_key: str) -> None:
        self.redis = redis
        self.key = definitions_key
        self.known: dict[str, BoardDefinition] = {}

    async def start(self, pool: Any, *, service_max: int) -> None:
        """At process start: publish Postgres's boards to Redis, then read them. With
        Redis down, start anyway (reads fall back to Postgres; writes answer 503) and
        let the refresh task fill the copy once Redis is back."""
        try:
            await publish_boards(pool, self.redis, self.key, service_max=service_max)
            await self.refresh()
        except (OSError, RedisError, RedisClusterException):  # the latter: no cluster node
            logger.warning("board definitions not loaded at start", exc_info=True)

    async def refresh(self) -> None:
        raw = await self.redis.hgetall(self.key)
        self.known = {(b.decode() if isinstance(b, bytes) else b): from_json(
            b.decode() if isinstance(b, bytes) else b, v) for b, v in raw.items()}

    async def refresh_forever(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.refresh()
            except (OSError, RedisError, RedisClusterException):  # keep the last copy, retry later
                logger.warning("board definitions not refreshed", exc_info=True)

    async def get(self, board: str) -> BoardDefinition:
        """The board's definition, or 404 ``board_not_found``."""
        found = self.known.get(board)
        if found is not None:
            return found
        raw = await self.redis.hget(self.key, board)
        if raw is None:
            raise board_not_found(board)
        found = self.known[board] = from_json(board, raw)
        return found

    async def get_open(self, board: str) -> BoardDefinition:
        """The definition of an open board: 404 ``board_not_found``, or 409
        ``board_closed`` for a closed one (its boards stay readable)."""
        found = await self.get(board)
        if not found.is_open:
            raise board_closed(board)
        return found
