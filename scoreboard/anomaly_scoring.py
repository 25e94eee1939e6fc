"""The anomaly score's I/O: summarise each account's recent actions in Postgres,
score them (``scoreboard/anomaly.py``), and write a ``review`` event of rule
``anomaly`` with the score as evidence for each account worth a moderator's
look (``scoreboard admin review`` shows it). Run hourly by the worker
(``workers/jobs.py``: ``anomaly_job``) and on demand by ``scoreboard
anomaly-score``.

A review is never a restriction: the score asks, a moderator decides.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from scoreboard.anomaly import FEATURES, AccountSummary, anomaly_scores, features, to_review
from scoreboard.metrics import count_fraud_event
from scoreboard.settings import Settings

# Players' own increments only: a game backend's timing and address are its server's.
SUMMARY = """
WITH a AS (
    SELECT user_id, created_at, points, client_addr,
           extract(epoch FROM created_at - lag(created_at)
                   OVER (PARTITION BY user_id ORDER BY created_at))::float8 AS gap
    FROM actions
    WHERE source = 'player' AND created_at > $1 AND created_at <= $2
)
SELECT user_id, count(*) AS actions, sum(points) AS points,
       avg(gap) AS gap_mean, stddev_pop(gap) AS gap_std,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY gap) AS gap_median,
       count(DISTINCT floor(extract(epoch FROM created_at) / $3)) AS active_hours,
       count(DISTINCT client_addr) AS addresses,
       max(created_at) > $4 AS recent
FROM a GROUP BY user_id
"""

INSERT_REVIEWS = """
INSERT INTO fraud_events (event_key, user_id, rule, severity, action, evidence)
SELECT k, u, 'anomaly', 'medium', 'review', e
FROM unnest($1::text[], $2::text[], $3::jsonb[]) AS t(k, u, e)
ON CONFLICT (event_key) WHERE event_key IS NOT NULL DO NOTHING
RETURNING user_id
"""


@dataclass(frozen=True)
class Scored:
    user_id: str
    score: float
    reviewed: bool


async def summaries(pool: Any, *, now: datetime, settings: Settings) -> list[AccountSummary]:
    """Every account with player actions in the training window (``ANOMALY_WINDOW_S``
    before ``now``); ``recent`` marks those active in the last ``ANOMALY_EVERY_S``."""
    rows = await pool.fetch(
        SUMMARY, now - timedelta(seconds=settings.anomaly_window_s), now,
        float(settings.activity_hour_s), now - timedelta(seconds=settings.anomaly_every_s),
        timeout=300)
    return [AccountSummary(
        user_id=r["user_id"], actions=int(r["actions"]), points=int(r["points"]),
        gap_mean_s=r["gap_mean"], gap_std_s=r["gap_std"], gap_median_s=r["gap_median"],
        active_hours=int(r["active_hours"]), addresses=int(r["addresses"]),
        recent=bool(r["recent"])) for r in rows]


async def score_and_review(pool: Any, settings: Settings, *,
                           now: datetime | None = None) -> list[Scored]:
    """One pass: train on the window's accounts with at least ``ANOMALY_MIN_ACTIONS``
    actions, score them, and write a review for each recent one at or above
    ``ANOMALY_MIN_SCORE`` (once per account and period: the event key). Returns
    every recent account scored, strangest first."""
    now = now or datetime.now(UTC)
    trained = [s for s in await summaries(pool, now=now, settings=settings)
               if s.actions >= settings.anomaly_min_actions]
    vectors = [features(s) for s in trained]
    # blocking CPU work (a second or so for thousands of accounts): off the event loop
    scores = await asyncio.to_thread(anomaly_scores, vectors, seed=settings.anomaly_seed)
    chosen = to_review(trained, scores, min_actions=settings.anomaly_min_actions,
                       min_score=settings.anomaly_min_score)
    period = int(now.timestamp()) // settings.anomaly_every_s
    by_user = {s.user_id: vector for s, vector in zip(trained, vectors, strict=True)}
    keys, users, evidence = [], [], []
    for summary, score in chosen:
        keys.append(f"anomaly:{summary.user_id}:{period}")
        users.append(summary.user_id)
        evidence.append({
            "score": round(score, 4), "min_score": settings.anomaly_min_score,
            "trained_on": len(trained), "window_s": settings.anomaly_window_s,
            "features": {name: round(value, 3)
                         for name, value in zip(FEATURES, by_user[summary.user_id],
                                                strict=True)}})
    if keys:
        inserted = await pool.fetch(INSERT_REVIEWS, keys, users, evidence, timeout=60)
        for _ in inserted:
            count_fraud_event("anomaly", "medium")
    reviewed = set(users)
    scored = [Scored(s.user_id, score, s.user_id in reviewed)
              for s, score in zip(trained, scores, strict=True) if s.recent]
    return sorted(scored, key=lambda s: -s.score)


# --- scoreboard anomaly-score ---------------------------------------------------------------


def add_anomaly_parser(commands: Any) -> None:
    commands.add_parser("anomaly-score", help="score the accounts active in the last period"
                        " now (the worker does it hourly), one JSON line each")


async def _anomaly(settings: Settings) -> int:
    from scoreboard.db import create_pool

    assert settings.database_url is not None
    pool = await create_pool(settings.database_url, max_size=2)
    try:
        scored = await score_and_review(pool, settings)
    finally:
        await pool.close()
    for entry in scored:
        sys.stdout.buffer.write(orjson.dumps({"user_id": entry.user_id,
                                              "score": round(entry.score, 4),
                                              "reviewed": entry.reviewed}) + b"\n")
    return 0


def main_anomaly(args: argparse.Namespace, settings: Settings) -> int:
    del args
    return asyncio.run(_anomaly(settings))
