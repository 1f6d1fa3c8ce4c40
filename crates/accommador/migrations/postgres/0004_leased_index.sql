-- Leased pending deliveries per endpoint, by lease end: what counts against the per-endpoint
-- bound across instances (unexpired leases), and whose expiry may make a lane due. A handful of
-- rows per endpoint, so leasing never reads every pending delivery of a backlogged endpoint;
-- the lease end is a key column so that the planner prefers this index for those questions
-- whatever its statistics say.
CREATE INDEX deliveries_endpoint_leased ON deliveries(endpoint_id, lease_until)
    WHERE status = 'pending' AND lease_token IS NOT NULL;
