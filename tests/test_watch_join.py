"""The rank feed for a player whose first standing is read while the board changes.

A player nobody watches yet is read once (``WatchService.current``) and then
added. A change committed during that read is noticed for a board with no
watched players and dropped, so without a second read the new watcher would
keep the older standing until the board's next change (seen as a flaky page
test: the panel stayed on the score from before a reconnect)."""

from __future__ import annotations

import asyncio
import time

from broadcaster.rank_feed import RankUpdate
from broadcaster.watches import WatchService
from scoreboard.keys import Keys
from scoreboard.lua import register_scripts
from tests.board_support import entry, seed
from tests.servers import Backing, fresh_name

INTERVAL_S = 0.05


class Inbox:
    def __init__(self) -> None:
        self.updates: list[RankUpdate] = []
        self.arrived = asyncio.Event()

    def offer_rank(self, update: RankUpdate) -> None:
        self.updates.append(update)
        self.arrived.set()


def follow_a(backing: Backing, keys: Keys, *, change_during_first_read: bool
             ) -> list[RankUpdate]:
    """What a new watcher of player "a" (rank 2 of 2) receives after its first
    standing, with or without a change committed between that read and ``add``."""
    board = fresh_name("watch-join")
    now = int(time.time() * 1000)
    seed(backing, keys, [entry("a", 10, now, board=board), entry("b", 20, now, board=board)])

    async def run() -> list[RankUpdate]:
        client = backing.async_redis()
        watches = WatchService(scripts=register_scripts(client), keys=keys,
                               interval_s=INTERVAL_S, rank_mode="competition")
        inbox = Inbox()
        try:
            first = await watches.current(board, "a")
            assert first is not None and first.standing.rank == 2
            if change_during_first_read:  # its notice finds no watched player on the board
                await asyncio.to_thread(seed, backing, keys, [entry("a", 15, now, board=board)])
                watches.notice(board)
            watches.add(inbox, first)
            if change_during_first_read:
                await asyncio.wait_for(inbox.arrived.wait(), timeout=10)
            await asyncio.sleep(10 * INTERVAL_S)  # the second read has long run
            return inbox.updates
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_a_change_during_a_new_watchers_first_read_reaches_it(backing: Backing,
                                                               keys: Keys) -> None:
    updates = follow_a(backing, keys, change_during_first_read=True)
    assert [(u.standing.rank, u.standing.score) for u in updates] == [(1, 25)]


def test_a_new_watcher_with_nothing_changed_gets_nothing_more(backing: Backing,
                                                              keys: Keys) -> None:
    assert follow_a(backing, keys, change_during_first_read=False) == []
