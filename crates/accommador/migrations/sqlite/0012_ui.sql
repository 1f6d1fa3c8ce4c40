-- The delivery-log UI (DESIGN §10): browser sessions and one-time portal links. Both are
-- found by the SHA-256 (hex) of their secret token; the token itself is never stored.
CREATE TABLE ui_sessions (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL,
    -- The key that signed in (or made the portal link): revoking it ends the session.
    key_id      TEXT NOT NULL,
    read_only   INTEGER NOT NULL,
    portal      INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX ui_sessions_org ON ui_sessions(org_id);
CREATE INDEX ui_sessions_expiry ON ui_sessions(expires_at);

CREATE TABLE portal_links (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    read_only   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
);
CREATE INDEX portal_links_org ON portal_links(org_id);
CREATE INDEX portal_links_expiry ON portal_links(expires_at);
