-- Rollup counters for the delivery-log UI's overview (issue 13): deliveries ended per endpoint
-- per hour by outcome, so "the last hour / day" is a read of at most 25 rows per endpoint
-- instead of a COUNT(*) over the deliveries. `hour` is the start of the hour (unix ms) in
-- which the delivery ended.
CREATE TABLE delivery_rollups (
    seq          INTEGER PRIMARY KEY,
    org_id       TEXT NOT NULL,
    endpoint_id  TEXT NOT NULL,
    hour         INTEGER NOT NULL,
    succeeded    INTEGER NOT NULL DEFAULT 0,
    failed       INTEGER NOT NULL DEFAULT 0,
    UNIQUE (endpoint_id, hour)
);
CREATE INDEX delivery_rollups_org ON delivery_rollups(org_id, hour);
CREATE INDEX delivery_rollups_hour ON delivery_rollups(hour);

-- Every way a delivery ends (an attempt recorded, a bulk failure on disable or delete, an
-- erasure) changes its status from pending in one UPDATE on the one writer: a trigger counts
-- them all. (PostgreSQL counts in its three statements instead, in a fixed row order, so that
-- concurrent writers never deadlock on a counter row.)
CREATE TRIGGER delivery_rollups_count AFTER UPDATE OF status ON deliveries
WHEN OLD.status = 'pending' AND NEW.status IN ('succeeded', 'failed')
BEGIN
    INSERT INTO delivery_rollups (org_id, endpoint_id, hour, succeeded, failed)
    VALUES (NEW.org_id, NEW.endpoint_id, (NEW.updated_at / 3600000) * 3600000,
            NEW.status = 'succeeded', NEW.status = 'failed')
    ON CONFLICT (endpoint_id, hour) DO UPDATE SET
        succeeded = succeeded + excluded.succeeded,
        failed = failed + excluded.failed;
END;

-- The last day's endings that happened before this migration.
INSERT INTO delivery_rollups (org_id, endpoint_id, hour, succeeded, failed)
SELECT org_id, endpoint_id, (updated_at / 3600000) * 3600000,
       sum(status = 'succeeded'), sum(status = 'failed')
FROM deliveries
WHERE status IN ('succeeded', 'failed')
  AND updated_at >= (CAST(strftime('%s', 'now') AS INTEGER) - 25 * 3600) * 1000
GROUP BY 1, 2, 3;
