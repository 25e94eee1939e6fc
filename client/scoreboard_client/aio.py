"""The asyncio client: ``async with AsyncScoreboardClient(url) as client: ...``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import httpx

from scoreboard_client import calls
from scoreboard_client.base import ClientBase
from scoreboard_client.calls import DEFAULT_BOARD, Call
from scoreboard_client.flow import Answer, Lost, Refresh, Send, Sleep, conversation
from scoreboard_client.live import AsyncLiveFeed
from scoreboard_client.models import (
    Accepted,
    ActionToken,
    BatchResult,
    BoardPage,
    Entry,
    Increment,
    Me,
    Session,
    UserRank,
)
from scoreboard_client.retry import RetryPolicy
from scoreboard_client.session import RequestObserver

T = TypeVar("T")


class AsyncScoreboardClient(ClientBase):
    """The asyncio front end (see :class:`~scoreboard_client.base.ClientBase`)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, live_url: str | None = None,
                 timeout_s: float = 10.0, retry: RetryPolicy | None = None,
                 headers: dict[str, str] | None = None, session: Session | None = None,
                 on_request: RequestObserver | None = None) -> None:
        super().__init__(base_url, live_url=live_url, retry=retry, session=session,
                         on_request=on_request)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, headers=headers)

    async def __aenter__(self) -> AsyncScoreboardClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call[T]) -> T:
        if self._refresh_first(call):
            await self.refresh()
        flow = conversation(call, self.retry, can_refresh=self.session is not None)
        result: Answer | Lost | None = None
        try:
            while True:
                step = flow.send(result)
                result = None
                if isinstance(step, Send):
                    result = await self._transmit(step.call)
                elif isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                elif isinstance(step, Refresh):
                    await self.refresh()
        except StopIteration as done:
            value: T = done.value
            return value

    async def _transmit(self, call: Call[Any]) -> Answer | Lost:
        started = time.perf_counter()
        try:
            response = await self._http.request(call.method, call.path,
                                                   **self._request_options(call))
        except httpx.TransportError as exc:
            return self._lost(call, exc, started)
        return self._answer(call, response, started)

    # Accounts and sessions.
    async def register(self, username: str, password: str) -> str:
        """A new player account; returns its ``user_id``."""
        registered = await self._send(calls.register(username, password))
        return str(registered["user_id"])

    async def login(self, username: str, password: str) -> Session:
        self.session = await self._send(calls.login(username, password))
        return self.session

    async def refresh(self) -> Session:
        if self.session is None:
            raise RuntimeError("log in first")
        self.session = await self._send(calls.refresh(self.session.refresh_token))
        return self.session

    async def logout(self) -> None:
        await self._send(calls.logout())
        self.session = None

    async def me(self) -> Me:
        return await self._send(calls.me())

    # Scores.
    async def action_token(self, *, board: str | None = None,
                           action: str | None = None) -> ActionToken:
        return await self._send(calls.action_token(board, action))

    async def increment(self, action_token: str) -> Accepted:
        return await self._send(calls.increment(action_token))

    async def score(self, *, board: str | None = None, action: str | None = None) -> Accepted:
        """An action token, then the increment that spends it."""
        token = await self.action_token(board=board, action=action)
        return await self.increment(token.action_token)

    async def batch(self, increments: list[Increment]) -> BatchResult:
        return await self._send(calls.batch(increments))

    # Reads.
    async def top(self, board: str = DEFAULT_BOARD, limit: int = 10) -> BoardPage:
        return await self._send(calls.top(board, limit))

    async def entries(self, board: str = DEFAULT_BOARD, *, page_size: int = 100
                      ) -> AsyncIterator[Entry]:
        """Every entry of a board, page by page (stable while scores change)."""
        cursor: str | None = None
        while True:
            page = await self._send(calls.page(board, page_size, cursor))
            for entry in page.entries:
                yield entry
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def user(self, user_id: str, board: str = DEFAULT_BOARD) -> UserRank:
        return await self._send(calls.user(user_id, board))

    async def around(self, user_id: str, board: str = DEFAULT_BOARD,
                     radius: int = 5) -> BoardPage:
        return await self._send(calls.around(user_id, board, radius))

    async def ranks(self, user_ids: list[str], board: str = DEFAULT_BOARD) -> BoardPage:
        return await self._send(calls.ranks(user_ids, board))

    async def my_rank(self, board: str = DEFAULT_BOARD) -> UserRank:
        return await self._send(calls.my_rank(board))

    async def my_around(self, board: str = DEFAULT_BOARD, radius: int = 5) -> BoardPage:
        return await self._send(calls.my_around(board, radius))

    # The live feed.
    def live(self, board: str = DEFAULT_BOARD, *, reconnect: bool = True) -> AsyncLiveFeed:
        """Snapshots of ``board`` as they come (``async for snapshot in ...``),
        reconnecting by itself; ``await feed.switch(board)`` changes boards."""
        return AsyncLiveFeed(self.live_url, board, reconnect=reconnect, retry=self.retry)
