-- 001: accounts, boards, scores, the partitioned audit log, tokens, fraud events.

CREATE TABLE users (
    user_id       text PRIMARY KEY,
    username      text NOT NULL,
    password_hash text,                       -- NULL for players created by a game backend
    scopes        text[] NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- Login names are unique among accounts that can log in; a backend's player
-- ids carry display names only, which may repeat.
CREATE UNIQUE INDEX users_login_name ON users (lower(username)) WHERE password_hash IS NOT NULL;

CREATE TABLE boards (
    board                 text PRIMARY KEY,
    max_points_per_action integer,            -- NULL: the service-wide maximum
    created_at            timestamptz NOT NULL DEFAULT now()
);
INSERT INTO boards (board) VALUES ('global');

CREATE TABLE scores (
    board      text NOT NULL,
    user_id    text NOT NULL,
    score      bigint NOT NULL,
    reached_at timestamptz NOT NULL,          -- when the current score was reached (tie order)
    PRIMARY KEY (board, user_id)
);
CREATE INDEX scores_rank ON scores (board, score DESC, reached_at, user_id);

-- The audit log: one row per accepted increment. created_at is the time the
-- increment was accepted (from the stream entry), so a redelivery is the same
-- row; the primary key includes it because it is the partition key.
CREATE TABLE actions (
    event_id    text NOT NULL,
    created_at  timestamptz NOT NULL,
    user_id     text NOT NULL,
    board       text NOT NULL,
    points      integer NOT NULL CHECK (points > 0),
    source      text NOT NULL,
    client_addr text,
    request_id  text,
    stream_id   text,
    PRIMARY KEY (event_id, created_at)
) PARTITION BY RANGE (created_at);

-- Creates the monthly partitions of `actions` from the month of first_month on,
-- for `months` months; existing ones are left alone. Safe to run concurrently
-- (serialised by a transaction-scoped advisory lock). Returns how many it made.
CREATE FUNCTION ensure_actions_partitions(first_month date, months integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    month_start date := date_trunc('month', first_month)::date;
    created integer := 0;
    name text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('actions_partitions'));
    FOR i IN 0 .. months - 1 LOOP
        name := format('actions_y%sm%s', to_char(month_start, 'YYYY'), to_char(month_start, 'MM'));
        IF to_regclass(name) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF actions FOR VALUES FROM (%L) TO (%L)',
                           name, month_start, (month_start + interval '1 month')::date);
            created := created + 1;
        END IF;
        month_start := (month_start + interval '1 month')::date;
    END LOOP;
    RETURN created;
END $$;

SELECT ensure_actions_partitions(current_date, 3);

CREATE INDEX actions_user ON actions (user_id, created_at);

CREATE TABLE refresh_tokens (
    token_hash bytea PRIMARY KEY,             -- sha256 of the token; the token itself is never stored
    family_id  uuid NOT NULL,
    user_id    text NOT NULL REFERENCES users (user_id),
    issued_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    revoked_at timestamptz,
    access_jti text NOT NULL,                 -- the access token issued with it, revoked with the family
    access_expires_at timestamptz NOT NULL
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

CREATE TABLE revoked_tokens (
    jti        text PRIMARY KEY,
    user_id    text NOT NULL,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE fraud_events (
    id         bigserial PRIMARY KEY,
    user_id    text,
    client_addr text,
    rule       text NOT NULL,
    severity   text NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
    action     text NOT NULL,
    evidence   jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fraud_events_user ON fraud_events (user_id, created_at);
