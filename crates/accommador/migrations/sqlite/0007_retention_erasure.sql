-- Data has a lifetime (DESIGN §10): retention purges old events with their deliveries and
-- attempts, and erasure removes a user's personal data from every row that holds it.

-- Deleting an event made SQLite check deliveries.event_seq, which has no index: a scan of all
-- deliveries per deleted event. The foreign key guards nothing that can happen (deliveries are
-- made only from an event read in the same transaction, and the purge deletes an event's
-- deliveries before the event), and PostgreSQL dropped the same one (its 0005), so the table
-- is rebuilt without foreign keys. That also saves two lookups per delivery written.
CREATE TABLE deliveries_rebuilt (
    seq               INTEGER PRIMARY KEY,
    id                TEXT NOT NULL UNIQUE,
    org_id            TEXT NOT NULL,
    event_seq         INTEGER NOT NULL,
    event_id          TEXT NOT NULL,
    event_type        TEXT NOT NULL,
    endpoint_id       TEXT NOT NULL,
    status            TEXT NOT NULL,               -- pending | succeeded | failed
    attempt_count     INTEGER NOT NULL DEFAULT 0,
    retries_used      INTEGER NOT NULL DEFAULT 0,  -- scheduled retries spent
    next_attempt_at   INTEGER,                     -- set while pending
    manual            INTEGER NOT NULL DEFAULT 0,  -- the next attempt is a manual one
    resume_at         INTEGER,                     -- schedule a manual attempt interrupted
    last_status_code  INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    user_id           TEXT,
    UNIQUE (event_id, endpoint_id)
);
INSERT INTO deliveries_rebuilt
    (seq, id, org_id, event_seq, event_id, event_type, endpoint_id, status, attempt_count,
     retries_used, next_attempt_at, manual, resume_at, last_status_code, created_at,
     updated_at, user_id)
SELECT seq, id, org_id, event_seq, event_id, event_type, endpoint_id, status, attempt_count,
       retries_used, next_attempt_at, manual, resume_at, last_status_code, created_at,
       updated_at, user_id
FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_rebuilt RENAME TO deliveries;
CREATE INDEX deliveries_endpoint_due ON deliveries(endpoint_id, next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX deliveries_due ON deliveries(next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_org_list ON deliveries(org_id, seq);
CREATE INDEX deliveries_endpoint_list ON deliveries(endpoint_id, seq);
CREATE INDEX deliveries_user_list ON deliveries(org_id, user_id, seq) WHERE user_id IS NOT NULL;
CREATE INDEX deliveries_event_list ON deliveries(event_id, seq);

-- Erasure. erased_at: when the user's personal data was removed from its row. erase_after:
-- while the erasure is running, the last event seq of the user already rewritten (0 before
-- the first); NULL when nothing is left to do.
ALTER TABLE users ADD COLUMN erased_at INTEGER;
ALTER TABLE users ADD COLUMN erase_after INTEGER;
CREATE INDEX users_erasing ON users(seq) WHERE erase_after IS NOT NULL;
-- Deleted users not erased yet, oldest deletion first (ACCOMMADOR_ERASE_DELETED_AFTER).
CREATE INDEX users_deleted_unerased ON users(deleted_at)
    WHERE deleted_at IS NOT NULL AND erased_at IS NULL;

-- A saved idempotent response that shows a user (POST /v1/users) names it, so erasure finds
-- it without reading every saved response.
ALTER TABLE idempotency_keys ADD COLUMN user_id TEXT;
UPDATE idempotency_keys SET user_id = json_extract(body, '$.id')
WHERE json_valid(body) AND json_type(body, '$.id') = 'text'
  AND json_extract(body, '$.id') LIKE 'usr\_%' ESCAPE '\';
CREATE INDEX idempotency_keys_user ON idempotency_keys(org_id, user_id)
    WHERE user_id IS NOT NULL;
