"""One batch of stream entries into Postgres, in one transaction.

Binary COPY into a per-connection staging table, then
``INSERT INTO actions ... ON CONFLICT DO NOTHING RETURNING`` so that only rows
really inserted are summed into ``scores``. A redelivered entry has the same
event id and time, so its row conflicts and adds nothing. The committed totals
of every (board, user) the batch touched are returned, inserted or not: after a
crash between commit and acknowledgement, the redelivery must still bring the
leaderboard up to the committed totals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from scoreboard.board_writes import BoardTotal
from scoreboard.stream_entry import StreamEntry
from workers.batching import STAGING_COLUMNS, months_of, staging_record

CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS actions_staging (
    event_id text, created_at timestamptz, user_id text, board text, points integer,
    source text, client_addr text, request_id text, stream_id text, username text
) ON COMMIT DELETE ROWS
"""

INSERT_ACTIONS = """
INSERT INTO actions (event_id, created_at, user_id, board, points, source, client_addr,
                     request_id, stream_id)
SELECT event_id, created_at, user_id, board, points, source, client_addr, request_id, stream_id
FROM actions_staging
ON CONFLICT DO NOTHING
RETURNING user_id, board, points, created_at
"""

# A backend's player gets a row on first score; its display name follows the
# backend's latest one. Registered accounts keep their own name.
UPSERT_USERS = """
INSERT INTO users (user_id, username)
SELECT DISTINCT ON (user_id) user_id, COALESCE(NULLIF(username, ''), user_id)
FROM actions_staging ORDER BY user_id, created_at DESC
ON CONFLICT (user_id) DO UPDATE SET username = EXCLUDED.username
WHERE users.password_hash IS NULL AND users.username <> EXCLUDED.username
  AND EXCLUDED.username <> EXCLUDED.user_id
"""

# Sorted input: concurrent workers lock score rows in one order (no deadlocks).
UPSERT_SCORES = """
INSERT INTO scores (board, user_id, score, reached_at)
SELECT board, user_id, points, reached_at
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[])
     AS t(board, user_id, points, reached_at)
ORDER BY board, user_id
ON CONFLICT (board, user_id) DO UPDATE
SET score = scores.score + EXCLUDED.score,
    reached_at = GREATEST(scores.reached_at, EXCLUDED.reached_at),
    version = scores.version + 1
"""

SELECT_TOTALS = """
SELECT s.board, s.user_id, s.score, s.reached_at, s.version, u.username
FROM scores s JOIN users u USING (user_id)
WHERE (s.board, s.user_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
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
                        partitions: PartitionCache) -> PersistResult:
    """Write ``entries`` in one transaction; returns what was inserted and the totals.

    A missing partition is created first (in its own short transaction, so the
    batch never waits on another worker's partition lock while holding rows).
    """
    await partitions.ensure(connection, months_of(entries))
    async with connection.transaction():
        await connection.execute(CREATE_STAGING)
        await connection.copy_records_to_table(
            "actions_staging", records=[staging_record(e) for e in entries],
            columns=STAGING_COLUMNS)
        inserted = await connection.fetch(INSERT_ACTIONS)
        await connection.execute(UPSERT_USERS)
        sums: dict[tuple[str, str], tuple[int, datetime]] = {}
        for row in inserted:
            key = (row["board"], row["user_id"])
            points, reached = sums.get(key, (0, row["created_at"]))
            sums[key] = (points + row["points"], max(reached, row["created_at"]))
        if sums:
            boards, users = zip(*sums, strict=True)
            await connection.execute(UPSERT_SCORES, list(boards), list(users),
                                     [v[0] for v in sums.values()],
                                     [v[1] for v in sums.values()])
        touched = sorted({(e.board, e.user_id) for e in entries})
        rows = await connection.fetch(SELECT_TOTALS, [b for b, _ in touched],
                                      [u for _, u in touched])
    return PersistResult(inserted=len(inserted), totals=[
        BoardTotal(board=r["board"], user_id=r["user_id"], score=r["score"],
                   reached_at=r["reached_at"], version=r["version"], username=r["username"])
        for r in rows])
