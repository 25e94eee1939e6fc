"""The fraud simulator's accounts and how each class behaves, over the public API.

``loadtest.fraud_sim`` lists the classes and what each does; the HTTP side and
the simulated clock are ``loadtest.fraud_client``. Every pause here is in
simulated seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import random
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from time import time as time_now
from typing import Any

import httpx
import orjson

from loadtest import BenchError
from loadtest.fraud_client import Account, Refused, Sim, honest_choice
from loadtest.harness.players import expect, unpadded_b64decode

P_RETRY_USED = 0.05  # honest: re-sends an increment whose answer was lost
P_EXPIRED = 0.03  # honest: uses a token after being away for more than its lifetime


@dataclass(frozen=True)
class ClassSpec:
    name: str
    honest: bool
    default_count: int
    what: str
    members: tuple[int, int] = (1, 1)  # accounts per address


CLASSES = (
    ClassSpec("casual", True, 25, "honest players"),
    ClassSpec("grinder", True, 25, "honest players"),
    ClassSpec("night_owl", True, 25, "honest players"),
    ClassSpec("bursty", True, 25, "honest players"),
    ClassSpec("household", True, 10, "addresses of 2-6 honest players", (2, 6)),
    ClassSpec("campus", True, 2, "campus / carrier-NAT addresses of 50-500 honest players in "
              "sessions", (50, 500)),
    ClassSpec("fixed_cadence", False, 20, "bots"),
    ClassSpec("max_rate", False, 10, "bots"),
    ClassSpec("replayer", False, 10, "accounts"),
    ClassSpec("forger", False, 10, "accounts"),
    ClassSpec("farm", False, 4, "farms (addresses)", (5, 8)),
    ClassSpec("slow", False, 10, "bots at a human pace, the board's top action every time"),
)
SPEC = {spec.name: spec for spec in CLASSES}


# --- Behaviours ---------------------------------------------------------------------------


async def rest_between_sessions(sim: Sim, account: Account, rng: random.Random) -> None:
    """Sessions of play: after a session (15-120 min) a rest of 1-8 h. Used by every
    honest class when the run has ``--sessions``, and always by campus players."""
    if sim.now() < account.session_end:
        return
    if account.session_end:  # a session ended: rest
        await sim.sleep(rng.uniform(3600, 8 * 3600))
    account.session_end = sim.now() + rng.uniform(15 * 60, 120 * 60)


async def first_session(sim: Sim, account: Account, rng: random.Random) -> None:
    """Where the run finds a player in sessions: a third of them playing already,
    the rest starting within the next 8 h."""
    if rng.random() < 1 / 3:
        account.session_end = sim.now() + rng.uniform(0, 120 * 60)
    else:
        await sim.sleep(rng.uniform(0, 8 * 3600))
        account.session_end = sim.now() + rng.uniform(15 * 60, 120 * 60)


async def honest_action(sim: Sim, account: Account, rng: random.Random) -> None:
    """One action of a human: fetch a token, post it; a 429 is waited out (Retry-After)."""
    action = honest_choice(rng)
    token, wait = await sim.token(account, action)
    if token is None:
        await sim.sleep(wait)
        token, _ = await sim.token(account, action)
        if token is None:
            return
    if rng.random() < P_EXPIRED:  # away for longer than the token lives
        await sim.sleep(rng.uniform(61, 68))
        status, _, _ = await sim.increment(account, token)
        if status != 403:
            return
        token, _ = await sim.token(account, action)
        if token is None:
            return
    status, _, wait = await sim.increment(account, token)
    for _ in range(2):
        if status != 429:
            break
        await sim.sleep(wait)
        status, _, wait = await sim.increment(account, token)
    if status == 202 and rng.random() < P_RETRY_USED:  # the answer was lost: send again
        await sim.increment(account, token)


def sessions_of(sim: Sim, account: Account) -> bool:
    return account.label == "campus" or sim.sessions


async def casual(sim: Sim, account: Account, rng: random.Random) -> None:
    if sessions_of(sim, account):
        await first_session(sim, account, rng)
    await sim.sleep(rng.uniform(0, 30))
    while True:
        if sessions_of(sim, account):
            await rest_between_sessions(sim, account, rng)
        await honest_action(sim, account, rng)
        await sim.sleep(rng.uniform(20, 60))


async def grinder(sim: Sim, account: Account, rng: random.Random) -> None:
    if sessions_of(sim, account):
        await first_session(sim, account, rng)
    next_at = sim.now() + rng.uniform(0, 15)
    while True:
        await sim.sleep_until(next_at)
        if sessions_of(sim, account):
            await rest_between_sessions(sim, account, rng)
        await honest_action(sim, account, rng)
        next_at = max(next_at + rng.uniform(13, 15), sim.now())


async def bursty(sim: Sim, account: Account, rng: random.Random) -> None:
    if sessions_of(sim, account):
        await first_session(sim, account, rng)
    await sim.sleep(rng.uniform(0, 60))
    while True:
        if sessions_of(sim, account):
            await rest_between_sessions(sim, account, rng)
        for index in range(rng.randint(3, 5)):
            if index:
                await sim.sleep(rng.uniform(0.5, 2.0))
            await honest_action(sim, account, rng)
        await sim.sleep(rng.uniform(60, 150))


async def campus_player(sim: Sim, account: Account, rng: random.Random) -> None:
    """A campus or carrier-NAT player: casual, grinder or bursty (70/20/10), in sessions."""
    kind = rng.random()
    behaviour = casual if kind < 0.7 else grinder if kind < 0.9 else bursty
    await behaviour(sim, account, rng)


async def fixed_cadence(sim: Sim, account: Account, rng: random.Random) -> None:
    period = rng.uniform(10, 15)
    tick = sim.now() + rng.uniform(1, 15)
    while True:
        await sim.sleep_until(tick - 1.0)
        token, _ = await sim.token(account)
        await sim.sleep_until(tick)
        if token is not None:
            await sim.increment(account, token)
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
        status, code, _ = await sim.increment(account, token)
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
        # the same token three times at once: one counts, two are replays
        await asyncio.gather(*(sim.increment(account, token) for _ in range(3)),
                             return_exceptions=True)
        spare, _ = await sim.token(account)
        if action % 2 == 0 and sim.stolen:
            stolen = sim.stolen.pop(rng.randrange(len(sim.stolen)))
            await sim.increment(account, stolen)  # issued to someone else
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
            await sim.increment(account, forgeries(token, other, rng))
        if rng.random() < 0.2:
            await sim.request(account, "/api/actions/token",
                              bearer=forged_jwt(account.access_token, other))
        await sim.increment(account, token)
        await sim.sleep(rng.uniform(10, 16))


async def farm_member(sim: Sim, account: Account, rng: random.Random) -> None:
    await sim.sleep(rng.uniform(0, 20))
    while True:
        token = await sim.token_when_allowed(account)
        status, _, wait = await sim.increment(account, token)
        await sim.sleep(max(wait if status == 429 else 0.0, rng.uniform(10, 20)))


async def slow(sim: Sim, account: Account, rng: random.Random) -> None:
    """A bot at a human pace with a human's jitter (13-25 s between actions), taking
    the board's top action every time, never resting; honours Retry-After."""
    await sim.sleep(rng.uniform(0, 30))
    while True:
        token = await sim.token_when_allowed(account, "jackpot")
        status, _, wait = await sim.increment(account, token)
        await sim.sleep(max(wait if status == 429 else 0.0, rng.uniform(13, 25)))


BEHAVIOURS: dict[str, Callable[[Sim, Account, random.Random], Awaitable[None]]] = {
    "casual": casual, "grinder": grinder, "night_owl": casual, "bursty": bursty,
    "household": casual, "campus": campus_player, "fixed_cadence": fixed_cadence,
    "max_rate": max_rate, "replayer": replayer, "forger": forger, "farm": farm_member,
    "slow": slow,
}


async def run_behaviour(sim: Sim, account: Account, rng: random.Random) -> None:
    try:
        await BEHAVIOURS[account.label](sim, account, rng)
    except (TimeoutError, Refused):
        pass
    except httpx.TransportError as exc:
        account.statuses[f"transport error {type(exc).__name__}"] += 1


# --- Accounts -------------------------------------------------------------------------------


def make_accounts(counts: dict[str, int], sizes: dict[str, tuple[int, int]],
                  rng: random.Random) -> list[Account]:
    """``counts``: class -> how many (addresses, for the shared ones); ``sizes``:
    class -> accounts per address, overriding the class's own."""
    run = secrets.token_hex(3)
    accounts: list[Account] = []
    address_number = 0

    def address() -> str:
        nonlocal address_number
        address_number += 1
        return f"2001:db8:{address_number >> 16:x}:{address_number & 0xFFFF:x}::1"

    for spec in CLASSES:
        for group in range(counts[spec.name]):
            members = rng.randint(*sizes.get(spec.name, spec.members))
            shared = address()
            for member in range(members):
                accounts.append(Account(
                    label=spec.name, honest=spec.honest,
                    username=f"{spec.name}_{run}_{group}_{member}",
                    password=secrets.token_urlsafe(12), address=shared, group=group))
    return accounts


async def register(http: httpx.AsyncClient, accounts: Sequence[Account]) -> None:
    """Register and log in every account, each from an address of its own (not its
    playing address: registering 500 campus accounts from one address would meet
    the sign-up limit, which is not what the simulation is about)."""
    semaphore = asyncio.Semaphore(16)
    signup = {id(a): f"2001:db8:5167:{i >> 16:x}:{i & 0xFFFF:x}::1"
              for i, a in enumerate(accounts)}

    async def auth(path: str, account: Account, body: dict[str, str],
                   status: int) -> dict[str, Any]:
        for _ in range(5):
            response = await http.post(path, json=body,
                                       headers={"X-Forwarded-For": signup[id(account)]})
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
    sim = Sim(url, duration=args.duration, hammer_pause=args.hammer_pause,
              scale=args.time_scale)
    sim.sessions = args.sessions
    sim.user_ids = [a.user_id for a in accounts]
    started = time_now()
    try:
        tasks = [asyncio.create_task(run_behaviour(sim, account,
                                                   random.Random(f"{args.seed}:{i}")))
                 for i, account in enumerate(accounts)]
        await asyncio.sleep(args.duration / args.time_scale)
        await asyncio.sleep(2)  # behaviours end by themselves; a request in flight finishes
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await sim.http.aclose()
    return started
