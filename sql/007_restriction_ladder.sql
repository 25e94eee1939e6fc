-- 007: restrictions that end, escalate and say who lifted them (issue 14).
--
-- `ended_by`: 'expired' when the sweep closed a row whose expires_at passed
-- (before, an expired row stayed "active" and the unique index on active rows
-- turned the user's next restriction into a no-op), else the moderator who
-- lifted it; `lift_reason` is theirs. `level` is the rung of the automatic
-- ladder (1 flag, 2 temporary ban, 3 ban; NULL for a moderator's own
-- decision); `rule` the rule that put the user there ('manual' for a
-- moderator); `appealed` marks an automatic restriction undone on appeal,
-- which then no longer counts towards the next rung.
ALTER TABLE user_restrictions
    ADD COLUMN ended_by    text,
    ADD COLUMN lift_reason text,
    ADD COLUMN level       int,
    ADD COLUMN appealed    boolean NOT NULL DEFAULT false;
-- The sweep's question: which active rows have expired.
CREATE INDEX user_restrictions_expiring ON user_restrictions (expires_at)
    WHERE lifted_at IS NULL AND expires_at IS NOT NULL;
-- The ladder's question: a user's automatic restrictions of the last weeks.
CREATE INDEX user_restrictions_user ON user_restrictions (user_id, created_at);
