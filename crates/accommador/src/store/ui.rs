//! The delivery-log UI's durable state (DESIGN §10): browser sessions and one-time portal
//! links, both found by the SHA-256 of their token ([`crate::domain::ui::token_id`]).
//!
//! A session is only valid while its key is live, its organization is not deleted and it has
//! not expired: every lookup joins the key, so revoking a key ends its sessions on every
//! instance at the next request, with no cache to invalidate.

use super::keys::both;
use super::{Store, StoreError};
use crate::domain::Timestamp;

/// Most expired rows one [`Store::purge_ui`] step removes per table.
pub const UI_PURGE_BATCH: usize = 1000;

/// A session or portal link to store.
#[derive(Debug, Clone)]
pub struct NewGrant {
    /// [`crate::domain::ui::token_id`] of the token.
    pub id: String,
    pub org: String,
    pub key_id: String,
    pub read_only: bool,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub org: String,
    pub key_id: String,
    pub read_only: bool,
    /// Opened through a portal link: never creates keys or links, never shows a secret.
    pub portal: bool,
    pub expires_at: Timestamp,
}

impl Store {
    /// Stores a session made by signing in with a key.
    pub async fn create_session(&self, session: NewGrant) -> Result<(), StoreError> {
        both!(self, s => s.create_session(session).await)
    }

    /// The session with this ID if it is live at `now` (not expired, its key not revoked, its
    /// organization not deleted).
    pub async fn find_session(
        &self,
        id: String,
        now: Timestamp,
    ) -> Result<Option<SessionRecord>, StoreError> {
        both!(self, s => s.find_session(id, now).await)
    }

    pub async fn delete_session(&self, id: String) -> Result<(), StoreError> {
        both!(self, s => s.delete_session(id).await)
    }

    /// Stores a portal link (for a live organization; `NotFound` otherwise).
    pub async fn create_portal_link(&self, link: NewGrant) -> Result<(), StoreError> {
        both!(self, s => s.create_portal_link(link).await)
    }

    /// Whether the link is unused, unexpired and its key still live (the "Continue" page).
    pub async fn portal_link_usable(&self, id: String, now: Timestamp) -> Result<bool, StoreError> {
        both!(self, s => s.portal_link_usable(id, now).await)
    }

    /// Uses the link once: marks it used and creates a portal session (ID `session_id`,
    /// expiring at `session_expires`) in one transaction. `None` when the link is unknown,
    /// used, expired or its key revoked; of two concurrent uses exactly one succeeds.
    pub async fn consume_portal_link(
        &self,
        id: String,
        now: Timestamp,
        session_id: String,
        session_expires: Timestamp,
    ) -> Result<Option<SessionRecord>, StoreError> {
        both!(self, s => s.consume_portal_link(id, now, session_id, session_expires).await)
    }

    /// Removes at most [`UI_PURGE_BATCH`] expired sessions, as many expired or used links and
    /// as many rollup counters older than [`super::rollups::ROLLUP_KEEP_MS`]; returns how many
    /// rows went.
    pub async fn purge_ui(&self, now: Timestamp) -> Result<usize, StoreError> {
        both!(self, s => s.purge_ui(now).await)
    }
}
