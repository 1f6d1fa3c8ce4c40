-- Per-endpoint delivery policies (DESIGN §10), shared by every instance.
-- rate_limit: deliveries per second at most (NULL: no limit).
-- rate_tat_us: the rate limit's theoretical arrival time (GCRA), microseconds since the Unix
--   epoch by the database clock: no send starts before it. Every instance reserves its sends
--   by advancing it atomically, so the limit holds across instances.
-- current_concurrency: the attempts in flight adaptive concurrency allows now, while it holds
--   the endpoint below ACCOMMADOR_ENDPOINT_CONCURRENCY (NULL: at that bound); every instance
--   leases within it.
ALTER TABLE endpoints
    ADD COLUMN rate_limit integer,
    ADD COLUMN rate_tat_us bigint NOT NULL DEFAULT 0,
    ADD COLUMN current_concurrency integer;

-- The endpoints held down right now (the /metrics gauge counts them without a scan).
CREATE INDEX endpoints_concurrency_reduced ON endpoints (id) WHERE current_concurrency IS NOT NULL;

-- Microseconds since the Unix epoch by the database's clock.
CREATE FUNCTION accommador_now_us() RETURNS bigint LANGUAGE sql VOLATILE AS
    $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint $$;
