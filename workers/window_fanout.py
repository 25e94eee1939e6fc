"""Windows in the worker: each increment of a board with windows also counts in
the current period of every window, by its accept time (the stream entry's
``ts``, so a redelivery lands in the same period).

A board with only ``all_time`` and the ``sum`` operator (every board before
migration 008) gets no row here, and its batch goes through the plain
``PERSIST`` statement of ``workers.persist``. For the others,
:func:`window_arrays` names each counted copy's scopes (the board itself and
``<board>/<window>/<period>``), passed as arrays beside the batch's columns, and
:data:`PERSIST_WINDOWED` sums (``sum``) or keeps the maximum (``best``) per
scope in the same statement and with the same exactly-once rule
(``counted_events``, ``workers.persist_sql``) as the plain one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from scoreboard.board_defs import BoardDefinition
from scoreboard.stream_entry import StreamEntry
from scoreboard.windows import ALL_TIME, Period, scope
from workers.batching import entry_time
from workers.persist_sql import COUNTED, STAGED, SUM_INTO_SCORES

WindowRow = tuple[str, str, int, str, bool]  # source, event id, ts ms, scope, best


def window_rows(entries: Sequence[StreamEntry],
                definitions: Mapping[str, BoardDefinition]) -> list[WindowRow]:
    """The scopes of every entry of a board that is not plain (see module doc).
    A batch of plain boards only is found so per board, not per entry."""
    special = {board: found for board in {e.board for e in entries}
               if (found := definitions.get(board)) is not None and not found.plain}
    if not special:
        return []
    rows: dict[tuple[str, str, int, str], bool] = {}
    # A batch's entries are close in time: the period (and scope) found for one
    # entry serves the next ones it contains, so timezone math runs about once per
    # board, window and batch rather than per entry.
    known: dict[tuple[str, str], tuple[Period, str]] = {}
    for entry in entries:
        found = special.get(entry.board)
        if found is None:
            continue
        moment = entry_time(entry)
        best = found.operator == "best"
        rows[(entry.source, entry.event_id, entry.ts_ms, entry.board)] = best
        for window in found.spec.windows:
            if window == ALL_TIME:
                continue
            cached = known.get((entry.board, window))
            if cached is None or not cached[0].contains(moment):
                period = found.spec.period_at(window, moment)
                if period is None:  # between seasons
                    continue
                cached = known[(entry.board, window)] = (
                    period, scope(entry.board, window, period.period))
            rows[(entry.source, entry.event_id, entry.ts_ms, cached[1])] = best
    return [(*key, best) for key, best in rows.items()]


def window_arrays(entries: Sequence[StreamEntry], definitions: Mapping[str, BoardDefinition]
                  ) -> tuple[list[object], ...] | None:
    """:func:`window_rows` as the arguments ``$10``-``$14`` of
    :data:`PERSIST_WINDOWED` (one list per column), or None when the batch has
    no board with windows (it then takes the plain statement)."""
    rows = window_rows(entries, definitions)
    if not rows:
        return None
    return tuple(list(column) for column in zip(*rows, strict=True))


# As workers.persist.PERSIST (read that first), with each inserted action spread
# over its scopes: entries without window rows count on their board as before;
# the others on every scope of theirs in ``windows`` ($10-$14). ``sum`` scopes add
# the points; ``best`` scopes keep a player's best single result and the time it
# was first reached (an equal result later changes nothing: ties go to whoever
# reached it first). A board has one operator, so the two upserts touch
# different rows. A period already archived (``board_periods``, see
# scoreboard/archives.py) is frozen: an entry that reaches the worker after
# that (a worker down past the grace) still counts everywhere else, not there.
PERSIST_WINDOWED = f"""
WITH {STAGED}, windows AS (
    SELECT w.source, w.event_id, timestamptz 'epoch' + w.ts_ms * interval '1 millisecond'
           AS created_at, w.scope, w.best
    FROM unnest($10::text[], $11::text[], $12::int8[], $13::text[], $14::bool[])
         AS w(source, event_id, ts_ms, scope, best)
), {COUNTED}, live AS (
    SELECT w.* FROM windows w
    WHERE NOT EXISTS (SELECT 1 FROM board_periods p WHERE p.scope = w.scope)
), scoped AS (
    SELECT i.board, i.user_id, i.points, i.created_at, false AS best FROM inserted i
    WHERE NOT EXISTS (SELECT 1 FROM windows w WHERE w.source = i.source
                      AND w.event_id = i.event_id AND w.created_at = i.created_at)
    UNION ALL
    SELECT w.scope, i.user_id, i.points, i.created_at, w.best
    FROM inserted i JOIN live w USING (source, event_id, created_at)
), summed AS ({SUM_INTO_SCORES.format(rows="scoped WHERE NOT best")}
), bested AS (
    INSERT INTO scores (board, user_id, score, reached_at)
    SELECT DISTINCT ON (board, user_id) board, user_id, points, created_at FROM scoped
    WHERE best ORDER BY board, user_id, points DESC, created_at
    ON CONFLICT (board, user_id) DO UPDATE
    SET score = EXCLUDED.score, reached_at = EXCLUDED.reached_at, version = scores.version + 1
    WHERE EXCLUDED.score > scores.score
    RETURNING board, user_id, score, reached_at, version
), upserted AS (
    SELECT * FROM summed UNION ALL SELECT * FROM bested
), touched AS (
    SELECT board, user_id FROM staged
    UNION
    SELECT w.scope, s.user_id FROM live w
    JOIN staged s USING (source, event_id, created_at)
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
