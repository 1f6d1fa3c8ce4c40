//! The background removal of deleted organizations' data.
//!
//! `DELETE /v1/organizations/{id}` only marks the organization; this task then removes its
//! rows one bounded step at a time ([`crate::store::keys::PURGE_BATCH`] rows, one short
//! transaction each, see [`Store::org_deletion_step`]), so an organization with millions of
//! rows never holds the SQLite writer or PostgreSQL's locks for long. It runs in every process
//! (API-only servers and workers too) and looks for marked organizations at start and every
//! [`LOOK_EVERY`], so a deletion cut short by a crash, or marked by another instance, goes on.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::store::Store;

/// How often marked organizations are looked for without a wake-up.
pub const LOOK_EVERY: Duration = Duration::from_secs(5);

pub async fn run(store: Store, wake: Arc<Notify>) {
    loop {
        run_until_idle(&store).await;
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(LOOK_EVERY) => {}
        }
    }
}

/// Steps until no marked organization is left (or a step fails): the organizations whose data
/// is now all gone.
pub async fn run_until_idle(store: &Store) -> Vec<String> {
    let mut finished = Vec::new();
    loop {
        match store.org_deletion_step().await {
            Ok(Some(step)) => {
                metrics::counter!("organization_deletion_rows_total").increment(step.rows as u64);
                if step.finished {
                    tracing::info!(org_id = %step.org_id, "a deleted organization's data is removed");
                    finished.push(step.org_id);
                }
                // Other writers take turns between steps.
                tokio::task::yield_now().await;
            }
            Ok(None) => return finished,
            Err(e) => {
                tracing::warn!(error = %e, "removing a deleted organization's data failed");
                return finished;
            }
        }
    }
}
