//! The fan-out loop: one step creates the deliveries of the next events in commit order; the
//! loop runs steps while there is work and sleeps on a notification when there is none.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use super::Wake;
use crate::domain::Timestamp;
use crate::store::{FanOut, Store, StoreError};

/// Backoff while committed events wait behind an older open transaction (PostgreSQL only).
const HELD_BACK_FIRST: Duration = Duration::from_millis(2);
const HELD_BACK_MAX: Duration = Duration::from_millis(100);

/// One step: fan out the next batch and wake the endpoints that got work.
pub async fn step(store: &Store, wake: &mpsc::UnboundedSender<Wake>) -> Result<FanOut, StoreError> {
    let mut outcome = store.fan_out().await?;
    let now = Timestamp::now();
    for endpoint_id in std::mem::take(&mut outcome.woken) {
        let _ = wake.send(Wake {
            endpoint_id,
            at: now,
        });
    }
    Ok(outcome)
}

/// Runs until the task is aborted.
pub async fn run(store: Store, notify: Arc<Notify>, wake: mpsc::UnboundedSender<Wake>) {
    let mut held_back = HELD_BACK_FIRST;
    loop {
        match step(&store, &wake).await {
            Ok(FanOut {
                events: 0,
                waiting: false,
                ..
            }) => {
                held_back = HELD_BACK_FIRST;
                notify.notified().await;
            }
            Ok(FanOut { events: 0, .. }) => {
                // An older transaction is still open; it ends without telling us.
                tokio::select! {
                    () = notify.notified() => {}
                    () = tokio::time::sleep(held_back) => {}
                }
                held_back = (held_back * 2).min(HELD_BACK_MAX);
            }
            Ok(_) => held_back = HELD_BACK_FIRST,
            Err(e) => {
                tracing::error!(error = %e, "fan-out failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
