-- Per-user ordering without holding the recorder back (issue 16).
--
-- Until now a new delivery that waits share-locked its user's previous pending delivery until
-- the inserting transaction ended (0015). Fan-out inserts thousands of deliveries in one
-- transaction, so recording the outcome of that previous delivery (a row update) waited for
-- the whole fan-out step, and fan-out waited in turn for recorders holding the rows it wanted
-- to lock: per_user endpoints ran at about half the unordered rate.
--
-- Fan-out now says (SET LOCAL accommador.ordered_recheck = 'on') that it checks its waiting
-- deliveries again after it commits: the insert trigger marks a delivery waiting without
-- locking anything, and fan-out notes the range of delivery numbers it inserted in
-- ordered_recheck, in the same transaction (one row a step). The recheck
-- (store/postgres/deliveries.rs, `recheck_ordered`) runs after each commit that noted one and
-- every few seconds on every instance, so a note left by a process that died between its
-- commit and its recheck is taken up by another; a note is deleted in the transaction that
-- checked it. Every other path that creates or revives a delivery (recover, a manual retry)
-- keeps the share lock.
--
-- Why the recheck is enough: a release that missed the new delivery ran before the insert
-- committed, in a transaction that holds the row of the delivery it ended (locked, or
-- updated) until it commits. The recheck, after the insert committed, waits for such a
-- transaction (it share-locks the earliest pending deliveries before the waiting one that
-- are not themselves waiting and that another transaction has touched: `xmax`), and then
-- releases the waiting delivery if nothing before it is pending any more. A transaction that
-- touches them later sees the waiting delivery and releases it itself.
-- Under both: every instance sweeps the waiting deliveries, a thousand every 5 s in number
-- order, and releases those with nothing pending before them (`sweep_waiting`): a release
-- is also missed when two transactions end one user's deliveries at once (a cancel beside a
-- recording, or two deliveries a manual retry made due together, recorded by two instances),
-- each seeing the other's delivery still pending.
CREATE INDEX deliveries_waiting ON deliveries(seq)
    WHERE status = 'pending' AND next_attempt_at IS NULL;

CREATE TABLE ordered_recheck (
    id        bigserial PRIMARY KEY,
    -- The deliveries fan-out inserted in one step are numbered within this range.
    first_seq bigint NOT NULL,
    last_seq  bigint NOT NULL
);

-- Both triggers look up a user's pending deliveries to one endpoint in event order, which
-- deliveries_user_pending answers in a step. Without table statistics the planner would as
-- soon read deliveries_endpoint_due (every pending delivery of the endpoint) and sort them,
-- and keeps that plan for the connection's life: at 1,000 users on one endpoint that was
-- half a millisecond an insert, the whole cost of fan-out for per_user endpoints. With
-- sorting ruled out, only the index that is in event order answers `ORDER BY … LIMIT 1`.
-- The release reads the delivery it releases by key: `next_attempt_at IS NULL` as an index
-- condition would walk every waiting delivery's entry in deliveries_due instead.
CREATE OR REPLACE FUNCTION accommador_ordered_release() RETURNS trigger LANGUAGE plpgsql
SET enable_sort = off AS $$
BEGIN
    UPDATE deliveries SET next_attempt_at = accommador_now_ms()
    WHERE seq = (SELECT seq FROM deliveries
                 WHERE endpoint_id = NEW.endpoint_id AND user_id = NEW.user_id
                   AND status = 'pending' AND user_id IS NOT NULL
                 ORDER BY event_seq LIMIT 1)
      AND status = 'pending' AND (next_attempt_at + 0) IS NULL;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION accommador_ordered_wait() RETURNS trigger LANGUAGE plpgsql
SET enable_sort = off AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM endpoints WHERE id = NEW.endpoint_id AND ordering = 'per_user')
    THEN
        IF current_setting('accommador.ordered_recheck', true) = 'on' THEN
            PERFORM 1 FROM deliveries p
            WHERE p.endpoint_id = NEW.endpoint_id AND p.user_id = NEW.user_id
              AND p.status = 'pending' AND p.user_id IS NOT NULL
              AND p.event_seq < NEW.event_seq
            ORDER BY p.event_seq DESC LIMIT 1;  -- so that it reads deliveries_user_pending
        ELSE
            PERFORM 1 FROM deliveries p
            WHERE p.endpoint_id = NEW.endpoint_id AND p.user_id = NEW.user_id
              AND p.status = 'pending' AND p.user_id IS NOT NULL
              AND p.event_seq < NEW.event_seq
            ORDER BY p.event_seq DESC LIMIT 1
            FOR SHARE;
        END IF;
        IF FOUND THEN
            NEW.next_attempt_at := NULL;
        END IF;
    END IF;
    RETURN NEW;
END
$$;
