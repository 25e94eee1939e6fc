-- 010: one durable key per counted event, not two.
--
-- counted_events (005) is the record that an event counted: the worker
-- inserts an `actions` row only for an event new there, in the same statement
-- (workers/persist_sql.py), so `actions` cannot hold the same (source, event)
-- twice. Its primary key (event_id, created_at, source) enforced that again, per
-- partition, at one more btree insert per row: about 15% of the worker's persist
-- statement (BENCHMARKS.md, "Worker"). It goes. counted_events' key now leads
-- with event_id, so an action is still found by its event id alone (admin
-- remove-action: the key gives the source and acceptance time, which prune
-- `actions` to one partition, where the BRIN index of 009 narrows the scan).
ALTER TABLE actions DROP CONSTRAINT actions_pkey;
ALTER TABLE counted_events DROP CONSTRAINT counted_events_pkey;
ALTER TABLE counted_events ADD PRIMARY KEY (event_id, source);
