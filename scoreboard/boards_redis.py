"""Boards read from Redis: one script call per slice, read-only."""

from __future__ import annotations

from typing import Any

from scoreboard.board_reads import Row, Slice
from scoreboard.keys import Keys
from scoreboard.lua import Scripts
from scoreboard.ranking import total_of, zset_score
from scoreboard.redis_clients import is_cluster


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBoards:
    def __init__(self, redis: Any, scripts: Scripts, keys: Keys) -> None:
        self.redis = redis
        self.scripts = scripts
        self.keys = keys

    async def slice(self, board: str, start: int, count: int) -> Slice:
        page = await self.scripts.board_page(self.keys, board=board, start=start,
                                             stop=start + count - 1)
        rows = [Row(total=total_of(score), member=member, username=username)
                for member, score, username in page.rows]
        return Slice(version=page.revision, size=page.size, start=start,
                     higher_than_first=page.higher_than_first, rows=rows)

    async def position(self, board: str, user_id: str) -> int | None:
        entry = await self.redis.hget(self.keys.board_entries(board), user_id)
        if entry is None:
            return None
        member = _text(entry).partition("|")[2]
        rank = await self.redis.zrank(self.keys.board(board), member)
        return None if rank is None else int(rank)

    async def position_after(self, board: str, total: int, member: str) -> int:
        key, score = self.keys.board(board), zset_score(total)
        # (no MULTI on a cluster: the four reads may straddle a write there, which
        # the search below tolerates as it does an entry that moved)
        async with self.redis.pipeline(transaction=not is_cluster(self.redis)) as pipe:
            pipe.zrank(key, member)
            pipe.zscore(key, member)
            pipe.zcount(key, "-inf", f"({score}")
            pipe.zcount(key, score, score)
            rank, current, before, tied = await pipe.execute()
        if rank is not None and current is not None and float(current) == score:
            return int(rank) + 1
        # The cursor's entry moved: find its place among the entries tied with
        # it by binary search over their positions (they are sorted by member).
        low, high = int(before), int(before) + int(tied)
        while low < high:
            middle = (low + high) // 2
            (probe,) = await self.redis.zrange(key, middle, middle)
            if _text(probe) <= member:
                low = middle + 1
            else:
                high = middle
        return low
