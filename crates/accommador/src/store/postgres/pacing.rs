//! Per-endpoint pacing state on PostgreSQL, shared by every instance (see
//! [`crate::store::pacing`]):
//!
//! - **Rate limit**: the endpoint row's `rate_tat_us` (GCRA's theoretical arrival time, by the
//!   database clock). An instance reserves the sends it holds by moving it forward in one
//!   statement under the row lock, and learns how long until the first may start. Since every
//!   instance's sends are placed on the one timeline, the limit holds across instances; the
//!   delay (not a clock reading) is returned, so instances' clocks may differ.
//! - **Adaptive concurrency**: the row's `current_concurrency` (`NULL`: at the bound), changed
//!   under the row lock by whichever instance saw the answer; every instance reads it with the
//!   endpoint's policies and leases within it.

use super::cached::Cached;
use super::{PgStore, pg_err};
use crate::domain::pacing::Signal;
use crate::store::StoreError;
use crate::store::pacing::{EndpointPolicy, Reservation, apply_signals};

/// Reserves `$2[i]` sends for endpoint `$1[i]` under its rate limit. The rows are locked in
/// ID order (two instances reserving for the same endpoints never deadlock), and a row's
/// arrival time is read after its lock is granted (`FOR UPDATE` re-reads the newest version).
const RESERVE: &str = "WITH clock AS MATERIALIZED (SELECT accommador_now_us() AS t),
     locked AS (
         SELECT e.id, r.n, (999999 + e.rate_limit::int8) / e.rate_limit AS step,
                GREATEST(e.rate_tat_us, (SELECT t FROM clock)) AS first
         FROM endpoints e JOIN UNNEST($1::text[], $2::int8[]) AS r(id, n) ON r.id = e.id
         WHERE e.rate_limit IS NOT NULL
         ORDER BY e.id
         FOR UPDATE OF e)
     UPDATE endpoints e SET rate_tat_us = l.first + l.step * l.n
     FROM locked l WHERE e.id = l.id
     RETURNING e.id, l.first - (SELECT t FROM clock), l.step";

impl PgStore {
    pub async fn endpoint_policies(
        &self,
        endpoint_ids: Vec<String>,
    ) -> Result<Vec<EndpointPolicy>, StoreError> {
        let client = self.background_client().await?;
        let rows = client
            .fetch(
                "SELECT id, org_id, rate_limit, current_concurrency FROM endpoints
                 WHERE id = ANY($1)",
                &[&endpoint_ids],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows
            .iter()
            .map(|r| EndpointPolicy {
                endpoint_id: r.get(0),
                org_id: r.get(1),
                rate_limit: r.get::<_, Option<i32>>(2).map(|n| n.max(1) as u32),
                concurrency: r.get::<_, Option<i32>>(3).map(|n| n.max(1) as u32),
            })
            .collect())
    }

    /// Reserves sends under the endpoints' rate limits: `(endpoint, count)` each. Endpoints
    /// without a limit (any more) are left out of the answer: their sends need not wait.
    pub async fn reserve_sends(
        &self,
        wanted: Vec<(String, u32)>,
    ) -> Result<Vec<(String, Reservation)>, StoreError> {
        let (ids, counts): (Vec<String>, Vec<i64>) =
            wanted.into_iter().map(|(id, n)| (id, i64::from(n))).unzip();
        let client = self.background_client().await?;
        let rows = client
            .fetch(RESERVE, &[&ids, &counts])
            .await
            .map_err(pg_err)?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    Reservation {
                        first_in_us: r.get::<_, i64>(1).max(0),
                        interval_us: r.get(2),
                    },
                )
            })
            .collect())
    }

    pub async fn adjust_concurrency(
        &self,
        mut signals: Vec<(String, Vec<Signal>)>,
        bound: u32,
    ) -> Result<Vec<(String, u32)>, StoreError> {
        // One lock order for every instance.
        signals.sort_by(|a, b| a.0.cmp(&b.0));
        let ids: Vec<&str> = signals.iter().map(|(id, _)| id.as_str()).collect();
        let mut client = self.background_client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let rows = tx
            .fetch(
                "SELECT id, current_concurrency FROM endpoints WHERE id = ANY($1)
                 ORDER BY id FOR UPDATE",
                &[&ids],
            )
            .await
            .map_err(pg_err)?;
        let stored: std::collections::HashMap<String, Option<i32>> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let (mut changed_ids, mut changed_to, mut out) = (Vec::new(), Vec::new(), Vec::new());
        for (id, signals) in signals {
            let Some(before) = stored.get(&id) else {
                continue;
            };
            let before = before.map(|n| n.max(1) as u32);
            let (next, allowed) = apply_signals(before, &signals, bound);
            if next != before {
                changed_ids.push(id.clone());
                changed_to.push(next.map(|n| n as i32));
            }
            out.push((id, allowed));
        }
        if !changed_ids.is_empty() {
            tx.run(
                "UPDATE endpoints e SET current_concurrency = v.c
                 FROM UNNEST($1::text[], $2::int4[]) AS v(id, c) WHERE e.id = v.id",
                &[&changed_ids, &changed_to],
            )
            .await
            .map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(out)
    }

    pub async fn reduced_endpoints(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .fetch_one(
                "SELECT COUNT(*) FROM endpoints
                 WHERE current_concurrency IS NOT NULL AND deleted_at IS NULL",
                &[],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }
}
