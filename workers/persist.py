"""One batch of stream entries into Postgres, in one transaction.

Binary COPY into a per-connection staging table, then ONE statement: the
events new to ``counted_events`` (the durable dedup record, keyed by source
and event id) become ``actions`` rows, and only rows really inserted are
summed into ``scores``. A redelivered entry, or an event accepted again once
its Redis marker is gone, is already counted and adds nothing. The committed
totals of every (board, user) the batch touched are returned, inserted or
not: after a crash between commit and acknowledgement, the redelivery must
still bring the leaderboard up to the committed totals.

Players (``users`` rows of a backend's players, and the names the boards
show) are written only when this process does not know them yet or a batch
brings a new name (``workers.players``); most batches of a running worker
write none, and their statement is then the whole transaction.
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
from workers.players import KnownPlayers, requested_names
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

# The players a batch must write (``KnownPlayers.to_write``): new ones are
# inserted with DO NOTHING, and only names that changed are updated (an ON
# CONFLICT DO UPDATE would lock and WAL-log every existing row even when its
# WHERE updates nothing); registered accounts keep their own name. Returns
# each player's row as it now stands: (user id, name, registered). A player
# another transaction inserted after this statement's snapshot is in none of
# the three parts (the caller reads those again; see ``write_players``).
WRITE_PLAYERS = """
WITH requested AS (
    SELECT * FROM unnest($1::text[], $2::text[]) AS r(user_id, username)
), created AS (
    INSERT INTO users (user_id, username)
    SELECT user_id, username FROM requested ORDER BY user_id
    ON CONFLICT (user_id) DO NOTHING
    RETURNING user_id, username
), renamed AS (
    UPDATE users SET username = r.username
    FROM requested r
    WHERE users.user_id = r.user_id AND users.password_hash IS NULL
      AND users.username <> r.username AND r.username <> r.user_id
    RETURNING users.user_id, users.username
)
SELECT user_id, username, false AS registered FROM created
UNION ALL
SELECT user_id, username, false FROM renamed
UNION ALL
SELECT u.user_id, u.username, u.password_hash IS NOT NULL
FROM requested r JOIN users u USING (user_id)
WHERE NOT EXISTS (SELECT FROM created c WHERE c.user_id = r.user_id)
  AND NOT EXISTS (SELECT FROM renamed n WHERE n.user_id = r.user_id)
"""
READ_PLAYERS = """
SELECT user_id, username, password_hash IS NOT NULL AS registered
FROM users WHERE user_id = ANY($1::text[])
"""

# The batch in one statement (one round trip, nothing summed in Python):
# 1. firsts: one copy of each event, the earliest (then the lowest stream id).
# 2. counted: an event counts once forever. Its (source, event_id) goes into
#    ``counted_events`` (migration 005) and only the events new there become
#    ``actions`` rows and points: a redelivered entry, or the same event
#    accepted again after its Redis marker expired, inserts nothing. Keys go
#    in sorted, so two workers holding the same events lock them in one order.
# 3. inserted: the ``actions`` rows of the counted events.
# 4. upserted: per (board, user) the points really inserted are added to
#    ``scores``, in (board, user) order (concurrent workers lock score rows in
#    one order: no deadlocks); RETURNING gives the new totals.
# 5. The totals of the pairs the batch touched but added nothing to (a
#    redelivery) are read from ``scores``, one index look-up each (LIMIT 1
#    keeps the planner from scanning the table for what is usually no row).
# Every row also carries how many ``actions`` rows the batch inserted.
PERSIST = """
WITH firsts AS (
    SELECT DISTINCT ON (source, event_id) * FROM actions_staging
    ORDER BY source, event_id, created_at, stream_id
), counted AS (
    INSERT INTO counted_events (source, event_id, created_at)
    SELECT source, event_id, created_at FROM firsts
    ON CONFLICT DO NOTHING
    RETURNING source, event_id
), inserted AS (
    INSERT INTO actions (event_id, created_at, user_id, board, points, source, client_addr,
                         request_id, stream_id)
    SELECT f.event_id, f.created_at, f.user_id, f.board, f.points, f.source, f.client_addr,
           f.request_id, f.stream_id
    FROM firsts f JOIN counted c USING (source, event_id)
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
), unchanged AS (
    SELECT DISTINCT board, user_id FROM actions_staging t
    WHERE NOT EXISTS (SELECT FROM upserted n WHERE n.board = t.board AND n.user_id = t.user_id)
)
SELECT board, user_id, score, reached_at, version,
       (SELECT count(*) FROM inserted) AS inserted_rows
FROM upserted
UNION ALL
SELECT m.board, m.user_id, s.score, s.reached_at, s.version, (SELECT count(*) FROM inserted)
FROM unchanged m CROSS JOIN LATERAL (
    SELECT score, reached_at, version FROM scores
    WHERE scores.board = m.board AND scores.user_id = m.user_id LIMIT 1) s
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


async def write_players(connection: Any, writes: dict[str, str]) -> list[tuple[str, str, bool]]:
    """Write ``writes`` (player id -> requested name); returns every one's row as
    it now stands: (player id, name, registered)."""
    rows = [(r["user_id"], r["username"], r["registered"]) for r in await connection.fetch(
        WRITE_PLAYERS, list(writes), list(writes.values()))]
    if len(rows) < len(writes):  # inserted by a transaction committed since the snapshot
        missing = set(writes) - {user_id for user_id, _, _ in rows}
        rows += [(r["user_id"], r["username"], r["registered"]) for r in await connection.fetch(
            READ_PLAYERS, sorted(missing))]
    return rows


async def persist_batch(connection: Any, entries: Sequence[StreamEntry],
                        partitions: PartitionCache,
                        definitions: Mapping[str, BoardDefinition] | None = None, *,
                        players: KnownPlayers | None = None) -> PersistResult:
    """Write ``entries`` in one transaction; returns what was inserted and the totals.

    ``players``: the process's :class:`KnownPlayers` (without one, every player
    of the batch is written). It learns only once the transaction committed.
    A missing partition is created first (in its own short transaction, so the
    batch never waits on another worker's partition lock while holding rows).
    ``definitions`` (board -> definition) spreads the entries of boards with
    windows or the ``best`` operator over their scopes (``workers.window_fanout``);
    a batch of plain boards only runs exactly what it ran before windows.
    """
    known = players if players is not None else KnownPlayers()
    await partitions.ensure(connection, months_of(entries))
    requested = requested_names(entries)
    writes = known.to_write(requested)
    names = {user_id: known.name(user_id) or name for user_id, name in requested.items()
             if user_id not in writes}
    records = [staging_record(e) for e in entries]
    windowed = window_rows(entries, definitions) if definitions else []
    written: list[tuple[str, str, bool]] = []
    async with connection.transaction():
        await connection.execute(CREATE_STAGING)
        await connection.copy_records_to_table("actions_staging", records=records,
                                               columns=STAGING_COLUMNS)
        if writes:
            written = await write_players(connection, writes)
        if windowed:
            await connection.execute(CREATE_WINDOW_STAGING)
            await connection.copy_records_to_table("window_staging", records=windowed,
                                                   columns=WINDOW_COLUMNS)
            rows = await connection.fetch(PERSIST_WINDOWED)
        else:
            rows = await connection.fetch(PERSIST)
    known.learn(written)
    names.update((user_id, name) for user_id, name, _ in written)
    return PersistResult(inserted=rows[0]["inserted_rows"] if rows else 0, totals=[
        BoardTotal(board=r["board"], user_id=r["user_id"], score=r["score"],
                   reached_at=r["reached_at"], version=r["version"],
                   username=names.get(r["user_id"]) or requested[r["user_id"]])
        for r in rows])
