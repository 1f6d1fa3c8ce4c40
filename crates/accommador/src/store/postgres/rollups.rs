//! The UI's endpoint-health reads on PostgreSQL (see [`crate::store::rollups`]): the rollup
//! counters (the deliveries that ended, per endpoint per hour, added by the statements that
//! end them), the due backlog and the last errors. Each adds its counts in
//! (endpoint, hour) order, so two writers that end deliveries of the same endpoints take the
//! counter rows in the same order and never deadlock on them.

use std::collections::BTreeMap;

use super::{Cached, PgStore, pg_err};
use crate::domain::Timestamp;
use crate::domain::delivery::ErrorClass;
use crate::store::StoreError;
use crate::store::rollups::{
    DueBacklog, HourCount, LAST_ERROR_WALK, LastError, hour_of, last_error_sql,
};

/// The upsert that adds to one counter row, for statements that end deliveries: `$src` is a
/// row source with `org_id`, `endpoint_id`, `hour`, `succeeded`, `failed` columns, in
/// (endpoint_id, hour) order.
pub(super) fn add_counts_sql(src: &str) -> String {
    format!(
        "INSERT INTO delivery_rollups (org_id, endpoint_id, hour, succeeded, failed)
         SELECT org_id, endpoint_id, hour, succeeded, failed FROM {src}
         ON CONFLICT (endpoint_id, hour) DO UPDATE SET
             succeeded = delivery_rollups.succeeded + excluded.succeeded,
             failed = delivery_rollups.failed + excluded.failed"
    )
}

/// Adds the endings of a recorded batch: (endpoint, succeeded) of each delivery that left
/// `pending`, all at `now`.
pub(super) async fn add_endings(
    tx: &impl Cached,
    endings: &[(String, bool)],
    now: Timestamp,
) -> Result<(), StoreError> {
    if endings.is_empty() {
        return Ok(());
    }
    let mut by_endpoint: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for (endpoint, succeeded) in endings {
        let counts = by_endpoint.entry(endpoint.as_str()).or_default();
        if *succeeded {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }
    let endpoints: Vec<&str> = by_endpoint.keys().copied().collect();
    let succeeded: Vec<i64> = by_endpoint.values().map(|c| c.0).collect();
    let failed: Vec<i64> = by_endpoint.values().map(|c| c.1).collect();
    tx.run(
        &add_counts_sql(
            "(SELECT e.org_id, u.endpoint_id, $4::int8 AS hour, u.succeeded, u.failed
              FROM UNNEST($1::text[], $2::int8[], $3::int8[]) WITH ORDINALITY
                   AS u(endpoint_id, succeeded, failed, n)
              JOIN endpoints e ON e.id = u.endpoint_id
              ORDER BY u.n) AS counted",
        ),
        &[&endpoints, &succeeded, &failed, &hour_of(now)],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

impl PgStore {
    pub async fn delivery_hours(
        &self,
        org: String,
        since: Timestamp,
    ) -> Result<Vec<HourCount>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .fetch(
                "SELECT endpoint_id, hour, succeeded, failed FROM delivery_rollups
                 WHERE org_id = $1 AND hour >= $2 ORDER BY hour, endpoint_id",
                &[&org, &hour_of(since)],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows
            .iter()
            .map(|r| HourCount {
                endpoint_id: r.get(0),
                hour: Timestamp(r.get(1)),
                succeeded: r.get::<_, i64>(2) as u64,
                failed: r.get::<_, i64>(3) as u64,
            })
            .collect())
    }

    pub async fn due_backlog(
        &self,
        org: String,
        now: Timestamp,
        cap: usize,
    ) -> Result<DueBacklog, StoreError> {
        let client = self.client().await?;
        // Per endpoint of the organization, the pending index (endpoint_id, next_attempt_at):
        // a count bounded by `cap` and the earliest due time, each an index walk.
        let row = client
            .fetch_one(
                "SELECT
                   (SELECT count(*) FROM (
                        SELECT 1 FROM endpoints e
                        JOIN deliveries d ON d.endpoint_id = e.id
                        WHERE e.org_id = $1 AND d.status = 'pending' AND d.next_attempt_at <= $2
                        LIMIT $3) AS due),
                   (SELECT min(first.at) FROM endpoints e, LATERAL (
                        SELECT d.next_attempt_at AS at FROM deliveries d
                        WHERE d.endpoint_id = e.id AND d.status = 'pending'
                          AND d.next_attempt_at <= $2
                        ORDER BY d.next_attempt_at LIMIT 1) AS first
                    WHERE e.org_id = $1)",
                &[&org, &now.millis(), &(cap as i64 + 1)],
            )
            .await
            .map_err(pg_err)?;
        let due = row.get::<_, i64>(0) as usize;
        Ok(DueBacklog {
            due: due.min(cap),
            more: due > cap,
            due_since: row.get::<_, Option<i64>>(1).map(Timestamp),
        })
    }

    pub async fn last_errors(
        &self,
        org: String,
        endpoints: Vec<String>,
    ) -> Result<Vec<LastError>, StoreError> {
        let client = self.client().await?;
        // One round trip: the same walk per endpoint, as a lateral subquery.
        let rows = client
            .fetch(
                &format!(
                    "SELECT e.id, last.* FROM UNNEST($2::text[]) AS e(id)
                     CROSS JOIN LATERAL ({}) AS last",
                    last_error_sql("e.id", "$1", "$3")
                ),
                &[&org, &endpoints, &(LAST_ERROR_WALK as i64)],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows
            .iter()
            .map(|r| LastError {
                endpoint_id: r.get(0),
                delivery_id: r.get(1),
                number: r.get::<_, i32>(2) as u32,
                started_at: Timestamp(r.get(3)),
                status_code: r.get::<_, Option<i32>>(4).map(|c| c as u16),
                error_class: r
                    .get::<_, Option<String>>(5)
                    .as_deref()
                    .and_then(ErrorClass::parse),
            })
            .collect())
    }
}
