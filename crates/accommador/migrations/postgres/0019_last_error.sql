-- The delivery-log UI's "last error" per endpoint (issue 13): the deliveries whose latest
-- attempt failed (still retrying, or failed for good), newest change first, so the latest
-- failure of an endpoint is one short walk from its start instead of a scan of its
-- deliveries. The index holds failing deliveries only: a delivery that succeeds at its first
-- attempt (the hot path) and a new delivery never enter it (PostgreSQL adds an entry only for
-- row versions that satisfy the predicate), so those writes cost nothing more; a failed
-- attempt adds its delivery's new row version. Recording already changes indexed columns
-- (status, next_attempt_at), so no update that was HOT before stops being HOT.
-- (Numbered 0019: 0018 is kept for the tenants change, see pending/README.md.)
CREATE INDEX deliveries_endpoint_failing ON deliveries(endpoint_id, updated_at)
    WHERE attempt_count > 0
      AND (last_status_code IS NULL OR last_status_code NOT BETWEEN 200 AND 299);
