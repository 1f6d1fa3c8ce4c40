-- Fan-out writes at most 1,000 deliveries per step, so one event to many endpoints takes
-- several steps: the next event after last_seq has been fanned out to the endpoints with IDs
-- up to partial_endpoint (NULL: to none yet).
ALTER TABLE fanout_cursor ADD COLUMN partial_endpoint TEXT;
