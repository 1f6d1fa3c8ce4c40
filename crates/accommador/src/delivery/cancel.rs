//! Failing the pending deliveries of disabled or deleted endpoints, in the background.
//!
//! `PATCH {"status": "disabled"}`, `DELETE`, a 410 and continuous failure only change the
//! endpoint's row (and mark it); from then on none of its deliveries is handed out or sent.
//! This task then fails them (`endpoint_disabled`) in bounded batches, each its own short
//! transaction followed by a pause as long as it took, taking marked endpoints in turns, so one endpoint with a huge backlog never
//! holds the SQLite writer or PostgreSQL's locks for long, and never delays another tenant's
//! endpoint behind it.
//!
//! Closing an endpoint also records a fence: the highest delivery number at that moment. If
//! the endpoint is enabled again before this task is done, the deliveries up to the fence still
//! end failed (none of them is handed out or sent meanwhile), and those made after the
//! re-enable, above it, are delivered as usual.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::store::Store;

/// How often marked endpoints are looked for without a wake-up (a change made by another
/// instance, or one whose batch met rows locked by an attempt being recorded).
const LOOK_EVERY: Duration = Duration::from_secs(1);

pub async fn run(store: Store, wake: Arc<Notify>) {
    loop {
        // One pass: one batch for each marked endpoint, in ID order.
        let mut after = None;
        let mut failed_any = false;
        loop {
            let began = std::time::Instant::now();
            match store.cancel_step(after.take()).await {
                Ok(Some(step)) => {
                    if step.failed > 0 {
                        failed_any = true;
                        metrics::counter!("webhook_deliveries_cancelled_total")
                            .increment(step.failed as u64);
                    }
                    // Paced like the retention purge, so other tenants' writes go between
                    // its steps.
                    crate::lifetime::pace(began, step.failed).await;
                    tokio::task::yield_now().await;
                    after = Some(step.endpoint_id);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "failing a disabled endpoint's deliveries failed");
                    break;
                }
            }
        }
        if !failed_any {
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
    }
}
