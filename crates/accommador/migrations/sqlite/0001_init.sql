-- Core schema: organizations, API keys, users with tombstones, the event outbox and
-- idempotency records. Timestamps are integer milliseconds since the Unix epoch (UTC).

CREATE TABLE organizations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organizations(id),
    lookup      TEXT NOT NULL,
    hash        BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX api_keys_lookup ON api_keys(lookup) WHERE revoked_at IS NULL;

CREATE TABLE users (
    seq          INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    org_id       TEXT NOT NULL REFERENCES organizations(id),
    email        TEXT NOT NULL,
    email_lower  TEXT NOT NULL,
    name         TEXT,
    attributes   TEXT NOT NULL,
    version      INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    deleted_at   INTEGER
);
-- Email is unique per organization, case-insensitively, among live users.
CREATE UNIQUE INDEX users_live_email ON users(org_id, email_lower) WHERE deleted_at IS NULL;
CREATE INDEX users_live_list ON users(org_id, seq) WHERE deleted_at IS NULL;

-- The outbox. seq is the commit order: SQLite has one writer, so a larger seq always
-- committed later, and a reader following `seq > cursor` never skips an event.
CREATE TABLE events (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT NOT NULL UNIQUE,
    org_id        TEXT NOT NULL REFERENCES organizations(id),
    type          TEXT NOT NULL,
    user_id       TEXT,
    user_version  INTEGER,
    occurred_at   INTEGER NOT NULL,
    payload       TEXT NOT NULL
);
CREATE INDEX events_org_seq ON events(org_id, seq);
CREATE INDEX events_org_type_seq ON events(org_id, type, seq);

CREATE TABLE idempotency_keys (
    org_id        TEXT NOT NULL,
    key           TEXT NOT NULL,
    fingerprint   BLOB NOT NULL,
    status        INTEGER NOT NULL,
    body          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (org_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys(created_at);
