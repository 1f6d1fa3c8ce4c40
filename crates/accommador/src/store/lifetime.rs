//! Data has a lifetime (DESIGN §10): the store's side of retention and erasure.
//!
//! - **Retention**: [`Store::purge_step`] removes expired events with their deliveries and
//!   attempts, oldest first, one bounded batch per call ([`PURGE_EVENTS`] events,
//!   [`PURGE_ROWS`] rows at most); the caller walks the outbox with the step's cursor, so a
//!   batch costs the same whatever the table's size. An event with a pending delivery is kept.
//! - **Erasure**: [`Store::erase_user`] deletes a live user (its `user.deleted` already in
//!   erased form) and clears the user's row; [`Store::erase_step`] then rewrites the user's
//!   stored events, fails their pending deliveries (`erased`), empties their attempts' response
//!   logs and the saved idempotent responses, a bounded batch per call, resuming where the last
//!   call stopped (the user row holds the position), so a crash loses nothing. It also marks
//!   deleted users due for automatic erasure.

use crate::domain::Timestamp;

use super::{Store, StoreError};

/// Most events one purge or erasure step looks at.
pub const PURGE_EVENTS: usize = 100;
/// Most rows (events, deliveries, attempts) one purge or erasure step writes, roughly: a step
/// stops after the event that reaches it.
pub const PURGE_ROWS: usize = 1_000;
/// The histogram of how long each purge step holds the database: SQLite's single writer (the
/// step's own work inside the group commit) or a PostgreSQL transaction with its row locks.
pub const PURGE_STEP_SECONDS: &str = "accommador_purge_step_seconds";
/// Most deleted users one step marks for automatic erasure.
pub const ERASE_MARK: usize = 1_000;

/// What one purge step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeStep {
    /// Where the next step starts (the outbox position of the last event looked at).
    pub next_after: i64,
    /// The walk reached an event that is not expired, or the end: this pass is over.
    pub done: bool,
    pub events: usize,
    pub deliveries: usize,
    pub attempts: usize,
    /// Expired events kept because a delivery of theirs is pending.
    pub kept: usize,
}

/// What one erasure step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EraseStep {
    /// Rewrote a batch of this user's events; more may follow.
    Progress {
        user_id: String,
        events: usize,
        failed_deliveries: usize,
    },
    /// Finished this user: every row of theirs is in erased form.
    Finished { user_id: String },
    /// Marked this many deleted users for automatic erasure.
    Marked(usize),
}

impl Store {
    /// One bounded batch of the retention purge: expired events after position `after` (0 to
    /// start a pass), whose `occurred_at` is more than `retention_ms` before the database's
    /// clock.
    pub async fn purge_step(&self, after: i64, retention_ms: i64) -> Result<PurgeStep, StoreError> {
        match self {
            Store::Sqlite(s) => s.purge_step(after, retention_ms).await,
            Store::Postgres(s) => s.purge_step(after, retention_ms).await,
        }
    }

    /// When the oldest stored event occurred (`None`: no event).
    pub async fn oldest_event(&self) -> Result<Option<Timestamp>, StoreError> {
        match self {
            Store::Sqlite(s) => s.oldest_event().await,
            Store::Postgres(s) => s.oldest_event().await,
        }
    }

    /// Starts erasing a user of `org` (deleted ones included): deletes a live one with a
    /// `user.deleted` event in erased form, clears the row's personal data and queues the rest
    /// for [`Store::erase_step`]. `NotFound` for an unknown user.
    pub async fn erase_user(&self, org: String, id: String) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.erase_user(org, id).await,
            Store::Postgres(s) => s.erase_user(org, id).await,
        }
    }

    /// One bounded batch of erasure work; `None` when nothing is left. Users deleted before
    /// `erase_deleted_before` are marked for erasure when no erasure is running.
    pub async fn erase_step(
        &self,
        erase_deleted_before: Option<Timestamp>,
    ) -> Result<Option<EraseStep>, StoreError> {
        match self {
            Store::Sqlite(s) => s.erase_step(erase_deleted_before).await,
            Store::Postgres(s) => s.erase_step(erase_deleted_before).await,
        }
    }

    /// After an erasure: make sure no old copy of an erased value is left in the database's
    /// files. On SQLite, checkpoints the write-ahead log and truncates it (freed pages are
    /// already zeroed by `secure_delete`); `false` if a reader kept it from finishing (try
    /// again later). On PostgreSQL old row versions are not readable and go with (auto)vacuum.
    pub async fn scrub_files(&self) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.checkpoint_truncate().await,
            Store::Postgres(_) => Ok(true),
        }
    }
}
