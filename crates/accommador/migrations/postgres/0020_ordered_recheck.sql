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
-- locking anything and notes it in ordered_recheck, in the same transaction. The recheck
-- (store/postgres/deliveries.rs, `recheck_ordered`) runs after each commit that noted any and
-- every few seconds on every instance, so a note left by a process that died between its
-- commit and its recheck is taken up by another; a note is deleted in the transaction that
-- checked it. Every other path that creates or revives a delivery (recover, a manual retry)
-- keeps the share lock.
--
-- Why the recheck is enough: a release that missed the new delivery ran before the insert
-- committed, in a transaction that holds the row lock of the delivery it ended until it
-- commits. The recheck, after the insert committed, share-locks the user's earliest pending
-- delivery before the waiting one, which waits for such a transaction, and then releases the
-- waiting delivery if nothing before it is pending any more.
CREATE TABLE ordered_recheck (
    delivery_seq bigint PRIMARY KEY
);

CREATE OR REPLACE FUNCTION accommador_ordered_wait() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM endpoints WHERE id = NEW.endpoint_id AND ordering = 'per_user')
    THEN
        IF current_setting('accommador.ordered_recheck', true) = 'on' THEN
            PERFORM 1 FROM deliveries p
            WHERE p.endpoint_id = NEW.endpoint_id AND p.user_id = NEW.user_id
              AND p.status = 'pending' AND p.user_id IS NOT NULL
              AND p.event_seq < NEW.event_seq
            LIMIT 1;
            IF FOUND THEN
                NEW.next_attempt_at := NULL;
                INSERT INTO ordered_recheck (delivery_seq) VALUES (NEW.seq);
            END IF;
        ELSE
            PERFORM 1 FROM deliveries p
            WHERE p.endpoint_id = NEW.endpoint_id AND p.user_id = NEW.user_id
              AND p.status = 'pending' AND p.user_id IS NOT NULL
              AND p.event_seq < NEW.event_seq
            ORDER BY p.event_seq DESC LIMIT 1
            FOR SHARE;
            IF FOUND THEN
                NEW.next_attempt_at := NULL;
            END IF;
        END IF;
    END IF;
    RETURN NEW;
END
$$;
