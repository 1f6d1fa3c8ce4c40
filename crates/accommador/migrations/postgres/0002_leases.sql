-- Leases: which instance is attempting a delivery, until when (by the database's clock).
ALTER TABLE deliveries ADD COLUMN lease_token text, ADD COLUMN lease_until bigint;

-- Milliseconds since the Unix epoch by the database's clock: every instance leases and
-- expires leases by this one clock.
CREATE FUNCTION accommador_now_ms() RETURNS bigint LANGUAGE sql VOLATILE AS
    $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;
