"""What a moderator reads and undoes: ``scoreboard admin review`` and ``undo``.

:func:`review` lists the accounts with evidence, newest first: the rules that
fired for each (automatic events, not the "logged" ones), the anomaly score
when the scoring job has given one, the points the account holds, and its
restrictions in force. :func:`undo` turns an automatic decision (a
``fraud_events`` row) into an accepted appeal: the restriction is lifted with
who and why, the user's ladder is reset, and a ban's board entries come back
(``Moderation.lift``).
"""

from __future__ import annotations

from typing import Any

from scoreboard.moderation import Moderation

REVIEW = """
WITH fired AS (
    SELECT user_id, rule, count(*) AS n, max(created_at) AS latest,
           max((evidence->>'score')::float) FILTER (WHERE rule = 'anomaly') AS score
    FROM fraud_events
    WHERE user_id IS NOT NULL AND action <> 'logged' AND rule <> 'manual'
      AND created_at > now() - make_interval(hours => $1)
    GROUP BY user_id, rule
)
SELECT f.user_id, u.username, max(f.latest) AS latest, jsonb_object_agg(f.rule, f.n) AS rules,
       max(f.score) AS anomaly_score,
       (SELECT coalesce(sum(s.score), 0) FROM scores s WHERE s.user_id = f.user_id) AS points,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                  'kind', r.kind, 'rule', r.reason, 'rung', r.level,
                  'expires_at', r.expires_at) ORDER BY r.id), '[]'::jsonb)
          FROM user_restrictions r
          WHERE r.user_id = f.user_id AND r.lifted_at IS NULL
            AND (r.expires_at IS NULL OR r.expires_at > now())) AS restrictions
FROM fired f LEFT JOIN users u USING (user_id)
GROUP BY f.user_id, u.username
ORDER BY max(f.latest) DESC
LIMIT $2
"""


async def review(pool: Any, *, hours: int, limit: int) -> list[dict[str, Any]]:
    """Accounts with automatic evidence in the last ``hours``, newest first."""
    rows = await pool.fetch(REVIEW, hours, limit)
    return [{"user_id": r["user_id"], "username": r["username"], "latest": str(r["latest"]),
             "rules": r["rules"], "anomaly_score": r["anomaly_score"], "points": int(r["points"]),
             "restrictions": r["restrictions"]} for r in rows]


class NotUndoable(Exception):
    """The event is not an automatic flag or ban."""


async def undo(moderation: Moderation, event_id: int, *, by: str, reason: str) -> dict[str, Any]:
    """Undo the automatic decision of fraud event ``event_id`` on appeal."""
    row = await moderation.pool.fetchrow(
        "SELECT user_id, rule, action FROM fraud_events WHERE id = $1", event_id)
    if row is None or row["rule"] == "manual" or row["action"] not in ("flagged", "banned") \
            or row["user_id"] is None:
        raise NotUndoable(f"event {event_id} is not an automatic flag or ban")
    lifted = 0
    # a ban was climbed to through a flag: an accepted appeal undoes both
    for kind in ("banned", "flagged"):
        lifted += await moderation.lift(row["user_id"], kind, reason=reason, by=by, appeal=True)
    return {"user_id": row["user_id"], "rule": row["rule"], "undone": row["action"],
            "lifted": lifted, "by": by, "reason": reason}
