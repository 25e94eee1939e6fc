"""The anomaly score's pure parts (scoreboard/anomaly.py): features, the forest,
which accounts are put up for review. No servers; the real-server test is
tests/test_anomaly_pipeline.py."""

from __future__ import annotations

import math
import random

import pytest

from scoreboard.anomaly import FEATURES, AccountSummary, anomaly_scores, features, to_review


def summary(user_id: str = "u", *, actions: int = 120, points: int = 200,
            gap_mean: float | None = 30.0,
            gap_std: float | None = 12.0, gap_median: float | None = 28.0, active_hours: int = 2,
            addresses: int = 1, recent: bool = True) -> AccountSummary:
    return AccountSummary(user_id=user_id, actions=actions, points=points, gap_mean_s=gap_mean,
                          gap_std_s=gap_std, gap_median_s=gap_median, active_hours=active_hours,
                          addresses=addresses, recent=recent)


def test_features_are_rates_per_active_hour() -> None:
    vector = dict(zip(FEATURES, features(summary()), strict=True))
    assert vector == pytest.approx({
        "actions_per_active_hour": 60.0, "log_median_gap_s": math.log(28.0), "gap_cv": 0.4,
        "points_per_active_hour": 100.0, "points_per_action": 200 / 120, "active_hours": 2.0,
        "addresses": 1.0})


def test_features_of_an_account_with_one_action() -> None:
    one = summary(actions=1, points=10, gap_mean=None, gap_std=None, gap_median=None,
                  active_hours=1)
    vector = dict(zip(FEATURES, features(one), strict=True))
    assert vector["gap_cv"] == 0.0 and vector["log_median_gap_s"] == pytest.approx(math.log(1e-3))
    assert vector["points_per_action"] == 10.0


def honest_population(rng: random.Random, n: int) -> list[tuple[float, ...]]:
    rows = []
    for i in range(n):
        actions = rng.randint(40, 250)
        gap = 3600 / actions
        rows.append(features(summary(
            f"h{i}", actions=actions, points=int(actions * rng.uniform(1.6, 2.2)),
            gap_mean=gap, gap_std=gap * rng.uniform(0.2, 0.6), gap_median=gap * 0.9,
            active_hours=1, addresses=1)))
    return rows


def test_a_slow_bot_stands_out_of_an_honest_population() -> None:
    rows = honest_population(random.Random(1), 300)
    bot = features(summary("bot", actions=190, points=1900, gap_mean=19.0, gap_std=3.5,
                           gap_median=19.0, active_hours=1))
    scores = anomaly_scores([*rows, bot], seed=0)
    assert scores[-1] == max(scores)
    assert scores[-1] >= 0.62
    assert sum(score >= 0.62 for score in scores[:-1]) <= 3  # at most 1% of the honest
    assert anomaly_scores([*rows, bot], seed=0) == scores  # seeded: the same traffic, the same


def test_too_little_traffic_is_not_scored() -> None:
    assert anomaly_scores([], seed=0) == []
    assert anomaly_scores([(1.0, 2.0)], seed=0) == [0.5]


def test_to_review_keeps_recent_busy_strange_accounts_strangest_first() -> None:
    accounts = [summary("a"), summary("b", actions=5), summary("c", recent=False), summary("d"),
                summary("e")]
    chosen = to_review(accounts, [0.7, 0.9, 0.9, 0.8, 0.6], min_actions=10, min_score=0.62)
    assert [(s.user_id, score) for s, score in chosen] == [("d", 0.8), ("a", 0.7)]
