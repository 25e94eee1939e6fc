"""The blocking client: ``with ScoreboardClient(url) as client: ...``; the same calls,
retries and refreshes as :class:`~scoreboard_client.aio.AsyncScoreboardClient`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, TypeVar

import httpx

from scoreboard_client import calls
from scoreboard_client.base import ClientBase
from scoreboard_client.calls import DEFAULT_BOARD, Call
from scoreboard_client.flow import Answer, Lost, Refresh, Send, Sleep, conversation
from scoreboard_client.live import SyncLiveFeed
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


class ScoreboardClient(ClientBase):
    """The blocking front end (see :class:`~scoreboard_client.base.ClientBase`)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, live_url: str | None = None,
                 timeout_s: float = 10.0, retry: RetryPolicy | None = None,
                 headers: dict[str, str] | None = None, session: Session | None = None,
                 on_request: RequestObserver | None = None) -> None:
        super().__init__(base_url, live_url=live_url, retry=retry, session=session,
                         on_request=on_request)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, headers=headers)

    def __enter__(self) -> ScoreboardClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call[T]) -> T:
        if self._refresh_first(call):
            self.refresh()
        flow = conversation(call, self.retry, can_refresh=self.session is not None)
        result: Answer | Lost | None = None
        try:
            while True:
                step = flow.send(result)
                result = None
                if isinstance(step, Send):
                    result = self._transmit(step.call)
                elif isinstance(step, Sleep):
                    time.sleep(step.seconds)
                elif isinstance(step, Refresh):
                    self.refresh()
        except StopIteration as done:
            value: T = done.value
            return value

    def _transmit(self, call: Call[Any]) -> Answer | Lost:
        started = time.perf_counter()
        try:
            response = self._http.request(call.method, call.path,
                                                   **self._request_options(call))
        except httpx.TransportError as exc:
            return self._lost(call, exc, started)
        return self._answer(call, response, started)

    # Accounts and sessions.
    def register(self, username: str, password: str) -> str:
        """A new player account; returns its ``user_id``."""
        registered = self._send(calls.register(username, password))
        return str(registered["user_id"])

    def login(self, username: str, password: str) -> Session:
        self.session = self._send(calls.login(username, password))
        return self.session

    def refresh(self) -> Session:
        if self.session is None:
            raise RuntimeError("log in first")
        self.session = self._send(calls.refresh(self.session.refresh_token))
        return self.session

    def logout(self) -> None:
        self._send(calls.logout())
        self.session = None

    def me(self) -> Me:
        return self._send(calls.me())

    # Scores.
    def action_token(self, *, board: str | None = None,
                           action: str | None = None) -> ActionToken:
        return self._send(calls.action_token(board, action))

    def increment(self, action_token: str) -> Accepted:
        return self._send(calls.increment(action_token))

    def score(self, *, board: str | None = None, action: str | None = None) -> Accepted:
        """An action token, then the increment that spends it."""
        token = self.action_token(board=board, action=action)
        return self.increment(token.action_token)

    def batch(self, increments: list[Increment]) -> BatchResult:
        return self._send(calls.batch(increments))

    # Reads.
    def top(self, board: str = DEFAULT_BOARD, limit: int = 10) -> BoardPage:
        return self._send(calls.top(board, limit))

    def entries(self, board: str = DEFAULT_BOARD, *, page_size: int = 100
                      ) -> Iterator[Entry]:
        """Every entry of a board, page by page (stable while scores change)."""
        cursor: str | None = None
        while True:
            page = self._send(calls.page(board, page_size, cursor))
            yield from page.entries
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def user(self, user_id: str, board: str = DEFAULT_BOARD) -> UserRank:
        return self._send(calls.user(user_id, board))

    def around(self, user_id: str, board: str = DEFAULT_BOARD,
                     radius: int = 5) -> BoardPage:
        return self._send(calls.around(user_id, board, radius))

    def ranks(self, user_ids: list[str], board: str = DEFAULT_BOARD) -> BoardPage:
        return self._send(calls.ranks(user_ids, board))

    def my_rank(self, board: str = DEFAULT_BOARD) -> UserRank:
        return self._send(calls.my_rank(board))

    def my_around(self, board: str = DEFAULT_BOARD, radius: int = 5) -> BoardPage:
        return self._send(calls.my_around(board, radius))

    # The live feed.
    def live(self, board: str = DEFAULT_BOARD, *, reconnect: bool = True) -> SyncLiveFeed:
        """Snapshots of ``board`` as they come (``for snapshot in ...``), reconnecting
        by itself; ``feed.switch(board)`` changes boards, ``feed.close()`` stops."""
        return SyncLiveFeed(self.live_url, board, reconnect=reconnect, retry=self.retry)
