//! Per-endpoint pacing state (DESIGN §10 "Per-endpoint delivery policies"), as the dispatcher
//! reads and moves it: each endpoint's policies, the rate limit's reservations (PostgreSQL; on
//! SQLite the one owning process paces in memory, `delivery::pacing`), and the concurrency
//! adaptive concurrency allows. These are store functions of their own, apart from leasing,
//! so pacing never widens the leasing statements.

use super::{Store, StoreError};
use crate::domain::pacing::Signal;

/// An endpoint's delivery policies, as the dispatcher reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPolicy {
    pub endpoint_id: String,
    pub org_id: String,
    /// Deliveries per second at most (`None`: no limit).
    pub rate_limit: Option<u32>,
    /// The allowed concurrency while held below the bound (`None`: at the bound).
    pub concurrency: Option<u32>,
}

/// Sends reserved for one endpoint under its rate limit (PostgreSQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// How long from the moment of the reservation (by the database clock) until the first
    /// send may start.
    pub first_in_us: i64,
    /// Between one send and the next.
    pub interval_us: i64,
}

impl Store {
    /// The policies of these endpoints (deleted ones included; unknown ones left out).
    pub async fn endpoint_policies(
        &self,
        endpoint_ids: Vec<String>,
    ) -> Result<Vec<EndpointPolicy>, StoreError> {
        match self {
            Store::Sqlite(s) => s.endpoint_policies(endpoint_ids).await,
            Store::Postgres(s) => s.endpoint_policies(endpoint_ids).await,
        }
    }

    /// Applies each endpoint's signals, in order, to the concurrency stored for it (whoever
    /// stored it: on PostgreSQL every instance writes the same row) and returns the allowed
    /// concurrency that results, under `bound`.
    pub async fn adjust_concurrency(
        &self,
        signals: Vec<(String, Vec<Signal>)>,
        bound: u32,
    ) -> Result<Vec<(String, u32)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.adjust_concurrency(signals, bound).await,
            Store::Postgres(s) => s.adjust_concurrency(signals, bound).await,
        }
    }

    /// Live endpoints whose concurrency is held below the bound now (the `/metrics` gauge).
    pub async fn reduced_endpoints(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.reduced_endpoints().await,
            Store::Postgres(s) => s.reduced_endpoints().await,
        }
    }
}

/// The concurrency `signals` leave from `stored`, as (what to store, the allowed value).
pub(super) fn apply_signals(
    stored: Option<u32>,
    signals: &[Signal],
    bound: u32,
) -> (Option<u32>, u32) {
    use crate::domain::pacing::{adjust, effective, stored as to_stored};
    let now = signals
        .iter()
        .fold(effective(stored, bound), |c, s| adjust(c, *s, bound));
    (to_stored(now, bound), now)
}
