-- Operational events (`endpoint.disabled`, `endpoint.enabled`, `delivery.failed`) describe one
-- endpoint of the organization; fan-out and `recover` never send an event to the endpoint it
-- describes. NULL for user and test events.
ALTER TABLE events ADD COLUMN about_endpoint TEXT;
