"""Watched players: who watches whom, one read per player and tick, one encoding for all.

Spectators that watch the same player on the same board share one entry here:
its watchers and the last ``RankUpdate`` sent. When a board changes (the same
change notices and revision poll as snapshots), its watched players are read
after the board's watch throttle (``broadcaster.throttle``, the snapshots'
leading and trailing edge, with the same interval): every watched player of
the board in one script call per ``CHUNK`` players, never a read per
connection. A player whose standing changed gets one update, encoded once and
handed to each of its watchers, who never make the service wait (each writes
it to its socket or keeps it as the newest unsent one).

Per-board and per-player entries live only while someone watches: any user
id can be asked for, so nothing here outlives its last watcher.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import Counter, Gauge

from broadcaster.rank_feed import RankUpdate, overtaker, standing_of
from broadcaster.throttle import BoardSchedule
from scoreboard.keys import Keys
from scoreboard.lua import Scripts
from scoreboard.redis_clients import REDIS_FAILURES

logger = logging.getLogger(__name__)

CHUNK = 200  # watched players per script call: each call holds Redis for well under 1 ms
WATCHES = Gauge("scoreboard_watches", "Watched players, counted once per watching connection",
                multiprocess_mode="livesum")  # several processes: one sum
RANK_UPDATES_BUILT = Counter("scoreboard_rank_updates_built_total",
                             "Rank updates of watched players encoded and fanned out")
RANK_UPDATES_SENT = Counter("scoreboard_rank_updates_sent_total",
                            "Rank updates handed to watching clients")


class Watcher(Protocol):
    """What the service needs of a watching connection, whatever its transport."""

    def offer_rank(self, update: RankUpdate) -> None:
        """Take ``update`` now or keep it as the newest unsent one of its player; never waits."""


@dataclass
class Watched:
    last: RankUpdate  # the last standing handed out (the base of the next comparison)
    watchers: set[Watcher] = field(default_factory=set)


class WatchService:
    def __init__(self, *, scripts: Scripts, keys: Keys, interval_s: float,
                 rank_mode: str) -> None:
        self.scripts = scripts
        self.keys = keys
        self.rank_mode = rank_mode
        self.boards: dict[str, dict[str, Watched]] = {}
        self.schedule = BoardSchedule(interval_s=interval_s, job=self._tick)
        self._loading: dict[tuple[str, str], asyncio.Future[RankUpdate | None]] = {}

    async def current(self, board: str, user_id: str) -> RankUpdate | None:
        """Where ``user_id`` stands now: the kept update while someone watches them,
        else one read (shared by watchers arriving together). None for an unknown
        player. Raises ``redis.exceptions.RedisError`` when Redis does not answer."""
        watched = self.boards.get(board, {}).get(user_id)
        if watched is not None:
            return watched.last
        key = (board, user_id)
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(self._first(board, user_id))
            self._loading[key] = loading
            loading.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(loading)

    async def _first(self, board: str, user_id: str) -> RankUpdate | None:
        revision, (player,) = await self.scripts.watch_ranks(self.keys, board=board,
                                                             user_ids=[user_id])
        if not player.known:
            return None
        return RankUpdate.build(board, revision, standing_of(user_id, player, self.rank_mode))

    def add(self, watcher: Watcher, update: RankUpdate) -> None:
        """``watcher`` follows the player of ``update`` (from ``current``) from now on."""
        players = self.boards.setdefault(update.board, {})
        watched = players.get(update.standing.user_id)
        if watched is None:
            watched = players[update.standing.user_id] = Watched(update)
            # ``update`` was read while nobody watched this player, so a change
            # committed during that read was noticed for an unwatched board and
            # dropped: read once more on the board's schedule (nothing goes out
            # when the standing is the same).
            self.schedule.change(update.board)
        elif update.version > watched.last.version:
            watched.last = update
        if watcher not in watched.watchers:
            watched.watchers.add(watcher)
            WATCHES.inc()

    def remove(self, watcher: Watcher, board: str, user_id: str) -> None:
        players = self.boards.get(board)
        watched = players.get(user_id) if players is not None else None
        if players is None or watched is None or watcher not in watched.watchers:
            return
        watched.watchers.discard(watcher)
        WATCHES.dec()
        if not watched.watchers:
            del players[user_id]
            if not players:
                del self.boards[board]
                self.schedule.forget(board)

    def watched_players(self) -> int:
        return sum(len(players) for players in self.boards.values())

    def notice(self, board: str) -> None:
        """The board changed: read its watched players after its throttle."""
        if board not in self.boards:
            return
        self.schedule.change(board)

    async def _tick(self, board: str) -> None:
        """The schedule's job: read the board's watched players, hand out what changed."""
        try:
            await self._read_all(board)
        except REDIS_FAILURES as exc:
            logger.warning("rank feed of %s failed: %r", board, exc)

    async def _read_all(self, board: str) -> None:
        user_ids = list(self.boards.get(board, {}))
        chunks = [user_ids[i:i + CHUNK] for i in range(0, len(user_ids), CHUNK)]
        replies = await asyncio.gather(*[
            self.scripts.watch_ranks(self.keys, board=board, user_ids=chunk) for chunk in chunks])
        players = self.boards.get(board, {})  # as it is now: watchers may have left
        for chunk, (revision, found) in zip(chunks, replies, strict=True):
            for user_id, player in zip(chunk, found, strict=True):
                watched = players.get(user_id)
                if watched is None or revision < watched.last.version:
                    continue
                standing = standing_of(user_id, player, self.rank_mode)
                previous = watched.last.standing
                if standing.same_as(previous):
                    continue
                update = RankUpdate.build(board, revision, standing,
                                          overtaker(previous, standing))
                watched.last = update
                for watcher in watched.watchers:
                    watcher.offer_rank(update)
                RANK_UPDATES_BUILT.inc()
                RANK_UPDATES_SENT.inc(len(watched.watchers))
