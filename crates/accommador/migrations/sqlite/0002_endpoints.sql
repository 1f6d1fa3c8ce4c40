-- Webhook endpoints and their signing secrets.

CREATE TABLE endpoints (
    seq              INTEGER PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    org_id           TEXT NOT NULL REFERENCES organizations(id),
    url              TEXT NOT NULL,
    event_types      TEXT NOT NULL,          -- JSON array of event type names
    description      TEXT NOT NULL,
    status           TEXT NOT NULL,          -- enabled | disabled
    disabled_reason  TEXT,
    failing_since    INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    deleted_at       INTEGER
);
CREATE INDEX endpoints_live_list ON endpoints(org_id, seq) WHERE deleted_at IS NULL;

-- The current secret has expires_at NULL; a rotated-out one signs until expires_at.
CREATE TABLE endpoint_secrets (
    endpoint_id  TEXT NOT NULL REFERENCES endpoints(id),
    secret       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER
);
CREATE INDEX endpoint_secrets_endpoint ON endpoint_secrets(endpoint_id);
