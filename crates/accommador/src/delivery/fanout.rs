//! The fan-out loop: one step creates the deliveries of the next events in commit order; the
//! loop runs steps while there is work and sleeps on a notification when there is none.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use super::Wake;
use crate::domain::Timestamp;
use crate::store::{Store, StoreError};

/// One step: fan out the next batch and wake the endpoints that got work. Returns how many
/// events it took (0: caught up).
pub async fn step(store: &Store, wake: &mpsc::UnboundedSender<Wake>) -> Result<usize, StoreError> {
    let (taken, woken) = store.fan_out().await?;
    let now = Timestamp::now();
    for endpoint_id in woken {
        let _ = wake.send(Wake {
            endpoint_id,
            at: now,
        });
    }
    Ok(taken)
}

/// Runs until the task is aborted.
pub async fn run(store: Store, notify: Arc<Notify>, wake: mpsc::UnboundedSender<Wake>) {
    loop {
        match step(&store, &wake).await {
            Ok(0) => notify.notified().await,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "fan-out failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
