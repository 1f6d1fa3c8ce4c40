-- Per-endpoint delivery policies (DESIGN §10).
-- rate_limit: deliveries per second at most (NULL: no limit).
-- current_concurrency: the attempts in flight adaptive concurrency allows now, while it holds
-- the endpoint below ACCOMMADOR_ENDPOINT_CONCURRENCY (NULL: at that bound). The rate limit's
-- pacing state lives in the one process that owns this file, not here.
ALTER TABLE endpoints ADD COLUMN rate_limit INTEGER;
ALTER TABLE endpoints ADD COLUMN current_concurrency INTEGER;
