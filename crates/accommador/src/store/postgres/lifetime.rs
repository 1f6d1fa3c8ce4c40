//! Retention and erasure on PostgreSQL (see [`crate::store::lifetime`]). Each step is one short
//! transaction, bounded in rows. Several instances may run the jobs at once: one purges at a
//! time (a transaction-scoped advisory lock; the others skip that round) and an erasure step
//! locks its user's row, so two instances never work on the same rows.

use deadpool_postgres::Transaction;

use super::{Cached, PgStore, insert_event, live_user, pg_err};
use crate::domain::Timestamp;
use crate::domain::delivery::ErrorClass;
use crate::domain::event::{NewEvent, erased_payload, erased_user_body};
use crate::domain::user::tombstone;
use crate::store::StoreError;
use crate::store::lifetime::{ERASE_MARK, EraseStep, PURGE_EVENTS, PURGE_ROWS, PurgeStep};

/// The advisory lock key of the retention purge (any constant of ours).
const PURGE_LOCK: i64 = 0x6163_635f_7075_7267; // "acc_purg"

impl PgStore {
    pub async fn purge_step(&self, after: i64, retention_ms: i64) -> Result<PurgeStep, StoreError> {
        let mut client = self.background_client().await?;
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
        for row in events {
            let (seq, id, expired): (i64, String, bool) = (row.get(0), row.get(1), row.get(2));
            if !expired {
                step.done = true;
                break;
            }
            let pending: bool = tx
                .fetch_one(
                    "SELECT EXISTS (SELECT 1 FROM deliveries
                                    WHERE event_id = $1 AND status = 'pending')",
                    &[&id],
                )
                .await
                .map_err(pg_err)?
                .get(0);
            if pending {
                // Kept whole until no delivery of it is pending.
                step.kept += 1;
                step.next_after = seq;
                continue;
            }
            let budget = PURGE_ROWS
                .saturating_sub(step.deliveries + step.attempts + step.events)
                .max(1);
            // Only ended deliveries go: one made pending meanwhile (a retry) keeps the event.
            let gone = tx
                .fetch_one(
                    "WITH batch AS (
                         SELECT id FROM deliveries
                         WHERE event_id = $1 AND status <> 'pending'
                         LIMIT $2 FOR UPDATE),
                     attempts_gone AS (
                         DELETE FROM attempts a USING batch WHERE a.delivery_id = batch.id
                         RETURNING 1),
                     deliveries_gone AS (
                         DELETE FROM deliveries d USING batch WHERE d.id = batch.id
                         RETURNING 1)
                     SELECT (SELECT count(*) FROM deliveries_gone),
                            (SELECT count(*) FROM attempts_gone)",
                    &[&id, &(budget as i64)],
                )
                .await
                .map_err(pg_err)?;
            let gone_deliveries = gone.get::<_, i64>(0) as usize;
            step.deliveries += gone_deliveries;
            step.attempts += gone.get::<_, i64>(1) as usize;
            let deleted = tx
                .run(
                    "DELETE FROM events WHERE commit_seq = $1
                     AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_id = $2)",
                    &[&seq, &id],
                )
                .await
                .map_err(pg_err)?;
            if deleted == 1 {
                step.events += 1;
                step.next_after = seq;
            } else if gone_deliveries == 0 {
                // A delivery of it became pending meanwhile (a retry): kept for now.
                step.kept += 1;
                step.next_after = seq;
            } else {
                // More ended deliveries than this step's budget: the next step goes on here.
                step.done = false;
                break;
            }
            if step.deliveries + step.attempts + step.events >= PURGE_ROWS {
                step.done = false;
                break;
            }
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(step)
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
            "WITH batch AS (
                 SELECT id FROM deliveries WHERE event_id = $1 AND status = 'pending'
                 FOR UPDATE),
             failed AS (
                 UPDATE deliveries d SET status = 'failed',
                     attempt_count = d.attempt_count + 1, next_attempt_at = NULL,
                     manual = false, resume_at = NULL, updated_at = $2,
                     lease_token = NULL, lease_until = NULL
                 FROM batch WHERE d.id = batch.id
                 RETURNING d.id, d.attempt_count)
             INSERT INTO attempts (delivery_id, number, trigger, started_at, duration_ms,
                                   status_code, error_class, error, response_headers,
                                   response_body)
             SELECT id, attempt_count, 'scheduled', $2, 0, NULL, $3, 'the user was erased',
                    '{}', ''
             FROM failed",
            &[&event_id, &now.millis(), &ErrorClass::Erased.as_str()],
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
