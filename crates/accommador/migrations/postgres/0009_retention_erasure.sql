-- Data has a lifetime (DESIGN §10): retention purges old events with their deliveries and
-- attempts, and erasure removes a user's personal data from every row that holds it.
-- (Deliveries already have no foreign key to events: 0005.)

-- Erasure. erased_at: when the user's personal data was removed from its row. erase_after:
-- while the erasure is running, the last event seq of the user already rewritten (0 before
-- the first); NULL when nothing is left to do.
ALTER TABLE users ADD COLUMN erased_at bigint;
ALTER TABLE users ADD COLUMN erase_after bigint;
CREATE INDEX users_erasing ON users(seq) WHERE erase_after IS NOT NULL;
CREATE INDEX users_deleted_unerased ON users(deleted_at)
    WHERE deleted_at IS NOT NULL AND erased_at IS NULL;
-- The user's events in seq order (the erasure walks them; commit_seq may still be NULL).
CREATE INDEX events_user_seq ON events(user_id, seq) WHERE user_id IS NOT NULL;

-- A saved idempotent response that shows a user (POST /v1/users) names it, so erasure finds
-- it without reading every saved response.
ALTER TABLE idempotency_keys ADD COLUMN user_id text;
UPDATE idempotency_keys SET user_id = body::jsonb ->> 'id'
WHERE (CASE WHEN body LIKE '{%' THEN body::jsonb ->> 'id' END) LIKE 'usr\_%';
CREATE INDEX idempotency_keys_user ON idempotency_keys(org_id, user_id)
    WHERE user_id IS NOT NULL;
