-- Operational events (`endpoint.disabled`, `endpoint.enabled`, `delivery.failed`) describe one
-- endpoint of the organization; fan-out and `recover` never send an event to the endpoint it
-- describes. NULL for user and test events (a nullable column without a default: no rewrite).
ALTER TABLE events ADD COLUMN about_endpoint text;
