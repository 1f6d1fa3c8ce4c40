-- Accommador on PostgreSQL: the whole schema. Timestamps are bigint milliseconds since the
-- Unix epoch (UTC), as on SQLite, so both backends render them identically.

CREATE TABLE organizations (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    created_at  bigint NOT NULL
);

CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    org_id      text NOT NULL REFERENCES organizations(id),
    lookup      text NOT NULL,
    hash        bytea NOT NULL,
    created_at  bigint NOT NULL,
    revoked_at  bigint
);
CREATE INDEX api_keys_lookup ON api_keys(lookup) WHERE revoked_at IS NULL;

CREATE TABLE users (
    seq          bigserial PRIMARY KEY,
    id           text NOT NULL UNIQUE,
    org_id       text NOT NULL REFERENCES organizations(id),
    email        text NOT NULL,
    email_lower  text NOT NULL,
    name         text,
    attributes   text NOT NULL,
    version      bigint NOT NULL,
    created_at   bigint NOT NULL,
    updated_at   bigint NOT NULL,
    deleted_at   bigint
);
CREATE UNIQUE INDEX users_live_email ON users(org_id, email_lower) WHERE deleted_at IS NULL;
CREATE INDEX users_live_list ON users(org_id, seq) WHERE deleted_at IS NULL;

-- The outbox. seq is taken before commit, so it is not commit order; readers order by the
-- writing transaction (xid, then seq) and only read below the oldest transaction still in
-- progress, so an event that commits late can never sort before one already read.
CREATE TABLE events (
    seq           bigserial PRIMARY KEY,
    xid           xid8 NOT NULL DEFAULT pg_current_xact_id(),
    id            text NOT NULL UNIQUE,
    org_id        text NOT NULL REFERENCES organizations(id),
    type          text NOT NULL,
    user_id       text,
    user_version  bigint,
    occurred_at   bigint NOT NULL,
    payload       text NOT NULL
);
CREATE INDEX events_org_order ON events(org_id, xid, seq);
CREATE INDEX events_org_type_order ON events(org_id, type, xid, seq);
CREATE INDEX events_order ON events(xid, seq);

CREATE TABLE idempotency_keys (
    org_id       text NOT NULL,
    key          text NOT NULL,
    fingerprint  bytea NOT NULL,
    status       integer NOT NULL,
    body         text NOT NULL,
    created_at   bigint NOT NULL,
    PRIMARY KEY (org_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys(created_at);

CREATE TABLE endpoints (
    seq               bigserial PRIMARY KEY,
    id                text NOT NULL UNIQUE,
    org_id            text NOT NULL REFERENCES organizations(id),
    url               text NOT NULL,
    event_types       text NOT NULL,
    description       text NOT NULL,
    status            text NOT NULL,
    disabled_reason   text,
    failing_since     bigint,
    created_at        bigint NOT NULL,
    updated_at        bigint NOT NULL,
    deleted_at        bigint,
    -- Events visible to this snapshot committed before the endpoint existed: not its own.
    created_snapshot  pg_snapshot NOT NULL DEFAULT pg_current_snapshot()
);
CREATE INDEX endpoints_live_list ON endpoints(org_id, seq) WHERE deleted_at IS NULL;

CREATE TABLE endpoint_secrets (
    endpoint_id  text NOT NULL REFERENCES endpoints(id),
    secret       text NOT NULL,
    created_at   bigint NOT NULL,
    expires_at   bigint
);
CREATE INDEX endpoint_secrets_endpoint ON endpoint_secrets(endpoint_id);

CREATE TABLE deliveries (
    seq               bigserial PRIMARY KEY,
    id                text NOT NULL UNIQUE,
    org_id            text NOT NULL,
    event_seq         bigint NOT NULL REFERENCES events(seq),
    event_id          text NOT NULL,
    event_type        text NOT NULL,
    endpoint_id       text NOT NULL REFERENCES endpoints(id),
    status            text NOT NULL,
    attempt_count     integer NOT NULL DEFAULT 0,
    retries_used      integer NOT NULL DEFAULT 0,
    next_attempt_at   bigint,
    manual            boolean NOT NULL DEFAULT false,
    resume_at         bigint,
    last_status_code  integer,
    created_at        bigint NOT NULL,
    updated_at        bigint NOT NULL,
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX deliveries_endpoint_due ON deliveries(endpoint_id, next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX deliveries_due ON deliveries(next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_org_list ON deliveries(org_id, seq);
CREATE INDEX deliveries_endpoint_list ON deliveries(endpoint_id, seq);
CREATE INDEX deliveries_event ON deliveries(event_id);

CREATE TABLE attempts (
    delivery_id       text NOT NULL,
    number            integer NOT NULL,
    trigger           text NOT NULL,
    started_at        bigint NOT NULL,
    duration_ms       bigint NOT NULL,
    status_code       integer,
    error_class       text,
    error             text,
    response_headers  text NOT NULL,
    response_body     text NOT NULL,
    PRIMARY KEY (delivery_id, number)
);

CREATE TABLE fanout_cursor (
    id        integer PRIMARY KEY CHECK (id = 1),
    last_xid  xid8 NOT NULL,
    last_seq  bigint NOT NULL
);
INSERT INTO fanout_cursor (id, last_xid, last_seq) VALUES (1, '0'::xid8, 0);
