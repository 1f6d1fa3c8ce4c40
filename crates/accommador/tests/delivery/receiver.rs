//! A real local webhook receiver on port 0: records every request and answers each path from a
//! script of responses (status, headers, delay), 204 by default.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub delay: Duration,
    /// The response body (none by default).
    pub body: Vec<u8>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
            body: Vec::new(),
        }
    }
    pub fn header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_owned()));
        self
    }
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Reply {
        self.body = body.into();
        self
    }
}

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub user_agent: String,
    pub content_type: String,
    pub body: Bytes,
    pub at: Instant,
    /// The wall-clock time of arrival (for comparing with `webhook-timestamp` and HTTP dates).
    pub wall: SystemTime,
}

#[derive(Default)]
struct Inner {
    script: HashMap<String, VecDeque<Reply>>,
    received: Vec<Received>,
    /// Requests being answered now, by (path, webhook-id).
    open: HashMap<(String, String), usize>,
    /// Requests that arrived while another one of the same delivery was still open.
    overlaps: usize,
    /// Replies for requests whose body contains a needle (a user's email, say), before any
    /// script of their path.
    body_script: Vec<(String, VecDeque<Reply>)>,
    /// Replies for every path without a script of its own.
    default: Option<Reply>,
    /// Each delivery (`webhook-id`) fails its first 0 to this many requests with a 500, a
    /// number drawn from its ID (so the same on every run of it).
    flaky: Option<u64>,
    /// Per watched path prefix: requests open now, and the most ever open at once.
    watched: HashMap<String, (usize, usize)>,
}

impl Inner {
    /// Counts a request to `path` opening (`+1`) or closing (`-1`) in every watched prefix.
    fn count_open(&mut self, path: &str, opening: bool) {
        for (prefix, (now, peak)) in &mut self.watched {
            if path.starts_with(prefix.as_str()) {
                if opening {
                    *now += 1;
                    *peak = (*peak).max(*now);
                } else {
                    *now = now.saturating_sub(1);
                }
            }
        }
    }
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    notify: Arc<Notify>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Receiver::serve(listener)
    }

    /// Holds a free 127.0.0.1 port without listening on it: connections to it are refused
    /// until [`ReservedPort::start`] makes a receiver listen there (no other process can take
    /// the port meanwhile).
    pub fn reserve() -> ReservedPort {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        ReservedPort { socket, addr }
    }

    fn serve(listener: tokio::net::TcpListener) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let r = Receiver {
            addr,
            inner: Arc::default(),
            notify: Arc::new(Notify::new()),
        };
        let app = axum::Router::new().fallback(receive).with_state(r.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        r
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The next requests to `path` get these replies, in order; then 204 again.
    pub fn script(&self, path: &str, replies: Vec<Reply>) {
        self.inner
            .lock()
            .unwrap()
            .script
            .entry(path.to_owned())
            .or_default()
            .extend(replies);
    }

    /// The next requests whose body contains `needle` get these replies, in order (whatever
    /// their path); then their path's script or 204 again.
    pub fn script_body(&self, needle: &str, replies: Vec<Reply>) {
        self.inner
            .lock()
            .unwrap()
            .body_script
            .push((needle.to_owned(), replies.into()));
    }

    /// Drops what is left of `path`'s script: it answers 204 (or the default reply) again.
    pub fn clear_script(&self, path: &str) {
        self.inner.lock().unwrap().script.remove(path);
    }

    /// From now on each delivery without a script fails its first few requests (0 to `max`,
    /// drawn from its `webhook-id`) with a 500, then gets 204.
    pub fn flaky(&self, max: u64) {
        self.inner.lock().unwrap().flaky = Some(max);
    }

    /// Every path without a script answers this (instead of 204).
    pub fn default_reply(&self, reply: Reply) {
        self.inner.lock().unwrap().default = Some(reply);
    }

    /// How many requests arrived while another request for the same delivery was open.
    pub fn overlaps(&self) -> usize {
        self.inner.lock().unwrap().overlaps
    }

    /// From now on, counts the requests to paths starting with `prefix` that are open at once.
    pub fn watch(&self, prefix: &str) {
        self.inner
            .lock()
            .unwrap()
            .watched
            .insert(prefix.to_owned(), (0, 0));
    }

    /// The most requests to the watched `prefix` that were open at once.
    pub fn peak_open(&self, prefix: &str) -> usize {
        self.inner.lock().unwrap().watched[prefix].1
    }

    /// Every request to any path.
    pub fn all(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    pub fn received(&self, path: &str) -> Vec<Received> {
        let inner = self.inner.lock().unwrap();
        inner
            .received
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` has received at least `n` requests (at most `limit`).
    pub async fn wait_for(&self, path: &str, n: usize, limit: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.notify.notified();
            let got = self.received(path);
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "{path} received {} of {n} requests within {limit:?}",
                    self.received(path).len()
                );
            }
        }
    }

    /// Waits (at most `limit`) for a request to `path` whose body contains `needle` (a user's
    /// email, say), and returns it.
    pub async fn wait_for_body(&self, path: &str, needle: &str, limit: Duration) -> Received {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.notify.notified();
            let found = self
                .received(path)
                .into_iter()
                .find(|r| String::from_utf8_lossy(&r.body).contains(needle));
            if let Some(r) = found {
                return r;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("no request about {needle} reached {path} within {limit:?}");
            }
        }
    }
}

/// Panics unless `r` carries a valid Standard Webhooks signature by `secret`.
pub fn verify(secret: &str, r: &Received) {
    let headers = accommador_webhooks::WebhookHeaders {
        id: &r.id,
        timestamp: &r.timestamp,
        signature: &r.signature,
    };
    accommador_webhooks::Verifier::new(accommador_webhooks::Secret::parse(secret).unwrap())
        .verify(&headers, &r.body)
        .unwrap_or_else(|e| panic!("{} does not verify: {e}", r.id));
}

async fn receive(State(r): State<Receiver>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let path = uri.path().to_owned();
    let key = (path.clone(), header("webhook-id"));
    let reply = {
        let mut inner = r.inner.lock().unwrap();
        let open = inner.open.entry(key.clone()).or_default();
        *open += 1;
        if *open > 1 {
            inner.overlaps += 1;
        }
        inner.count_open(&path, true);
        inner.received.push(Received {
            path: path.clone(),
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
            user_agent: header("user-agent"),
            content_type: header("content-type"),
            body,
            at: Instant::now(),
            wall: SystemTime::now(),
        });
        let text = String::from_utf8_lossy(&inner.received.last().unwrap().body).into_owned();
        let by_body = inner
            .body_script
            .iter_mut()
            .find(|(needle, replies)| !replies.is_empty() && text.contains(needle.as_str()))
            .and_then(|(_, replies)| replies.pop_front());
        let scripted =
            by_body.or_else(|| inner.script.get_mut(&path).and_then(VecDeque::pop_front));
        let flaky = inner.flaky.and_then(|max| {
            let id = &key.1;
            // FNV-1a of the ID: fixed per delivery, spread over 0..=max.
            let failures = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            }) % (max + 1);
            let before = inner.received.iter().filter(|r| &r.id == id).count() as u64 - 1;
            (before < failures).then(|| Reply::status(500))
        });
        scripted.or(flaky).or_else(|| inner.default.clone())
    };
    // Closed when the reply is sent, or when the sender gives up on it (timeout).
    let _open = OpenGuard(r.inner.clone(), key);
    r.notify.notify_waiters();
    let reply = reply.unwrap_or_else(|| Reply::status(204));
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let status = StatusCode::from_u16(reply.status).unwrap();
    let mut response = if reply.body.is_empty() {
        status.into_response()
    } else {
        (status, reply.body).into_response()
    };
    for (name, value) in reply.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

/// A bound 127.0.0.1 port nobody listens on yet (see [`Receiver::reserve`]).
pub struct ReservedPort {
    socket: tokio::net::TcpSocket,
    pub addr: SocketAddr,
}

impl ReservedPort {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Starts listening on the reserved port: from now on it is a receiver like any other.
    pub fn start(self) -> Receiver {
        Receiver::serve(self.socket.listen(1024).unwrap())
    }
}

struct OpenGuard(Arc<Mutex<Inner>>, (String, String));

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let mut inner = self.0.lock().unwrap();
        if let Some(open) = inner.open.get_mut(&self.1) {
            *open -= 1;
        }
        inner.count_open(&self.1.0, false);
    }
}
