-- `GET /v1/events` and `GET /v1/deliveries` filter by `user_id` (DESIGN §10), and every
-- filtered list walks an index that starts with its most selective filter, in list order,
-- so a request reads at most one bounded batch of rows (see `store::LIST_SCAN_ROWS`).

-- A delivery's user is its event's, copied at insert: the user's deliveries are then one
-- index range in delivery order (through the event they would need a sort of all of them).
ALTER TABLE deliveries ADD COLUMN user_id text;
UPDATE deliveries d SET user_id = e.user_id
FROM events e
WHERE e.seq = d.event_seq AND e.user_id IS NOT NULL;

-- Test events have no user and are never listed by user: left out of both indexes.
CREATE INDEX events_org_user_commit_order ON events(org_id, user_id, commit_seq)
    WHERE user_id IS NOT NULL;
CREATE INDEX deliveries_user_list ON deliveries(org_id, user_id, seq) WHERE user_id IS NOT NULL;

-- One event's deliveries keep using the unique (event_id, endpoint_id) index (0005 dropped
-- the one on event_id to lighten writes): at most one row per endpoint the event went to,
-- sorted by seq, a cost bounded by the organization's endpoints rather than its history.
