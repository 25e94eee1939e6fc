"""The live feed (the broadcaster's WebSocket) with reconnect, async and sync.

A feed yields :class:`~scoreboard_client.models.Snapshot` values of its board.
When the connection drops it reconnects with capped, jittered backoff; the
first snapshot after a reconnect is the board as it is then, so nothing is
missed for long. Versions only grow: a snapshot not newer than the last one
yielded for its board (a repeat after reconnecting) is skipped.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Iterator
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection as SyncConnection
from websockets.sync.client import connect as sync_connect

from scoreboard_client.models import Snapshot
from scoreboard_client.retry import RetryPolicy

MAX_BACKOFF_STEP = 10


def feed_url(live_url: str, board: str) -> str:
    return f"{live_url.rstrip('/')}/ws?board={quote(board, safe='')}"


def subscribe_message(board: str) -> str:
    return json.dumps({"type": "subscribe", "board": board})


class SnapshotFilter:
    """Which messages to hand out: snapshots of the current board, newer than
    the last one handed out for it. Pure."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}

    def accept(self, raw: str | bytes, board: str) -> Snapshot | None:
        message = json.loads(raw)
        if not isinstance(message, dict) or message.get("type") != "snapshot":
            return None
        snapshot = Snapshot.from_json(message)
        if snapshot.board != board or snapshot.version <= self.versions.get(board, -1):
            return None
        self.versions[board] = snapshot.version
        return snapshot


class AsyncLiveFeed:
    def __init__(self, live_url: str, board: str, *, reconnect: bool = True,
                 retry: RetryPolicy | None = None) -> None:
        self.live_url = live_url
        self.board = board
        self.reconnect = reconnect
        self.retry = retry or RetryPolicy()
        self.reconnects = 0
        self._filter = SnapshotFilter()
        self._connection: ClientConnection | None = None
        self._generators: list[AsyncGenerator[Snapshot, None]] = []

    def __aiter__(self) -> AsyncGenerator[Snapshot, None]:
        generator = self._snapshots()
        self._generators.append(generator)
        return generator

    async def aclose(self) -> None:
        """Stop the feed and close its connection; iteration ends."""
        self.reconnect = False
        for generator in self._generators:
            await generator.aclose()

    async def switch(self, board: str) -> None:
        """Follow ``board`` from now on (on the open connection, or the next one)."""
        self.board = board
        if self._connection is not None:
            await self._connection.send(subscribe_message(board))

    async def _snapshots(self) -> AsyncGenerator[Snapshot, None]:
        failures = 0
        while True:
            try:
                async with connect(feed_url(self.live_url, self.board)) as connection:
                    self._connection, failures = connection, 0
                    async for raw in connection:
                        snapshot = self._filter.accept(raw, self.board)
                        if snapshot is not None:
                            yield snapshot
            except (OSError, WebSocketException, TimeoutError):
                if not self.reconnect:
                    raise
            finally:
                self._connection = None
            if not self.reconnect:
                return
            failures += 1
            self.reconnects += 1
            await asyncio.sleep(self.retry.delay(min(failures, MAX_BACKOFF_STEP)))


class SyncLiveFeed:
    def __init__(self, live_url: str, board: str, *, reconnect: bool = True,
                 retry: RetryPolicy | None = None) -> None:
        self.live_url = live_url
        self.board = board
        self.reconnect = reconnect
        self.retry = retry or RetryPolicy()
        self.reconnects = 0
        self._filter = SnapshotFilter()
        self._connection: SyncConnection | None = None

    def __iter__(self) -> Iterator[Snapshot]:
        return self._snapshots()

    def switch(self, board: str) -> None:
        self.board = board
        if self._connection is not None:
            self._connection.send(subscribe_message(board))

    def close(self) -> None:
        """Stop the feed (from another thread too); iteration ends."""
        self.reconnect = False
        if self._connection is not None:
            self._connection.close()

    def _snapshots(self) -> Iterator[Snapshot]:
        failures = 0
        while True:
            try:
                with sync_connect(feed_url(self.live_url, self.board)) as connection:
                    self._connection, failures = connection, 0
                    for raw in connection:
                        snapshot = self._filter.accept(raw, self.board)
                        if snapshot is not None:
                            yield snapshot
            except (OSError, WebSocketException, TimeoutError):
                if not self.reconnect:
                    raise
            finally:
                self._connection = None
            if not self.reconnect:
                return
            failures += 1
            self.reconnects += 1
            time.sleep(self.retry.delay(min(failures, MAX_BACKOFF_STEP)))
