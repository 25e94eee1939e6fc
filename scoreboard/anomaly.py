"""The learned anomaly score (issue 14, item 3), as pure functions: per-account
behaviour features and an IsolationForest over them. No I/O here:
``scoreboard/anomaly_scoring.py`` reads the summaries from Postgres and writes
the ``review`` events; docs/fraud.md says what it is worth.

Why an IsolationForest: it needs no labels (the service has none: nobody tells
it who cheated), it is trained on the traffic it then scores, and it isolates
accounts whose behaviour is rare in any combination of the features, which a
rule written per feature does not see. Its score is the paper's s(x) in (0, 1):
about 0.5 for an ordinary account, towards 1 for one isolated in a few splits.

scikit-learn is imported inside :func:`anomaly_scores` only, so the rest of the
service does not need it to import this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

FEATURES = ("actions_per_active_hour", "log_median_gap_s", "gap_cv", "points_per_active_hour",
            "points_per_action", "active_hours", "addresses")


@dataclass(frozen=True)
class AccountSummary:
    """One account's accepted player actions over the training window, as Postgres
    sums them up (``anomaly_scoring.SUMMARY``)."""

    user_id: str
    actions: int
    points: int
    gap_mean_s: float | None  # None with one action
    gap_std_s: float | None
    gap_median_s: float | None
    active_hours: int  # distinct hours (``ACTIVITY_HOUR_S``) with an accept
    addresses: int  # distinct client addresses
    recent: bool  # an accept within the scoring period: this pass scores it


def features(summary: AccountSummary) -> tuple[float, ...]:
    """The account's features, in the order of :data:`FEATURES`: how often it acts
    when it plays, how long between actions and how regularly (the CV), its score
    velocity (points per active hour, per action), how many hours it plays and
    from how many addresses. Rates are per active hour, so an account that
    played one hour of the day compares with one that played ten."""
    hours = max(1, summary.active_hours)
    mean = summary.gap_mean_s or 0.0
    cv = (summary.gap_std_s or 0.0) / mean if mean > 0 else 0.0
    median = summary.gap_median_s if summary.gap_median_s and summary.gap_median_s > 0 else 1e-3
    return (summary.actions / hours, math.log(median), cv, summary.points / hours,
            summary.points / max(1, summary.actions), float(summary.active_hours),
            float(summary.addresses))


def anomaly_scores(rows: Sequence[Sequence[float]], *, seed: int = 0,
                   trees: int = 200) -> list[float]:
    """Fit an IsolationForest on ``rows`` (one feature vector per account of the
    window) and return each row's score s(x) in (0, 1), higher is stranger. The
    forest is seeded: the same traffic gives the same scores. Needs at least two
    rows (one account is not "traffic")."""
    if len(rows) < 2:
        return [0.5] * len(rows)
    from sklearn.ensemble import IsolationForest  # the optional dependency (see module doc)

    forest = IsolationForest(n_estimators=trees, random_state=seed, contamination="auto")
    forest.fit(rows)
    return [float(-score) for score in forest.score_samples(rows)]


def to_review(summaries: Sequence[AccountSummary], scores: Sequence[float], *,
              min_actions: int, min_score: float) -> list[tuple[AccountSummary, float]]:
    """The accounts this pass asks a moderator about: scored in this period
    (``recent``), with at least ``min_actions`` actions (fewer say too little
    about a rhythm), at or above ``min_score``; the strangest first."""
    chosen = [(summary, score) for summary, score in zip(summaries, scores, strict=True)
              if summary.recent and summary.actions >= min_actions and score >= min_score]
    return sorted(chosen, key=lambda pair: -pair[1])
