-- Leased pending deliveries per endpoint: what counts against the per-endpoint bound across
-- instances, and whose expiry may make a lane due. A handful of rows per endpoint, so leasing
-- no longer reads every pending delivery of a backlogged endpoint.
CREATE INDEX deliveries_endpoint_leased ON deliveries(endpoint_id)
    WHERE status = 'pending' AND lease_token IS NOT NULL;
