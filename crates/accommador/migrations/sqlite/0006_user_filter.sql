-- `GET /v1/events` and `GET /v1/deliveries` filter by `user_id` (DESIGN §10), and every
-- filtered list walks an index that starts with its most selective filter, in list order,
-- so a request reads at most one bounded batch of rows (see `store::LIST_SCAN_ROWS`).

-- A delivery's user is its event's, copied at insert: the user's deliveries are then one
-- index range in delivery order (through the event they would need a sort of all of them).
ALTER TABLE deliveries ADD COLUMN user_id TEXT;
UPDATE deliveries SET user_id = (SELECT e.user_id FROM events e WHERE e.seq = deliveries.event_seq);

-- Test events have no user and are never listed by user: left out of both indexes.
CREATE INDEX events_org_user_seq ON events(org_id, user_id, seq) WHERE user_id IS NOT NULL;
CREATE INDEX deliveries_user_list ON deliveries(org_id, user_id, seq) WHERE user_id IS NOT NULL;

-- One event's deliveries in delivery order. Replaces the index on event_id alone, which
-- nothing needed beside the unique (event_id, endpoint_id) one: no extra cost per write.
DROP INDEX IF EXISTS deliveries_event;
CREATE INDEX deliveries_event_list ON deliveries(event_id, seq);
