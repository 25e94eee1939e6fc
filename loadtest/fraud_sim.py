"""Labelled fraud simulator: accounts of known label against the running system,
then recall and false positives of the fraud rules.

    python -m loadtest.fraud_sim [--duration 180 --seed 1 --set NAME=VALUE ...]

It starts Redis and Postgres (embedded in a temporary folder, or the loopback
servers named by ``REDIS_URL`` / ``DATABASE_URL``, on a fresh database and key
prefix), ONE ingest process and ONE worker process, with the service's default
limits and fraud settings; ``--set`` overrides one (repeatable) and
``--issue-rules-only`` turns off the rules added with this simulator. The run
always sets ``TRUSTED_PROXIES=127.0.0.1/32`` (each simulated client then speaks
from an address of its own through ``X-Forwarded-For``: the whole simulation
runs on one host), ``SCRYPT_N=1024`` (registration speed only) and
``WORKER_METRICS_PORT=0``; the report prints every limit and fraud setting
in effect.

Then it drives the system through the public HTTP API only, on 127.0.0.1, with
these accounts (``--<class> N`` sets how many):

honest
  casual      an action every 20-60 s
  grinder     an action every 13-15 s (uniform jitter): the honest pattern closest
              to a script, just slower than the 5-a-minute limit
  night_owl   like casual; the unusual-time rule only logs, and the simulation runs
              at the real time of day, the same for every class
  bursty      bursts of 3-5 actions within a few seconds, then 60-150 s of pause;
              on a 429 it waits Retry-After and tries again
  household   2-3 casual players behind one address (the farm rule's honest neighbour)
  Every honest player sometimes makes a mistake: it re-sends an increment whose
  answer it did not get (403 action_token_used, 5% of actions) or uses an action
  token after being away for more than its 60 s (403 action_token_expired, 3%).
cheating
  fixed_cadence  an increment exactly every N s (N from 10 to 15 per bot, no jitter;
                 the token is fetched a second before)
  max_rate       as fast as the API allows: on a 429 it retries at once (after
                 ``--hammer-pause``), never honouring Retry-After
  replayer       plays every 10-16 s and replays each token twice at once (a race for
                 a double count); every other action also tries a token issued to
                 another replayer (403 action_token_foreign)
  forger         plays every 10-16 s and also posts 1-2 tampered tokens per action
                 (flipped signature, payload with a later issue time or another
                 user id, a signature under a made-up key, garbage); one action in
                 five also sends a tampered access token (401, counted per address)
  farm           5-8 accounts behind one address (``--farm-size``), each acting
                 every 10-20 s (jittered)
Every account's points per increment are 1-10, whatever its class.

At the end it waits until the worker has persisted every accepted increment
and recorded every decision, then reads them: an account is caught when it is
flagged or banned in Postgres (``user_restrictions``) or in Redis (its flagged
/ banned key); "review" and "logged" events are counted apart, not as caught.
Per class and overall it prints recall (cheating) or the share wrongly caught
(honest), which rule caught them and when, and the points each class got:
the sum of its totals in Postgres ``scores`` and on the Redis board (banned
users are taken off the board).

What a run cannot show: every behaviour runs at its real pace (only the
start is compressed: every account begins within the first minute), so a run
of minutes is minutes of play. The hourly score-velocity job (whole hours
against six or more hours of the user's own history) never fires within it,
and the token-failure counters, which last an hour, see only the run's share
of an honest player's mistakes (``--duration 3600`` shows a full window).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import math
import os
import random
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import redis

from loadtest import BenchError
from loadtest.bench_ingest import ingest_process
from loadtest.system import Backing, delete_keys, start_backing, worker_process
from scoreboard.fraud_rules import interval_cv
from scoreboard.keys import Keys
from scoreboard.limits import Rate
from scoreboard.ranking import totals_by_user
from scoreboard.settings import Settings, load_settings

BOARD = "global"
RECORDER_GROUP = "fraud-recorders"  # workers/fraud.py
P_RETRY_USED = 0.05  # honest: re-sends an increment whose answer was lost
P_EXPIRED = 0.03  # honest: uses a token after being away for more than its lifetime
NEW_RULES_OFF = {"RATE_REFUSALS_TO_FLAG": "0", "CADENCE_ACTIONS": "0", "FARM_MIN_ACCOUNTS": "0"}
SHOWN_SETTINGS = (
    "action_token_ttl_s", "action_token_rate", "increment_rate", "flagged_increment_rate",
    "ip_rate", "auth_ip_rate", "rapid_max_actions", "rapid_window_ms", "flag_duration_s",
    "token_failure_window_s", "token_failures_to_ban", "token_failures_to_limit_address",
    "address_limit_s", "night_start_hour", "night_end_hour", "fraud_timezone",
    "velocity_z_threshold", "velocity_min_history_hours", "rate_refusals_to_flag",
    "rate_refusal_window_s", "cadence_actions", "cadence_max_cv", "cadence_window_s",
    "farm_min_accounts", "farm_window_s")


@dataclass(frozen=True)
class ClassSpec:
    name: str
    honest: bool
    default_count: int
    what: str


CLASSES = (
    ClassSpec("casual", True, 25, "honest players"),
    ClassSpec("grinder", True, 25, "honest players"),
    ClassSpec("night_owl", True, 25, "honest players"),
    ClassSpec("bursty", True, 25, "honest players"),
    ClassSpec("household", True, 10, "addresses of 2-3 honest players"),
    ClassSpec("fixed_cadence", False, 20, "bots"),
    ClassSpec("max_rate", False, 10, "bots"),
    ClassSpec("replayer", False, 10, "accounts"),
    ClassSpec("forger", False, 10, "accounts"),
    ClassSpec("farm", False, 4, "farms (addresses)"),
)
SPEC = {spec.name: spec for spec in CLASSES}


@dataclass
class Account:
    label: str
    username: str
    password: str
    address: str
    group: int  # household / farm number, else the account's own number
    user_id: str = ""
    access_token: str = ""
    refresh_token: str = ""
    first_request: float | None = None  # wall-clock time
    statuses: Counter[str] = field(default_factory=Counter)
    stopped: str = ""

    @property
    def honest(self) -> bool:
        return SPEC[self.label].honest


class Refused(Exception):
    """The account was refused for good (banned): its behaviour stops."""


# --- The HTTP side: one shared client, every request on behalf of an account --------------


class Sim:
    def __init__(self, url: str, *, end: float, hammer_pause: float) -> None:
        self.http = httpx.AsyncClient(base_url=url, timeout=30,
                                      limits=httpx.Limits(max_connections=256,
                                                          max_keepalive_connections=256))
        self.end = end
        self.hammer_pause = hammer_pause
        self.stolen: list[str] = []  # tokens replayers hand to each other
        self.user_ids: list[str] = []

    def left(self) -> float:
        return self.end - time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep, or stop the behaviour when the run ends first."""
        if seconds >= self.left():
            await asyncio.sleep(max(0.0, self.left()))
            raise TimeoutError
        await asyncio.sleep(max(0.0, seconds))

    async def sleep_until(self, at: float) -> None:
        await self.sleep(at - time.monotonic())

    async def request(self, account: Account, path: str, *, body: dict[str, Any] | None = None,
                      bearer: str | None = None) -> tuple[int, str, float]:
        """POST as ``account``; returns (status, error code, Retry-After s). A 401 for an
        expired access token refreshes it once; 403 user_banned stops the account."""
        if account.first_request is None:
            account.first_request = time.time()
        for _ in range(2):
            headers = {"X-Forwarded-For": account.address,
                       "Authorization": f"Bearer {bearer or account.access_token}"}
            response = await self.http.post(path, json=body or {}, headers=headers)
            code = ""
            if response.status_code >= 400:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    code = response.json()["error"]["code"]
            account.statuses[f"{response.status_code} {code}".strip()] += 1
            if response.status_code == 401 and code == "token_expired" and bearer is None:
                await self.refresh(account)
                continue
            if code == "user_banned":
                account.stopped = "banned"
                raise Refused
            retry_after = float(response.headers.get("retry-after", "0") or 0)
            return response.status_code, code, retry_after
        return 401, "token_expired", 0.0

    async def refresh(self, account: Account) -> None:
        response = await self.http.post("/api/auth/refresh",
                                         json={"refresh_token": account.refresh_token},
                                         headers={"X-Forwarded-For": account.address})
        body = expect(response, 200)
        account.access_token, account.refresh_token = body["access_token"], body["refresh_token"]

    async def token(self, account: Account) -> tuple[str | None, float]:
        """A fresh action token, or (None, Retry-After) when refused."""
        if account.first_request is None:
            account.first_request = time.time()
        response = await self.http.post("/api/actions/token", headers={
            "X-Forwarded-For": account.address, "Authorization": f"Bearer {account.access_token}"})
        if response.status_code == 200:
            account.statuses["200 token"] += 1
            token: str = response.json()["action_token"]
            return token, 0.0
        code = response.json().get("error", {}).get("code", "")
        account.statuses[f"{response.status_code} {code} (token)"] += 1
        if response.status_code == 401 and code == "token_expired":
            await self.refresh(account)
            return await self.token(account)
        if code == "user_banned":
            account.stopped = "banned"
            raise Refused
        return None, float(response.headers.get("retry-after", "0") or 0)

    async def increment(self, account: Account, token: str, points: int) -> tuple[int, str, float]:
        # The server decides the points now (the token's action: global's play = 1);
        # ``points`` is what the account would have asked for, kept for its class's pace.
        return await self.request(account, "/api/scores/increment",
                                  body={"action_token": token})


def expect(response: httpx.Response, status: int) -> dict[str, Any]:
    if response.status_code != status:
        raise BenchError(f"{response.request.method} {response.request.url.path}: expected "
                         f"{status}, got {response.status_code} {response.text[:300]}")
    body: dict[str, Any] = response.json()
    return body


# --- Behaviours ---------------------------------------------------------------------------


async def honest_action(sim: Sim, account: Account, rng: random.Random) -> None:
    """One action of a human: fetch a token, post it; a 429 is waited out (Retry-After)."""
    token, wait = await sim.token(account)
    if token is None:
        await sim.sleep(wait)
        token, _ = await sim.token(account)
        if token is None:
            return
    points = rng.randint(1, 10)
    if rng.random() < P_EXPIRED:  # away for longer than the token lives
        await sim.sleep(rng.uniform(61, 68))
        status, _, _ = await sim.increment(account, token, points)
        if status != 403:
            return
        token, _ = await sim.token(account)
        if token is None:
            return
    status, _, wait = await sim.increment(account, token, points)
    for _ in range(2):
        if status != 429:
            break
        await sim.sleep(wait)
        status, _, wait = await sim.increment(account, token, points)
    if status == 202 and rng.random() < P_RETRY_USED:  # the answer was lost: send again
        await sim.increment(account, token, points)


async def casual(sim: Sim, account: Account, rng: random.Random) -> None:
    await sim.sleep(rng.uniform(0, 30))
    while True:
        await honest_action(sim, account, rng)
        await sim.sleep(rng.uniform(20, 60))


async def grinder(sim: Sim, account: Account, rng: random.Random) -> None:
    next_at = time.monotonic() + rng.uniform(0, 15)
    while True:
        await sim.sleep_until(next_at)
        await honest_action(sim, account, rng)
        next_at = max(next_at + rng.uniform(13, 15), time.monotonic())


async def bursty(sim: Sim, account: Account, rng: random.Random) -> None:
    await sim.sleep(rng.uniform(0, 60))
    while True:
        for index in range(rng.randint(3, 5)):
            if index:
                await sim.sleep(rng.uniform(0.5, 2.0))
            await honest_action(sim, account, rng)
        await sim.sleep(rng.uniform(60, 150))


async def fixed_cadence(sim: Sim, account: Account, rng: random.Random) -> None:
    period = rng.uniform(10, 15)
    tick = time.monotonic() + rng.uniform(1, 15)
    while True:
        await sim.sleep_until(tick - 1.0)
        token, _ = await sim.token(account)
        await sim.sleep_until(tick)
        if token is not None:
            await sim.increment(account, token, rng.randint(1, 10))
        tick += period


async def max_rate(sim: Sim, account: Account, rng: random.Random) -> None:
    await sim.sleep(rng.uniform(0, 5))
    token: str | None = None
    while True:
        if token is None:
            token, _ = await sim.token(account)
            if token is None:
                await sim.sleep(sim.hammer_pause)
                continue
        status, code, _ = await sim.increment(account, token, rng.randint(1, 10))
        if status == 202 or code.startswith("action_token"):
            token = None
        if status != 202:
            await sim.sleep(sim.hammer_pause)


async def replayer(sim: Sim, account: Account, rng: random.Random) -> None:
    await sim.sleep(rng.uniform(0, 10))
    action = 0
    while True:
        action += 1
        token, wait = await sim.token(account)
        if token is None:
            await sim.sleep(wait)
            continue
        points = rng.randint(1, 10)
        # the same token three times at once: one counts, two are replays
        await asyncio.gather(*(sim.increment(account, token, points) for _ in range(3)),
                             return_exceptions=True)
        spare, _ = await sim.token(account)
        if action % 2 == 0 and sim.stolen:
            stolen = sim.stolen.pop(rng.randrange(len(sim.stolen)))
            await sim.increment(account, stolen, points)  # issued to someone else
        if spare is not None:
            sim.stolen.append(spare)
        await sim.sleep(rng.uniform(10, 16))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def forgeries(token: str, other_user: str, rng: random.Random) -> str:
    """A tampered copy of ``token`` (format: ``base64url(payload).hexsig``)."""
    payload_text, _, signature = token.rpartition(".")
    payload = orjson.loads(_unb64(payload_text))
    kind = rng.choice(("flip", "later", "other_user", "own_key", "garbage"))
    if kind == "flip":
        position = rng.randrange(len(signature))
        flipped = "0" if signature[position] != "0" else "1"
        return f"{payload_text}.{signature[:position]}{flipped}{signature[position + 1:]}"
    if kind == "later":  # stretch the lifetime, keep the signature
        return f"{_b64(orjson.dumps({**payload, 't': payload['t'] + 600_000}))}.{signature}"
    if kind == "other_user":  # credit someone else, keep the signature
        return f"{_b64(orjson.dumps({**payload, 'u': other_user}))}.{signature}"
    if kind == "own_key":  # a well-formed token under a guessed key
        text = _b64(orjson.dumps({**payload, "n": secrets.token_hex(16)}))
        guessed = hmac.new(secrets.token_bytes(32), text.encode(), hashlib.sha256)
        return f"{text}.{guessed.hexdigest()}"
    return secrets.token_urlsafe(rng.randint(10, 80))


def forged_jwt(access_token: str, other_user: str) -> str:
    header, payload, signature = access_token.split(".")
    claims = orjson.loads(_unb64(payload))
    return ".".join([header, _b64(orjson.dumps({**claims, "sub": other_user})), signature])


async def forger(sim: Sim, account: Account, rng: random.Random) -> None:
    await sim.sleep(rng.uniform(0, 10))
    while True:
        token, wait = await sim.token(account)
        if token is None:
            await sim.sleep(wait)
            continue
        other = rng.choice(sim.user_ids)
        for _ in range(rng.randint(1, 2)):
            await sim.increment(account, forgeries(token, other, rng), 1000)
        if rng.random() < 0.2:
            await sim.request(account, "/api/actions/token",
                              bearer=forged_jwt(account.access_token, other))
        await sim.increment(account, token, rng.randint(1, 10))
        await sim.sleep(rng.uniform(10, 16))


async def farm_member(sim: Sim, account: Account, rng: random.Random) -> None:
    await sim.sleep(rng.uniform(0, 20))
    while True:
        token, wait = await sim.token(account)
        if token is None:
            await sim.sleep(wait)
            continue
        status, _, wait = await sim.increment(account, token, rng.randint(1, 10))
        await sim.sleep(max(wait if status == 429 else 0.0, rng.uniform(10, 20)))


BEHAVIOURS: dict[str, Callable[[Sim, Account, random.Random], Awaitable[None]]] = {
    "casual": casual, "grinder": grinder, "night_owl": casual, "bursty": bursty,
    "household": casual, "fixed_cadence": fixed_cadence, "max_rate": max_rate,
    "replayer": replayer, "forger": forger, "farm": farm_member,
}


async def run_behaviour(sim: Sim, account: Account, rng: random.Random) -> None:
    try:
        await BEHAVIOURS[account.label](sim, account, rng)
    except (TimeoutError, Refused):
        pass
    except httpx.TransportError as exc:
        account.statuses[f"transport error {type(exc).__name__}"] += 1


# --- Accounts -------------------------------------------------------------------------------


def make_accounts(counts: dict[str, int], farm_size: tuple[int, int],
                  rng: random.Random) -> list[Account]:
    run = secrets.token_hex(3)
    accounts: list[Account] = []
    address_number = 0

    def address() -> str:
        nonlocal address_number
        address_number += 1
        return f"2001:db8:{address_number >> 16:x}:{address_number & 0xFFFF:x}::1"

    for spec in CLASSES:
        for group in range(counts[spec.name]):
            if spec.name == "household":
                members = rng.randint(2, 3)
            elif spec.name == "farm":
                members = rng.randint(*farm_size)
            else:
                members = 1
            shared = address()
            for member in range(members):
                accounts.append(Account(
                    label=spec.name, username=f"{spec.name}_{run}_{group}_{member}",
                    password=secrets.token_urlsafe(12), address=shared, group=group))
    return accounts


async def register(http: httpx.AsyncClient, accounts: Sequence[Account]) -> None:
    semaphore = asyncio.Semaphore(16)

    async def auth(path: str, account: Account, body: dict[str, str],
                   status: int) -> dict[str, Any]:
        for _ in range(5):
            response = await http.post(path, json=body,
                                       headers={"X-Forwarded-For": account.address})
            if response.status_code == 429:
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                continue
            return expect(response, status)
        raise BenchError(f"{path} kept answering 429 for {account.username}")

    async def one(account: Account) -> None:
        async with semaphore:
            credentials = {"username": account.username, "password": account.password}
            account.user_id = (await auth("/api/auth/register", account, credentials,
                                          201))["user_id"]
            login = await auth("/api/auth/login", account, credentials, 200)
            account.access_token = login["access_token"]
            account.refresh_token = login["refresh_token"]

    await asyncio.gather(*(one(a) for a in accounts))


async def simulate(url: str, accounts: list[Account], args: argparse.Namespace) -> float:
    """Register everyone, then run every behaviour for ``args.duration`` s; returns
    the wall-clock time the behaviours started."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        await register(http, accounts)
    sim = Sim(url, end=time.monotonic() + args.duration, hammer_pause=args.hammer_pause)
    sim.user_ids = [a.user_id for a in accounts]
    started = time.time()
    try:
        tasks = [asyncio.create_task(run_behaviour(sim, account,
                                                   random.Random(f"{args.seed}:{i}")))
                 for i, account in enumerate(accounts)]
        await asyncio.sleep(args.duration)
        await asyncio.sleep(2)  # behaviours end by themselves; a request in flight finishes
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await sim.http.aclose()
    return started


# --- After the run: wait for the worker, then read the decisions -----------------------------


def group_done(client: Any, stream: str, group: str) -> bool:
    """Every entry of ``stream`` delivered to ``group`` and acknowledged."""
    try:
        info = client.xinfo_stream(stream)
        groups = {g["name"].decode() if isinstance(g["name"], bytes) else g["name"]: g
                  for g in client.xinfo_groups(stream)}
    except redis.ResponseError:
        return True  # no such stream: nothing was ever written to it
    found = groups.get(group)
    if found is None:
        return int(info["length"]) == 0
    return bool(found["pending"] == 0
                and found["last-delivered-id"] == info["last-generated-id"])


def wait_for_worker(redis_url: str, keys: Keys, group: str, timeout_s: float = 120) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + timeout_s
        while not (group_done(client, keys.stream, group)
                   and group_done(client, keys.fraud_stream, RECORDER_GROUP)):
            if time.monotonic() > deadline:
                raise BenchError("the worker did not persist and record everything in "
                                 f"{timeout_s:.0f} s")
            time.sleep(0.5)
        time.sleep(1.5)  # the last batch's checks run after its acknowledgement
        while not group_done(client, keys.fraud_stream, RECORDER_GROUP):
            if time.monotonic() > deadline:
                raise BenchError("the worker did not record every decision in time")
            time.sleep(0.5)
    finally:
        client.close()


@dataclass
class Outcome:
    restrictions: set[str] = field(default_factory=set)  # Postgres: flagged / banned
    redis_flags: set[str] = field(default_factory=set)  # Redis: flagged / banned
    rules: list[tuple[str, str, float]] = field(default_factory=list)  # (rule, action, ts)
    pg_points: int = 0
    board_points: int = 0
    accepted_ms: list[int] = field(default_factory=list)  # Postgres actions, ascending

    @property
    def caught(self) -> bool:
        return bool(self.restrictions or self.redis_flags)


async def read_outcomes(backing: Backing, accounts: Sequence[Account]) -> dict[str, Outcome]:
    ids = [a.user_id for a in accounts]
    outcomes = {user_id: Outcome() for user_id in ids}
    connection = await asyncpg.connect(backing.database_url)
    try:
        for row in await connection.fetch(
                "SELECT user_id, kind FROM user_restrictions WHERE user_id = ANY($1)"
                " AND kind IN ('flagged', 'banned')", ids):
            outcomes[row["user_id"]].restrictions.add(row["kind"])
        for row in await connection.fetch(
                "SELECT user_id, rule, action, created_at FROM fraud_events"
                " WHERE user_id = ANY($1) ORDER BY id", ids):
            outcomes[row["user_id"]].rules.append(
                (row["rule"], row["action"], row["created_at"].timestamp()))
        for row in await connection.fetch(
                "SELECT user_id, score FROM scores WHERE board = $1 AND user_id = ANY($2)",
                BOARD, ids):
            outcomes[row["user_id"]].pg_points = int(row["score"])
        for row in await connection.fetch(
                "SELECT user_id, created_at FROM actions WHERE user_id = ANY($1)"
                " ORDER BY created_at", ids):
            outcomes[row["user_id"]].accepted_ms.append(
                round(row["created_at"].timestamp() * 1000))
    finally:
        await connection.close()
    keys = Keys(backing.key_prefix)
    # redis-py's sync client is typed as returning ``Awaitable | Any`` (shared stubs)
    client: Any = redis.Redis.from_url(backing.redis_url, decode_responses=True)
    try:
        pipe = client.pipeline(transaction=False)
        for user_id in ids:
            pipe.exists(keys.flagged(user_id))
            pipe.exists(keys.banned(user_id))
        flags = pipe.execute()
        board = totals_by_user(client.zrange(keys.board(BOARD), 0, -1, withscores=True))
    finally:
        client.close()
    for index, user_id in enumerate(ids):
        if flags[2 * index]:
            outcomes[user_id].redis_flags.add("flagged")
        if flags[2 * index + 1]:
            outcomes[user_id].redis_flags.add("banned")
        outcomes[user_id].board_points = board.get(user_id, 0)
    return outcomes


# --- The report -------------------------------------------------------------------------------


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"


@dataclass
class ClassResult:
    name: str
    honest: bool
    accounts: int
    caught: int
    by_rule: Counter[str]
    detect_s: list[float]
    pg_points: int
    board_points: int
    logged: Counter[str]
    statuses: Counter[str]
    lowest_cv: list[float]  # per account with enough accepts: its most regular window

    def as_json(self) -> dict[str, Any]:
        # not dataclasses.asdict: it rebuilds a Counter from (key, count) pairs
        return {"name": self.name, "honest": self.honest, "accounts": self.accounts,
                "caught": self.caught, "by_rule": dict(self.by_rule),
                "detect_s": self.detect_s, "detect_s_median": median(self.detect_s),
                "pg_points": self.pg_points, "board_points": self.board_points,
                "other_events": dict(self.logged), "statuses": dict(self.statuses),
                "lowest_cadence_cv": self.lowest_cv}


def median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def lowest_cv(times_ms: Sequence[int], actions: int, window_ms: int) -> float | None:
    """The most regular window of ``actions`` consecutive accepts (the cadence rule's
    statistic, over every window rather than only the latest): how close an account
    came to the threshold, or how far below it."""
    found = [interval_cv(times_ms[i:i + actions])
             for i in range(len(times_ms) - actions + 1)
             if times_ms[i + actions - 1] - times_ms[i] <= window_ms]
    values = [cv for cv in found if cv is not None]
    return min(values) if values else None


def summarise(accounts: Sequence[Account], outcomes: dict[str, Outcome],
              settings: Settings) -> list[ClassResult]:
    actions = settings.cadence_actions or Settings().cadence_actions
    window_ms = settings.cadence_window_s * 1000
    results = []
    for spec in CLASSES:
        own = [a for a in accounts if a.label == spec.name]
        by_rule: Counter[str] = Counter()
        logged: Counter[str] = Counter()
        detect: list[float] = []
        statuses: Counter[str] = Counter()
        caught = 0
        for account in own:
            outcome = outcomes[account.user_id]
            statuses.update(account.statuses)
            deciding = [(rule, at) for rule, action, at in outcome.rules
                        if action in ("flagged", "banned")]
            for rule, action, _ in outcome.rules:
                if action not in ("flagged", "banned"):
                    logged[f"{rule}:{action}"] += 1
            if outcome.caught:
                caught += 1
                if deciding:
                    by_rule[deciding[0][0]] += 1
                    if account.first_request is not None:
                        detect.append(deciding[0][1] - account.first_request)
                else:
                    by_rule["(no event yet)"] += 1
        cvs = [lowest_cv(outcomes[a.user_id].accepted_ms, actions, window_ms) for a in own]
        results.append(ClassResult(
            name=spec.name, honest=spec.honest, accounts=len(own), caught=caught,
            by_rule=by_rule, detect_s=detect,
            pg_points=sum(outcomes[a.user_id].pg_points for a in own),
            board_points=sum(outcomes[a.user_id].board_points for a in own),
            logged=logged, statuses=statuses,
            lowest_cv=sorted(round(cv, 5) for cv in cvs if cv is not None)))
    return results


def settings_lines(env: dict[str, str], forced: dict[str, str]) -> list[str]:
    settings, defaults = load_settings(env), Settings()
    def text(value: Any) -> str:
        return f"{value.count}/{value.period_s}" if isinstance(value, Rate) else str(value)

    shown = []
    for name in SHOWN_SETTINGS:
        value, default = getattr(settings, name), getattr(defaults, name)
        shown.append(f"{name.upper()}={text(value)}" + (
            "" if value == default else f" (default {text(default)})"))
    lines = ["limits and fraud settings in effect: " + ", ".join(shown)]
    lines.append("set for the simulation itself: " + ", ".join(
        f"{k}={v}" for k, v in forced.items()))
    return lines


def report(args: argparse.Namespace, results: Sequence[ClassResult], env: dict[str, str],
           forced: dict[str, str], backing: Backing, started: float,
           mismatches: int) -> dict[str, Any]:
    honest = [r for r in results if r.honest]
    cheating = [r for r in results if not r.honest]
    print()
    print(f"FRAUD SIMULATOR  {args.duration:g} s of behaviour from "
          f"{datetime.fromtimestamp(started).astimezone():%Y-%m-%d %H:%M %Z}, seed {args.seed}, "
          f"Redis {'embedded' if backing.redis_embedded else 'given'}, Postgres "
          f"{'embedded' if backing.database_embedded else 'given'}")
    for line in settings_lines(env, forced):
        print(line)
    header = (f"{'class':<14} {'label':<7} {'accts':>5} {'caught':>6} {'share':>7}  "
              f"{'median s to catch':>17}  {'points PG':>9} {'on board':>8}  caught by")
    print()
    print(header)
    print("-" * len(header))
    for r in results:
        rules = ", ".join(f"{rule} {n}" for rule, n in r.by_rule.most_common()) or "-"
        detect = median(r.detect_s)
        print(f"{r.name:<14} {'honest' if r.honest else 'cheat':<7} {r.accounts:>5} "
              f"{r.caught:>6} {pct(r.caught / r.accounts if r.accounts else math.nan):>7}  "
              f"{'-' if detect is None else f'{detect:.1f}':>17}  {r.pg_points:>9} "
              f"{r.board_points:>8}  {rules}")
    h_n, h_k = sum(r.accounts for r in honest), sum(r.caught for r in honest)
    c_n, c_k = sum(r.accounts for r in cheating), sum(r.caught for r in cheating)
    print("-" * len(header))
    lo, hi = wilson(h_k, h_n)
    print(f"honest, overall: {h_k}/{h_n} flagged or banned = {pct(h_k / h_n if h_n else math.nan)}"
          f" (95% interval {pct(lo)}-{pct(hi)}; aim <= 1%)")
    lo, hi = wilson(c_k, c_n)
    print(f"cheating, overall recall: {c_k}/{c_n} = {pct(c_k / c_n if c_n else math.nan)}"
          f" (95% interval {pct(lo)}-{pct(hi)}; aim >= 95%)")
    low = [f"{r.name} {pct(r.caught / r.accounts)}" for r in cheating
           if r.accounts and r.caught / r.accounts < 0.95]
    print("cheating classes under 95%: " + (", ".join(low) or "none"))
    print(f"points on the board: cheaters {sum(r.board_points for r in cheating)} "
          f"(Postgres totals {sum(r.pg_points for r in cheating)}), honest "
          f"{sum(r.board_points for r in honest)} (Postgres {sum(r.pg_points for r in honest)})")
    logged: Counter[str] = Counter()
    for r in results:
        logged.update(r.logged)
    print("events that are not flags or bans (not counted as caught): "
          + (", ".join(f"{k} {v}" for k, v in sorted(logged.items())) or "none"))
    print(f"cadence margin (threshold CADENCE_MAX_CV={load_settings(env).cadence_max_cv}): "
          "the most regular window of accepts per account, lowest / median over the "
          "class's accounts with enough accepts:")
    print("  " + ("; ".join(
        f"{r.name} {r.lowest_cv[0]:.4f} / {statistics.median(r.lowest_cv):.4f} "
        f"({len(r.lowest_cv)} accts)" for r in results if r.lowest_cv)
        or "no account had enough accepts"))
    if mismatches:
        print(f"WARNING: {mismatches} accounts flagged/banned in Redis and Postgres differently")
    print("not covered: the hourly score-velocity job (needs hours of history) never fires "
          "within the run; token-failure counters last an hour, so a run shorter than that "
          "sees only part of an honest player's mistakes accumulating.")
    print()
    print("requests by class (status and error code):")
    for r in results:
        print(f"  {r.name:<14} " + ", ".join(f"{k}: {v}" for k, v in sorted(r.statuses.items())))
    return {"duration_s": args.duration, "seed": args.seed, "started": started,
            "overrides": args.set, "issue_rules_only": args.issue_rules_only,
            "classes": [r.as_json() for r in results],
            "honest": {"accounts": h_n, "caught": h_k},
            "cheating": {"accounts": c_n, "caught": c_k}}


# --- Running it -----------------------------------------------------------------------------


def system_env(backing: Backing, overrides: dict[str, str]) -> tuple[dict[str, str],
                                                                      dict[str, str]]:
    """The ingest and worker environment: the service's defaults (any setting
    inherited from the caller's environment is dropped), the run's servers and
    names, what the simulation needs, then ``overrides``."""
    env = {k: v for k, v in os.environ.items()
           if k not in {f.name.upper() for f in fields(Settings)}}
    forced = {"TRUSTED_PROXIES": "127.0.0.1/32", "SCRYPT_N": "1024",
              "WORKER_METRICS_PORT": "0", "LOG_LEVEL": "WARNING"}
    env.update({"REDIS_URL": backing.redis_url, "DATABASE_URL": backing.database_url,
                "KEY_PREFIX": backing.key_prefix, "JWT_KEYS_DIR": str(backing.keys_dir / "jwt"),
                "ACTION_KEYS_FILE": str(backing.keys_dir / "action-token-keys"),
                "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                         os.environ.get("PATH", "")]),
                **forced, **overrides})
    load_settings(env)  # a bad --set stops here, naming the variable
    return env, forced


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.fraud_sim",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=180,
                        help="seconds of behaviour after registration (default 180)")
    parser.add_argument("--seed", type=int, default=1)
    for spec in CLASSES:
        parser.add_argument(f"--{spec.name.replace('_', '-')}", type=int,
                            default=spec.default_count, dest=spec.name,
                            help=f"{spec.what} (default {spec.default_count})")
    parser.add_argument("--farm-size", default="5-8",
                        help="accounts per farm, LOW-HIGH (default 5-8)")
    parser.add_argument("--hammer-pause", type=float, default=0.05,
                        help="max_rate bots' pause after a refusal, s (default 0.05)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a service setting for ingest and worker (repeatable)")
    parser.add_argument("--issue-rules-only", action="store_true",
                        help="turn off the rules added with this simulator "
                             "(hammering, cadence, farms)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    low, _, high = args.farm_size.partition("-")
    try:
        args.farm_range = (int(low), int(high or low))
    except ValueError:
        parser.error("--farm-size must be LOW-HIGH")
    if not 1 <= args.farm_range[0] <= args.farm_range[1] or args.duration <= 0:
        parser.error("--farm-size must be 1 <= LOW <= HIGH and --duration positive")
    if any("=" not in item for item in args.set):
        parser.error("--set takes NAME=VALUE")
    return args


def run(args: argparse.Namespace) -> int:
    overrides = dict(NEW_RULES_OFF) if args.issue_rules_only else {}
    overrides.update(item.split("=", 1) for item in args.set)
    counts = {spec.name: getattr(args, spec.name) for spec in CLASSES}
    accounts = make_accounts(counts, args.farm_range, random.Random(args.seed))
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fraud-sim-")))
        print("starting Redis and Postgres, migrating a fresh database…", flush=True)
        backing = start_backing(stack, root)
        if not backing.redis_embedded:
            stack.callback(delete_keys, backing.redis_url, [backing.key_prefix])
        env, forced = system_env(backing, overrides)
        keys = Keys(backing.key_prefix)
        client = stack.enter_context(contextlib.closing(redis.Redis.from_url(backing.redis_url)))
        url, _ = stack.enter_context(ingest_process(env, root / "ingest.log"))
        stack.enter_context(worker_process(env, root / "worker.log", client, keys,
                                           name="fraud-sim-worker"))
        print(f"ingest on {url} and a worker; registering {len(accounts)} accounts, then "
              f"{args.duration:g} s of behaviour…", flush=True)
        started = asyncio.run(simulate(url, accounts, args))
        print("waiting for the worker to persist and record everything…", flush=True)
        wait_for_worker(backing.redis_url, keys, load_settings(env).consumer_group)
        outcomes = asyncio.run(read_outcomes(backing, accounts))
        mismatches = sum(1 for o in outcomes.values() if o.restrictions != o.redis_flags)
        results = summarise(accounts, outcomes, load_settings(env))
        figures = report(args, results, env, forced, backing, started, mismatches)
        if args.json:
            args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
        print("stopping the processes started…", flush=True)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # unwinds like Ctrl-C: everything is stopped
    try:
        return run(parse_args(argv))
    except BenchError as exc:
        print(f"fraud_sim: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fraud_sim: interrupted; every process it started is stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
