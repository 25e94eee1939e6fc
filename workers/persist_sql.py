"""The parts of the worker's persist statement, shared by the plain one
(``workers.persist.PERSIST``) and the one of boards with windows
(``workers.window_fanout.PERSIST_WINDOWED``), so the exactly-once rule and
the sum into ``scores`` are written once.

Parameters ``$1``-``$9`` are the batch's columns (:func:`staged`), each one
text of its values joined by the stream entry's separator, split back into
arrays in SQL.
"""

from __future__ import annotations

from collections.abc import Sequence

from scoreboard.stream_entry import SEPARATOR, StreamEntry

# staged: the batch's entries, from its columns (string_to_array: an empty field
# of the address and request id columns is NULL). The action's time is the
# entry's accept time (``ts``, ms since the epoch), computed exactly (integer
# milliseconds, no float) and never from the worker's clock.
# firsts: one copy of each event, the earliest (then the lowest stream id).
# counted: an event counts once forever. Its (source, event_id) goes into
#   ``counted_events`` (migration 005) and only the events new there become
#   ``actions`` rows and points: a redelivered entry, or the same event
#   accepted again after its Redis marker expired, inserts nothing. Keys go in
#   sorted, so two workers holding the same events lock them in one order.
# inserted: the ``actions`` rows of the counted events: new by construction, so
#   ``actions`` needs no key of its own to stay exactly-once (migration 010).
STAGED = """staged AS (
    SELECT s.event_id, timestamptz 'epoch' + s.ts_ms * interval '1 millisecond' AS created_at,
           s.user_id, s.board, s.points, s.source, s.client_addr, s.request_id, s.stream_id
    FROM unnest(string_to_array($1, E'\x1f'), string_to_array($2, E'\x1f')::int8[],
                string_to_array($3, E'\x1f'), string_to_array($4, E'\x1f'),
                string_to_array($5, E'\x1f')::int4[], string_to_array($6, E'\x1f'),
                string_to_array($7, E'\x1f', ''), string_to_array($8, E'\x1f', ''),
                string_to_array($9, E'\x1f'))
         AS s(event_id, ts_ms, user_id, board, points, source, client_addr, request_id,
              stream_id)
)"""
COUNTED = """firsts AS (
    SELECT DISTINCT ON (source, event_id) * FROM staged
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
    RETURNING board, user_id, points, created_at, source, event_id
)"""
# Per (board, user) of ``{rows}`` (a relation, and maybe its WHERE, with board,
# user_id, points, created_at) the points are added to ``scores``, in (board, user)
# order (concurrent workers lock score rows in one order: no deadlocks);
# RETURNING gives the new totals.
SUM_INTO_SCORES = """
    INSERT INTO scores (board, user_id, score, reached_at)
    SELECT board, user_id, sum(points), max(created_at) FROM {rows}
    GROUP BY board, user_id ORDER BY board, user_id
    ON CONFLICT (board, user_id) DO UPDATE
    SET score = scores.score + EXCLUDED.score,
        reached_at = GREATEST(scores.reached_at, EXCLUDED.reached_at),
        version = scores.version + 1
    RETURNING board, user_id, score, reached_at, version"""
# The result: the totals ``upserted`` returned, and those of the pairs the batch
# touched but added nothing to (a redelivery), read from ``scores`` one index
# look-up each (LIMIT 1 keeps the planner from scanning the table for what is
# usually no row). Every row also carries how many ``actions`` rows the batch
# inserted.
TOTALS_OF_UNCHANGED = """unchanged AS (
    SELECT DISTINCT board, user_id FROM staged t
    WHERE NOT EXISTS (SELECT FROM upserted n WHERE n.board = t.board AND n.user_id = t.user_id)
)
SELECT board, user_id, score, reached_at, version,
       (SELECT count(*) FROM inserted) AS inserted_rows
FROM upserted
UNION ALL
SELECT m.board, m.user_id, s.score, s.reached_at, s.version, (SELECT count(*) FROM inserted)
FROM unchanged m CROSS JOIN LATERAL (
    SELECT score, reached_at, version FROM scores
    WHERE scores.board = m.board AND scores.user_id = m.user_id LIMIT 1) s"""


def staged(entries: Sequence[StreamEntry]) -> tuple[str, ...]:
    """The arguments ``$1``-``$9`` of :data:`STAGED`: each column's values joined by
    the stream entry's separator, which no parsed entry's field holds
    (``scoreboard.stream_entry.parse_entry``). One text per column rather than an
    array: asyncpg encodes an array element by element, and the nine arrays of a
    1,000-entry batch cost the worker 2.3 ms of CPU against 0.5 ms joined, for
    0.1 ms more of Postgres's (scratch, BENCHMARKS.md "Worker", seventh session).
    One entry's empty address is the empty text, which string_to_array makes an
    empty array rather than one NULL: unnest pads the shorter array with NULL, the
    same row."""
    join = SEPARATOR.join
    return (join([e.event_id for e in entries]), join([str(e.ts_ms) for e in entries]),
            join([e.user_id for e in entries]), join([e.board for e in entries]),
            join([str(e.points) for e in entries]), join([e.source for e in entries]),
            join([e.ip for e in entries]), join([e.request_id for e in entries]),
            join([e.stream_id for e in entries]))
