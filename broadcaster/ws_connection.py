"""``/ws``: one spectator's WebSocket, written to its socket directly.

uvicorn hands every upgrade request of the broadcaster's port to this
protocol (its ``ws`` class), with the socket. The handshake, client frames,
pings and the close handshake go through the ``websockets`` library's sans-I/O
``ServerProtocol``; snapshots do not: each is one ``transport.write`` of the
frame the snapshot service encoded once for every client. There is no task,
no queue and no ASGI message per client and per snapshot, which is what keeps
a process at the floor cost of one write per spectator.

Latest wins: when a spectator's unsent bytes pass ``WS_WRITE_BUFFER_BYTES``
the transport pauses it; snapshots meanwhile replace each other in one slot
and the newest goes out when the socket drains. A spectator still paused
after ``WS_SEND_TIMEOUT_S`` cannot keep up and is cut off (abort: a close
frame could not get through a full buffer anyway). Closing a socket that still
holds unsent data aborts it too: asyncio's graceful close would wait forever
for a peer that stopped reading.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast
from urllib.parse import unquote

import orjson
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from broadcaster.admission import (
    CAPPED,
    NOT_FOUND,
    Refusal,
    board_of,
    check_board,
    check_origin,
    check_window,
    window_of,
    window_refusal,
)
from broadcaster.frames import close_frame, text_frame
from broadcaster.hub import DROPPED, SNAPSHOTS_SENT, SNAPSHOTS_SKIPPED
from broadcaster.rank_feed import RankUpdate
from broadcaster.snapshots import Snapshot
from broadcaster.state import BroadcasterState
from broadcaster.watch_requests import (
    UNAVAILABLE,
    error_frame,
    not_watching,
    parse_watch,
    too_many,
    unknown_user,
    unwatched_frame,
)
from scoreboard.client_address import client_address, forwarded_for
from scoreboard.redis_clients import REDIS_FAILURES
from scoreboard.windows import ALL_TIME, TargetError

logger = logging.getLogger(__name__)
# websockets logs every open and close at INFO: thousands a second here.
_protocol_logger = logging.getLogger("broadcaster.ws_protocol")
_protocol_logger.setLevel(logging.WARNING)

WS_PATH = "/ws"
GOING_AWAY = 1001
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013
PING_FRAME = b"\x89\x02sb"  # an unmasked ping with a fixed payload; any pong answers it
INVALID_MESSAGE = text_frame(orjson.dumps({
    "type": "error", "code": "invalid_message",
    "message": 'expected {"type": "subscribe", "board": "<board name>", "window"?: '
               '"all_time"|"daily"|"weekly"|"monthly"|"season"}, or "watch" or "unwatch"'
               ' with "user_id"'}))

_loading: set[asyncio.Task[None]] = set()  # first snapshots being read, kept from the GC


def parse_subscribe(message: bytes) -> tuple[str, str] | None:
    """The board and window (default ``all_time``) of ``{"type": "subscribe", "board":
    ..., "window": ...}``, or None for anything else."""
    try:
        parsed = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict) or parsed.get("type") != "subscribe":
        return None
    board, window = parsed.get("board"), parsed.get("window", ALL_TIME)
    if not isinstance(board, str) or check_board(board) is not None:
        return None
    if not isinstance(window, str) or check_window(window) is not None:
        return None
    return board, window


class SpectatorConnection(asyncio.Protocol):
    """uvicorn's WebSocket protocol class for the broadcaster (``ws=``)."""

    kind = "websocket"

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.state: BroadcasterState = app_state["broadcaster"]
        self.server_connections: set[Any] = server_state.connections
        self.conn = ServerProtocol(max_size=self.state.settings.ws_max_message_bytes,
                                   logger=_protocol_logger)
        self.transport: asyncio.Transport | None = None
        self.board = ""
        # (board, window) named at the handshake while its period is looked up
        self.unresolved = ("", "")
        self.address: str | None = None  # set once admitted: its slot is released on loss
        self.open = False
        self.version_sent = -1  # of the current board: versions sent only grow
        self.paused = False
        self.pending: Snapshot | None = None
        self.stuck_timer: asyncio.TimerHandle | None = None
        self.ping_sent_at: float | None = None
        self.fragments: list[bytes] = []
        # The rank feed: watched user id -> version of its last update sent (-1: none yet).
        self.watching: dict[str, int] = {}
        self.pending_ranks: dict[str, RankUpdate] = {}  # newest unsent, per player, while paused

    # The transport interface (asyncio.Protocol).

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.server_connections.add(self)
        self.transport.set_write_buffer_limits(high=self.state.settings.ws_write_buffer_bytes)

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        for event in self.conn.events_received():
            if isinstance(event, Request):
                self._handshake(event)
            elif isinstance(event, Frame):
                self._frame(event)
        self._flush()

    def eof_received(self) -> bool:
        self.conn.receive_eof()
        self._flush()
        return False

    def pause_writing(self) -> None:
        self.paused = True
        loop = asyncio.get_running_loop()
        self.stuck_timer = loop.call_later(self.state.settings.ws_send_timeout_s, self._drop_slow)

    def resume_writing(self) -> None:
        self.paused = False
        if self.stuck_timer is not None:
            self.stuck_timer.cancel()
            self.stuck_timer = None
        pending, self.pending = self.pending, None
        if pending is not None:
            self.offer(pending)
        pending_ranks, self.pending_ranks = self.pending_ranks, {}
        for update in pending_ranks.values():
            self.offer_rank(update)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.pending = None
        self.pending_ranks = {}
        for user_id in self.watching:
            self.state.watches.remove(self, self.board, user_id)
        self.watching = {}
        if self.stuck_timer is not None:
            self.stuck_timer.cancel()
        self.server_connections.discard(self)
        self.state.sockets.discard(self)
        self.state.hub.leave(self)
        if self.address is not None:
            self.state.hub.release(self.address)
            self.address = None

    # The hub's interface (broadcaster.hub.Spectator).

    def offer(self, snapshot: Snapshot) -> None:
        if not self.open or snapshot.board != self.board or snapshot.version <= self.version_sent:
            return
        if self.paused:
            if self.pending is not None:
                SNAPSHOTS_SKIPPED.inc()
            self.pending = snapshot
            return
        assert self.transport is not None
        self.transport.write(snapshot.ws_frame)
        self.version_sent = snapshot.version

    def offer_rank(self, update: RankUpdate) -> None:
        """The rank feed's ``offer`` (broadcaster.watches.Watcher): latest wins per player."""
        user_id = update.standing.user_id
        sent = self.watching.get(user_id)
        if not self.open or update.board != self.board or sent is None or update.version <= sent:
            return
        if self.paused:
            self.pending_ranks[user_id] = update
            return
        assert self.transport is not None
        self.transport.write(update.ws_bytes)
        self.watching[user_id] = update.version

    def shut(self, code: int = GOING_AWAY, reason: str = "server shutting down") -> None:
        if self.open and self.transport is not None:
            self.open = False
            self.transport.write(close_frame(code, reason))
        self._close_transport()

    def shutdown(self) -> None:
        """uvicorn's graceful stop of every connection."""
        self.shut()

    # Keepalive (driven for every connection at once by ``keep_alive``).

    def ping(self, now: float) -> None:
        """Send a ping, or close when the previous one went unanswered too long."""
        if not self.open or self.transport is None:
            return
        if self.ping_sent_at is None:
            self.ping_sent_at = now
            self.transport.write(PING_FRAME)
        elif now - self.ping_sent_at >= self.state.settings.ws_ping_timeout_s:
            DROPPED.labels("ping_timeout").inc()
            self.shut(INTERNAL_ERROR, "keepalive ping timeout")

    # Inside.

    def _handshake(self, request: Request) -> None:
        response = self.conn.accept(request)  # a malformed handshake gets its 4xx here
        if response.status_code != 101:
            self.conn.send_response(response)
            return
        refusal, board, address = self._admission(request)
        if refusal is not None:
            if refusal is CAPPED:
                DROPPED.labels("address_cap").inc()
            self.conn.send_response(Response(
                refusal.status, _REASONS.get(refusal.status, "Refused"),
                Headers([*refusal.headers(), ("Connection", "close")]), refusal.body()))
            return
        self.address = address
        self.conn.send_response(response)
        self._flush()  # the 101 goes out before any frame
        self.open = True
        self.state.sockets.add(self)
        self._subscribe(board, window_of(request.path.partition("?")[2]))

    def _admission(self, request: Request) -> tuple[Refusal | None, str, str]:
        path, _, query = request.path.partition("?")
        board = board_of(query)
        if unquote(path) != WS_PATH:
            return NOT_FOUND, board, ""
        settings = self.state.settings
        refusal = (check_origin(request.headers.get("Origin"), settings.allowed_origins)
                   or check_board(board) or check_window(window_of(query)))
        if refusal is not None:
            return refusal, board, ""
        assert self.transport is not None
        peer = self.transport.get_extra_info("peername")
        address = client_address(peer[0] if peer else None,
                                 forwarded_for(request.headers.get_all("X-Forwarded-For")),
                                 settings.trusted_proxies)
        if not self.state.hub.admit(address):
            return CAPPED, board, address
        return None, board, address

    def _subscribe(self, board: str, window: str) -> None:
        """Watch ``board``, or the current period of its ``window`` (found first: the
        only other path that awaits; see broadcaster.periods)."""
        if window == ALL_TIME:
            self._watch(board)
            return
        if not self.board:
            self.unresolved = (board, window)
        task = asyncio.get_running_loop().create_task(self._subscribe_window(board, window))
        _loading.add(task)
        task.add_done_callback(_loading.discard)

    async def _subscribe_window(self, board: str, window: str) -> None:
        try:
            scope = await self.state.periods.scope_of(board, window)
        except TargetError as exc:
            if self.open and self.transport is not None:
                self.transport.write(error_frame(window_refusal(exc)))
            return
        except REDIS_FAILURES as exc:
            logger.warning("window %s of %s not resolved: %r", window, board, exc)
            self.shut(TRY_AGAIN_LATER, "board unavailable, try again")
            return
        if self.open:
            self._watch(scope)

    def move_to(self, board: str) -> None:
        """The period this spectator followed has ended (broadcaster.periods): watch
        the next one, with the players it follows."""
        if self.open:
            self._watch(board)

    def _watch(self, board: str) -> None:
        """Move to ``board`` and send its current snapshot (read first if nobody here
        watched it: the only path that awaits, once per board and not per client)."""
        snapshot = self.state.snapshots.cached(board)
        for user_id in self.watching:  # the watched players move to the new board
            self.state.watches.remove(self, self.board, user_id)
        self.state.hub.join(self, board)
        self.version_sent = -1
        for user_id in self.watching:
            self._follow(user_id)
        if snapshot is not None:
            self._offer_first(snapshot)
            return
        task = asyncio.get_running_loop().create_task(self._send_current(board))
        _loading.add(task)
        task.add_done_callback(_loading.discard)

    async def _send_current(self, board: str) -> None:
        try:
            snapshot = await self.state.snapshots.current(board)
        except REDIS_FAILURES as exc:
            logger.warning("first snapshot of %s failed: %r", board, exc)
            self.shut(TRY_AGAIN_LATER, "board unavailable, try again")
            return
        self._offer_first(snapshot)

    def _offer_first(self, snapshot: Snapshot) -> None:
        SNAPSHOTS_SENT.inc()  # the hub counts the rest, one increment per publish
        self.offer(snapshot)

    def _frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.PONG:
            self.ping_sent_at = None
        elif frame.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT) and self.open:
            self.fragments.append(bytes(frame.data))
            if frame.fin:
                message, self.fragments = b"".join(self.fragments), []
                self._message(message)

    def _message(self, message: bytes) -> None:
        wanted = parse_subscribe(message)
        if wanted is not None:
            self._subscribe(*wanted)
            return
        request = parse_watch(message)
        assert self.transport is not None
        if request is None:
            self.transport.write(INVALID_MESSAGE)
        elif isinstance(request, Refusal):
            self.transport.write(error_frame(request))
        elif request.action == "watch":
            if request.user_id in self.watching:
                return  # already followed: its updates keep coming
            if len(self.watching) >= self.state.settings.ws_max_watches:
                self.transport.write(error_frame(too_many(self.state.settings.ws_max_watches),
                                                 request.user_id))
                return
            self._follow(request.user_id)
        elif request.user_id not in self.watching:
            self.transport.write(error_frame(not_watching(request.user_id), request.user_id))
        else:
            del self.watching[request.user_id]
            self.pending_ranks.pop(request.user_id, None)
            self.state.watches.remove(self, self.board, request.user_id)
            board, window = (self.board, "") if self.board else self.unresolved
            self.transport.write(unwatched_frame(board, request.user_id, window))

    def _follow(self, user_id: str) -> None:
        """Start following ``user_id`` on the current board: its slot is taken now, its
        first update read (or taken from the players watched here) in a task. Before
        the window named at the handshake is resolved there is no board yet: the slot
        alone, which ``_watch`` follows once the board is known."""
        self.watching[user_id] = -1
        if not self.board:
            return
        task = asyncio.get_running_loop().create_task(self._start_following(self.board,
                                                                             user_id))
        _loading.add(task)
        task.add_done_callback(_loading.discard)

    async def _start_following(self, board: str, user_id: str) -> None:
        try:
            update = await self.state.watches.current(board, user_id)
        except REDIS_FAILURES as exc:
            logger.warning("first standing of %s on %s failed: %r", user_id, board, exc)
            update, refusal = None, UNAVAILABLE
        else:
            refusal = unknown_user(user_id)
        if not self.open or self.board != board or self.watching.get(user_id) != -1:
            return  # closed, moved to another board (which follows anew) or unwatched
        if update is None:
            del self.watching[user_id]
            assert self.transport is not None
            self.transport.write(error_frame(refusal, user_id))
            return
        self.state.watches.add(self, update)
        self.offer_rank(update)

    def _flush(self) -> None:
        """Write what the protocol produced (handshake answers, pongs, close frames);
        an empty chunk is its signal to end the TCP connection."""
        assert self.transport is not None
        for chunk in self.conn.data_to_send():
            if chunk:
                self.transport.write(chunk)
            else:
                self.open = False
                self._close_transport()

    def _close_transport(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.transport.get_write_buffer_size() > 0:
            self.transport.abort()
        else:
            self.transport.close()

    def _drop_slow(self) -> None:
        self.stuck_timer = None
        if self.paused and self.transport is not None:
            DROPPED.labels("slow").inc()
            self.open = False
            self.transport.abort()


_REASONS = {403: "Forbidden", 404: "Not Found", 422: "Unprocessable Content",
            429: "Too Many Requests"}


async def keep_alive(state: BroadcasterState) -> None:
    """Every ping interval, ping each spectator and close those whose previous ping
    went unanswered for the ping timeout: one sweep for all, no timer per client."""
    interval = state.settings.ws_ping_interval_s
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        now = loop.time()
        for connection in list(state.sockets):
            connection.ping(now)
