"""The fraud simulator's HTTP side: one shared ``httpx`` client, every request on
behalf of an account from its own address (``X-Forwarded-For``), and the
simulated clock.

Simulated time (``--time-scale K``): the simulator runs the service with every
duration of the limits and fraud rules divided by K (``loadtest.fraud_sim``
sets them), and every behaviour's pauses divided by K here, so one wall second
is K simulated seconds for everyone: the same code paths, the same Redis TTLs,
the same Postgres expiries, only shorter. :meth:`Sim.now` and :meth:`Sim.sleep`
speak simulated seconds; a server's Retry-After (whole wall seconds) is
multiplied back.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from loadtest.harness.players import expect

BOARD = "sim"
# The simulator's board (fraud_sim creates it): the server decides the points of
# each action; the last is the board's maximum.
ACTIONS = {"play": 1, "win": 5, "jackpot": 10}
HONEST_MIX = (("play", 0.80), ("win", 0.18), ("jackpot", 0.02))


def honest_choice(rng: random.Random) -> str:
    draw, total = rng.random(), 0.0
    for action, share in HONEST_MIX:
        total += share
        if draw < total:
            return action
    return "play"


@dataclass
class Account:
    label: str
    honest: bool
    username: str
    password: str
    address: str
    group: int  # household / farm / campus number, else the account's own number
    user_id: str = ""
    access_token: str = ""
    refresh_token: str = ""
    first_request: float | None = None  # wall-clock time
    statuses: Counter[str] = field(default_factory=Counter)
    stopped: str = ""
    session_end: float = 0.0  # simulated s; behaviours with sessions rest after it


class Refused(Exception):
    """The account was refused for good (banned): its behaviour stops."""


class Sim:
    def __init__(self, url: str, *, duration: float, hammer_pause: float,
                 scale: int = 1) -> None:
        self.http = httpx.AsyncClient(base_url=url, timeout=30,
                                      limits=httpx.Limits(max_connections=256,
                                                          max_keepalive_connections=256))
        self.scale = scale
        self.sessions = False  # every honest player in sessions (campus players always)
        self.started = time.monotonic()
        self.end = duration  # simulated s
        self.hammer_pause = hammer_pause  # simulated s: a hammering client's own pause
        self.stolen: list[str] = []  # tokens replayers hand to each other
        self.user_ids: list[str] = []

    def now(self) -> float:
        """Simulated seconds since the behaviours started."""
        return (time.monotonic() - self.started) * self.scale

    def left(self) -> float:
        return self.end - self.now()

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of simulated time, or stop the behaviour when the run
        ends first."""
        if seconds >= self.left():
            await asyncio.sleep(max(0.0, self.left()) / self.scale)
            raise TimeoutError
        await asyncio.sleep(max(0.0, seconds) / self.scale)

    async def sleep_until(self, at: float) -> None:
        await self.sleep(at - self.now())

    def retry_after(self, response: httpx.Response) -> float:
        """The response's Retry-After (whole wall seconds) in simulated seconds."""
        return float(response.headers.get("retry-after", "0") or 0) * self.scale

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
            return response.status_code, code, self.retry_after(response)
        return 401, "token_expired", 0.0

    async def refresh(self, account: Account) -> None:
        response = await self.http.post("/api/auth/refresh",
                                         json={"refresh_token": account.refresh_token},
                                         headers={"X-Forwarded-For": account.address})
        body = expect(response, 200)
        account.access_token, account.refresh_token = body["access_token"], body["refresh_token"]

    async def token(self, account: Account,
                    action: str = "play") -> tuple[str | None, float]:
        """A fresh action token for ``action`` on the board, or (None, Retry-After)
        when refused."""
        if account.first_request is None:
            account.first_request = time.time()
        response = await self.http.post("/api/actions/token", json={
            "board": BOARD, "action": action}, headers={
            "X-Forwarded-For": account.address, "Authorization": f"Bearer {account.access_token}"})
        if response.status_code == 200:
            account.statuses["200 token"] += 1
            token: str = response.json()["action_token"]
            return token, 0.0
        code = response.json().get("error", {}).get("code", "")
        account.statuses[f"{response.status_code} {code} (token)"] += 1
        if response.status_code == 401 and code == "token_expired":
            await self.refresh(account)
            return await self.token(account, action)
        if code == "user_banned":
            account.stopped = "banned"
            raise Refused
        return None, self.retry_after(response)

    async def token_when_allowed(self, account: Account, action: str = "play") -> str:
        """A fresh action token, waiting out every refusal (Retry-After), as a human
        would; the run's end stops the behaviour (:meth:`sleep`)."""
        while True:
            token, wait = await self.token(account, action)
            if token is not None:
                return token
            await self.sleep(wait)

    async def increment(self, account: Account, token: str) -> tuple[int, str, float]:
        """Post ``token`` (the server decides the points: its action's)."""
        return await self.request(account, "/api/scores/increment",
                                  body={"action_token": token})
