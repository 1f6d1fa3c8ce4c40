-- API keys an organization manages itself (`/v1/api-keys`), and organizations an operator
-- deletes (`DELETE /v1/organizations/{id}`; DESIGN §10).

-- Every key has a name a person gives it; the keys made before names existed are `default`.
ALTER TABLE api_keys ADD COLUMN name TEXT NOT NULL DEFAULT 'default';
-- One organization's keys in ID (creation) order: the key list, the live-key count that keeps
-- the last key from being revoked, and the deletion of an organization's keys.
CREATE INDEX api_keys_org ON api_keys(org_id, id);

-- A deleted organization answers like an unknown one at once; a background job then removes
-- its rows in bounded batches and finally the organization row itself.
ALTER TABLE organizations ADD COLUMN deleted_at INTEGER;
CREATE INDEX organizations_deleting ON organizations(id) WHERE deleted_at IS NOT NULL;
-- The deletion reads each table by organization, deleted users and endpoints included (the
-- existing per-organization indexes cover live ones only).
CREATE INDEX users_org ON users(org_id, seq);
CREATE INDEX endpoints_org ON endpoints(org_id, seq);
