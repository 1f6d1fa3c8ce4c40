//! No stale sends: the last check before a delivery's request leaves.
//!
//! A due delivery carries the URL and secrets that were read with it. Between that read and the
//! send, the customer may change the endpoint (`PATCH` of the URL or status, a secret rotation,
//! `DELETE`). Before each send the dispatcher asks [`Targets::current`], and again after the
//! host's look-up (which may take seconds), just before the connection is made:
//! - on this instance, every change is marked in [`EndpointChanges`] before the API answers, so
//!   a send whose data was read before a change reads the endpoint again: it goes to the new URL
//!   with the new secrets, or not at all when the endpoint is disabled or deleted, or when the
//!   delivery was queued before the endpoint was last closed (its cancel fence);
//! - on a shared database another instance may have made the change: data older than
//!   [`UNCHECKED_AT_MOST`] is read again, so no send starts with old values more than 1 s after
//!   another instance answered.
//!
//! A read is shared by the sends of one endpoint while it is fresh, so a busy endpoint costs at
//! most about one read per [`UNCHECKED_AT_MOST`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use accommador_webhooks::Secret;

use super::EndpointChanges;
use crate::store::{DueDelivery, SendTarget, Store};

/// On a shared database, how old a send's data may be before it is read again.
pub const UNCHECKED_AT_MOST: Duration = Duration::from_millis(900);

/// What to do with a due delivery right now.
#[derive(Debug)]
pub enum Checked {
    /// Send it (with the endpoint's current URL), signed with these secrets (opened, the
    /// current one first; never empty).
    Send(Box<DueDelivery>, Vec<Secret>),
    /// The endpoint is disabled or deleted, or was when the delivery was queued: send
    /// nothing. The background cancel ends the delivery (`failed`, `endpoint_disabled`).
    Cancelled,
    /// The endpoint, or its secrets, could not be read: send nothing now, try again shortly.
    Unknown,
}

/// When a read of an endpoint began, and what it found (`None`: disabled or deleted).
type Read = (Instant, Option<SendTarget>);

#[derive(Debug, Clone)]
pub struct Targets {
    store: Store,
    changes: EndpointChanges,
    shared: bool,
    /// The latest read of each endpoint: when it began, and what it found.
    reads: Arc<Mutex<HashMap<String, Read>>>,
}

impl Targets {
    pub fn new(store: Store, changes: EndpointChanges) -> Targets {
        let shared = store.postgres_url().is_some();
        Targets {
            store,
            changes,
            shared,
            reads: Arc::default(),
        }
    }

    pub fn changes(&self) -> &EndpointChanges {
        &self.changes
    }

    /// Whether data read at `read_at` may still be used for a send to `endpoint_id`.
    pub fn fresh(&self, endpoint_id: &str, read_at: Instant) -> bool {
        !self.changes.changed_since(endpoint_id, read_at)
            && (!self.shared || read_at.elapsed() <= UNCHECKED_AT_MOST)
    }

    /// `d` as it should be sent now; its data was read (the read began) at `read_at`.
    pub async fn current(&self, mut d: DueDelivery, read_at: Instant) -> Checked {
        if self.fresh(&d.endpoint_id, read_at) {
            return self.signed(d);
        }
        let cached = self
            .reads
            .lock()
            .expect("targets lock")
            .get(&d.endpoint_id)
            .cloned();
        let target = match cached {
            Some((at, target)) if at > read_at && self.fresh(&d.endpoint_id, at) => target,
            _ => {
                let began = Instant::now();
                match self.store.send_target(d.endpoint_id.clone()).await {
                    Ok(target) => {
                        let mut reads = self.reads.lock().expect("targets lock");
                        if reads.len() >= 4096 {
                            reads.retain(|_, (at, _)| at.elapsed() < UNCHECKED_AT_MOST);
                        }
                        reads.insert(d.endpoint_id.clone(), (began, target.clone()));
                        target
                    }
                    Err(e) => {
                        tracing::warn!(
                            endpoint_id = %d.endpoint_id, error = %e,
                            "reading the endpoint before a send failed; trying again shortly"
                        );
                        return Checked::Unknown;
                    }
                }
            }
        };
        match target {
            // Queued before the endpoint was last closed: failed in the background, even if
            // the endpoint has been enabled again since.
            Some(t) if t.fenced(d.seq) => Checked::Cancelled,
            Some(t) => {
                d.url = t.url;
                d.secrets = t.secrets;
                self.signed(d)
            }
            None => Checked::Cancelled,
        }
    }

    /// `d` with its secrets opened, or `Unknown` when they cannot be: a request is never sent
    /// unsigned, nor signed with anything but the endpoint's secrets.
    fn signed(&self, d: DueDelivery) -> Checked {
        let opened = self
            .store
            .open_secrets(&d.endpoint_id, &d.secrets)
            .map_err(|e| e.to_string())
            .and_then(|plain| {
                plain
                    .iter()
                    .map(|s| Secret::parse(s).map_err(|e| format!("a stored secret: {e}")))
                    .collect::<Result<Vec<_>, _>>()
            });
        match opened {
            Ok(secrets) if !secrets.is_empty() => Checked::Send(Box::new(d), secrets),
            Ok(_) => {
                tracing::error!(
                    endpoint_id = %d.endpoint_id, delivery_id = %d.id,
                    "the endpoint has no signing secret; not sending"
                );
                Checked::Unknown
            }
            Err(e) => {
                tracing::error!(
                    endpoint_id = %d.endpoint_id, delivery_id = %d.id, error = %e,
                    "not sending: the endpoint's signing secret cannot be read"
                );
                Checked::Unknown
            }
        }
    }
}
