//! Drives `POST /v1/users` (and, for the ceiling, plain signed POSTs to the receivers) over N
//! keep-alive connections: one task and one single-connection client per connection.
//!
//! - closed loop: every worker sends its next request as soon as the previous one is answered,
//!   for a duration or until a number of requests was handed out;
//! - open loop: request `i` is due at `start + i / rate` whatever happened before, picked up by
//!   whichever worker is free (if all are busy it goes out late; the achieved rate shows it).
//!
//! Each 2xx records the user id and the instant the response arrived on the bench's monotonic
//! clock; that instant is where delivery latency starts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use accommador_webhooks::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, Secret};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::api::http_client;

/// When a load phase ends.
#[derive(Debug, Clone)]
pub enum Stop {
    /// Closed loop: no new request after this long; open loop: requests due before it.
    After(Duration),
    /// Exactly this many requests in all.
    Count(u64),
    /// No new request once the token is cancelled (a phase whose end depends on what the
    /// server does meanwhile, e.g. the purge catching up).
    Until(CancellationToken),
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub connections: usize,
    pub stop: Stop,
    /// `None`: as fast as the server answers (closed loop).
    pub rate: Option<f64>,
}

/// One created user, as the bench saw it.
#[derive(Debug, Clone)]
pub struct Acked {
    pub user_id: Box<str>,
    /// The user's version after the request (absent on the ceiling's direct posts).
    pub version: Option<u64>,
    pub sent: Instant,
    pub acked: Instant,
}

/// Everything one load phase sent and got back.
#[derive(Debug)]
pub struct Outcome {
    pub acked: Vec<Acked>,
    /// Non-2xx answers by status code.
    pub refused: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub first_error: Option<String>,
    pub started: Instant,
    pub ended: Instant,
}

impl Outcome {
    pub fn elapsed(&self) -> Duration {
        self.ended.saturating_duration_since(self.started)
    }
}

#[derive(Debug, Default)]
struct WorkerLog {
    acked: Vec<Acked>,
    refused: BTreeMap<u16, u64>,
    transport_errors: u64,
    first_error: Option<String>,
}

#[derive(Deserialize)]
struct CreatedUser {
    id: String,
    version: Option<u64>,
}

/// What one request of a load phase is.
#[derive(Debug, Clone)]
pub enum Target {
    /// `POST {base}/v1/users` with a unique email, as the organization of `key`.
    CreateUsers { base: String, key: String },
    /// `PATCH {base}/v1/users/{id}` of `ids[i % len]` (a new name each time): one
    /// `user.updated` event per request, spread over these users.
    UpdateUsers {
        base: String,
        key: String,
        ids: Arc<Vec<String>>,
    },
    /// The ceiling: `POST url` of a webhook-like body signed with `secret`, straight to a
    /// receiver, with no server in between.
    Direct { url: String, secret: Secret },
}

/// Numbers the load phases of this process, so emails stay unique when several phases create
/// users in one organization.
static PHASE: AtomicU64 = AtomicU64::new(0);

/// Runs one load phase. `progress` counts 2xx answers as they come.
pub async fn run(target: Target, plan: Plan, progress: Arc<AtomicU64>) -> anyhow::Result<Outcome> {
    let ticket = Arc::new(AtomicU64::new(0));
    let phase = PHASE.fetch_add(1, Ordering::Relaxed);
    let target = Arc::new(target);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..plan.connections.max(1) {
        let client = http_client(1)?;
        let ticket = ticket.clone();
        let target = target.clone();
        let progress = progress.clone();
        let plan = plan.clone();
        workers.spawn(async move {
            let mut log = WorkerLog::default();
            loop {
                let i = ticket.fetch_add(1, Ordering::Relaxed);
                match (&plan.stop, plan.rate) {
                    (Stop::Count(n), _) if i >= *n => break,
                    (Stop::After(d), None) if started.elapsed() >= *d => break,
                    (Stop::Until(token), _) if token.is_cancelled() => break,
                    _ => {}
                }
                if let Some(rate) = plan.rate {
                    let due = Duration::from_secs_f64(i as f64 / rate);
                    match &plan.stop {
                        Stop::After(d) if due >= *d => break,
                        Stop::Until(token) => {
                            tokio::select! {
                                () = token.cancelled() => break,
                                () = tokio::time::sleep_until((started + due).into()) => {}
                            }
                        }
                        _ => tokio::time::sleep_until((started + due).into()).await,
                    }
                }
                if send(&client, &target, phase, i, &mut log).await {
                    progress.fetch_add(1, Ordering::Relaxed);
                }
            }
            log
        });
    }
    let mut outcome = Outcome {
        acked: Vec::new(),
        refused: BTreeMap::new(),
        transport_errors: 0,
        first_error: None,
        started,
        ended: started,
    };
    while let Some(log) = workers.join_next().await {
        let log = log?;
        outcome.acked.extend(log.acked);
        for (status, n) in log.refused {
            *outcome.refused.entry(status).or_default() += n;
        }
        outcome.transport_errors += log.transport_errors;
        if outcome.first_error.is_none() {
            outcome.first_error = log.first_error;
        }
    }
    outcome.ended = outcome
        .acked
        .iter()
        .map(|a| a.acked)
        .max()
        .unwrap_or(started)
        .max(started);
    Ok(outcome)
}

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Sends request `i`; true when it was answered 2xx.
async fn send(
    client: &reqwest::Client,
    target: &Target,
    phase: u64,
    i: u64,
    log: &mut WorkerLog,
) -> bool {
    let sent = Instant::now();
    let (request, synthetic_id) = match target {
        Target::CreateUsers { base, key } => (
            client
                .post(format!("{base}/v1/users"))
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"email":"user{phase}-{i}@bench.example","name":"Bench User {i}"}}"#
                )),
            None,
        ),
        Target::UpdateUsers { base, key, ids } => (
            client
                .patch(format!("{base}/v1/users/{}", ids[i as usize % ids.len()]))
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(format!(r#"{{"name":"Bench {phase}-{i}"}}"#)),
            None,
        ),
        Target::Direct { url, secret } => {
            // Shaped and signed like a real delivery, so the receiver does the same work.
            let event_id = format!("evt_ceiling{i:015}");
            let user_id = format!("usr_ceiling{i:015}");
            let body = format!(
                r#"{{"id":"{event_id}","type":"user.created","timestamp":"2026-01-01T00:00:00.000Z","data":{{"user":{{"id":"{user_id}","email":"user{i}@bench.example","name":"Bench User {i}","attributes":{{}},"version":1,"created_at":"2026-01-01T00:00:00.000Z","updated_at":"2026-01-01T00:00:00.000Z"}}}}}}"#
            );
            let ts = unix_seconds();
            let signature = secret.sign(&event_id, ts, body.as_bytes());
            (
                client
                    .post(url)
                    .header("content-type", "application/json")
                    .header(HEADER_ID, event_id)
                    .header(HEADER_TIMESTAMP, ts.to_string())
                    .header(HEADER_SIGNATURE, signature)
                    .body(body),
                Some(user_id),
            )
        }
    };
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            log.transport_errors += 1;
            log.first_error.get_or_insert_with(|| format!("{e:#}"));
            return false;
        }
    };
    let status = response.status();
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(e) => {
            log.transport_errors += 1;
            log.first_error.get_or_insert_with(|| format!("{e:#}"));
            return false;
        }
    };
    let acked = Instant::now();
    if !status.is_success() {
        *log.refused.entry(status.as_u16()).or_default() += 1;
        log.first_error.get_or_insert_with(|| {
            format!(
                "{status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            )
        });
        return false;
    }
    let (user_id, version) = match synthetic_id {
        Some(id) => (id, None),
        None => match serde_json::from_slice::<CreatedUser>(&body) {
            Ok(u) => (u.id, u.version),
            Err(e) => {
                log.transport_errors += 1;
                log.first_error
                    .get_or_insert_with(|| format!("2xx without a user id: {e}"));
                return false;
            }
        },
    };
    log.acked.push(Acked {
        user_id: user_id.into(),
        version,
        sent,
        acked,
    });
    true
}
