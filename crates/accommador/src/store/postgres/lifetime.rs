//! Retention and erasure on PostgreSQL (see [`crate::store::lifetime`]). Each step is one short
//! transaction, bounded in rows. Several instances may run the jobs at once: one purges at a
//! time (a transaction-scoped advisory lock; the others skip that round) and an erasure step
//! locks its user's row, so two instances never work on the same rows.

use deadpool_postgres::Transaction;

use super::rollups::add_counts_sql;
use super::{Cached, PgStore, insert_event, live_user, pg_err};
use crate::domain::Timestamp;
use crate::domain::delivery::ErrorClass;
use crate::domain::event::{NewEvent, erased_payload, erased_user_body};
use crate::domain::user::tombstone;
use crate::store::StoreError;
use crate::store::lifetime::{
    ERASE_MARK, EraseStep, PURGE_EVENTS, PURGE_ROWS, PURGE_STEP_SECONDS, PurgeStep,
};
use crate::store::rollups::hour_of;

/// The advisory lock key of the retention purge (any constant of ours).
const PURGE_LOCK: i64 = 0x6163_635f_7075_7267; // "acc_purg"

impl PgStore {
    pub async fn purge_step(&self, after: i64, retention_ms: i64) -> Result<PurgeStep, StoreError> {
        let mut client = self.background_client().await?;
        // How long the step's transaction holds its row locks (from its start: waiting for a
        // pooled connection holds nothing).
        let began = std::time::Instant::now();
        let step = purge_batch(&mut client, after, retention_ms).await;
        metrics::histogram!(PURGE_STEP_SECONDS).record(began.elapsed().as_secs_f64());
        step
    }

    pub async fn oldest_event(&self) -> Result<Option<Timestamp>, StoreError> {
        let client = self.background_client().await?;
        Ok(client
            .fetch_opt(
                "SELECT occurred_at FROM events WHERE commit_seq IS NOT NULL
                 ORDER BY commit_seq LIMIT 1",
                &[],
            )
            .await
            .map_err(pg_err)?
            .map(|r| Timestamp(r.get(0))))
    }

    pub async fn erase_user(&self, org: String, id: String) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let Some(state) = tx
            .fetch_opt(
                "SELECT erased_at FROM users WHERE id = $1 AND org_id = $2 FOR UPDATE",
                &[&id, &org],
            )
            .await
            .map_err(pg_err)?
        else {
            return Err(StoreError::NotFound);
        };
        let erased_before = state.get::<_, Option<i64>>(0).is_some();
        let now = Timestamp::now();
        let mut wrote_event = false;
        if let Some(user) = live_user(&tx, &org, &id, true).await? {
            let last = tombstone(&user, now);
            tx.run(
                "UPDATE users SET version = $1, updated_at = $2, deleted_at = $2
                 WHERE id = $3 AND org_id = $4",
                &[
                    &(last.version as i64),
                    &last.updated_at.millis(),
                    &last.id,
                    &org,
                ],
            )
            .await
            .map_err(pg_err)?;
            insert_event(&tx, &org, &NewEvent::erased_deletion(&last)).await?;
            wrote_event = true;
        } else if erased_before {
            return Ok(());
        }
        mark_erased(&tx, &id, now).await?;
        tx.commit().await.map_err(pg_err)?;
        drop(client);
        if wrote_event {
            self.sequence_after_commit().await;
        }
        Ok(())
    }

    pub async fn erase_step(
        &self,
        erase_deleted_before: Option<Timestamp>,
    ) -> Result<Option<EraseStep>, StoreError> {
        let mut client = self.background_client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let now = Timestamp::now();
        let running = tx
            .fetch_opt(
                "SELECT seq, id, org_id, erase_after FROM users
                 WHERE erase_after IS NOT NULL ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED",
                &[],
            )
            .await
            .map_err(pg_err)?;
        let Some(running) = running else {
            let Some(before) = erase_deleted_before else {
                return Ok(None);
            };
            let due = tx
                .fetch(
                    "SELECT id FROM users
                     WHERE deleted_at IS NOT NULL AND erased_at IS NULL AND deleted_at < $1
                     ORDER BY deleted_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                    &[&before.millis(), &(ERASE_MARK as i64)],
                )
                .await
                .map_err(pg_err)?;
            for row in &due {
                mark_erased(&tx, row.get(0), now).await?;
            }
            tx.commit().await.map_err(pg_err)?;
            return Ok((!due.is_empty()).then_some(EraseStep::Marked(due.len())));
        };
        let (user_seq, user_id, org, after): (i64, String, String, i64) = (
            running.get(0),
            running.get(1),
            running.get(2),
            running.get(3),
        );
        let events = tx
            .fetch(
                "SELECT seq, id, payload FROM events
                 WHERE user_id = $1 AND org_id = $2 AND seq > $3 ORDER BY seq LIMIT $4",
                &[&user_id, &org, &after, &(PURGE_EVENTS as i64)],
            )
            .await
            .map_err(pg_err)?;
        let finished = events.len() < PURGE_EVENTS;
        let (mut last, mut rows, mut rewritten, mut failed_deliveries) = (after, 0, 0, 0);
        for row in events {
            let (seq, event_id, payload): (i64, String, String) =
                (row.get(0), row.get(1), row.get(2));
            last = seq;
            let Some(erased) = erased_payload(&payload, &user_id) else {
                continue;
            };
            if erased == payload {
                // Already erased, or the erasure's own user.deleted: its deliveries go out.
                continue;
            }
            tx.run(
                "UPDATE events SET payload = $2 WHERE seq = $1",
                &[&seq, &erased],
            )
            .await
            .map_err(pg_err)?;
            let (failed, scrubbed) = erase_deliveries(&tx, &event_id, now).await?;
            failed_deliveries += failed;
            rewritten += 1;
            rows += 1 + failed + scrubbed;
            if rows >= PURGE_ROWS {
                break;
            }
        }
        let step = if finished && rows < PURGE_ROWS {
            tx.run(
                "UPDATE idempotency_keys SET body = $3, fingerprint = '\\x'::bytea
                 WHERE org_id = $1 AND user_id = $2",
                &[&org, &user_id, &erased_user_body(&user_id)],
            )
            .await
            .map_err(pg_err)?;
            tx.run(
                "UPDATE users SET erase_after = NULL WHERE seq = $1",
                &[&user_seq],
            )
            .await
            .map_err(pg_err)?;
            EraseStep::Finished { user_id }
        } else {
            tx.run(
                "UPDATE users SET erase_after = $2 WHERE seq = $1",
                &[&user_seq, &last],
            )
            .await
            .map_err(pg_err)?;
            EraseStep::Progress {
                user_id,
                events: rewritten,
                failed_deliveries,
            }
        };
        tx.commit().await.map_err(pg_err)?;
        Ok(Some(step))
    }
}

/// One purge step in its own transaction on `client` (see [`PgStore::purge_step`]).
async fn purge_batch(
    client: &mut deadpool_postgres::Object,
    after: i64,
    retention_ms: i64,
) -> Result<PurgeStep, StoreError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    let locked: bool = tx
        .fetch_one("SELECT pg_try_advisory_xact_lock($1)", &[&PURGE_LOCK])
        .await
        .map_err(pg_err)?
        .get(0);
    if !locked {
        // Another instance is purging: this round is its.
        return Ok(PurgeStep {
            next_after: after,
            done: true,
            ..PurgeStep::default()
        });
    }
    // Every statement of a step looks rows up by key: a scan of a whole table is never
    // right here, yet without table statistics (autovacuum off, or not yet run) the planner
    // chose one for each join back to the table (0.25 s a step at half a million rows).
    tx.batch_execute("SET LOCAL enable_seqscan = off")
        .await
        .map_err(pg_err)?;
    // The outbox in commit order; events not numbered yet are the newest anyway.
    let events = tx
        .fetch(
            "SELECT commit_seq, id,
                    occurred_at < (extract(epoch FROM clock_timestamp()) * 1000)::bigint - $3
             FROM events WHERE commit_seq > $1 ORDER BY commit_seq LIMIT $2",
            &[&after, &(PURGE_EVENTS as i64), &retention_ms],
        )
        .await
        .map_err(pg_err)?;
    let mut step = PurgeStep {
        next_after: after,
        done: events.len() < PURGE_EVENTS,
        ..PurgeStep::default()
    };
    // The expired events at the head of the walk, in commit order.
    let mut expired: Vec<(i64, String)> = Vec::new();
    for row in events {
        if !row.get::<_, bool>(2) {
            step.done = true;
            break;
        }
        expired.push((row.get(0), row.get(1)));
    }
    if expired.is_empty() {
        tx.commit().await.map_err(pg_err)?;
        return Ok(step);
    }
    // Set-based, a few statements per step whatever the number of events: their deliveries
    // by event (the unique (event_id, endpoint_id) index), pending ones keeping the event.
    // Lookups by a column that is not unique are written as one index probe per key (a
    // LATERAL subquery the planner cannot flatten): without table statistics, `= ANY` of
    // 100 keys is estimated at half the table and planned as a scan of all of it, which made
    // each step cost as much as the table is large.
    let ids: Vec<&str> = expired.iter().map(|(_, id)| id.as_str()).collect();
    let counts = tx
        .fetch(
            "SELECT u.id, count(*), bool_or(d.status = 'pending')
             FROM UNNEST($1::text[]) AS u(id)
             CROSS JOIN LATERAL (SELECT status FROM deliveries WHERE event_id = u.id
                                 OFFSET 0) AS d
             GROUP BY u.id",
            &[&ids],
        )
        .await
        .map_err(pg_err)?;
    let by_event: std::collections::HashMap<String, (i64, bool)> = counts
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    // Events taken whole while the deliveries stay within the step's budget (the first
    // one in part if it alone has more).
    let budget = PURGE_ROWS / 2;
    let (mut take, mut seqs, mut deliveries, mut partial) = (Vec::new(), Vec::new(), 0, None);
    for (seq, id) in &expired {
        let (n, pending) = by_event.get(id).copied().unwrap_or((0, false));
        if pending {
            step.kept += 1;
            step.next_after = *seq;
            continue;
        }
        if deliveries + n as usize > budget {
            if take.is_empty() {
                partial = Some(id.as_str());
            }
            step.done = false;
            break;
        }
        deliveries += n as usize;
        take.push(id.as_str());
        seqs.push(*seq);
        step.next_after = *seq;
    }
    let doomed: Vec<String> = match partial {
        Some(id) => tx
            .fetch(
                "SELECT id FROM deliveries WHERE event_id = $1 AND status <> 'pending'
                 LIMIT $2 FOR UPDATE",
                &[&id, &(budget as i64)],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| r.get(0))
            .collect(),
        None => tx
            .fetch(
                "SELECT d.id FROM UNNEST($1::text[]) AS u(id)
                 CROSS JOIN LATERAL (SELECT id FROM deliveries
                                     WHERE event_id = u.id AND status <> 'pending'
                                     FOR UPDATE) AS d",
                &[&take],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| r.get(0))
            .collect(),
    };
    if !doomed.is_empty() {
        step.attempts += tx
            // By the key's leading column: with sequential scans off for the step this is
            // one bitmap probe of the key index per delivery. (Joining back to the table
            // from per-key probes was planned as a hash of the whole attempts table once the
            // array's length was known: 0.5-0.8 s a step at a million rows.)
            .run(
                "DELETE FROM attempts WHERE delivery_id = ANY($1)",
                &[&doomed],
            )
            .await
            .map_err(pg_err)? as usize;
        step.deliveries += tx
            .run(
                "DELETE FROM deliveries WHERE id = ANY($1) AND status <> 'pending'",
                &[&doomed],
            )
            .await
            .map_err(pg_err)? as usize;
    }
    if !seqs.is_empty() {
        // Only events left with no delivery: one made pending meanwhile (a retry) keeps its
        // event, which the next pass looks at again.
        step.events += tx
            .run(
                "DELETE FROM events e WHERE e.commit_seq = ANY($1)
                 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id
                                 OFFSET 0)",
                &[&seqs],
            )
            .await
            .map_err(pg_err)? as usize;
    }
    tx.commit().await.map_err(pg_err)?;
    Ok(step)
}

/// Clears the personal data of a user row and queues the rest of the erasure.
async fn mark_erased(tx: &Transaction<'_>, id: &str, now: Timestamp) -> Result<(), StoreError> {
    tx.run(
        "UPDATE users SET email = '', email_lower = '', name = NULL, attributes = '{}',
             erased_at = $2, erase_after = COALESCE(erase_after, 0)
         WHERE id = $1",
        &[&id, &now.millis()],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

/// Fails the event's pending deliveries with `erased` (an in-flight attempt's lease ends with
/// it) and empties the response logs of all its attempts; returns (failed, emptied).
async fn erase_deliveries(
    tx: &Transaction<'_>,
    event_id: &str,
    now: Timestamp,
) -> Result<(usize, usize), StoreError> {
    let failed = tx
        .run(
            &format!(
                "WITH batch AS (
                 SELECT id FROM deliveries WHERE event_id = $1 AND status = 'pending'
                 FOR UPDATE),
             failed AS (
                 UPDATE deliveries d SET status = 'failed',
                     attempt_count = d.attempt_count + 1, next_attempt_at = NULL,
                     manual = false, resume_at = NULL, updated_at = $2,
                     lease_token = NULL, lease_until = NULL
                 FROM batch WHERE d.id = batch.id
                 RETURNING d.id, d.attempt_count, d.org_id, d.endpoint_id),
             counted AS ({})
             INSERT INTO attempts (delivery_id, number, trigger, started_at, duration_ms,
                                   status_code, error_class, error, response_headers,
                                   response_body)
             SELECT id, attempt_count, 'scheduled', $2, 0, NULL, $3, 'the user was erased',
                    '{{}}', ''
             FROM failed",
                add_counts_sql(
                    "(SELECT org_id, endpoint_id, $4::int8 AS hour, 0::int8 AS succeeded,
                             count(*) AS failed
                      FROM failed GROUP BY org_id, endpoint_id ORDER BY endpoint_id) AS c"
                )
            ),
            &[
                &event_id,
                &now.millis(),
                &ErrorClass::Erased.as_str(),
                &hour_of(now),
            ],
        )
        .await
        .map_err(pg_err)?;
    let scrubbed = tx
        .run(
            "UPDATE attempts SET response_headers = '{}', response_body = ''
             WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = $1)
               AND (response_body <> '' OR response_headers <> '{}')",
            &[&event_id],
        )
        .await
        .map_err(pg_err)?;
    Ok((failed as usize, scrubbed as usize))
}
