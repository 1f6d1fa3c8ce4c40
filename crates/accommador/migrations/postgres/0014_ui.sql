-- The delivery-log UI (DESIGN §10): browser sessions and one-time portal links. Both are
-- found by the SHA-256 (hex) of their secret token; the token itself is never stored.
CREATE TABLE ui_sessions (
    id          text PRIMARY KEY,
    org_id      text NOT NULL,
    -- The key that signed in (or made the portal link): revoking it ends the session.
    key_id      text NOT NULL,
    read_only   boolean NOT NULL,
    portal      boolean NOT NULL,
    created_at  bigint NOT NULL,
    expires_at  bigint NOT NULL
);
CREATE INDEX ui_sessions_org ON ui_sessions(org_id);
CREATE INDEX ui_sessions_expiry ON ui_sessions(expires_at);

CREATE TABLE portal_links (
    id          text PRIMARY KEY,
    org_id      text NOT NULL,
    key_id      text NOT NULL,
    read_only   boolean NOT NULL,
    created_at  bigint NOT NULL,
    expires_at  bigint NOT NULL,
    used_at     bigint
);
CREATE INDEX portal_links_org ON portal_links(org_id);
CREATE INDEX portal_links_expiry ON portal_links(expires_at);
