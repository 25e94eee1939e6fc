-- 009: the leaderboard at a past moment (`as_of`) and retention of `actions`.
--
-- A checkpoint holds, for one moment `at`, every (board, user)'s total of the
-- actions accepted before `at` and when that total was reached (the live
-- board's tie order). `as_of T` reads the latest checkpoint at or before T and
-- replays only the actions in [checkpoint, T] (partition pruning and the BRIN
-- index below keep that replay to a slice of one partition). A scheduled
-- worker job writes a checkpoint per HISTORY_CHECKPOINT_HOURS, each from the
-- previous one plus the actions in between (scoreboard/history_checkpoints.py).
CREATE TABLE history_checkpoints (
    at       timestamptz PRIMARY KEY,      -- covers actions with created_at < at
    entries  bigint NOT NULL,              -- (board, user) rows written
    built_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE history_checkpoint_totals (
    at         timestamptz NOT NULL REFERENCES history_checkpoints (at) ON DELETE CASCADE,
    board      text NOT NULL,
    user_id    text NOT NULL,
    total      bigint NOT NULL,
    reached_at timestamptz NOT NULL,       -- the newest action counted (tie order)
    PRIMARY KEY (at, board, user_id)
);
-- What a removed action's correction (below) looks up.
CREATE INDEX history_checkpoint_totals_user ON history_checkpoint_totals (board, user_id, at);

-- The earliest moment `as_of` can answer: the start of the oldest partition of
-- `actions` that retention kept (a checkpoint exists at exactly that moment).
-- One row; NULL while nothing was ever dropped.
CREATE TABLE history_floor (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    earliest  timestamptz
);
INSERT INTO history_floor (earliest) VALUES (NULL);

-- Actions arrive in time order, so a BRIN index finds a time range within a
-- partition for a few pages of index and nearly no cost on the write path.
CREATE INDEX actions_created_brin ON actions USING brin (created_at);

-- A removed action (scoreboard admin remove-action deletes the row) leaves
-- every checkpoint that counted it: those totals are corrected here, in the
-- deleting transaction. The shared lock pairs with the exclusive one a
-- checkpoint build holds, so a build never misses a removal made meanwhile.
CREATE FUNCTION history_forget_action() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtext('history_checkpoints'));
    UPDATE history_checkpoint_totals t
    SET total = t.total - OLD.points,
        reached_at = CASE WHEN t.reached_at <> OLD.created_at THEN t.reached_at
                          ELSE COALESCE((SELECT max(a.created_at) FROM actions a
                                         WHERE a.user_id = OLD.user_id AND a.board = OLD.board
                                           AND a.created_at < t.at), t.reached_at) END
    WHERE t.board = OLD.board AND t.user_id = OLD.user_id AND t.at > OLD.created_at;
    DELETE FROM history_checkpoint_totals t
    WHERE t.board = OLD.board AND t.user_id = OLD.user_id AND t.at > OLD.created_at
      AND t.total <= 0;
    RETURN NULL;
END $$;

CREATE TRIGGER actions_forget_in_history AFTER DELETE ON actions
    FOR EACH ROW EXECUTE FUNCTION history_forget_action();

-- The partitions of `actions` with their bounds, oldest first (retention and
-- the checkpoint job read them; the bounds are parsed from the catalog).
CREATE FUNCTION actions_partitions()
RETURNS TABLE (name text, lower_bound timestamptz, upper_bound timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT c.relname::text,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\)'))[1]::timestamptz,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'actions'::regclass
    ORDER BY 2
$$;
