-- 005: every counted event, for good: (source, event_id) -> when it was accepted.
--
-- Ingest remembers an event id in Redis only for DEDUP_TTL_S (a short window);
-- this table is what makes an event count at most once forever. The worker
-- inserts into it in the same transaction as the event's `actions` row and
-- writes the row (and adds the points) only when this insert was new, so an
-- event accepted again after its Redis marker expired, or after Redis lost
-- its data, is persisted as nothing.
--
-- Why not the key of `actions`: a unique key of a partitioned table has to
-- include the partition key (created_at), and a replay accepted later has a
-- later created_at. This table is not partitioned, so its key is global.
--
-- Growth: one row per counted event, never deleted (about 100-150 bytes with
-- its index; BENCHMARKS.md has the measured size). It grows with `actions`,
-- at well under its size; see docs/decisions.md for the ways to bound it.
CREATE TABLE counted_events (
    source     text NOT NULL,          -- 'player' or 'backend:<client id>', as in actions
    event_id   text NOT NULL,
    created_at timestamptz NOT NULL,   -- acceptance time of the counted copy (its actions row)
    PRIMARY KEY (source, event_id)
);

-- Events already counted before this table existed (the first copy of each).
INSERT INTO counted_events (source, event_id, created_at)
SELECT DISTINCT ON (source, event_id) source, event_id, created_at
FROM actions ORDER BY source, event_id, created_at;
