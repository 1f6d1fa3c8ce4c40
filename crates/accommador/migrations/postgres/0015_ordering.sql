-- Per-user ordering (DESIGN §10, issue 16). An endpoint with ordering 'per_user' receives one
-- user's events in commit order: a delivery waits while an earlier one (lower event_seq; one
-- user's changes are serialised, so that is their commit order) of the same user to the same
-- endpoint is pending, leased ones included.
--
-- Leasing checks that rule on every row it takes (through deliveries_user_pending), so it
-- holds across instances whatever the rows say. To keep leasing from walking over the
-- deliveries that wait, a delivery that waits has no next_attempt_at: it is outside the due
-- range of deliveries_endpoint_due. The two triggers keep that mark, whatever code path
-- creates or ends a delivery.
ALTER TABLE endpoints ADD COLUMN ordering text NOT NULL DEFAULT 'none';

-- Set when a manual retry or `recover` brings back a delivery that a later one of the same
-- user already overtook; copied onto each of its attempts.
ALTER TABLE deliveries ADD COLUMN out_of_order boolean NOT NULL DEFAULT false;
ALTER TABLE attempts ADD COLUMN out_of_order boolean NOT NULL DEFAULT false;

CREATE INDEX deliveries_user_pending ON deliveries(endpoint_id, user_id, event_seq)
    WHERE status = 'pending' AND user_id IS NOT NULL;

-- A new delivery of an ordered endpoint waits when an earlier one of its user is pending.
-- That earlier row is share-locked until this transaction ends: a recording that ends it
-- either commits first (and this check no longer finds it) or waits for this insert to
-- commit (and then releases this row). Without the lock, each could miss the other and
-- leave this delivery waiting for good. Rows inserted earlier by the same statement are
-- visible here (a row-level BEFORE trigger sees them).
CREATE FUNCTION accommador_ordered_wait() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM endpoints WHERE id = NEW.endpoint_id AND ordering = 'per_user')
    THEN
        PERFORM 1 FROM deliveries p
        WHERE p.endpoint_id = NEW.endpoint_id AND p.user_id = NEW.user_id
          AND p.status = 'pending' AND p.user_id IS NOT NULL AND p.event_seq < NEW.event_seq
        ORDER BY p.event_seq DESC LIMIT 1
        FOR SHARE;
        IF FOUND THEN
            NEW.next_attempt_at := NULL;
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER deliveries_ordered_wait BEFORE INSERT ON deliveries
    FOR EACH ROW WHEN (NEW.status = 'pending' AND NEW.user_id IS NOT NULL)
    EXECUTE FUNCTION accommador_ordered_wait();

-- A delivery that leaves 'pending' releases the next one of its user (due at once).
CREATE FUNCTION accommador_ordered_release() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE deliveries SET next_attempt_at = accommador_now_ms()
    WHERE seq = (SELECT seq FROM deliveries
                 WHERE endpoint_id = NEW.endpoint_id AND user_id = NEW.user_id
                   AND status = 'pending' AND user_id IS NOT NULL
                 ORDER BY event_seq LIMIT 1)
      AND status = 'pending' AND next_attempt_at IS NULL;
    RETURN NULL;
END
$$;

CREATE TRIGGER deliveries_ordered_release AFTER UPDATE OF status ON deliveries
    FOR EACH ROW
    WHEN (OLD.status = 'pending' AND NEW.status <> 'pending' AND NEW.user_id IS NOT NULL)
    EXECUTE FUNCTION accommador_ordered_release();
