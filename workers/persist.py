"""One batch of stream entries into Postgres, in one transaction.

Binary COPY into a per-connection staging table, then the events new to
``counted_events`` (the durable dedup record, keyed by source and event id)
become ``actions`` rows, and only rows really inserted are summed into
``scores``. A redelivered entry, or an event accepted again once its Redis
marker is gone, is already counted and adds nothing. The committed totals
of every (board, user) the batch touched are returned, inserted or not: after a
crash between commit and acknowledgement, the redelivery must still bring the
leaderboard up to the committed totals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from scoreboard.board_defs import BoardDefinition
from scoreboard.board_writes import BoardTotal
from scoreboard.stream_entry import StreamEntry
from workers.batching import STAGING_COLUMNS, months_of, staging_record
from workers.window_fanout import (
    CREATE_WINDOW_STAGING,
    PERSIST_WINDOWED,
    WINDOW_COLUMNS,
    window_rows,
)

CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS actions_staging (
    event_id text, created_at timestamptz, user_id text, board text, points integer,
    source text, client_addr text, request_id text, stream_id text, username text
) ON COMMIT DELETE ROWS
"""

# A backend's player gets a row on first score; its display name follows the
# backend's latest one. Registered accounts keep their own name. New players
# are inserted with DO NOTHING and only names that changed are updated: an
# ON CONFLICT DO UPDATE would lock (and WAL-log) every existing player's row
# of every batch even when its WHERE updates nothing. (Its own statement,
# before PERSIST, which reads the names: a statement does not see its own
# CTEs' rows.)
UPSERT_USERS = """
WITH latest AS (
    SELECT DISTINCT ON (user_id) user_id, COALESCE(NULLIF(username, ''), user_id) AS username
    FROM actions_staging ORDER BY user_id, created_at DESC
), created AS (
    INSERT INTO users (user_id, username) SELECT user_id, username FROM latest
    ON CONFLICT (user_id) DO NOTHING
)
UPDATE users SET username = latest.username
FROM latest
WHERE users.user_id = latest.user_id AND users.password_hash IS NULL
  AND users.username <> latest.username AND latest.username <> latest.user_id
"""

# The batch in one statement (one round trip, nothing summed in Python):
# 1. counted: an event counts once forever. Its (source, event_id) goes into
#    ``counted_events`` (migration 005) and only the copies new there become
#    ``actions`` rows and points: a redelivered entry, or the same event
#    accepted again after its Redis marker expired, inserts nothing. Within
#    one batch the earliest copy of an event wins. Keys go in sorted, so two
#    workers holding the same events lock them in one order.
# 2. inserted: the ``actions`` rows of the counted copies.
# 3. upserted: per (board, user) the points really inserted are added to
#    ``scores``, in (board, user) order (concurrent workers lock score rows in
#    one order: no deadlocks).
# Returns the committed total of every (board, user) the batch touched,
# inserted or not (after a crash between commit and acknowledgement, the
# redelivery must still bring the board up to the committed totals), each
# row also carrying how many ``actions`` rows the batch inserted.
PERSIST = """
WITH counted AS (
    INSERT INTO counted_events (source, event_id, created_at)
    SELECT DISTINCT ON (source, event_id) source, event_id, created_at
    FROM actions_staging ORDER BY source, event_id, created_at
    ON CONFLICT DO NOTHING
    RETURNING source, event_id, created_at
), inserted AS (
    INSERT INTO actions (event_id, created_at, user_id, board, points, source, client_addr,
                         request_id, stream_id)
    SELECT s.event_id, s.created_at, s.user_id, s.board, s.points, s.source, s.client_addr,
           s.request_id, s.stream_id
    FROM actions_staging s JOIN counted c USING (source, event_id, created_at)
    ON CONFLICT DO NOTHING
    RETURNING board, user_id, points, created_at
), upserted AS (
    INSERT INTO scores (board, user_id, score, reached_at)
    SELECT board, user_id, sum(points), max(created_at) FROM inserted
    GROUP BY board, user_id ORDER BY board, user_id
    ON CONFLICT (board, user_id) DO UPDATE
    SET score = scores.score + EXCLUDED.score,
        reached_at = GREATEST(scores.reached_at, EXCLUDED.reached_at),
        version = scores.version + 1
    RETURNING board, user_id, score, reached_at, version
), touched AS (
    SELECT DISTINCT board, user_id FROM actions_staging
)
SELECT t.board, t.user_id, u.username,
       COALESCE(n.score, s.score) AS score, COALESCE(n.reached_at, s.reached_at) AS reached_at,
       COALESCE(n.version, s.version) AS version,
       (SELECT count(*) FROM inserted) AS inserted_rows
FROM touched t
JOIN users u USING (user_id)
LEFT JOIN upserted n USING (board, user_id)
LEFT JOIN scores s USING (board, user_id)
WHERE n.score IS NOT NULL OR s.score IS NOT NULL
"""


@dataclass(frozen=True)
class PersistResult:
    inserted: int
    totals: list[BoardTotal]


class PartitionCache:
    """Months whose ``actions`` partition this process has made sure exists."""

    def __init__(self) -> None:
        self.known: set[date] = set()

    async def ensure(self, connection: Any, months: set[date]) -> None:
        for month in sorted(months - self.known):
            await connection.execute("SELECT ensure_actions_partitions($1, 1)", month)
            self.known.add(month)


async def persist_batch(connection: Any, entries: Sequence[StreamEntry],
                        partitions: PartitionCache,
                        definitions: Mapping[str, BoardDefinition] | None = None
                        ) -> PersistResult:
    """Write ``entries`` in one transaction; returns what was inserted and the totals.

    A missing partition is created first (in its own short transaction, so the
    batch never waits on another worker's partition lock while holding rows).
    ``definitions`` (board -> definition) spreads the entries of boards with
    windows or the ``best`` operator over their scopes (``workers.window_fanout``);
    a batch of plain boards only runs exactly what it ran before windows.
    """
    await partitions.ensure(connection, months_of(entries))
    windowed = window_rows(entries, definitions) if definitions else []
    async with connection.transaction():
        await connection.execute(CREATE_STAGING)
        await connection.copy_records_to_table(
            "actions_staging", records=[staging_record(e) for e in entries],
            columns=STAGING_COLUMNS)
        await connection.execute(UPSERT_USERS)
        if windowed:
            await connection.execute(CREATE_WINDOW_STAGING)
            await connection.copy_records_to_table("window_staging", records=windowed,
                                                   columns=WINDOW_COLUMNS)
            rows = await connection.fetch(PERSIST_WINDOWED)
        else:
            rows = await connection.fetch(PERSIST)
    return PersistResult(inserted=rows[0]["inserted_rows"] if rows else 0, totals=[
        BoardTotal(board=r["board"], user_id=r["user_id"], score=r["score"],
                   reached_at=r["reached_at"], version=r["version"], username=r["username"])
        for r in rows])
