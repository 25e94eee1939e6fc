"""Locust load test: players, game servers and WebSocket spectators on one local system.

    .venv/bin/python -m locust -f loadtest/locustfile.py --headless \\
        -u 100 -r 20 --run-time 2m --host http://127.0.0.1:8000

Three kinds of simulated user:

- ``PlayerUser``: registers, logs in, then per turn asks for an action token
  and posts an increment, through ``scoreboard-client`` (client/), whose
  per-request observer feeds Locust's statistics (one attempt per call: no
  retry hides a refusal). It keeps to the per-user limits (``INCREMENT_RATE``
  and ``ACTION_TOKEN_RATE``, read from the same environment variables as the
  service, defaults 5 and 10 a minute): one turn every period/count seconds
  (plus 5%), so a refusal is a real failure, never the test's own doing.
- ``GameServerUser``: a game backend (scope ``scores:write``) posting batches
  of increments with unique event ids, through ``scoreboard-client`` too. Its
  account is created at test start with
  ``scoreboard.accounts.create_backend_account`` in ``DATABASE_URL``, or
  given as ``BACKEND_USERNAME`` / ``BACKEND_PASSWORD`` (``scoreboard
  create-backend``).
- ``SpectatorUser``: a WebSocket client of the broadcaster (websocket-client,
  plain sockets that gevent makes cooperative, rather than the client's feed)
  (``BROADCASTER_URL``, default http://127.0.0.1:8001). Each snapshot pushed
  after the first is a Locust request event ``WS snapshot delivery`` whose
  response time is the receipt time minus the snapshot's ``ts`` (the server's
  clock when it built the snapshot: same machine, same clock); connecting up
  to the first snapshot is ``WS connect``.

Every simulated player sends ``X-Forwarded-For`` with an address of its own
(documentation range 2001:db8::/32). Run ingest with
``TRUSTED_PROXIES=127.0.0.1`` so that each counts as its own client address;
otherwise they all share 127.0.0.1's ``IP_RATE`` and ``AUTH_IP_RATE`` and
those refusals are failures. The broadcaster caps connections per address
(``WS_MAX_PER_IP``, 50): raise it past the number of spectators.

Safety: every target must be this machine (127.0.0.1, localhost or ::1) or
the run refuses to start, and without ``--run-time`` it stops by itself after
``DEFAULT_RUN_TIME_S``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import secrets
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import gevent
import orjson
import websocket
from locust import User, between, constant_pacing, events, task
from locust.env import Environment
from locust.exception import StopUser
from scoreboard_client import (
    Increment,
    RequestObserver,
    RetryPolicy,
    ScoreboardClient,
    ScoreboardClientError,
)

from scoreboard.accounts import create_backend_account
from scoreboard.settings import load_settings

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
DEFAULT_RUN_TIME_S = 60
BOARD = os.environ.get("LOADTEST_BOARD", "global")
BROADCASTER_URL = os.environ.get("BROADCASTER_URL", "http://127.0.0.1:8001")
BATCH_SIZE = int(os.environ.get("LOADTEST_BATCH_SIZE", "50"))
GAME_PLAYERS = 1000  # distinct player ids the game servers credit
RUN_ID = secrets.token_hex(3)
SETTINGS = load_settings()
# One turn (action token + increment) per this many seconds keeps a player
# within both per-user limits, with 5% to spare for timer jitter.
PLAYER_TURN_S = 1.05 * max(rate.period_s / rate.count
                           for rate in (SETTINGS.increment_rate, SETTINGS.action_token_rate))

_user_numbers = itertools.count(1)
_backend: dict[str, str] = {}  # username, password of the game servers' account


def _require_loopback(name: str, url: str) -> None:
    host = urlsplit(url).hostname
    if host not in LOOPBACK_HOSTS:
        raise SystemExit(f"{name} must be this machine (127.0.0.1), not {url!r}: "
                         "a load test floods its target")


def _check_targets(environment: Environment, **_: Any) -> None:
    _require_loopback("--host", environment.host or "")
    _require_loopback("BROADCASTER_URL", BROADCASTER_URL)


def _prepare(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if environment.runner is not None and not (options and options.run_time):
        logger.warning("no --run-time: stopping by itself after %d s", DEFAULT_RUN_TIME_S)
        gevent.spawn_later(DEFAULT_RUN_TIME_S, environment.runner.quit)
    if "username" in _backend:
        return
    given_name, given_password = (os.environ.get("BACKEND_USERNAME"),
                                  os.environ.get("BACKEND_PASSWORD"))
    if given_name and given_password:
        _backend.update(username=given_name, password=given_password)
    elif SETTINGS.database_url:
        name = f"locust_{RUN_ID}"
        _user_id, password = asyncio.run(create_backend_account(
            SETTINGS.database_url, name, scrypt_n=SETTINGS.scrypt_n,
            scrypt_r=SETTINGS.scrypt_r, scrypt_p=SETTINGS.scrypt_p))
        _backend.update(username=name, password=password)
        logger.info("game-server account %s created", name)
    else:
        logger.warning("no game-server account (set DATABASE_URL, or BACKEND_USERNAME and "
                       "BACKEND_PASSWORD): game-server users stop at once")


events.init.add_listener(_check_targets)  # type: ignore[no-untyped-call]
events.test_start.add_listener(_prepare)  # type: ignore[no-untyped-call]


def _player_address(number: int) -> str:
    return f"2001:db8:{RUN_ID[:4]}::{number:x}"


def _reporter(environment: Environment) -> RequestObserver:
    """The client's per-request observer, as Locust's request statistics: a 2xx
    answer is a success, anything else (or no answer) a failure."""

    def report(method: str, name: str, status: int | None, seconds: float, length: int,
               error: BaseException | None) -> None:
        if error is None and (status is None or status >= 300):
            error = RuntimeError(f"HTTP {status}")
        environment.events.request.fire(  # type: ignore[no-untyped-call]
            request_type=method, name=name, response_time=seconds * 1000,
            response_length=length, exception=error, context={})

    return report


def _client(user: User, headers: dict[str, str] | None = None) -> ScoreboardClient:
    """A scoreboard-client session for one simulated user. One attempt per call:
    a load test reports refusals instead of retrying them away."""
    return ScoreboardClient(user.environment.host or "", headers=headers,
                            retry=RetryPolicy(attempts=1), on_request=_reporter(user.environment))


class PlayerUser(User):
    """A registered player: an action token, then an increment, once per turn
    (through scoreboard-client, which also refreshes the session)."""

    weight = 6
    wait_time = constant_pacing(PLAYER_TURN_S)

    def on_start(self) -> None:
        number = next(_user_numbers)
        self.client = _client(self, {"X-Forwarded-For": _player_address(number)})
        username, password = f"lt{RUN_ID}_{number}", secrets.token_urlsafe(12)
        try:
            self.client.register(username, password)
            self.client.login(username, password)
        except ScoreboardClientError:
            raise StopUser() from None  # already counted as a failed request

    def on_stop(self) -> None:
        self.client.close()

    @task
    def play_a_turn(self) -> None:
        try:
            self.client.score(board=BOARD)
        except ScoreboardClientError:
            return  # counted as a failed request


class GameServerUser(User):
    """A game backend posting batches of increments for its own players."""

    weight = 1
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        if "username" not in _backend:
            raise StopUser()  # no account: set DATABASE_URL or BACKEND_USERNAME/PASSWORD
        self.number = next(_user_numbers)
        self.sequence = itertools.count(1)
        self.client = _client(self)
        try:
            self.client.login(_backend["username"], _backend["password"])
        except ScoreboardClientError:
            raise StopUser() from None

    def on_stop(self) -> None:
        self.client.close()

    @task
    def post_a_batch(self) -> None:
        increments = []
        for _ in range(BATCH_SIZE):
            player = random.randrange(GAME_PLAYERS)
            increments.append(Increment(
                user_id=f"lt{RUN_ID}-p{player}", username=f"Bot {player}",
                points=random.randint(1, 50), board=BOARD,
                event_id=f"lt{RUN_ID}-g{self.number}-{next(self.sequence)}"))
        try:
            result = self.client.batch(increments)
        except ScoreboardClientError:
            return
        if result.accepted != len(increments) or result.refused:
            self.environment.events.request.fire(
                request_type="POST", name="/api/scores/batch accepted in full",
                response_time=0, response_length=0, context={},
                exception=RuntimeError(f"accepted {result.accepted}, refused {result.refused}"))


class SpectatorUser(User):
    """A WebSocket spectator of the board; reports how late each snapshot arrives."""

    weight = 3
    RECV_TIMEOUT_S = 1.0
    CONNECT_TIMEOUT_S = 10.0

    def on_start(self) -> None:
        parts = urlsplit(BROADCASTER_URL)
        scheme = "wss" if parts.scheme == "https" else "ws"
        self.url = urlunsplit((scheme, parts.netloc, "/ws", f"board={BOARD}", ""))
        self.connection: websocket.WebSocket | None = None

    def on_stop(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def _report(self, name: str, started: float, length: int,
                exception: BaseException | None = None, response_time_ms: float | None = None,
                ) -> None:
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.environment.events.request.fire(
            request_type="WS", name=name, context={}, exception=exception,
            response_time=elapsed_ms if response_time_ms is None else response_time_ms,
            response_length=length)

    def _connect(self) -> None:
        started = time.perf_counter()
        try:
            # No Origin header: a bot is not a browser page (WS_ALLOWED_ORIGINS).
            connection = websocket.create_connection(self.url, timeout=self.CONNECT_TIMEOUT_S,
                                                     suppress_origin=True)
            first = connection.recv()
            message = orjson.loads(first)
            if message.get("type") != "snapshot":
                raise ValueError(f"expected a snapshot first, got {first[:200]!r}")
        except Exception as exc:  # the connection or its first snapshot failed
            self._report("connect", started, 0, exc)
            gevent.sleep(1)
            return
        connection.settimeout(self.RECV_TIMEOUT_S)
        self.connection = connection
        self._report("connect", started, len(first))

    @task
    def watch(self) -> None:
        if self.connection is None:
            self._connect()
            return
        started = time.perf_counter()
        try:
            raw = self.connection.recv()
        except websocket.WebSocketTimeoutException:
            return  # nothing changed on the board this second
        except Exception as exc:  # closed by the server, or broken
            self._report("snapshot delivery", started, 0, exc)
            self.on_stop()
            return
        received_ms = time.time() * 1000
        message = orjson.loads(raw)
        if message.get("type") != "snapshot":
            self._report("snapshot delivery", started, len(raw),
                         ValueError(f"unexpected message {raw[:200]!r}"))
            return
        self._report("snapshot delivery", started, len(raw),
                     response_time_ms=max(0.0, received_ms - int(message["ts"])))
