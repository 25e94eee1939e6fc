"""What the anomaly score adds in a fraud-simulator run: precision and recall of
its reviews, of the rules' flags and bans, and of both together; and, from the
run's last pass, the same at other thresholds (what ``ANOMALY_MIN_SCORE`` trades).

An account counts as "reviewed" when it has a ``review`` event of rule
``anomaly``; "caught" is the rules' flags and bans, as in the main report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from loadtest.fraud_client import Account
from loadtest.fraud_report import Outcome, pct

THRESHOLDS = (0.5, 0.55, 0.58, 0.6, 0.62, 0.65, 0.7, 0.75)


def precision_recall(chosen: set[str], cheaters: set[str]) -> tuple[float, float]:
    hits = len(chosen & cheaters)
    precision = hits / len(chosen) if chosen else math.nan
    recall = hits / len(cheaters) if cheaters else math.nan
    return precision, recall


def anomaly_report(accounts: Sequence[Account], outcomes: Mapping[str, Outcome],
                   last_pass: Mapping[str, float]) -> dict[str, Any]:
    """Print the anomaly score's figures; ``last_pass``: user id -> score of the run's
    final pass (``scoreboard anomaly-score``)."""
    cheaters = {a.user_id for a in accounts if not a.honest}
    reviewed = {user for user, o in outcomes.items()
                if any(rule == "anomaly" and action == "review" for rule, action, _ in o.rules)}
    caught = {user for user, o in outcomes.items() if o.caught}
    figures: dict[str, Any] = {}
    print()
    print("anomaly score (reviews, never restrictions): precision / recall over the "
          f"{len(cheaters)} cheating accounts")
    for name, chosen in (("rules' flags and bans", caught), ("anomaly reviews", reviewed),
                         ("rules or anomaly", caught | reviewed)):
        precision, recall = precision_recall(chosen, cheaters)
        print(f"  {name:<22} {len(chosen):>4} accounts: precision {pct(precision)}, "
              f"recall {pct(recall)}")
        figures[name] = {"accounts": len(chosen), "precision": precision, "recall": recall}
    added = (reviewed & cheaters) - caught
    by_class: dict[str, list[int]] = {}
    for account in accounts:
        counts = by_class.setdefault(account.label, [0, 0])
        counts[0] += 1
        counts[1] += account.user_id in reviewed
    print("  reviewed by class: " + ", ".join(f"{label} {n}/{total}"
                                              for label, (total, n) in by_class.items()))
    print(f"  cheaters reviewed that no rule caught: {len(added)}")
    figures["reviewed_by_class"] = {label: n for label, (_, n) in by_class.items()}
    figures["cheaters_only_reviewed"] = len(added)
    if last_pass:
        print(f"  the last pass ({len(last_pass)} accounts scored) at other thresholds:")
        figures["last_pass"] = {}
        for threshold in THRESHOLDS:
            chosen = {user for user, score in last_pass.items() if score >= threshold}
            precision, recall = precision_recall(chosen, cheaters & set(last_pass))
            print(f"    >= {threshold:.2f}: {len(chosen):>4} accounts, precision "
                  f"{pct(precision)}, recall {pct(recall)} (of the cheaters it scored)")
            figures["last_pass"][str(threshold)] = {"accounts": len(chosen),
                                                    "precision": precision, "recall": recall}
        ranked = sorted(last_pass.items(), key=lambda item: -item[1])
        labels = {a.user_id: a.label for a in accounts}
        print("  highest scores: " + ", ".join(f"{labels.get(u, '?')} {s:.3f}"
                                               for u, s in ranked[:12]))
    return figures
