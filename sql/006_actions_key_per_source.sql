-- 006: an action's key includes its source, as counted_events' does.
--
-- Event ids are each source's own (a game backend picks its own), so two
-- backends may send the same id; counted_events (005) counts both, but the key
-- of `actions` was (event_id, created_at): two such events accepted in the same
-- millisecond made the second row a conflict, skipped without a word, and its
-- points were lost. event_id stays first, so lookups by event id keep the index.
ALTER TABLE actions DROP CONSTRAINT actions_pkey;
ALTER TABLE actions ADD PRIMARY KEY (event_id, created_at, source);
