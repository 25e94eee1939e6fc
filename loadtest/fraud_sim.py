"""Labelled fraud simulator: accounts of known label against the running system,
then recall and false positives of the fraud rules.

    python -m loadtest.fraud_sim [--duration 180 --seed 1 --set NAME=VALUE ...]
    python -m loadtest.fraud_sim --duration 86400 --time-scale 60 --sessions   # a day

It starts Redis and Postgres (embedded in a temporary folder, or the loopback
servers named by ``REDIS_URL`` / ``DATABASE_URL``, on a fresh database and key
prefix), ONE ingest process and ONE worker process, with the service's default
limits and fraud settings; ``--set`` overrides one (repeatable) and
``--issue-rules-only`` turns off the rules added with this simulator;
``--anomaly`` turns the learned anomaly score on (the worker's passes every
scaled ``ANOMALY_EVERY_S``, and one more pass at the end of the run) and reports
the precision and recall of its reviews beside the rules'. The run
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
  household   2-6 casual players behind one address (``--household-size``)
  campus      50-500 players behind one address (a campus or a carrier NAT,
              ``--campus-size``): casual, grinder or bursty (70/20/10), each in
              sessions of 15-120 min with rests of 1-8 h
  With ``--sessions`` every honest player plays in such sessions (the day's runs).
  Every honest player sometimes makes a mistake: it re-sends an increment whose
  answer it did not get (a retry: answered with the original 202, 5% of actions)
  or uses an action token after being away for more than its 60 s (403
  action_token_expired, 3%). Honest players take the board's actions in a mix
  (play 1 point 80%, win 5 points 18%, jackpot 10 points 2%).
cheating
  fixed_cadence  an increment exactly every N s (N from 10 to 15 per bot, no jitter;
                 the token is fetched a second before)
  max_rate       as fast as the API allows: on a 429 it retries after
                 ``--hammer-pause`` (1 s), never honouring Retry-After
  replayer       plays every 10-16 s and replays each token twice at once (a race for
                 a double count); every other action also tries a token issued to
                 another replayer (403 action_token_foreign)
  forger         plays every 10-16 s and also posts 1-2 tampered tokens per action
                 (flipped signature, payload with a later issue time or another
                 user id, a signature under a made-up key, garbage); one action in
                 five also sends a tampered access token (401, counted per address)
  farm           5-8 accounts behind one address (``--farm-size``), each acting
                 every 10-20 s (jittered)
  slow           a bot at a human pace with a human's jitter (13-25 s), the board's
                 top action (jackpot, 10 points) every time, never resting
The server decides the points (the board ``sim``: play 1, win 5, jackpot 10);
cheaters other than slow take play.

Simulated time (``--time-scale K``, K dividing 60): every duration of the limits
and the fraud rules is divided by K (token lifetime, dedup window, rate
periods, rule windows, flag and ban durations, the tireless rule's hour) and so
is every pause of every behaviour, so that one wall second is K simulated
seconds through the same code paths (Redis TTLs and scripts, ingest, the
worker, Postgres expiries). ``--duration`` is simulated seconds. What it cannot
show: the machine's latency is multiplied by K too (5 ms of queueing is 0.3 s
at K=60, so bots look less regular than they are: cadence_regularity is
tested at K=1 only); Retry-After is whole wall seconds (a refused client waits
up to K simulated seconds); the calendar rules are not scaled (unusual_time
reads the wall clock's hour, score_velocity is an hourly cron job that a run of
minutes never reaches; both only log or ask for review); access tokens last a
day (ACCESS_TOKEN_TTL_S=86400: refreshes are not what this is about).

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
import subprocess
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
from loadtest.fraud_anomaly_report import anomaly_report
from loadtest.fraud_behaviours import CLASSES, make_accounts, simulate
from loadtest.fraud_client import ACTIONS, BOARD, Account
from loadtest.fraud_report import Outcome, report, summarise
from loadtest.harness.backing import Backing, start_backing
from loadtest.harness.command import benchmark_parser, command
from loadtest.harness.processes import group_caught_up, ingest_process, worker_process
from scoreboard.keys import Keys
from scoreboard.ranking import totals_by_user
from scoreboard.settings import Settings, load_settings

RECORDER_GROUP = "fraud-recorders"  # workers/fraud.py
NEW_RULES_OFF = {"RATE_REFUSALS_TO_FLAG": "0", "CADENCE_ACTIONS": "0", "FARM_MIN_ACCOUNTS": "0",
                 "TIRELESS_HOURS": "0", "TOP_ACTION_RUN": "0"}


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
                "SELECT user_id, kind, lifted_at IS NULL AND (expires_at IS NULL OR"
                " expires_at > now() + interval '2 seconds') AS active,"
                " lifted_at IS NULL AND expires_at IS NOT NULL AND expires_at > now()"
                " - interval '2 seconds' AND expires_at <= now() + interval '2 seconds'"
                " AS ending FROM user_restrictions WHERE user_id = ANY($1)"
                " AND kind IN ('flagged', 'banned')", ids):
            outcome = outcomes[row["user_id"]]
            outcome.restrictions.add(row["kind"])
            if row["active"]:
                outcome.active.add(row["kind"])
            if row["ending"]:  # Redis's key and Postgres's row end within clock drift
                outcome.ending = True
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
                "SELECT user_id, created_at, points FROM actions WHERE user_id = ANY($1)"
                " ORDER BY created_at", ids):
            outcomes[row["user_id"]].accepted_ms.append(
                round(row["created_at"].timestamp() * 1000))
            outcomes[row["user_id"]].accepted_points.append(int(row["points"]))
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


def last_anomaly_pass(env: dict[str, str]) -> dict[str, float]:
    """The anomaly score's pass at the end of the run (``scoreboard anomaly-score``):
    user id -> score of every account active in the last period. The worker's own
    passes run every ANOMALY_EVERY_S (scaled) from its start, so the run's last
    stretch would otherwise go unscored."""
    if not load_settings(env).anomaly_scoring:
        return {}
    done = subprocess.run([sys.executable, "-m", "scoreboard.cli", "anomaly-score"], env=env,
                          check=True, capture_output=True, timeout=600)
    lines = [orjson.loads(line) for line in done.stdout.splitlines() if line.startswith(b"{")]
    return {line["user_id"]: float(line["score"]) for line in lines}


def create_sim_board(env: dict[str, str]) -> None:
    """The simulator's board, through the admin command (Postgres, then Redis)."""
    subprocess.run([sys.executable, "-m", "scoreboard.cli", "admin", "create-board", BOARD,
                    *(f"--action={name}={points}" for name, points in ACTIONS.items())],
                   env=env, check=True, capture_output=True, timeout=120)


# Durations of the limits and the rules, divided by --time-scale. Not the calendar
# rules' hours, not the access tokens', not the processes' own timers.
SCALED_SECONDS = ("action_token_ttl_s", "dedup_ttl_s", "flag_duration_s", "temp_ban_s",
                  "offence_window_s", "token_failure_window_s", "address_limit_s",
                  "rate_refusal_window_s", "cadence_window_s", "farm_window_s",
                  "activity_hour_s", "anomaly_every_s", "anomaly_window_s")
SCALED_RATES = ("action_token_rate", "increment_rate", "flagged_increment_rate", "ip_rate")


def scaled_settings(scale: int) -> dict[str, str]:
    """The settings that make one wall second ``scale`` simulated seconds."""
    if scale == 1:
        return {}
    defaults = Settings()
    scaled = {name.upper(): str(max(1, round(getattr(defaults, name) / scale)))
              for name in SCALED_SECONDS}
    scaled["RAPID_WINDOW_MS"] = str(max(1, defaults.rapid_window_ms // scale))
    for name in SCALED_RATES:
        rate = getattr(defaults, name)
        scaled[name.upper()] = f"{rate.count}/{rate.period_s // scale}"
    return scaled


def system_env(backing: Backing, overrides: dict[str, str],
               scale: int = 1) -> tuple[dict[str, str], dict[str, str]]:
    """The ingest and worker environment: the service's defaults (any setting
    inherited from the caller's environment is dropped), the run's servers and
    names, what the simulation needs, the time scale's settings, then ``overrides``."""
    env = {k: v for k, v in os.environ.items()
           if k not in {f.name.upper() for f in fields(Settings)}}
    forced = {"TRUSTED_PROXIES": "127.0.0.1/32", "SCRYPT_N": "1024",
              "WORKER_METRICS_PORT": "0", "LOG_LEVEL": "WARNING",
              "ACCESS_TOKEN_TTL_S": "86400", **scaled_settings(scale)}
    env.update({**backing.env(), **forced, **overrides})
    load_settings(env)  # a bad --set stops here, naming the variable
    return env, forced


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = benchmark_parser("loadtest.fraud_sim", __doc__)
    parser.add_argument("--duration", type=float, default=180,
                        help="simulated seconds of behaviour after registration (default 180)")
    parser.add_argument("--time-scale", type=int, default=1,
                        help="simulated seconds per wall second; divides 60 (default 1)")
    parser.add_argument("--sessions", action="store_true",
                        help="every honest player plays in sessions with rests between")
    parser.add_argument("--seed", type=int, default=1)
    for spec in CLASSES:
        parser.add_argument(f"--{spec.name.replace('_', '-')}", type=int,
                            default=spec.default_count, dest=spec.name,
                            help=f"{spec.what} (default {spec.default_count})")
    for name, default in (("farm", "5-8"), ("household", "2-6"), ("campus", "50-500")):
        parser.add_argument(f"--{name}-size", default=default,
                            help=f"accounts per {name} address, LOW-HIGH (default {default})")
    parser.add_argument("--hammer-pause", type=float, default=1.0,
                        help="max_rate bots' pause after a refusal, simulated s (default 1)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a service setting for ingest and worker (repeatable)")
    parser.add_argument("--issue-rules-only", action="store_true",
                        help="turn off the rules added with this simulator "
                             "(hammering, cadence, farms)")
    parser.add_argument("--anomaly", action="store_true",
                        help="turn the learned anomaly score on (ANOMALY_SCORING=true; off by "
                             "default, as in the service) and report its reviews")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    args.sizes = {}
    for name in ("farm", "household", "campus"):
        low, _, high = getattr(args, f"{name}_size").partition("-")
        try:
            args.sizes[name] = (int(low), int(high or low))
        except ValueError:
            parser.error(f"--{name}-size must be LOW-HIGH")
        if not 1 <= args.sizes[name][0] <= args.sizes[name][1]:
            parser.error(f"--{name}-size must be 1 <= LOW <= HIGH")
    if args.duration <= 0 or args.time_scale < 1 or 60 % args.time_scale:
        parser.error("--duration must be positive and --time-scale divide 60")
    if any("=" not in item for item in args.set):
        parser.error("--set takes NAME=VALUE")
    return args


def run(args: argparse.Namespace) -> int:
    overrides = dict(NEW_RULES_OFF) if args.issue_rules_only else {}
    if args.anomaly:
        overrides["ANOMALY_SCORING"] = "true"
    overrides.update(item.split("=", 1) for item in args.set)
    counts = {spec.name: getattr(args, spec.name) for spec in CLASSES}
    accounts = make_accounts(counts, args.sizes, random.Random(args.seed))
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fraud-sim-")))
        print("starting Redis and Postgres, migrating a fresh database…", flush=True)
        backing = start_backing(stack, root)
        env, forced = system_env(backing, overrides, args.time_scale)
        create_sim_board(env)
        keys = Keys(backing.key_prefix)
        client = stack.enter_context(contextlib.closing(redis.Redis.from_url(backing.redis_url)))
        url, _ = stack.enter_context(ingest_process(env, root / "ingest.log"))
        stack.enter_context(worker_process(env, root / "worker.log", client, keys,
                                           name="fraud-sim-worker"))
        print(f"ingest on {url} and a worker; registering {len(accounts)} accounts, then "
              f"{args.duration:g} simulated s of behaviour ({args.duration / args.time_scale:g}"
              " s of wall time)…", flush=True)
        started = asyncio.run(simulate(url, accounts, args))
        print("waiting for the worker to persist and record everything…", flush=True)
        wait_for_worker(backing.redis_url, keys, load_settings(env).consumer_group)
        last_pass = last_anomaly_pass(env)
        outcomes = asyncio.run(read_outcomes(backing, accounts))
        mismatches = sum(1 for o in outcomes.values() if o.out_of_step)
        results = summarise(accounts, outcomes, load_settings(env), args.time_scale)
        figures = report(args, results, env, forced, backing, started, mismatches)
        if last_pass:
            figures["anomaly"] = anomaly_report(accounts, outcomes, last_pass)
        if args.json:
            args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
        print("stopping the processes started…", flush=True)
    return 0


main = command("fraud_sim", parse_args, run)

if __name__ == "__main__":
    sys.exit(main())
