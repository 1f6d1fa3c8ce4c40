//! The bench's own webhook receivers: a few HTTP listeners on 127.0.0.1, each serving many
//! endpoints at distinct paths (`/e/<n>`). Every request is verified with the endpoint's
//! secret through [`accommador_webhooks::Verifier`], its `webhook-id` and user id are recorded
//! with the receipt time on the bench's monotonic clock, and it is answered 204 (401 when the
//! signature does not verify, so the server retries and the failure is counted).
//!
//! An endpoint can also be told to hang: it holds each request for a while (the isolation
//! scenario) and is counted apart from the healthy ones.
//!
//! The listeners run on their own runtime (threads named `bench-recv`), so their CPU time is
//! reported apart from the load driver's.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use accommador_webhooks::{Verifier, WebhookHeaders};
use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// How an endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// 204 at once.
    Healthy,
    /// Holds every request this long (or until the receivers shut down), then 204.
    Hang(Duration),
}

/// One verified request to a healthy endpoint.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub endpoint: u32,
    /// `webhook-id`, the event id.
    pub event_id: Box<str>,
    /// `data.user.id` of the body.
    pub user_id: Box<str>,
    /// `data.user.version` of the body.
    pub version: u64,
    pub at: Instant,
}

#[derive(Debug)]
struct Slot {
    verifier: Verifier,
    behaviour: Behaviour,
}

/// What the receivers saw, shared by every listener.
#[derive(Debug, Default)]
pub struct Recorder {
    inner: Mutex<Recorded>,
    /// Distinct (endpoint, event) pairs received by healthy endpoints.
    unique: AtomicU64,
    /// Every verified request to a healthy endpoint, repeats included.
    total: AtomicU64,
    bad_signatures: AtomicU64,
    /// Requests whose body `id` differs from `webhook-id`, or whose body is not an event.
    bad_bodies: AtomicU64,
    hung: AtomicU64,
    unknown_paths: AtomicU64,
    /// Requests refused (500) because they are about the refused user.
    refused: AtomicU64,
}

#[derive(Debug, Default)]
struct Recorded {
    receipts: Vec<Receipt>,
    seen: HashSet<(u32, Box<str>)>,
    first_bad_signature: Option<String>,
}

/// Counters of the receivers, read while a scenario runs.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Counts {
    pub unique: u64,
    pub total: u64,
    pub bad_signatures: u64,
    pub bad_bodies: u64,
    pub hung_requests: u64,
    pub unknown_paths: u64,
    pub refused_for_user: u64,
}

impl Recorder {
    pub fn counts(&self) -> Counts {
        Counts {
            unique: self.unique.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            bad_signatures: self.bad_signatures.load(Ordering::Relaxed),
            bad_bodies: self.bad_bodies.load(Ordering::Relaxed),
            hung_requests: self.hung.load(Ordering::Relaxed),
            unknown_paths: self.unknown_paths.load(Ordering::Relaxed),
            refused_for_user: self.refused.load(Ordering::Relaxed),
        }
    }

    /// The receipts so far (leaving the recorder empty) and the first signature failure, if any.
    pub fn take(&self) -> (Vec<Receipt>, Option<String>) {
        let mut inner = self.inner.lock().expect("recorder lock");
        inner.seen.clear();
        (
            std::mem::take(&mut inner.receipts),
            inner.first_bad_signature.take(),
        )
    }

    fn record(&self, receipt: Receipt) {
        let mut inner = self.inner.lock().expect("recorder lock");
        if inner
            .seen
            .insert((receipt.endpoint, receipt.event_id.clone()))
        {
            self.unique.fetch_add(1, Ordering::Relaxed);
        }
        inner.receipts.push(receipt);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    fn bad_signature(&self, endpoint: u32, error: String) {
        self.bad_signatures.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.inner.lock().expect("recorder lock");
        inner
            .first_bad_signature
            .get_or_insert_with(|| format!("endpoint #{endpoint}: {error}"));
    }
}

#[derive(Debug)]
struct Shared {
    slots: RwLock<Vec<Option<Arc<Slot>>>>,
    recorder: Arc<Recorder>,
    shutdown: CancellationToken,
    /// Every endpoint answers 500 to events about this user (the ordering scenario's blocked
    /// user); nothing is recorded for them.
    refused_user: RwLock<Option<Box<str>>>,
}

/// A set of listeners and the endpoints they serve. Dropping it stops them.
#[derive(Debug)]
pub struct Receivers {
    addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
}

impl Receivers {
    /// Binds `listeners` listeners on 127.0.0.1 and serves them on `runtime`.
    pub fn start(runtime: &tokio::runtime::Handle, listeners: usize) -> anyhow::Result<Receivers> {
        let shared = Arc::new(Shared {
            slots: RwLock::new(Vec::new()),
            recorder: Arc::new(Recorder::default()),
            shutdown: CancellationToken::new(),
            refused_user: RwLock::new(None),
        });
        let mut addrs = Vec::new();
        for _ in 0..listeners.max(1) {
            let std_listener = std::net::TcpListener::bind("127.0.0.1:0")
                .context("binding a receiver on 127.0.0.1")?;
            std_listener.set_nonblocking(true)?;
            addrs.push(std_listener.local_addr()?);
            let app = axum::Router::new()
                .fallback(receive)
                .with_state(shared.clone());
            let stop = shared.shutdown.clone();
            runtime.spawn(async move {
                // Registered with the receivers' runtime, not the caller's.
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("accommador-bench: receiver listener: {e}");
                        return;
                    }
                };
                let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                    stop.cancelled().await;
                });
                if let Err(e) = serve.await {
                    eprintln!("accommador-bench: receiver: {e}");
                }
            });
        }
        Ok(Receivers { addrs, shared })
    }

    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.shared.recorder
    }

    /// From now on every endpoint answers 500 to events about `user` (`None`: to nobody).
    pub fn refuse_user(&self, user: Option<&str>) {
        *self.shared.refused_user.write().expect("refused user lock") = user.map(Into::into);
    }

    /// Whether some user's events are refused ([`Receivers::refuse_user`]).
    pub fn refusing(&self) -> bool {
        self.shared
            .refused_user
            .read()
            .expect("refused user lock")
            .is_some()
    }

    /// Makes room for an endpoint and returns its number and the URL to register with the
    /// server. Endpoints are spread over the listeners round-robin.
    pub fn reserve(&self) -> (u32, String) {
        let mut slots = self.shared.slots.write().expect("slots lock");
        let n = slots.len();
        slots.push(None);
        let addr = self.addrs[n % self.addrs.len()];
        let n = u32::try_from(n).expect("fewer than 4 billion endpoints");
        (n, format!("http://{addr}/e/{n}"))
    }

    /// Arms endpoint `n` with its secret, once the server has answered with it.
    pub fn arm(&self, n: u32, verifier: Verifier, behaviour: Behaviour) {
        let mut slots = self.shared.slots.write().expect("slots lock");
        slots[n as usize] = Some(Arc::new(Slot {
            verifier,
            behaviour,
        }));
    }
}

impl Drop for Receivers {
    fn drop(&mut self) {
        // Also releases requests held by hanging endpoints.
        self.shared.shutdown.cancel();
    }
}

#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(borrow)]
    id: &'a str,
    data: WireData<'a>,
}

#[derive(Deserialize)]
struct WireData<'a> {
    #[serde(borrow)]
    user: WireUser<'a>,
}

#[derive(Deserialize)]
struct WireUser<'a> {
    #[serde(borrow)]
    id: &'a str,
    #[serde(default)]
    version: u64,
}

fn endpoint_of(path: &str) -> Option<u32> {
    path.strip_prefix("/e/")?.parse().ok()
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let at = Instant::now();
    let recorder = &shared.recorder;
    let slot = endpoint_of(uri.path()).and_then(|n| {
        let slots = shared.slots.read().expect("slots lock");
        slots.get(n as usize).cloned().flatten().map(|s| (n, s))
    });
    let Some((n, slot)) = slot else {
        recorder.unknown_paths.fetch_add(1, Ordering::Relaxed);
        return StatusCode::NOT_FOUND;
    };
    let verified = WebhookHeaders::from_pairs(headers.iter().map(|(k, v)| (k.as_str(), v)))
        .and_then(|h| slot.verifier.verify(&h, &body).map(|()| h.id));
    let webhook_id = match verified {
        Ok(id) => id,
        Err(e) => {
            recorder.bad_signature(n, e.to_string());
            return StatusCode::UNAUTHORIZED;
        }
    };
    if let Behaviour::Hang(d) = slot.behaviour {
        recorder.hung.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            () = tokio::time::sleep(d) => {}
            () = shared.shutdown.cancelled() => {}
        }
        return StatusCode::NO_CONTENT;
    }
    match serde_json::from_slice::<WireEvent<'_>>(&body) {
        Ok(event) if event.id == webhook_id => {
            let refused = shared
                .refused_user
                .read()
                .expect("refused user lock")
                .as_deref()
                == Some(event.data.user.id);
            if refused {
                recorder.refused.fetch_add(1, Ordering::Relaxed);
                return StatusCode::INTERNAL_SERVER_ERROR;
            }
            recorder.record(Receipt {
                endpoint: n,
                event_id: webhook_id.into(),
                user_id: event.data.user.id.into(),
                version: event.data.user.version,
                at,
            });
        }
        _ => {
            recorder.bad_bodies.fetch_add(1, Ordering::Relaxed);
        }
    }
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_paths() {
        assert_eq!(endpoint_of("/e/0"), Some(0));
        assert_eq!(endpoint_of("/e/10000"), Some(10000));
        assert_eq!(endpoint_of("/e/"), None);
        assert_eq!(endpoint_of("/x/1"), None);
    }
}
