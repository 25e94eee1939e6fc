"""The automatic ladder in Postgres: offences climb it, restrictions end.

A rule that fires is an offence. The scripts only ever flag (the first rung);
the worker's recorder (``workers/fraud.py``) asks :func:`climb` what the
offence does given the user's earlier ones, and writes the row. Restrictions
with an end are closed by :func:`close_expired` (the recorder runs it every
second), so an expired one no longer blocks the next (the unique index on
active rows) and an expired ban puts the user back on the boards without
waiting for their next increment. The arithmetic is
:func:`scoreboard.fraud_rules.ladder_step`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from scoreboard.fraud_rules import ladder_step

# Automatic rows have a rung; a moderator's own decisions have none. Undone on
# appeal, a row no longer counts.
PRIOR_OFFENCES = """
SELECT count(*) FROM user_restrictions
WHERE user_id = $1 AND level IS NOT NULL AND NOT appealed
  AND created_at > now() - make_interval(secs => $2)
"""

CLOSE_STALE = """
UPDATE user_restrictions SET lifted_at = least(now(), expires_at), ended_by = 'expired'
WHERE user_id = $1 AND kind = $2 AND lifted_at IS NULL AND expires_at IS NOT NULL
  AND expires_at <= now() + make_interval(secs => $3)
"""

CLOSE_EXPIRED = """
UPDATE user_restrictions SET lifted_at = expires_at, ended_by = 'expired'
WHERE lifted_at IS NULL AND expires_at IS NOT NULL AND expires_at <= now()
RETURNING user_id, kind
"""


async def close_stale(connection: Any, user_id: str, kind: str, *, grace_s: float = 0) -> None:
    """Close the user's active row of ``kind`` if it has ended (within ``grace_s``:
    Redis and Postgres clocks drift a little), before a new one is inserted."""
    await connection.execute(CLOSE_STALE, user_id, kind, grace_s)


async def close_expired(connection: Any) -> list[tuple[str, str]]:
    """Close every active row whose end has passed; returns (user id, kind) of each."""
    rows = await connection.fetch(CLOSE_EXPIRED)
    return [(row["user_id"], row["kind"]) for row in rows]


async def climb(connection: Any, user_id: str, *, flag_s: int, temp_ban_s: int,
                window_s: int, flag_expires: datetime | None) -> tuple[str, int, datetime | None]:
    """The restriction this offence earns: (kind, rung, end or None for good).
    The first rung keeps the end the script gave its flag (``flag_expires``)."""
    prior = int(await connection.fetchval(PRIOR_OFFENCES, user_id, float(window_s)))
    kind, rung, duration = ladder_step(prior, flag_s=flag_s, temp_ban_s=temp_ban_s)
    if rung == 1 and flag_expires is not None:
        return kind, rung, flag_expires
    ends = datetime.now(UTC) + timedelta(seconds=duration) if duration else None
    return kind, rung, ends


async def insert_restriction(connection: Any, *, user_id: str, kind: str, reason: str,
                             expires: datetime | None, level: int | None) -> None:
    """One active row (a stale one of the same kind is closed first)."""
    await close_stale(connection, user_id, kind, grace_s=5)
    await connection.execute(
        "INSERT INTO user_restrictions (user_id, kind, reason, expires_at, level)"
        " VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (user_id, kind) WHERE lifted_at IS NULL DO NOTHING",
        user_id, kind, reason, expires, level)
