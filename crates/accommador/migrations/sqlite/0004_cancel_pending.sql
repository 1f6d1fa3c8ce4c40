-- An endpoint that was disabled or deleted while it had pending deliveries: a background job
-- fails them in bounded batches (cancel_pending = 1 until none is left).
ALTER TABLE endpoints ADD COLUMN cancel_pending INTEGER NOT NULL DEFAULT 0;
CREATE INDEX endpoints_cancel_pending ON endpoints(id) WHERE cancel_pending = 1;
