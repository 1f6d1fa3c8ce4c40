//! Data has a lifetime (DESIGN §10): the background jobs that purge expired events (with their
//! deliveries and attempts) and erase users' personal data, and the settings they share with
//! the API. Every server process runs both; each step is one bounded batch in the store
//! ([`crate::store::lifetime`]), so other tenants' writes go between them.
//!
//! Metrics: `accommador_purged_rows_total{table}`, `accommador_retention_kept_events` (expired
//! events kept for a pending delivery, last pass), `accommador_oldest_event_age_seconds`,
//! `accommador_erasures_total`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::domain::Timestamp;
use crate::store::Store;
use crate::store::lifetime::EraseStep;

/// Retention and erasure settings, and the erasure job's wake-up.
#[derive(Debug, Clone)]
pub struct Lifetime {
    retention: Duration,
    erase_deleted_after: Duration,
    wake: Arc<Notify>,
}

impl Default for Lifetime {
    fn default() -> Lifetime {
        let thirty_days = Duration::from_secs(30 * 86_400);
        Lifetime::new(thirty_days, thirty_days)
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Lifetime {
    pub fn new(retention: Duration, erase_deleted_after: Duration) -> Lifetime {
        Lifetime {
            retention,
            erase_deleted_after,
            wake: Arc::default(),
        }
    }

    /// Events that occurred before this may have been purged: a cursor naming one that is
    /// gone continues with the next retained event instead of being refused.
    pub fn purge_horizon(&self) -> Timestamp {
        Timestamp(
            Timestamp::now()
                .millis()
                .saturating_sub(millis(self.retention)),
        )
    }

    /// An erasure was queued: the job starts on it now rather than at its next tick.
    pub fn erasure_requested(&self) {
        self.wake.notify_one();
    }

    /// Starts the purge and erasure jobs.
    pub fn spawn(&self, store: &Store) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(purge(store.clone(), self.retention)),
            tokio::spawn(erase(
                store.clone(),
                self.erase_deleted_after,
                self.wake.clone(),
            )),
        ]
    }
}

/// One pass over the expired events at a time, each pass a walk of bounded steps from the
/// oldest event; a pass starts every half retention (at least every minute).
async fn purge(store: Store, retention: Duration) {
    let every = (retention / 2).clamp(Duration::from_millis(500), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (mut after, mut kept, mut events) = (0, 0, 0);
        loop {
            let began = std::time::Instant::now();
            match store.purge_step(after, millis(retention)).await {
                Ok(step) => {
                    pace(began, step.events + step.deliveries + step.attempts).await;
                    for (table, n) in [
                        ("events", step.events),
                        ("deliveries", step.deliveries),
                        ("attempts", step.attempts),
                    ] {
                        metrics::counter!("accommador_purged_rows_total", "table" => table)
                            .increment(n as u64);
                    }
                    kept += step.kept;
                    events += step.events;
                    after = step.next_after;
                    if step.done {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purging expired events failed; retrying next pass");
                    break;
                }
            }
        }
        if events > 0 {
            tracing::info!(events, kept, "expired events purged");
        }
        metrics::gauge!("accommador_retention_kept_events").set(kept as f64);
        match store.oldest_event().await {
            Ok(oldest) => {
                let age = oldest.map_or(0, |t| (Timestamp::now().millis() - t.millis()).max(0));
                metrics::gauge!("accommador_oldest_event_age_seconds").set(age as f64 / 1000.0);
            }
            Err(e) => tracing::warn!(error = %e, "reading the oldest event failed"),
        }
    }
}

/// After a step that wrote `rows`, waits as long as the step took: the jobs use at most half
/// of the database's writer (SQLite's single writer above all), so requests committing beside
/// a long purge or erasure wait behind at most one step, and the purge still removes tens of
/// thousands of rows a second, far more than a steady load writes. The background failing of
/// closed endpoints' deliveries ([`crate::delivery::cancel`]) is paced the same way.
pub(crate) async fn pace(began: std::time::Instant, rows: usize) {
    if rows > 0 {
        tokio::time::sleep(began.elapsed()).await;
    }
}

/// Runs erasure steps until none is left, when woken by a request and at every tick (which
/// also finds deleted users due for automatic erasure); then scrubs the database files.
async fn erase(store: Store, erase_deleted_after: Duration, wake: Arc<Notify>) {
    let every = (erase_deleted_after / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
    // An erasure finished but the files still hold old copies (a reader kept the checkpoint
    // from finishing): tried again at every round until it succeeds.
    let mut scrub_pending = false;
    loop {
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(every) => {}
        }
        let mut finished = 0u64;
        loop {
            let before = Timestamp(
                Timestamp::now()
                    .millis()
                    .saturating_sub(millis(erase_deleted_after)),
            );
            let began = std::time::Instant::now();
            let step = store.erase_step(Some(before)).await;
            pace(began, usize::from(matches!(step, Ok(Some(_))))).await;
            match step {
                Ok(None) => break,
                Ok(Some(EraseStep::Finished { .. })) => finished += 1,
                Ok(Some(EraseStep::Marked(n))) => {
                    tracing::info!(users = n, "deleted users queued for automatic erasure");
                }
                Ok(Some(EraseStep::Progress { .. })) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "erasure step failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
        if finished > 0 {
            metrics::counter!("accommador_erasures_total").increment(finished);
            tracing::info!(users = finished, "users erased");
            scrub_pending = true;
        }
        for _ in 0..25 {
            if !scrub_pending {
                break;
            }
            match store.scrub_files().await {
                Ok(true) => scrub_pending = false,
                Ok(false) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) => {
                    tracing::warn!(error = %e, "checkpointing after an erasure failed");
                    break;
                }
            }
        }
    }
}
