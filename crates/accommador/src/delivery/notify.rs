//! Wake-ups across instances on PostgreSQL.
//!
//! - [`Announcer`]: after a commit (never inside the user's transaction), tells every instance
//!   with `pg_notify`: `accommador_outbox` when events were written, `accommador_due` with the
//!   endpoint IDs that got work, `accommador_freed` with the organizations whose leases were
//!   given up (an attempt recorded or a lease released): a lane that other instances' leases
//!   held back looks again then, instead of polling. Announcements are coalesced: while one is
//!   being sent, further ones of the same kind fold into the next.
//! - [`listen`]: a worker's own session-mode connection (`LISTEN` does not survive PgBouncer's
//!   transaction mode) that turns notifications into local wake-ups; after any reconnect it
//!   rescans, since notifications sent while it was away are lost.
//! - [`listen_on`]: the session itself, also used by the API's key cache
//!   ([`crate::service::listen_keys`]).
//!
//! `accommador_due` and `accommador_freed` payloads start with the sending process's
//! [`struct@INSTANCE`] and a `/`: every instance hears its own notifications too, and what
//! they say it has already done locally (woken the lanes, released the held ones). Without
//! that, a fan-out to 10,000 endpoints announced "*" and made its own instance rescan every
//! pending lane once per fan-out step.

use std::collections::BTreeSet;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_postgres::AsyncMessage;

use super::Wake;
use crate::domain::Timestamp;
use crate::store::Store;

pub const OUTBOX: &str = "accommador_outbox";
pub const DUE: &str = "accommador_due";
pub const FREED: &str = "accommador_freed";
/// Releases are announced at most this often per instance (the ones in between fold into the
/// next): under load every recording frees a lease, and one notification says it for all.
const FREED_EVERY: Duration = Duration::from_millis(10);
/// A notification payload is limited to 8000 bytes; past this, say "rescan".
const MAX_PAYLOAD: usize = 7000;

/// This process, in its own announcements (see the module's documentation).
pub static INSTANCE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| crate::domain::ids::new_id(""));

/// `payload` as this process announces it.
fn from_here(payload: &str) -> String {
    format!("{}/{payload}", *INSTANCE)
}

/// What a received payload says, or `None` when this process sent it. A payload without a
/// sender (from an instance of an earlier version) is taken whole.
fn from_elsewhere(payload: &str) -> Option<&str> {
    match payload.split_once('/') {
        Some((sender, _)) if sender == INSTANCE.as_str() => None,
        Some((_, rest)) => Some(rest),
        None => Some(payload),
    }
}

#[derive(Debug, Clone)]
pub struct Announcer {
    outbox: mpsc::Sender<()>,
    due: mpsc::UnboundedSender<String>,
    freed: Arc<Freed>,
}

/// Organizations whose leases were given up and not yet announced: a set (so no bigger than
/// the number of organizations, however many leases are given up meanwhile) and its signal.
#[derive(Debug, Default)]
struct Freed {
    orgs: Mutex<BTreeSet<String>>,
    ready: Notify,
}

/// Sends everything queued on `rx` (after `first`) as one comma-separated announcement on
/// `channel` ("*" when too long for a notification).
async fn announce_set(
    store: &Store,
    channel: &str,
    first: String,
    rx: &mut mpsc::UnboundedReceiver<String>,
) {
    let mut ids = BTreeSet::from([first]);
    while let Ok(id) = rx.try_recv() {
        ids.insert(id);
    }
    let mut payload = ids.into_iter().collect::<Vec<_>>().join(",");
    if payload.len() > MAX_PAYLOAD {
        payload = "*".to_owned();
    }
    if let Err(e) = store.announce(channel, from_here(&payload)).await {
        tracing::warn!(error = %e, channel, "announcing failed");
    }
}

impl Announcer {
    pub fn start(store: Store) -> Announcer {
        let (outbox_tx, mut outbox_rx) = mpsc::channel::<()>(1);
        let (due_tx, mut due_rx) = mpsc::unbounded_channel::<String>();
        let freed = Arc::new(Freed::default());
        let (freed_store, pending) = (store.clone(), freed.clone());
        tokio::spawn(async move {
            loop {
                pending.ready.notified().await;
                let orgs = std::mem::take(&mut *pending.orgs.lock().expect("freed lock"));
                if orgs.is_empty() {
                    continue;
                }
                let mut payload = orgs.into_iter().collect::<Vec<_>>().join(",");
                if payload.len() > MAX_PAYLOAD {
                    payload = "*".to_owned();
                }
                if let Err(e) = freed_store.announce(FREED, from_here(&payload)).await {
                    tracing::warn!(error = %e, "announcing released leases failed");
                }
                tokio::time::sleep(FREED_EVERY).await;
            }
        });
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    o = outbox_rx.recv() => {
                        if o.is_none() { return; }
                        if let Err(e) = store.announce(OUTBOX, String::new()).await {
                            tracing::warn!(error = %e, "announcing new events failed");
                        }
                    }
                    first = due_rx.recv() => {
                        let Some(first) = first else { return };
                        announce_set(&store, DUE, first, &mut due_rx).await;
                    }
                }
            }
        });
        Announcer {
            outbox: outbox_tx,
            due: due_tx,
            freed,
        }
    }

    /// Events were committed (coalesced: a full channel means one is pending already).
    pub fn outbox(&self) {
        let _ = self.outbox.try_send(());
    }

    pub fn due(&self, endpoint_id: &str) {
        let _ = self.due.send(endpoint_id.to_owned());
    }

    /// A lease of this organization was given up (its attempt recorded).
    pub fn freed(&self, org_id: &str) {
        let mut orgs = self.freed.orgs.lock().expect("freed lock");
        if !orgs.contains(org_id) {
            orgs.insert(org_id.to_owned());
        }
        drop(orgs);
        // A permit is kept when the task is busy: nothing is lost.
        self.freed.ready.notify_one();
    }
}

/// Listens until aborted, reconnecting with backoff; every (re)connection rescans.
pub async fn listen(
    connect: crate::store::postgres::tls::PgConnect,
    fanout: Arc<Notify>,
    wake: mpsc::UnboundedSender<Wake>,
) {
    let rescan = {
        let (fanout, wake) = (fanout.clone(), wake.clone());
        move || {
            fanout.notify_one();
            let _ = wake.send(Wake::Rescan);
        }
    };
    let on_notice = move |channel: &str, payload: &str| {
        if channel == OUTBOX {
            fanout.notify_one();
            return;
        }
        let Some(payload) = from_elsewhere(payload) else {
            return;
        };
        if channel == FREED {
            let orgs = payload.split(',').filter(|s| !s.is_empty());
            let _ = wake.send(Wake::Freed {
                orgs: orgs.map(str::to_owned).collect(),
            });
        } else if payload == "*" {
            let _ = wake.send(Wake::Rescan);
        } else {
            let at = Timestamp::now();
            for id in payload.split(',').filter(|s| !s.is_empty()) {
                let _ = wake.send(Wake::Endpoint {
                    endpoint_id: id.to_owned(),
                    at,
                });
            }
        }
    };
    listen_on(connect, &[OUTBOX, DUE, FREED], rescan, on_notice).await;
}

/// One session-mode connection listening on `channels`, reconnecting with backoff:
/// `on_connect` runs after every (re)connection, `on_notice` with each (channel, payload).
pub async fn listen_on(
    connect: crate::store::postgres::tls::PgConnect,
    channels: &[&str],
    on_connect: impl Fn(),
    on_notice: impl Fn(&str, &str),
) {
    let listen_sql: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
    let mut backoff = Duration::from_millis(100);
    loop {
        // TLS as the database URL's `sslmode` says, like every other connection.
        match connect.connect().await {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => {
                                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "the LISTEN connection failed");
                                return;
                            }
                        }
                    }
                });
                if let Err(e) = client.batch_execute(&listen_sql).await {
                    tracing::warn!(error = %e, "LISTEN failed");
                } else {
                    backoff = Duration::from_millis(100);
                    // Whatever was announced while we were not listening: look again.
                    on_connect();
                    while let Some((channel, payload)) = rx.recv().await {
                        on_notice(&channel, &payload);
                    }
                }
                driver.abort();
            }
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "connecting the LISTEN session failed"
            ),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_skips_its_own_announcements_and_reads_everyone_elses() {
        assert_eq!(from_elsewhere(&from_here("ep_1,ep_2")), None);
        assert_eq!(from_elsewhere(&from_here("*")), None);
        let other = format!("{}/ep_1,ep_2", crate::domain::ids::new_id(""));
        assert_eq!(from_elsewhere(&other), Some("ep_1,ep_2"));
        // An instance of an earlier version sends no sender.
        assert_eq!(from_elsewhere("ep_1"), Some("ep_1"));
        assert_eq!(from_elsewhere("*"), Some("*"));
    }
}
