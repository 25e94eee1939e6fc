"""The parts of the worker's persist statement, shared by the plain one
(``workers.persist.PERSIST``) and the one of boards with windows
(``workers.window_fanout.PERSIST_WINDOWED``), so the exactly-once rule and
the sum into ``scores`` are written once.

Parameters ``$1``-``$9`` are the batch's columns as arrays (:func:`staged`),
one element per stream entry.
"""

from __future__ import annotations

from collections.abc import Sequence

from scoreboard.stream_entry import StreamEntry

# staged: the batch's entries, from the arrays. The action's time is the
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
    FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::int4[], $6::text[],
                $7::text[], $8::text[], $9::text[])
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


def staged(entries: Sequence[StreamEntry]) -> tuple[list[object], ...]:
    """The arguments ``$1``-``$9`` of :data:`STAGED`: one list per column (asyncpg
    encodes each as one binary array), empty addresses and request ids as NULL."""
    return ([e.event_id for e in entries], [e.ts_ms for e in entries],
            [e.user_id for e in entries], [e.board for e in entries],
            [e.points for e in entries], [e.source for e in entries],
            [e.ip or None for e in entries], [e.request_id or None for e in entries],
            [e.stream_id for e in entries])
