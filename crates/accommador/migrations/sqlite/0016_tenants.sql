-- The fence of the background cancel: the highest delivery seq when the endpoint was disabled
-- or deleted. Its pending deliveries up to it end failed (endpoint_disabled) even if the
-- endpoint is enabled again meanwhile; deliveries made after a re-enable are above it and
-- are sent. NULL once the cancel is over.
ALTER TABLE endpoints ADD COLUMN cancel_through INTEGER;
-- Endpoints marked before this migration: everything pending then was queued before the
-- close.
UPDATE endpoints SET cancel_through = (SELECT COALESCE(max(seq), 0) FROM deliveries)
 WHERE cancel_pending = 1;
