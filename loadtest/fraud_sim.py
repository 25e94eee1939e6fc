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
import contextlib
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import redis

from loadtest import BenchError
from loadtest.fraud_behaviours import BOARD, CLASSES, Account, make_accounts, simulate
from loadtest.fraud_report import Outcome, report, summarise
from loadtest.harness.backing import Backing, start_backing
from loadtest.harness.command import benchmark_parser, command
from loadtest.harness.processes import group_caught_up, ingest_process, worker_process
from scoreboard.keys import Keys
from scoreboard.ranking import totals_by_user
from scoreboard.settings import Settings, load_settings

RECORDER_GROUP = "fraud-recorders"  # workers/fraud.py
NEW_RULES_OFF = {"RATE_REFUSALS_TO_FLAG": "0", "CADENCE_ACTIONS": "0", "FARM_MIN_ACCOUNTS": "0"}


# --- After the run: wait for the worker, then read the decisions -----------------------------


def wait_for_worker(redis_url: str, keys: Keys, group: str, timeout_s: float = 120) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + timeout_s
        while not (group_caught_up(client, keys.stream, group)
                   and group_caught_up(client, keys.fraud_stream, RECORDER_GROUP)):
            if time.monotonic() > deadline:
                raise BenchError("the worker did not persist and record everything in "
                                 f"{timeout_s:.0f} s")
            time.sleep(0.5)
        time.sleep(1.5)  # the last batch's checks run after its acknowledgement
        while not group_caught_up(client, keys.fraud_stream, RECORDER_GROUP):
            if time.monotonic() > deadline:
                raise BenchError("the worker did not record every decision in time")
            time.sleep(0.5)
    finally:
        client.close()


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
    env.update({**backing.env(), **forced, **overrides})
    load_settings(env)  # a bad --set stops here, naming the variable
    return env, forced


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = benchmark_parser("loadtest.fraud_sim", __doc__)
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


main = command("fraud_sim", parse_args, run)

if __name__ == "__main__":
    sys.exit(main())
