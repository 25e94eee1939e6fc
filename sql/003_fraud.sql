-- 003: the durable record of flags and bans (Redis holds them for the hot path
-- and is restored from here), and a plausible maximum per board.

CREATE TABLE user_restrictions (
    id         bigserial PRIMARY KEY,
    user_id    text NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('flagged', 'banned', 'shadow_banned')),
    reason     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,                    -- NULL: until lifted
    lifted_at  timestamptz
);
-- At most one active restriction of each kind per user.
CREATE UNIQUE INDEX user_restrictions_active ON user_restrictions (user_id, kind)
    WHERE lifted_at IS NULL;

ALTER TABLE fraud_events ADD COLUMN event_key text;
-- Decisions taken in Lua reach Postgres through a stream and may be delivered
-- twice; their stream id is the key that makes the insert idempotent.
CREATE UNIQUE INDEX fraud_events_key ON fraud_events (event_key) WHERE event_key IS NOT NULL;
