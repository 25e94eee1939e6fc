"""The end-to-end benchmark's checks of a phase, once the worker has drained it:
every increment answered 202 in Postgres and on the board exactly once, each
user's total the sum of its increments, and every spectator ending on the
board's final top 10 (``loadtest.bench_e2e`` says what is checked and why).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg
import orjson
import redis.asyncio as redis_asyncio

from scoreboard.keys import Keys
from scoreboard.ranking import decode_member, total_of, totals_by_user

if TYPE_CHECKING:
    from loadtest.e2e_report import Increment, PhaseRun, Workload

BOARD = "global"  # the board of loadtest.harness.players.fetch_tokens' bodies


# --- Checks -------------------------------------------------------------------------------


@dataclass
class Check:
    problems: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def outcomes(run: PhaseRun, workload: Workload) -> tuple[list[Increment], list[Increment],
                                                         list[Increment]]:
    """(answered 202, answered something else, no answer) over every request sent."""
    accepted, refused, unknown = [], [], []
    for rows, increments in ((run.driver["requests"], workload.increments),
                             (run.driver["probes"], workload.probe_increments)):
        for row in rows:
            index, status = int(row[0]), str(row[4])
            increment = increments[index % len(increments)]
            if status == "202":
                accepted.append(increment)
            elif status.isdigit():
                refused.append(increment)
            else:
                unknown.append(increment)
    return accepted, refused, unknown


def sums(increments: Sequence[Increment]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for increment in increments:
        totals[increment.user_id] = totals.get(increment.user_id, 0) + increment.points
    return totals


def differences(found: dict[str, int], expected: dict[str, int]) -> str:
    wrong = sorted(k for k in found.keys() | expected.keys() if found.get(k) != expected.get(k))
    sample = ", ".join(f"{u}: {found.get(u)} != {expected.get(u)}" for u in wrong[:3])
    return f"{len(wrong):,} of {len(expected):,} users differ ({sample})"


async def check_ours(run: PhaseRun, workload: Workload, redis_url: str, database_url: str,
                     keys: Keys) -> Check:
    """Every 202 in Postgres and on the board exactly once; spectators end on the final top."""
    check = Check()
    accepted, refused, unknown = outcomes(run, workload)
    expected_ids = Counter(i.event_id for i in accepted)
    if any(n > 1 for n in expected_ids.values()):
        check.problems.append("an event id was answered 202 twice (one token accepted twice)")
    connection = await asyncpg.connect(database_url, timeout=30)
    try:
        rows = await connection.fetch("SELECT event_id, user_id, board, points FROM actions")
        scores = {r["user_id"]: int(r["score"]) for r in await connection.fetch(
            "SELECT user_id, score FROM scores WHERE board = $1", BOARD)}
    finally:
        await connection.close()
    per_event = Counter(r["event_id"] for r in rows)
    duplicated = sum(1 for n in per_event.values() if n > 1)
    unknown_ids = {i.event_id for i in unknown}
    missing = [e for e in expected_ids if e not in per_event]
    unexpected = [e for e in per_event if e not in expected_ids and e not in unknown_ids]
    applied_unknown = [i for i in unknown if i.event_id in per_event]
    by_id = {i.event_id: i for i in (*accepted, *applied_unknown)}
    mismatched = sum(1 for r in rows if r["event_id"] in by_id and (
        r["user_id"], r["points"], r["board"]) != (by_id[r["event_id"]].user_id,
                                                  by_id[r["event_id"]].points, BOARD))
    expected = sums([*accepted, *applied_unknown])
    client = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        board = totals_by_user(await client.zrange(keys.board(BOARD), 0, -1, withscores=True))
        top = [(decode_member(m)[1], total_of(s)) for m, s in
               await client.zrange(keys.board(BOARD), 0, 9, withscores=True)]
        dead = int(await client.xlen(keys.dead_letters))
    finally:
        await client.aclose()
    check.facts.append(f"{len(accepted):,} answered 202 (warm-up, window and tail), "
                       f"{len(refused):,} refused, {len(unknown):,} without an answer"
                       + (f" ({len(applied_unknown)} of them applied)" if unknown else ""))
    check.facts.append(f"actions: {len(rows):,} rows, {len(per_event):,} event ids")
    if duplicated:
        check.problems.append(f"{duplicated:,} event ids have more than one row in actions")
    if missing:
        check.problems.append(f"{len(missing):,} increments answered 202 are not in actions "
                              f"(first: {missing[0]})")
    if unexpected:
        check.problems.append(f"{len(unexpected):,} rows in actions were never answered 202 "
                              f"(first: {unexpected[0]})")
    if mismatched:
        check.problems.append(f"{mismatched:,} rows have another user, board or points")
    if scores != expected:
        check.problems.append(f"scores: {differences(scores, expected)}")
    if board != expected:
        check.problems.append(f"Redis board: {differences(board, expected)}")
    if dead:
        check.problems.append(f"{dead} entries were dead-lettered")
    lasts = {tuple(tuple(e) for e in orjson.loads(k) or ()): n
             for k, n in run.spectators["last_entries"].items()}
    on_final = lasts.get(tuple(top), 0)
    total = sum(lasts.values())
    check.facts.append(f"last snapshot = the board's final top 10 for {on_final} of {total} "
                       "spectators")
    if on_final != total or total != run.connected["connected"]:
        check.problems.append(f"only {on_final} of {run.connected['connected']} spectators "
                              "ended on the board's final top 10")
    return check


async def check_baseline(run: PhaseRun, workload: Workload, database_url: str) -> Check:
    """Rows = 202s, and every user's score = the sum of its rows (no ids to match:
    the baseline does not consume tokens, so a cycled request repeats one)."""
    check = Check()
    accepted, refused, unknown = outcomes(run, workload)
    connection = await asyncpg.connect(database_url, timeout=30)
    try:
        rows = int(await connection.fetchval("SELECT count(*) FROM actions"))
        action_sums = {r["user_id"]: int(r["s"]) for r in await connection.fetch(
            "SELECT user_id, sum(points) AS s FROM actions GROUP BY user_id")}
        scores = {r["user_id"]: int(r["score"]) for r in await connection.fetch(
            "SELECT user_id, score FROM scores WHERE board = $1", BOARD)}
    finally:
        await connection.close()
    check.facts.append(f"{len(accepted):,} answered 202, {len(refused):,} refused, "
                       f"{len(unknown):,} without an answer; actions: {rows:,} rows")
    if not len(accepted) <= rows <= len(accepted) + len(unknown):
        check.problems.append(f"actions holds {rows:,} rows for {len(accepted):,} 202s")
    if action_sums != sums(accepted) and not unknown:
        check.problems.append(f"actions per user: {differences(action_sums, sums(accepted))}")
    if scores != action_sums:
        check.problems.append(f"scores vs actions: {differences(scores, action_sums)}")
    return check
