"""The fraud simulator's figures per class (recall, false positives, which rule
caught whom and when, points) and its report."""

from __future__ import annotations

import argparse
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from loadtest.fraud_behaviours import CLASSES
from loadtest.fraud_client import Account
from loadtest.harness.backing import Backing
from scoreboard.fraud_rules import lattice_cv
from scoreboard.limits import Rate
from scoreboard.settings import Settings, load_settings

SHOWN_SETTINGS = (
    "action_token_ttl_s", "action_token_rate", "increment_rate", "flagged_increment_rate",
    "ip_rate", "auth_ip_rate", "rapid_max_actions", "rapid_window_ms", "flag_duration_s",
    "token_failure_window_s", "token_failures_to_flag", "temp_ban_s", "offence_window_s",
    "farm_busy_actions", "farm_busy_share", "token_failures_to_limit_address",
    "address_limit_s", "night_start_hour", "night_end_hour", "fraud_timezone",
    "velocity_z_threshold", "velocity_min_history_hours", "rate_refusals_to_flag",
    "rate_refusal_window_s", "cadence_actions", "cadence_max_cv", "cadence_window_s",
    "cadence_max_multiple", "farm_min_accounts", "farm_window_s", "tireless_hours",
    "activity_hour_s", "top_action_run", "dedup_ttl_s")


@dataclass
class Outcome:
    restrictions: set[str] = field(default_factory=set)  # Postgres: flagged / banned, ever
    active: set[str] = field(default_factory=set)  # Postgres: in force at the end
    ending: bool = False  # a restriction ends within a few seconds of the reading
    redis_flags: set[str] = field(default_factory=set)  # Redis: flagged / banned
    rules: list[tuple[str, str, float]] = field(default_factory=list)  # (rule, action, ts)
    pg_points: int = 0
    board_points: int = 0
    accepted_ms: list[int] = field(default_factory=list)  # Postgres actions, ascending
    accepted_points: list[int] = field(default_factory=list)  # the same actions' points

    def points_before(self, at_s: float | None) -> int:
        """Points accepted before wall time ``at_s`` (all of them when None)."""
        return sum(points for ms, points in zip(self.accepted_ms, self.accepted_points,
                                                strict=True)
                   if at_s is None or ms < at_s * 1000)

    @property
    def out_of_step(self) -> bool:
        """Redis and Postgres disagree about the restrictions in force: a ban in
        one and not the other, or a flag in force in Postgres that Redis does not
        hold. Rows that have ended are history, not a disagreement (the check
        before issue 14's second part compared every row ever written, and warned
        about every restriction that had expired); Redis may hold a flag the
        recorder turned into a ban (the script flags, the ladder bans: the flag
        key lives out its hour, harmlessly)."""
        if self.ending:
            return False
        return (("banned" in self.active) != ("banned" in self.redis_flags)
                or ("flagged" in self.active and "flagged" not in self.redis_flags))

    @property
    def caught(self) -> bool:
        return bool(self.restrictions or self.redis_flags)


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
    before_caught: int = 0  # points accepted before the account was caught (all if never)

    def as_json(self) -> dict[str, Any]:
        # not dataclasses.asdict: it rebuilds a Counter from (key, count) pairs
        return {"name": self.name, "honest": self.honest, "accounts": self.accounts,
                "caught": self.caught, "by_rule": dict(self.by_rule),
                "detect_s": self.detect_s, "detect_s_median": median(self.detect_s),
                "pg_points": self.pg_points, "board_points": self.board_points,
                "points_before_caught": self.before_caught,
                "other_events": dict(self.logged), "statuses": dict(self.statuses),
                "lowest_cadence_cv": self.lowest_cv}


def median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def lowest_cv(times_ms: Sequence[int], actions: int, window_ms: int,
              max_multiple: int = 1) -> float | None:
    """The most regular window of ``actions`` consecutive accepts (the cadence rule's
    statistic, over every window rather than only the latest): how close an account
    came to the threshold, or how far below it."""
    found = [lattice_cv(times_ms[i:i + actions], max_multiple=max_multiple)
             for i in range(len(times_ms) - actions + 1)
             if times_ms[i + actions - 1] - times_ms[i] <= window_ms]
    values = [cv for cv in found if cv is not None]
    return min(values) if values else None


def summarise(accounts: Sequence[Account], outcomes: dict[str, Outcome],
              settings: Settings, scale: int = 1) -> list[ClassResult]:
    """Per class; times to catch in simulated seconds (wall seconds times ``scale``)."""
    actions = settings.cadence_actions or Settings().cadence_actions
    window_ms = settings.cadence_window_s * 1000
    results = []
    for spec in CLASSES:
        own = [a for a in accounts if a.label == spec.name]
        by_rule: Counter[str] = Counter()
        logged: Counter[str] = Counter()
        detect: list[float] = []
        statuses: Counter[str] = Counter()
        caught = before = 0
        for account in own:
            outcome = outcomes[account.user_id]
            statuses.update(account.statuses)
            deciding = [(rule, at) for rule, action, at in outcome.rules
                        if action in ("flagged", "banned")]
            for rule, action, _ in outcome.rules:
                if action not in ("flagged", "banned"):
                    logged[f"{rule}:{action}"] += 1
            before += outcome.points_before(deciding[0][1] if deciding else None)
            if outcome.caught:
                caught += 1
                if deciding:
                    by_rule[deciding[0][0]] += 1
                    if account.first_request is not None:
                        detect.append((deciding[0][1] - account.first_request) * scale)
                else:
                    by_rule["(no event yet)"] += 1
        cvs = [lowest_cv(outcomes[a.user_id].accepted_ms, actions, window_ms,
                         max(1, settings.cadence_max_multiple)) for a in own]
        results.append(ClassResult(
            name=spec.name, honest=spec.honest, accounts=len(own), caught=caught,
            by_rule=by_rule, detect_s=detect,
            pg_points=sum(outcomes[a.user_id].pg_points for a in own),
            board_points=sum(outcomes[a.user_id].board_points for a in own),
            logged=logged, statuses=statuses, before_caught=before,
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
    print(f"FRAUD SIMULATOR  {args.duration:g} simulated s of behaviour (time scale "
          f"{args.time_scale}, sessions {'on' if args.sessions else 'campus only'}) from "
          f"{datetime.fromtimestamp(started).astimezone():%Y-%m-%d %H:%M %Z}, seed {args.seed}, "
          f"Redis {'embedded' if backing.redis_embedded else 'given'}, Postgres "
          f"{'embedded' if backing.database_embedded else 'given'}")
    for line in settings_lines(env, forced):
        print(line)
    header = (f"{'class':<14} {'label':<7} {'accts':>5} {'caught':>6} {'share':>7}  "
              f"{'median s to catch':>17}  {'points PG':>9} {'on board':>8} "
              f"{'before caught':>13}  caught by")
    print()
    print(header)
    print("-" * len(header))
    for r in results:
        rules = ", ".join(f"{rule} {n}" for rule, n in r.by_rule.most_common()) or "-"
        detect = median(r.detect_s)
        print(f"{r.name:<14} {'honest' if r.honest else 'cheat':<7} {r.accounts:>5} "
              f"{r.caught:>6} {pct(r.caught / r.accounts if r.accounts else math.nan):>7}  "
              f"{'-' if detect is None else f'{detect:.1f}':>17}  {r.pg_points:>9} "
              f"{r.board_points:>8} {r.before_caught:>13}  {rules}")
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
        print(f"WARNING: {mismatches} accounts with restrictions in force in Redis and "
              "Postgres differently")
    print("not covered: the hourly score-velocity job and the unusual-time hours follow the "
          "wall clock (not scaled); a run shorter than an hour (simulated) sees only part "
          "of the hour-long token-failure window.")
    print()
    print("requests by class (status and error code):")
    for r in results:
        print(f"  {r.name:<14} " + ", ".join(f"{k}: {v}" for k, v in sorted(r.statuses.items())))
    return {"duration_s": args.duration, "seed": args.seed, "started": started,
            "time_scale": args.time_scale, "sessions": args.sessions,
            "overrides": args.set, "issue_rules_only": args.issue_rules_only,
            "classes": [r.as_json() for r in results],
            "honest": {"accounts": h_n, "caught": h_k},
            "cheating": {"accounts": c_n, "caught": c_k}}
