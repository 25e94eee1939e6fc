"""``GET /sse?board=[&window=]``: the same snapshots as Server-Sent Events.

``&watch=<user id>`` (repeatable, up to ``WS_MAX_WATCHES``) adds the rank feed
of those players as ``rank`` and ``overtaken`` events; an unknown player or a
malformed id is refused before the stream starts.

A pure ASGI endpoint rather than a ``StreamingResponse``: every send is bounded
by the send timeout (a reader that stopped reading is cut off, not waited on
forever), and the connection's slot is reserved, joined and released inside
one ``try``/``finally``, so an early disconnect or a Redis error cannot leak it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from broadcaster.admission import (
    CAPPED,
    Refusal,
    board_of,
    check_board,
    check_window,
    window_of,
    window_refusal,
)
from broadcaster.hub import DROPPED, SNAPSHOTS_SENT, SNAPSHOTS_SKIPPED
from broadcaster.rank_feed import RankUpdate
from broadcaster.snapshots import Snapshot
from broadcaster.state import BroadcasterState
from broadcaster.watch_requests import unknown_user, watches_of
from scoreboard.client_address import client_address, forwarded_for
from scoreboard.redis_clients import REDIS_FAILURES
from scoreboard.windows import ALL_TIME, TargetError

logger = logging.getLogger(__name__)

KEEPALIVE_S = 15.0
UNAVAILABLE = Refusal(503, "unavailable", "the board cannot be read right now", 1)


class SseSpectator:
    """One SSE client: a one-slot mailbox of the newest unsent snapshot."""

    kind = "sse"

    def __init__(self) -> None:
        self.board = ""
        self.pending: Snapshot | None = None
        self.version_sent = -1
        self.closed = False
        self.wake = asyncio.Event()
        # The rank feed: watched user id -> version of its newest update taken.
        self.watching: dict[str, int] = {}
        self.pending_ranks: dict[str, RankUpdate] = {}

    def offer(self, snapshot: Snapshot) -> None:
        if snapshot.version <= self.version_sent:
            return
        if self.pending is not None:
            SNAPSHOTS_SKIPPED.inc()
        self.pending = snapshot
        self.wake.set()

    def offer_rank(self, update: RankUpdate) -> None:
        """Keep ``update`` as its player's newest unsent one (broadcaster.watches.Watcher)."""
        user_id = update.standing.user_id
        taken = self.watching.get(user_id)
        if taken is None or update.version <= taken:
            return
        self.watching[user_id] = update.version
        self.pending_ranks[user_id] = update
        self.wake.set()

    def shut(self) -> None:
        self.closed = True
        self.wake.set()

    async def next_event(self, keepalive_s: float) -> bytes | None:
        """The next bytes to send: a snapshot and rank events, a keepalive comment,
        or None once shut."""
        if self.pending is None and not self.pending_ranks and not self.closed:
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), keepalive_s)
        if self.closed:
            return None
        if self.pending is None and not self.pending_ranks:
            return b": keepalive\n\n"
        events = []
        if self.pending is not None:
            snapshot, self.pending = self.pending, None
            self.version_sent = snapshot.version
            events.append(snapshot.sse_event)
        events += [update.sse_bytes for update in self.pending_ranks.values()]
        self.pending_ranks = {}
        return b"".join(events)


async def _refuse(refusal: Refusal, send: Send) -> None:
    await send({"type": "http.response.start", "status": refusal.status,
                "headers": [(k.lower().encode(), v.encode()) for k, v in refusal.headers()]})
    await send({"type": "http.response.body", "body": refusal.body()})


async def _watch_disconnect(receive: Receive, spectator: SseSpectator) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    spectator.shut()


async def _follow_next_period(state: BroadcasterState, spectator: SseSpectator,
                              ended: str) -> str:
    """The period ``ended`` is over and broadcaster.periods has moved ``spectator``'s
    snapshots to the next one (``spectator.board``): its watched players follow it
    there, as on a WebSocket, starting from their standing in the new period (whose
    versions start again). Returns the board now followed. Redis not answering ends
    the stream: EventSource reconnects by itself and the watch starts afresh."""
    board, user_ids = spectator.board, list(spectator.watching)
    spectator.pending_ranks = {}  # the ended period's, not sent yet: stale now
    for user_id in user_ids:
        state.watches.remove(spectator, ended, user_id)
        spectator.watching[user_id] = -1
    try:
        updates = [await state.watches.current(board, u) for u in user_ids]
    except REDIS_FAILURES as exc:
        logger.warning("watched players of %s not moved to %s: %r", ended, board, exc)
        spectator.watching = {}
        spectator.shut()
        return board
    for user_id, update in zip(user_ids, updates, strict=True):
        if update is None:  # cannot be unknown now, having been known: nothing to follow
            del spectator.watching[user_id]
            continue
        state.watches.add(spectator, update)
        spectator.offer_rank(update)
    return board


class SseEndpoint:
    """An ASGI app, so that Starlette routes to it without wrapping it as request → response."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        state: BroadcasterState = request.app.state.broadcaster
        board, window = board_of(request.url.query), window_of(request.url.query)
        refusal = check_board(board) or check_window(window)
        watch_ids = watches_of(request.url.query, state.settings.ws_max_watches)
        if isinstance(watch_ids, Refusal):
            refusal, watch_ids = refusal or watch_ids, []
        if refusal is None and window != ALL_TIME:
            try:  # a window's spectators follow its current period (broadcaster.periods)
                board = await state.periods.scope_of(board, window)
            except TargetError as exc:
                refusal = window_refusal(exc)
            except REDIS_FAILURES:
                refusal = UNAVAILABLE
        if refusal is not None:
            await _refuse(refusal, send)
            return
        peer = request.client.host if request.client else None
        address = client_address(peer, forwarded_for(request.headers.getlist("x-forwarded-for")),
                                 state.settings.trusted_proxies)
        if not state.hub.admit(address):
            DROPPED.labels("address_cap").inc()
            await _refuse(CAPPED, send)
            return
        spectator = SseSpectator()
        watcher = asyncio.create_task(_watch_disconnect(receive, spectator))
        try:
            try:
                first = await state.snapshots.current(board)
                standings = [await state.watches.current(board, u) for u in watch_ids]
            except REDIS_FAILURES as exc:
                logger.warning("first snapshot of %s failed: %r", board, exc)
                await _refuse(UNAVAILABLE, send)
                return
            for user_id, standing in zip(watch_ids, standings, strict=True):
                if standing is None:
                    await _refuse(unknown_user(user_id), send)
                    return
            state.hub.join(spectator, board)
            spectator.offer(first)
            for standing in standings:
                assert standing is not None
                spectator.watching[standing.standing.user_id] = -1
                state.watches.add(spectator, standing)
                spectator.offer_rank(standing)
            SNAPSHOTS_SENT.inc()
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]})
            while (event := await spectator.next_event(KEEPALIVE_S)) is not None:
                async with asyncio.timeout(state.settings.ws_send_timeout_s):
                    await send({"type": "http.response.body", "body": event, "more_body": True})
                if spectator.board not in ("", board):
                    board = await _follow_next_period(state, spectator, board)
        except TimeoutError:
            DROPPED.labels("slow").inc()
        except OSError:  # the client went away mid-send
            pass
        finally:
            watcher.cancel()
            for user_id in spectator.watching:
                state.watches.remove(spectator, board, user_id)
            state.hub.leave(spectator)
            state.hub.release(address)
