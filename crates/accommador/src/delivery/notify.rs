//! Wake-ups across instances on PostgreSQL.
//!
//! - [`Announcer`]: after a commit (never inside the user's transaction), tells every instance
//!   with `pg_notify`: `accommador_outbox` when events were written, `accommador_due` with the
//!   endpoint IDs that got work. Announcements are coalesced: while one is being sent, further
//!   ones of the same kind fold into the next.
//! - [`listen`]: a worker's own session-mode connection (`LISTEN` does not survive PgBouncer's
//!   transaction mode) that turns notifications into local wake-ups; after any reconnect it
//!   rescans, since notifications sent while it was away are lost.
//! - [`listen_on`]: the session itself, also used by the API's key cache
//!   ([`crate::service::listen_keys`]).

use std::collections::BTreeSet;
use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_postgres::AsyncMessage;

use super::Wake;
use crate::domain::Timestamp;
use crate::store::Store;

pub const OUTBOX: &str = "accommador_outbox";
pub const DUE: &str = "accommador_due";
/// A notification payload is limited to 8000 bytes; past this, say "rescan".
const MAX_PAYLOAD: usize = 7000;

#[derive(Debug, Clone)]
pub struct Announcer {
    outbox: mpsc::Sender<()>,
    due: mpsc::UnboundedSender<String>,
}

impl Announcer {
    pub fn start(store: Store) -> Announcer {
        let (outbox_tx, mut outbox_rx) = mpsc::channel::<()>(1);
        let (due_tx, mut due_rx) = mpsc::unbounded_channel::<String>();
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
                        let mut ids = BTreeSet::from([first]);
                        while let Ok(id) = due_rx.try_recv() {
                            ids.insert(id);
                        }
                        let mut payload = ids.into_iter().collect::<Vec<_>>().join(",");
                        if payload.len() > MAX_PAYLOAD {
                            payload = "*".to_owned();
                        }
                        if let Err(e) = store.announce(DUE, payload).await {
                            tracing::warn!(error = %e, "announcing due work failed");
                        }
                    }
                }
            }
        });
        Announcer {
            outbox: outbox_tx,
            due: due_tx,
        }
    }

    /// Events were committed (coalesced: a full channel means one is pending already).
    pub fn outbox(&self) {
        let _ = self.outbox.try_send(());
    }

    pub fn due(&self, endpoint_id: &str) {
        let _ = self.due.send(endpoint_id.to_owned());
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
    listen_on(connect, &[OUTBOX, DUE], rescan, on_notice).await;
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
