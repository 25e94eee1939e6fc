"""The fraud simulator's accounts and how each class behaves, over the public API.

``loadtest.fraud_sim`` lists the classes and what each does; every request
goes through one shared ``httpx`` client, from the account's own address
(``X-Forwarded-For``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import random
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from loadtest import BenchError
from loadtest.harness.players import expect, unpadded_b64decode

BOARD = "global"
P_RETRY_USED = 0.05  # honest: re-sends an increment whose answer was lost
P_EXPIRED = 0.03  # honest: uses a token after being away for more than its lifetime


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

    async def token_when_allowed(self, account: Account) -> str:
        """A fresh action token, waiting out every refusal (Retry-After), as a human
        would; the run's end stops the behaviour (:meth:`sleep`)."""
        while True:
            token, wait = await self.token(account)
            if token is not None:
                return token
            await self.sleep(wait)

    async def increment(self, account: Account, token: str, points: int) -> tuple[int, str, float]:
        # The server decides the points now (the token's action: global's play = 1);
        # ``points`` is what the account would have asked for, kept for its class's pace.
        return await self.request(account, "/api/scores/increment",
                                  body={"action_token": token})


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
        token = await sim.token_when_allowed(account)
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


def forgeries(token: str, other_user: str, rng: random.Random) -> str:
    """A tampered copy of ``token`` (format: ``base64url(payload).hexsig``)."""
    payload_text, _, signature = token.rpartition(".")
    payload = orjson.loads(unpadded_b64decode(payload_text))
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
    claims = orjson.loads(unpadded_b64decode(payload))
    return ".".join([header, _b64(orjson.dumps({**claims, "sub": other_user})), signature])


async def forger(sim: Sim, account: Account, rng: random.Random) -> None:
    await sim.sleep(rng.uniform(0, 10))
    while True:
        token = await sim.token_when_allowed(account)
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
        token = await sim.token_when_allowed(account)
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
