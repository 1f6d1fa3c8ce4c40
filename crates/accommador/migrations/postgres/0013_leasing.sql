-- Leased pending deliveries per organization, by lease end: what counts against
-- ACCOMMADOR_ORG_CONCURRENCY across instances (the organization's unexpired leases), and the
-- earliest moment one of them runs out (when a lane held back by them is looked at again if no
-- release is announced). A handful of rows per organization at most, like
-- deliveries_endpoint_leased per endpoint.
CREATE INDEX deliveries_org_leased ON deliveries(org_id, lease_until)
    WHERE status = 'pending' AND lease_token IS NOT NULL;
