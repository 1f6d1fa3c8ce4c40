-- Commit order for the events cursor: a number given to each event after its transaction
-- committed, by one sequencer at a time (the event_sequencer row lock). Readers follow
-- commit_seq, so an event that commits late gets a larger number than everything already
-- readable and is never skipped. (Reading below the oldest running transaction would also be
-- safe, but any long write transaction anywhere in the cluster, e.g. CREATE DATABASE, would
-- hold every reader back.)
ALTER TABLE events ADD COLUMN commit_seq bigint;
CREATE SEQUENCE events_commit_seq;
CREATE UNIQUE INDEX events_commit_order ON events(commit_seq);
CREATE INDEX events_org_commit_order ON events(org_id, commit_seq);
CREATE INDEX events_org_type_commit_order ON events(org_id, type, commit_seq);
CREATE INDEX events_unsequenced ON events(seq) WHERE commit_seq IS NULL;
CREATE TABLE event_sequencer (id integer PRIMARY KEY CHECK (id = 1));
INSERT INTO event_sequencer (id) VALUES (1);
ALTER TABLE fanout_cursor ADD COLUMN last_commit_seq bigint NOT NULL DEFAULT 0;
