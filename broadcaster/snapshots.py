"""Building board snapshots and deciding when to send them.

A snapshot is the top N of a board with the board's revision as ``version``,
read in one consistent script call, so every broadcaster process gives the
same version to the same state. A snapshot goes out only when the top N
differs from the last one sent and its version is newer: versions only grow.

Changes are noticed two ways: the workers' pub/sub notices, and a poll of
the revisions of watched boards about once a second, so a lost notice cannot
leave spectators stale.

With tracing on, a notice carries the worker's batch span context; each
snapshot read is a span linked to the batches noticed since the last read,
which completes the trace of an increment up to the snapshot that shows it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson

from broadcaster.frames import sse_event, text_frame
from broadcaster.hub import Hub
from broadcaster.throttle import BoardSchedule
from scoreboard.boards_redis import RedisBoards
from scoreboard.keys import Keys
from scoreboard.ranking import ranks
from scoreboard.redis_clients import REDIS_FAILURES
from scoreboard.tracing import Tracing, inner_span
from scoreboard.windows import ALL_TIME, split_scope

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """One state of a board's top N, in every wire form, encoded once for all clients."""

    board: str
    version: int
    entries: list[dict[str, Any]]
    payload: bytes  # the JSON message
    ws_frame: bytes  # the complete WebSocket frame carrying it
    sse_event: bytes  # the Server-Sent Event carrying it

    @classmethod
    def build(cls, board: str, version: int, entries: list[dict[str, Any]]) -> Snapshot:
        """``board`` is what the hub keys spectators by: a board, or a window's period
        (its scope, see scoreboard/windows.py), sent as board, window and period."""
        name, window, period = split_scope(board)
        message: dict[str, Any] = {"type": "snapshot", "board": name, "version": version,
                                   "ts": int(time.time() * 1000), "entries": entries}
        if window != ALL_TIME:
            message["window"], message["period"] = window, period
        payload = orjson.dumps(message)
        return cls(board, version, entries, payload, text_frame(payload), sse_event(payload))


class SnapshotService:
    def __init__(self, *, redis: Any, boards: RedisBoards, keys: Keys, hub: Hub, size: int,
                 interval_s: float, poll_s: float, rank_mode: str,
                 tracing: Tracing | None = None,
                 pubsub: Callable[[], Any] | None = None) -> None:
        """``pubsub``: makes the PubSub of the change notices (default the client's;
        on a cluster, one of a node's: scoreboard/redis_clients.py)."""
        self.redis = redis
        self.pubsub = pubsub or (lambda: redis.pubsub(ignore_subscribe_messages=True))
        self.boards = boards
        self.keys = keys
        self.hub = hub
        self.size = size
        self.poll_s = poll_s
        self.rank_mode = rank_mode
        self.latest: dict[str, Snapshot] = {}
        self.schedule = BoardSchedule(interval_s=interval_s, job=self._send)
        self._loading: dict[str, asyncio.Future[Snapshot]] = {}
        self.tracing = tracing
        # board -> traceparents of the batches noticed since its last read (tracing on)
        self._noticed_batches: dict[str, list[str]] = {}
        # Called with a board's name on each change noticed (the rank feed's ticks).
        self.change_listeners: list[Callable[[str], None]] = []

    async def _read(self, board: str) -> tuple[int, list[dict[str, Any]]]:
        piece = await self.boards.slice(board, 0, self.size)
        rank_list = ranks([row.total for row in piece.rows], first_position=0,
                          first_competition_rank=piece.higher_than_first + 1,
                          mode=self.rank_mode)
        entries = [{"rank": rank, "user_id": row.user_id, "username": row.username,
                    "score": row.total} for rank, row in zip(rank_list, piece.rows, strict=True)]
        return piece.version or 0, entries

    async def refresh(self, board: str) -> Snapshot | None:
        """Read the board; return a new snapshot if its top N changed (and keep it)."""
        version, entries = await self._read(board)
        previous = self.latest.get(board)
        if previous is not None and (version <= previous.version or entries == previous.entries):
            if version > previous.version:  # same top N, newer revision: remember it
                self.latest[board] = replace(previous, version=version)
            return None
        snapshot = Snapshot.build(board, version, entries)
        self.latest[board] = snapshot
        return snapshot

    def cached(self, board: str) -> Snapshot | None:
        """The kept snapshot of a watched board (kept up to date while watched), else None.
        Ask before joining the board: once joined, the board counts as watched."""
        return self.latest.get(board) if board in self.hub.boards else None

    async def current(self, board: str) -> Snapshot:
        """The snapshot a new spectator of ``board`` starts from. Spectators arriving
        together for a board nobody watched share one read."""
        snapshot = self.cached(board)
        if snapshot is not None:
            return snapshot
        loading = self._loading.get(board)
        if loading is None:
            loading = asyncio.ensure_future(self._load(board))
            self._loading[board] = loading
            loading.add_done_callback(lambda _: self._loading.pop(board, None))
        return await asyncio.shield(loading)

    async def _load(self, board: str) -> Snapshot:
        await self.refresh(board)
        return self.latest[board]

    def forget(self, board: str) -> None:
        """Nobody watches ``board`` any more: drop what is kept for it (any name
        can be asked for, so per-board state lives only while it is watched)."""
        self.latest.pop(board, None)
        self.schedule.forget(board)
        self._noticed_batches.pop(board, None)

    def notice(self, board: str, traceparent: str = "") -> None:
        """The board changed (a notice, or the poll saw a newer revision)."""
        for listener in self.change_listeners:
            listener(board)
        if board not in self.hub.boards:
            self.latest.pop(board, None)  # nobody watching: rebuild on next connect
            return
        if traceparent and self.tracing is not None:
            self._noticed_batches.setdefault(board, []).append(traceparent)
        self.schedule.change(board)

    async def _send(self, board: str) -> None:
        """The schedule's job: read the board, publish the snapshot if it changed."""
        try:
            with inner_span(self.tracing, "snapshot", self._noticed_batches.pop(board, ()),
                            **{"scoreboard.board": board}):
                snapshot = await self.refresh(board)
                if snapshot is not None:
                    self.hub.publish(snapshot)
        except REDIS_FAILURES as exc:
            logger.warning("snapshot of %s failed: %r", board, exc)

    async def listen(self) -> None:
        """Follow the workers' change notices, reconnecting after any failure."""
        while True:
            try:
                pubsub = self.pubsub()
            except REDIS_FAILURES as exc:  # on a cluster: no node known yet
                logger.warning("change notices not subscribed: %r; retrying", exc)
                await asyncio.sleep(1)
                continue
            try:
                await pubsub.subscribe(self.keys.board_changes)
                async for message in pubsub.listen():
                    if message and message.get("type") == "message":
                        data = message["data"]
                        text = data.decode() if isinstance(data, bytes) else str(data)
                        board, _, traceparent = text.partition("\n")
                        self.notice(board, traceparent)
            except REDIS_FAILURES as exc:
                logger.warning("change notices interrupted: %r; resubscribing", exc)
                await asyncio.sleep(1)
            finally:
                await pubsub.aclose()

    async def poll(self) -> None:
        """About once a second, catch changes whose notice was lost."""
        while True:
            await asyncio.sleep(self.poll_s)
            watched = [b for b in self.hub.boards if b in self.latest]
            if not watched:
                continue
            try:
                revisions = await self.redis.mget([self.keys.board_revision(b) for b in watched])
            except REDIS_FAILURES as exc:
                logger.warning("revision poll failed: %r", exc)
                continue
            for board, revision in zip(watched, revisions, strict=True):
                kept = self.latest.get(board)  # None: forgotten while the read was out
                if kept is not None and revision is not None and int(revision) > kept.version:
                    self.notice(board)
