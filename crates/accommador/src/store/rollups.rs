//! Rollup counters for the delivery-log UI's overview (issue 13): how many deliveries ended,
//! succeeded or failed, per endpoint per hour. They are added as deliveries end (an attempt
//! recorded, a bulk failure on disable or delete, an erasure), on SQLite by a trigger on the one
//! writer, on PostgreSQL by the statements that end them, so the overview of an organization
//! with millions of deliveries reads at most 25 rows per endpoint, never a `COUNT(*)`. They are
//! kept [`ROLLUP_KEEP_MS`] (the UI purge removes older ones) and hold no personal data.

use super::keys::both;
use super::{Store, StoreError};
use crate::domain::Timestamp;

/// One hour.
pub const HOUR_MS: i64 = 3_600_000;

/// How long counters are kept: the overview shows the last day, with a margin.
pub const ROLLUP_KEEP_MS: i64 = 8 * 24 * HOUR_MS;

/// The start of the hour `at` falls in: the counter it adds to.
pub fn hour_of(at: Timestamp) -> i64 {
    at.millis().div_euclid(HOUR_MS) * HOUR_MS
}

/// Deliveries of one endpoint that ended in one hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourCount {
    pub endpoint_id: String,
    /// The start of the hour.
    pub hour: Timestamp,
    pub succeeded: u64,
    pub failed: u64,
}

/// Deliveries that are due now and waiting for an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueBacklog {
    /// How many (at most the cap asked for).
    pub due: usize,
    /// More than the cap are due.
    pub more: bool,
    /// The earliest due time among them: how long the oldest has waited.
    pub due_since: Option<Timestamp>,
}

impl Store {
    /// The organization's counters from the hour `since` falls in onwards, oldest first.
    pub async fn delivery_hours(
        &self,
        org: String,
        since: Timestamp,
    ) -> Result<Vec<HourCount>, StoreError> {
        both!(self, s => s.delivery_hours(org, since).await)
    }

    /// The organization's due backlog, counted up to `cap`: an index walk per endpoint.
    pub async fn due_backlog(
        &self,
        org: String,
        now: Timestamp,
        cap: usize,
    ) -> Result<DueBacklog, StoreError> {
        both!(self, s => s.due_backlog(org, now, cap).await)
    }
}
