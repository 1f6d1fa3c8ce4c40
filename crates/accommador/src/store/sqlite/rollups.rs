//! The UI's endpoint-health reads on SQLite (see [`crate::store::rollups`]): the rollup
//! counters (written by the `delivery_rollups_count` trigger of migration 0015 whenever a
//! delivery leaves `pending`), the due backlog and the last errors.

use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, db_err};
use crate::domain::Timestamp;
use crate::domain::delivery::ErrorClass;
use crate::store::StoreError;
use crate::store::rollups::{
    DueBacklog, HourCount, LAST_ERROR_WALK, LastError, hour_of, last_error_sql,
};

impl SqliteStore {
    pub async fn delivery_hours(
        &self,
        org: String,
        since: Timestamp,
    ) -> Result<Vec<HourCount>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT endpoint_id, hour, succeeded, failed FROM delivery_rollups
                 WHERE org_id = ?1 AND hour >= ?2 ORDER BY hour, endpoint_id",
            )
            .and_then(|mut s| {
                s.query_map(params![org, hour_of(since)], |r| {
                    Ok(HourCount {
                        endpoint_id: r.get(0)?,
                        hour: Timestamp(r.get(1)?),
                        succeeded: r.get::<_, i64>(2)? as u64,
                        failed: r.get::<_, i64>(3)? as u64,
                    })
                })?
                .collect()
            })
            .map_err(db_err)
        })
        .await
    }

    pub async fn due_backlog(
        &self,
        org: String,
        now: Timestamp,
        cap: usize,
    ) -> Result<DueBacklog, StoreError> {
        self.read(move |c| {
            // Per endpoint of the organization, the pending index (endpoint_id,
            // next_attempt_at): a count bounded by `cap` and the earliest due time.
            let (due, due_since): (i64, Option<i64>) = c
                .prepare_cached(
                    "SELECT
                       (SELECT count(*) FROM (
                            SELECT 1 FROM endpoints e
                            JOIN deliveries d ON d.endpoint_id = e.id
                            WHERE e.org_id = ?1 AND d.status = 'pending'
                              AND d.next_attempt_at <= ?2
                            LIMIT ?3)),
                       (SELECT min((SELECT d.next_attempt_at FROM deliveries d
                                    WHERE d.endpoint_id = e.id AND d.status = 'pending'
                                      AND d.next_attempt_at <= ?2
                                    ORDER BY d.next_attempt_at LIMIT 1))
                        FROM endpoints e WHERE e.org_id = ?1)",
                )
                .and_then(|mut s| {
                    s.query_row(params![org, now.millis(), cap as i64 + 1], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                })
                .map_err(db_err)?;
            let due = due as usize;
            Ok(DueBacklog {
                due: due.min(cap),
                more: due > cap,
                due_since: due_since.map(Timestamp),
            })
        })
        .await
    }

    pub async fn last_errors(
        &self,
        org: String,
        endpoints: Vec<String>,
    ) -> Result<Vec<LastError>, StoreError> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&last_error_sql("?1", "?2", "?3"))
                .map_err(db_err)?;
            let mut found = Vec::new();
            for endpoint in endpoints {
                let row = stmt
                    .query_row(params![endpoint, org, LAST_ERROR_WALK as i64], |r| {
                        Ok(LastError {
                            endpoint_id: endpoint.clone(),
                            delivery_id: r.get(0)?,
                            number: r.get(1)?,
                            started_at: Timestamp(r.get(2)?),
                            status_code: r.get(3)?,
                            error_class: r
                                .get::<_, Option<String>>(4)?
                                .as_deref()
                                .and_then(ErrorClass::parse),
                        })
                    })
                    .optional()
                    .map_err(db_err)?;
                found.extend(row);
            }
            Ok(found)
        })
        .await
    }
}
