-- 002: a version per score row, bumped by every change of the row.
--
-- Boards in Redis are written with a compare-and-set on this version, so a
-- stale writer can never overwrite a newer total, and a total that goes down
-- (an action removed) is still applied.
ALTER TABLE scores ADD COLUMN version bigint NOT NULL DEFAULT 1;
