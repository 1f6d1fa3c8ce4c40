//! What the delivery-log UI reads about its endpoints' health (issue 13), each at a cost that
//! does not grow with the deliveries:
//!
//! - Rollup counters: how many deliveries ended, succeeded or failed, per endpoint per hour.
//!   They are added as deliveries end (an attempt recorded, a bulk failure on disable or
//!   delete, an erasure), on SQLite by a trigger on the one writer, on PostgreSQL by the
//!   statements that end them, so the overview of an organization with millions of
//!   deliveries reads at most 25 rows per endpoint, never a `COUNT(*)`. They are kept
//!   [`ROLLUP_KEEP_MS`] (the UI purge removes older ones) and hold no personal data.
//! - The due backlog: one bounded walk of the pending index per endpoint.
//! - The last error of an endpoint ([`LastError`]): a walk of at most [`LAST_ERROR_WALK`]
//!   entries of the partial index `deliveries_endpoint_failing` (SQLite migration 0017,
//!   PostgreSQL 0019), which holds only the deliveries whose latest attempt failed. It is
//!   read, not kept: the recording path writes nothing for it, and a delivery that succeeds
//!   at once never enters that index.

use super::keys::both;
use super::{Store, StoreError};
use crate::domain::Timestamp;
use crate::domain::delivery::ErrorClass;

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

/// How many of an endpoint's newest failing deliveries (by their last change) the last-error
/// walk reads at most.
pub const LAST_ERROR_WALK: usize = 20;

/// The latest failed attempt among an endpoint's deliveries that have not succeeded since.
///
/// Found among the [`LAST_ERROR_WALK`] failing deliveries changed last, taking each one's
/// latest two attempts. A failure that a later success made good is not an error any more. A
/// delivery ended without being sent (`endpoint_disabled`, `erased`) counts only when none of
/// those deliveries has a failure that was sent, so a disabled endpoint shows the failure that
/// disabled it unless more than [`LAST_ERROR_WALK`] deliveries were failed with it. A
/// delivery's last change is never earlier than its latest attempt, so the answer is the
/// latest failure, unless more than [`LAST_ERROR_WALK`] deliveries were re-queued (`recover`,
/// manual retries) after it and have not been attempted yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    pub endpoint_id: String,
    pub delivery_id: String,
    /// The attempt's number within its delivery.
    pub number: u32,
    pub started_at: Timestamp,
    pub status_code: Option<u16>,
    pub error_class: Option<ErrorClass>,
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

    /// The last error ([`LastError`]) of each of the organization's `endpoints` that has one;
    /// another organization's endpoint has none.
    pub async fn last_errors(
        &self,
        org: String,
        endpoints: Vec<String>,
    ) -> Result<Vec<LastError>, StoreError> {
        if endpoints.is_empty() {
            return Ok(Vec::new());
        }
        both!(self, s => s.last_errors(org, endpoints).await)
    }
}

/// The last-error walk of one endpoint in SQL both backends run, for the endpoint `$endpoint`
/// of organization `$org`, walking at most `$walk` index entries. Its `WHERE` repeats the
/// predicate of `deliveries_endpoint_failing` word for word, so the planners use that index.
pub(super) fn last_error_sql(endpoint: &str, org: &str, walk: &str) -> String {
    format!(
        "SELECT a.delivery_id, a.number, a.started_at, a.status_code, a.error_class
         FROM (SELECT id, attempt_count FROM deliveries
               WHERE endpoint_id = {endpoint} AND attempt_count > 0
                 AND (last_status_code IS NULL OR last_status_code NOT BETWEEN 200 AND 299)
                 AND org_id = {org}
               ORDER BY updated_at DESC LIMIT {walk}) AS d
         JOIN attempts a ON a.delivery_id = d.id
          AND a.number BETWEEN d.attempt_count - 1 AND d.attempt_count
         WHERE a.error_class IS NOT NULL OR a.status_code IS NULL
            OR a.status_code NOT BETWEEN 200 AND 299
         ORDER BY CASE WHEN a.error_class IN ('endpoint_disabled', 'erased') THEN 1 ELSE 0 END,
                  a.started_at DESC, a.number DESC
         LIMIT 1"
    )
}
