-- Per-user ordering (DESIGN §10, issue 16). An endpoint with ordering 'per_user' receives one
-- user's events in commit order: a delivery waits while an earlier one (lower event_seq) of
-- the same user to the same endpoint is pending.
--
-- The due-delivery selection checks that rule on every row it hands out (through
-- deliveries_user_pending), so it holds whatever the rows say. To keep the selection from
-- walking over the deliveries that wait (a user whose receiver keeps failing may have
-- thousands), a delivery that waits has no next_attempt_at: it is outside the due range of
-- deliveries_endpoint_due. The two triggers keep that mark: one sets it when a delivery is
-- created behind an earlier pending one, the other clears it on the next delivery of the
-- user when one leaves 'pending' (succeeded, failed by its schedule, cancelled, erased),
-- whatever code path made it leave.
ALTER TABLE endpoints ADD COLUMN ordering TEXT NOT NULL DEFAULT 'none';

-- Set when a manual retry or `recover` brings back a delivery that a later one of the same
-- user already overtook; copied onto each of its attempts.
ALTER TABLE deliveries ADD COLUMN out_of_order INTEGER NOT NULL DEFAULT 0;
ALTER TABLE attempts ADD COLUMN out_of_order INTEGER NOT NULL DEFAULT 0;

CREATE INDEX deliveries_user_pending ON deliveries(endpoint_id, user_id, event_seq)
    WHERE status = 'pending' AND user_id IS NOT NULL;

CREATE TRIGGER deliveries_ordered_wait AFTER INSERT ON deliveries
WHEN NEW.status = 'pending' AND NEW.user_id IS NOT NULL
  AND (SELECT ordering FROM endpoints WHERE id = NEW.endpoint_id) = 'per_user'
  AND EXISTS (SELECT 1 FROM deliveries p
              WHERE p.endpoint_id = NEW.endpoint_id AND p.user_id = NEW.user_id
                AND p.status = 'pending' AND p.user_id IS NOT NULL
                AND p.event_seq < NEW.event_seq)
BEGIN
    UPDATE deliveries SET next_attempt_at = NULL WHERE seq = NEW.seq;
END;

CREATE TRIGGER deliveries_ordered_release AFTER UPDATE OF status ON deliveries
WHEN OLD.status = 'pending' AND NEW.status <> 'pending' AND NEW.user_id IS NOT NULL
BEGIN
    UPDATE deliveries SET next_attempt_at = NEW.updated_at
    WHERE seq = (SELECT seq FROM deliveries
                 WHERE endpoint_id = NEW.endpoint_id AND user_id = NEW.user_id
                   AND status = 'pending' AND user_id IS NOT NULL
                 ORDER BY event_seq LIMIT 1)
      AND next_attempt_at IS NULL;
END;
