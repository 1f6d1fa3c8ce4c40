//! Per-endpoint pacing state on SQLite (see [`crate::store::pacing`]). The rate limit is paced
//! in memory by the one process that owns the database; only the allowed concurrency is
//! stored, so that the API shows it and a restart keeps it.

use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, db_err};
use crate::domain::pacing::Signal;
use crate::store::StoreError;
use crate::store::pacing::{EndpointPolicy, apply_signals};

impl SqliteStore {
    pub async fn endpoint_policies(
        &self,
        endpoint_ids: Vec<String>,
    ) -> Result<Vec<EndpointPolicy>, StoreError> {
        self.read(move |c| {
            let mut s = c
                .prepare_cached(
                    "SELECT org_id, rate_limit, current_concurrency FROM endpoints WHERE id = ?1",
                )
                .map_err(db_err)?;
            let mut out = Vec::with_capacity(endpoint_ids.len());
            for id in endpoint_ids {
                let found = s
                    .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
                    .map_err(db_err)?;
                if let Some((org_id, rate_limit, concurrency)) = found {
                    out.push(EndpointPolicy {
                        endpoint_id: id,
                        org_id,
                        rate_limit,
                        concurrency,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn adjust_concurrency(
        &self,
        signals: Vec<(String, Vec<Signal>)>,
        bound: u32,
    ) -> Result<Vec<(String, u32)>, StoreError> {
        self.write(move |c| {
            let mut out = Vec::with_capacity(signals.len());
            for (id, signals) in signals {
                let Some(stored) = c
                    .prepare_cached("SELECT current_concurrency FROM endpoints WHERE id = ?1")
                    .and_then(|mut s| {
                        s.query_row([&id], |r| r.get::<_, Option<u32>>(0))
                            .optional()
                    })
                    .map_err(db_err)?
                else {
                    continue;
                };
                let (next, allowed) = apply_signals(stored, &signals, bound);
                if next != stored {
                    c.prepare_cached("UPDATE endpoints SET current_concurrency = ?2 WHERE id = ?1")
                        .and_then(|mut s| s.execute(params![id, next]))
                        .map_err(db_err)?;
                }
                out.push((id, allowed));
            }
            Ok(out)
        })
        .await
    }

    pub async fn reduced_endpoints(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM endpoints
                 WHERE current_concurrency IS NOT NULL AND deleted_at IS NULL",
                [],
                |r| r.get(0),
            )
            .map_err(db_err)
        })
        .await
    }
}
