-- Deliveries (one per event x endpoint), their attempts (the delivery log) and the fan-out
-- cursor over the events outbox.

-- Events after this seq committed after the endpoint was created: only those are its to get.
ALTER TABLE endpoints ADD COLUMN after_event_seq INTEGER NOT NULL DEFAULT 0;

CREATE TABLE deliveries (
    seq               INTEGER PRIMARY KEY,
    id                TEXT NOT NULL UNIQUE,
    org_id            TEXT NOT NULL,
    event_seq         INTEGER NOT NULL REFERENCES events(seq),
    event_id          TEXT NOT NULL,
    event_type        TEXT NOT NULL,
    endpoint_id       TEXT NOT NULL REFERENCES endpoints(id),
    status            TEXT NOT NULL,               -- pending | succeeded | failed
    attempt_count     INTEGER NOT NULL DEFAULT 0,
    retries_used      INTEGER NOT NULL DEFAULT 0,  -- scheduled retries spent
    next_attempt_at   INTEGER,                     -- set while pending
    manual            INTEGER NOT NULL DEFAULT 0,  -- the next attempt is a manual one
    resume_at         INTEGER,                     -- schedule a manual attempt interrupted
    last_status_code  INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    UNIQUE (event_id, endpoint_id)
);
-- The dispatcher's hot path: due work of one endpoint, earliest first.
CREATE INDEX deliveries_endpoint_due ON deliveries(endpoint_id, next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX deliveries_due ON deliveries(next_attempt_at) WHERE status = 'pending';
-- The delivery log's filters.
CREATE INDEX deliveries_org_list ON deliveries(org_id, seq);
CREATE INDEX deliveries_endpoint_list ON deliveries(endpoint_id, seq);
CREATE INDEX deliveries_event ON deliveries(event_id);

CREATE TABLE attempts (
    delivery_id       TEXT NOT NULL,
    number            INTEGER NOT NULL,
    trigger           TEXT NOT NULL,               -- scheduled | manual
    started_at        INTEGER NOT NULL,
    duration_ms       INTEGER NOT NULL,
    status_code       INTEGER,
    error_class       TEXT,
    error             TEXT,
    response_headers  TEXT NOT NULL,               -- JSON object
    response_body     TEXT NOT NULL,               -- first 4 KiB
    PRIMARY KEY (delivery_id, number)
);

CREATE TABLE fanout_cursor (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq  INTEGER NOT NULL
);
INSERT INTO fanout_cursor (id, last_seq) SELECT 1, COALESCE(MAX(seq), 0) FROM events;
