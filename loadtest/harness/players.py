"""Players and their action tokens, set up over ingest's public HTTP API.

Each player speaks from an address of its own (``X-Forwarded-For``, ingest
trusting 127.0.0.1 as its proxy, as behind a load balancer): with every
request on one address, the per-IP GCRA key would cap the run (see
BENCHMARKS.md). Limits are raised (``HIGH_RATE``) and action tokens live an
hour, so the figures measure cost, not policy.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import math
import os
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from loadtest import BenchError
from loadtest.harness.backing import Backing
from loadtest.harness.http import encode_post, open_connection

HIGH_RATE = "100000000/60"  # far above anything one machine can send
TOKEN_TTL_S = 3600  # tokens are fetched before the run; they must outlive it
RAPID_MAX_ACTIONS = 1_000_000_000
Request = tuple[dict[str, str], str]  # (headers, increment body)


def ingest_env(backing: Backing) -> dict[str, str]:
    """A process's environment: the run's servers and names, limits out of the way."""
    return {**os.environ, **backing.env(),
            "SCRYPT_N": "1024", "LOG_LEVEL": "WARNING", "ACTION_TOKEN_TTL_S": str(TOKEN_TTL_S),
            # A token's marker must live as long as the token (the settings refuse less).
            "DEDUP_TTL_S": str(TOKEN_TTL_S),
            "INCREMENT_RATE": HIGH_RATE, "ACTION_TOKEN_RATE": HIGH_RATE, "IP_RATE": HIGH_RATE,
            "AUTH_IP_RATE": HIGH_RATE, "BACKEND_RATE": HIGH_RATE,
            "TRUSTED_PROXIES": "127.0.0.1/32",
            # The rapid-actions rule still runs (its ZSET work is in the script) but
            # never flags: a flagged player would fall to the reduced limit.
            "RAPID_MAX_ACTIONS": str(RAPID_MAX_ACTIONS)}


def expect(response: httpx.Response, status: int) -> dict[str, Any]:
    """The JSON body of a set-up call, or a BenchError saying what the server said."""
    if response.status_code != status:
        raise BenchError(f"{response.request.method} {response.request.url.path}: expected "
                         f"{status}, got {response.status_code}: {response.text[:300]}")
    body: dict[str, Any] = response.json()
    return body


def unpadded_b64decode(text: str) -> bytes:
    """base64url without its padding, as JWTs and action tokens carry it."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwt_subject(authorization: str) -> str:
    """The ``sub`` claim of a ``Bearer`` token, unverified (our own server issued it)."""
    claims: dict[str, Any] = orjson.loads(unpadded_b64decode(authorization.split()[1]
                                                             .split(".")[1]))
    return str(claims["sub"])


def token_fields(body: str) -> tuple[str, str]:
    """(user id, nonce) of the action token in an increment body: the event id of
    the increment is ``at-<nonce>`` (docs/decisions.md, Event ids)."""
    token = orjson.loads(body)["action_token"]
    payload = orjson.loads(unpadded_b64decode(token.rpartition(".")[0]))
    return str(payload["u"]), str(payload["n"])


def player_address(index: int) -> str:
    """Player ``index``'s address, from 198.18.0.0/15 (RFC 2544: benchmarking)."""
    return f"198.{18 + index // 65536}.{index // 256 % 256}.{index % 256}"


async def create_players(url: str, count: int, parallel: int = 8) -> list[dict[str, str]]:
    """Register and log in ``count`` players; returns the headers each sends
    (its bearer token and its own address)."""
    run_id = secrets.token_hex(3)
    semaphore = asyncio.Semaphore(parallel)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(index: int) -> dict[str, str]:
            credentials = {"username": f"bench_{run_id}_{index}",
                           "password": secrets.token_urlsafe(12)}
            address = {"X-Forwarded-For": player_address(index)}
            async with semaphore:
                expect(await client.post("/api/auth/register", json=credentials,
                                         headers=address), 201)
                login = expect(await client.post("/api/auth/login", json=credentials,
                                                 headers=address), 200)
            return {"Authorization": f"Bearer {login['access_token']}", **address}

        return list(await asyncio.gather(*(one(i) for i in range(count))))


async def fetch_tokens(url: str, players: list[dict[str, str]], count: int,
                       concurrency: int) -> tuple[list[Request], float]:
    """``count`` action tokens, round-robin over the players so consecutive
    increments come from different users. Returns (headers, increment body)
    pairs (global's default action: 1 point) and the rate the tokens came at (tokens/s).

    Uses the raw client at the same concurrency, so the rate reflects the
    server, and predicts the increment rate well enough to size the token supply."""
    owners = collections.deque(players[i % len(players)] for i in range(count))
    requests: list[Request] = []
    host = urlsplit(url).netloc

    async def worker() -> None:
        connection = await open_connection(url)
        try:
            while owners:
                headers = owners.popleft()
                status, body = await connection.post(
                    encode_post(host, "/api/actions/token", headers, b""))
                if status != 200:
                    raise BenchError(f"POST /api/actions/token: {status} {body[:300]!r}")
                requests.append((headers, orjson.dumps({  # the token names board and points
                    "action_token": orjson.loads(body)["action_token"]}).decode()))
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
    return requests, count / (time.perf_counter() - started)


def prepare_requests(url: str, players: list[dict[str, str]], args: argparse.Namespace,
                     windows: int = 1) -> tuple[list[Request], float]:
    """Enough tokens for ``windows`` times warm-up + window. Unless ``args.tokens`` is given, the
    count comes from the rate of a first batch: issuing a token costs the
    server about what an increment does, so it predicts the increment rate;
    ``args.token_margin`` covers the difference (``args.max_tokens`` caps it),
    and running out is reported."""
    if args.tokens:
        return asyncio.run(fetch_tokens(url, players, args.tokens, args.concurrency))
    first, rate = asyncio.run(fetch_tokens(url, players, 3000, args.concurrency))
    wanted = min(math.ceil(rate * (args.warmup + args.duration) * windows * args.token_margin),
                 args.max_tokens)
    if wanted <= len(first):
        return first, rate
    rest, _ = asyncio.run(fetch_tokens(url, players, wanted - len(first), args.concurrency))
    return first + rest, rate


def add_load_options(parser: argparse.ArgumentParser, *, duration: float, warmup: float,
                     token_margin: float, margin_help: str) -> None:
    """The options of a load of increments: the window, the connections, the
    players and how many action tokens :func:`prepare_requests` fetches."""
    parser.add_argument("--duration", type=float, default=duration,
                        help=f"measured seconds ({duration:g})")
    parser.add_argument("--warmup", type=float, default=warmup,
                        help=f"unmeasured seconds first ({warmup:g})")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="connections of the load generator, one request in flight "
                             "each (64)")
    parser.add_argument("--players", type=int, default=200,
                        help="registered players sending the load, one address each (200)")
    parser.add_argument("--token-margin", type=float, default=token_margin,
                        help=f"{margin_help} ({token_margin:g})")
    parser.add_argument("--max-tokens", type=int, default=400_000, help="cap (400000)")


def check_load_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (``parser.error``) a load option out of its range."""
    if not 1 <= args.duration <= 600 or not 0 <= args.warmup <= 60:
        parser.error("--duration must be 1..600 s and --warmup 0..60 s")
    if not 1 <= args.concurrency <= 1024 or not 1 <= args.players <= 100_000:
        parser.error("--concurrency must be 1..1024 and --players 1..100000")
