-- 008: boards over time. A board's windows (all_time, daily, weekly, monthly,
-- season), the timezone and hour its windows turn over, its named seasons, its
-- operator (sum: points add up; best: a player's best single result counts),
-- a title, and whether it is open (a closed board refuses increments; its
-- boards stay readable).
--
-- A window's period is stored like a board under its scope name
-- "<board>/<window>/<period>" (board names never contain '/'): `scores` rows,
-- Redis keys and change notices, so every read, write and rebuild path
-- serves periods unchanged. The all_time window is the board itself.
ALTER TABLE boards
    ADD COLUMN title         text,
    ADD COLUMN windows       text[] NOT NULL DEFAULT '{all_time}',
    ADD COLUMN timezone      text NOT NULL DEFAULT 'UTC',
    ADD COLUMN turnover_hour integer NOT NULL DEFAULT 0 CHECK (turnover_hour BETWEEN 0 AND 23),
    ADD COLUMN seasons       jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN operator      text NOT NULL DEFAULT 'sum' CHECK (operator IN ('sum', 'best')),
    ADD COLUMN is_open       boolean NOT NULL DEFAULT true,
    ADD COLUMN closed_at     timestamptz;

-- The archive: one row per closed period, written once by the archive job
-- (workers/jobs.py archive_periods) after the period's end plus a grace for
-- entries still in flight. From then on the period is frozen: its `scores`
-- rows are never changed again (see README, "Archives and moderation"), its
-- Redis keys expire, and reads of it come from `scores`.
CREATE TABLE board_periods (
    scope        text PRIMARY KEY,        -- "<board>/<window>/<period>"
    board        text NOT NULL,
    window_name  text NOT NULL,
    period       text NOT NULL,
    starts_at    timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL,
    players      integer NOT NULL,        -- players with a score in it when it was archived
    archived_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX board_periods_listing ON board_periods (board, window_name, ends_at DESC);
