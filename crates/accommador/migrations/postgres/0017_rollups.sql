-- Rollup counters for the delivery-log UI's overview (issue 13): deliveries ended per endpoint
-- per hour by outcome, so "the last hour / day" is a read of at most 25 rows per endpoint
-- instead of a COUNT(*) over the deliveries. `hour` is the start of the hour (unix ms) in
-- which the delivery ended. Written by the statements that end deliveries (recording
-- attempts, failing them on disable or delete, erasure), each adding its counts in
-- (endpoint_id, hour) order so that concurrent writers never deadlock on a counter row.
CREATE TABLE delivery_rollups (
    seq          bigserial PRIMARY KEY,
    org_id       text NOT NULL,
    endpoint_id  text NOT NULL,
    hour         bigint NOT NULL,
    succeeded    bigint NOT NULL DEFAULT 0,
    failed       bigint NOT NULL DEFAULT 0,
    UNIQUE (endpoint_id, hour)
);
CREATE INDEX delivery_rollups_org ON delivery_rollups(org_id, hour);
CREATE INDEX delivery_rollups_hour ON delivery_rollups(hour);

-- The last day's endings that happened before this migration.
INSERT INTO delivery_rollups (org_id, endpoint_id, hour, succeeded, failed)
SELECT org_id, endpoint_id, (updated_at / 3600000) * 3600000,
       count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'failed')
FROM deliveries
WHERE status IN ('succeeded', 'failed')
  AND updated_at >= (extract(epoch FROM now())::bigint - 25 * 3600) * 1000
GROUP BY 1, 2, 3;
