-- 004: boards list their actions; a player's increment adds exactly the points
-- of the action its token names (server-decided points).
--
-- `actions` is an ordered array of {"name", "points"} (the first is the
-- default action of the action-token request). `max_points_per_action` (from
-- 001; NULL: the service-wide MAX_POINTS_PER_INCREMENT) is the largest
-- explicit `points` a game backend may send to the board.
ALTER TABLE boards ADD COLUMN actions jsonb NOT NULL
    DEFAULT '[{"name": "play", "points": 1}]'
    CHECK (jsonb_typeof(actions) = 'array' AND jsonb_array_length(actions) > 0);

-- Boards used before boards had to be created (they were made by their first
-- increment) are registered with the default action, so nothing already
-- scored becomes unreachable.
INSERT INTO boards (board) SELECT DISTINCT board FROM scores ON CONFLICT (board) DO NOTHING;
