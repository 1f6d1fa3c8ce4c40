-- Lighter writes on the hot path (issue 7's profile: index entries and foreign-key checks were
-- most of the cost of writing an event, numbering it and fanning it out).
--
-- Indexes nothing reads any more. Events are read in commit order (0003), so the orderings by
-- transaction ID go; deliveries by event use the unique (event_id, endpoint_id) index. Each
-- index costs every insert and every non-HOT update (numbering an event, recording an
-- attempt) another entry.
DROP INDEX IF EXISTS events_org_order;
DROP INDEX IF EXISTS events_org_type_order;
DROP INDEX IF EXISTS events_order;
DROP INDEX IF EXISTS deliveries_event;
-- Foreign keys that cost a lookup (and a row lock) per written row and guard against nothing
-- that can happen: events, endpoints and organizations are never deleted (endpoints are
-- soft-deleted), deliveries are made only from an event and an endpoint read in the same
-- transaction, and an event is written only beside its user (whose row checks the
-- organization) or, for a test event, after reading its endpoint in that organization.
ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_event_seq_fkey;
ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_endpoint_id_fkey;
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_org_id_fkey;
