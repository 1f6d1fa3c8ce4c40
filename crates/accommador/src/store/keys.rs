//! API keys an organization manages, the operator's view of organizations, and the deletion of
//! an organization's data: the types, the store methods, and the one description of what
//! deleting an organization removes and in which order ([`PURGE_ORDER`]), which each backend
//! turns into its SQL.
//!
//! Deleting an organization is two steps. [`Store::mark_org_deleted`] sets `deleted_at` (one
//! row): from then on its keys do not authenticate, it is not listed, and none of its
//! deliveries is handed out or sent. [`Store::org_deletion_step`] then removes its rows, at
//! most [`PURGE_BATCH`] per transaction, and the organization row last; a crash between steps
//! leaves the mark, so the next start carries on.

use super::{Page, Store, StoreError};
use crate::domain::Timestamp;
use crate::domain::org::NewApiKey;

/// Most rows one deletion step removes (one transaction): no tenant's deletion holds the
/// SQLite writer, or PostgreSQL's locks, for longer than one such batch.
pub const PURGE_BATCH: usize = 1000;
/// Parents (deliveries, endpoints) taken per step when their children go first; their
/// children are then removed at most `PURGE_BATCH - PURGE_PARENTS` at a time.
pub const PURGE_PARENTS: usize = 100;

/// An API key as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    /// `acm_` and the key's lookup characters, shown in clear.
    pub prefix: String,
    pub created_at: Timestamp,
}

impl ApiKeyRecord {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "created_at": self.created_at.to_rfc3339(),
        })
    }
}

/// An organization as the operator lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgRecord {
    pub id: String,
    pub name: String,
    pub created_at: Timestamp,
}

impl OrgRecord {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "created_at": self.created_at.to_rfc3339(),
        })
    }
}

/// Who a presented key is: its organization and the key's ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOwner {
    pub org: String,
    pub key_id: String,
}

/// What revoking a key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// Revoked; the stored SHA-256 of the key, which is also how caches know it.
    Revoked { hash: [u8; 32] },
    /// Refused: it is the organization's last live key.
    LastKey,
}

/// What one [`Store::org_deletion_step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionStep {
    pub org_id: String,
    /// Rows removed (or endpoints retired) by this step.
    pub rows: usize,
    /// The organization row itself is gone: nothing of it is left.
    pub finished: bool,
}

/// One part of an organization's data, removed in bounded batches.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Purge {
    /// Rows of `table` with this organization, by `key` (unique within the organization).
    Rows {
        table: &'static str,
        key: &'static str,
    },
    /// Endpoints still live are marked deleted first, so fan-out makes no new deliveries for
    /// them while the deliveries are being removed.
    RetireEndpoints,
    /// Fan-out stopped part-way through an event of this organization (more than one batch
    /// of endpoints): that event is marked done, since the cursor's "part-way" would otherwise
    /// apply to the next event once this one is gone. (No new such stop can arise once its
    /// endpoints are retired.)
    FanoutCursor,
    /// Rows of `table` (by `id`, in `seq` order) with the rows of `children` that point at
    /// them through `child_key`, children first. The children have no organization column.
    WithChildren {
        table: &'static str,
        children: &'static str,
        child_key: &'static str,
    },
}

/// What deleting an organization removes, in this order (rows that point at others go before
/// them; the keys first, so nothing authenticates even without the mark), then the
/// organization row.
pub(crate) const PURGE_ORDER: &[Purge] = &[
    Purge::Rows {
        table: "api_keys",
        key: "id",
    },
    Purge::Rows {
        table: "idempotency_keys",
        key: "key",
    },
    Purge::Rows {
        table: "ui_sessions",
        key: "id",
    },
    Purge::Rows {
        table: "portal_links",
        key: "id",
    },
    Purge::RetireEndpoints,
    Purge::WithChildren {
        table: "deliveries",
        children: "attempts",
        child_key: "delivery_id",
    },
    Purge::WithChildren {
        table: "endpoints",
        children: "endpoint_secrets",
        child_key: "endpoint_id",
    },
    Purge::FanoutCursor,
    Purge::Rows {
        table: "events",
        key: "seq",
    },
    Purge::Rows {
        table: "users",
        key: "seq",
    },
];

macro_rules! both {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call,
            Store::Postgres($s) => $call,
        }
    };
}
pub(crate) use both;

impl Store {
    /// The organization a presented API key belongs to, if it is a live key of a live
    /// organization.
    pub async fn authenticate(&self, presented: String) -> Result<Option<KeyOwner>, StoreError> {
        both!(self, s => s.authenticate(presented).await)
    }

    /// A new named key for a live organization (`NotFound` for an unknown or deleted one).
    pub async fn create_api_key(
        &self,
        org: String,
        name: String,
        key: NewApiKey,
    ) -> Result<ApiKeyRecord, StoreError> {
        both!(self, s => s.create_api_key(org, name, key).await)
    }

    /// Live keys, oldest first, after the key whose ID is `after` (one of this organization's,
    /// revoked ones included, else `UnknownCursor`).
    pub async fn list_api_keys(
        &self,
        org: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<Page<ApiKeyRecord>, StoreError> {
        both!(self, s => s.list_api_keys(org, after, limit).await)
    }

    /// Revokes a live key of `org` unless it is the last one; race-free against concurrent
    /// revocations (the organization's row is locked, or SQLite's one writer runs it).
    /// `NotFound` for a key that is not a live key of `org`.
    pub async fn revoke_api_key(&self, org: String, id: String) -> Result<Revocation, StoreError> {
        both!(self, s => s.revoke_api_key(org, id).await)
    }

    /// Live organizations, oldest first, after the organization whose ID is `after`.
    pub async fn list_orgs(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Page<OrgRecord>, StoreError> {
        both!(self, s => s.list_orgs(after, limit).await)
    }

    /// Marks a live organization deleted (`NotFound` for an unknown or deleted one).
    pub async fn mark_org_deleted(&self, id: String) -> Result<(), StoreError> {
        both!(self, s => s.mark_org_deleted(id).await)
    }

    /// Removes one batch of a deleted organization's data, or, when none is left, the
    /// organization row. `None`: no organization is being deleted (or, on PostgreSQL, each one
    /// is being worked on by another instance right now).
    pub async fn org_deletion_step(&self) -> Result<Option<DeletionStep>, StoreError> {
        both!(self, s => s.org_deletion_step().await)
    }
}
