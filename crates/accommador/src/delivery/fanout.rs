//! The fan-out loop: one step creates the deliveries of the next events in commit order; the
//! loop runs steps while there is work and sleeps on a notification when there is none.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use super::Wake;
use super::notify::Announcer;
use crate::domain::Timestamp;
use crate::store::{FanOut, Store, StoreError};

/// One step: fan out the next batch and wake the endpoints that got work.
pub async fn step(
    store: &Store,
    wake: &mpsc::UnboundedSender<Wake>,
    announcer: Option<&Announcer>,
) -> Result<FanOut, StoreError> {
    let mut outcome = store.fan_out().await?;
    let now = Timestamp::now();
    for endpoint_id in std::mem::take(&mut outcome.woken) {
        if let Some(a) = announcer {
            a.due(&endpoint_id);
        }
        let _ = wake.send(Wake::Endpoint {
            endpoint_id,
            at: now,
        });
    }
    Ok(outcome)
}

/// Runs until the task is aborted.
pub async fn run(
    store: Store,
    notify: Arc<Notify>,
    wake: mpsc::UnboundedSender<Wake>,
    announcer: Option<Announcer>,
) {
    // On PostgreSQL, events a crashed process committed but never numbered wait for the next
    // step; with no traffic none would come, so an idle loop still steps once a second.
    let idle = if store.postgres_url().is_some() {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(24 * 3600)
    };
    loop {
        match step(&store, &wake, announcer.as_ref()).await {
            Ok(FanOut { events: 0, .. }) => {
                let _ = tokio::time::timeout(idle, notify.notified()).await;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "fan-out failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
