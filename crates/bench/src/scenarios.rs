//! The six scenarios of issue 7, the purge scenario of issue 12 ([`purge`]), the
//! slow-clients scenario of issue 14 ([`slow_clients`]) and the noisy-neighbour scenario of
//! issue 11 ([`noisy`]). Each starts its own server on a fresh database, its own receivers
//! and organizations, runs its phases, waits (bounded) for the deliveries, checks them against
//! the outbox, and stops the server with SIGTERM.

mod noisy;
mod ordering;
mod purge;
mod rate_limit;
mod slow_clients;

pub use noisy::{Noisy, noisy};
pub use ordering::{OrderingScenario, ordering};
pub use purge::{Purge, PurgeMetrics, purge};
pub use rate_limit::{RateLimit, rate_limit};
pub use slow_clients::{SlowClients, slow_clients};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use accommador_webhooks::{Secret, Verifier};
use anyhow::Context;
use indicatif::ProgressBar;
use serde::Serialize;

use crate::api::Api;
use crate::check::{self, Tally};
use crate::cli::Cli;
use crate::load::{self, Acked, Outcome, Plan, Stop, Target};
use crate::meter::{Meter, Usage};
use crate::progress::{Progress, tracked};
use crate::receivers::{Behaviour, Counts, Receipt, Receivers};
use crate::server::{Launcher, Server};
use crate::stats::{Latencies, LatencySummary, per_second};

/// What every scenario needs.
#[derive(Debug)]
pub struct Bench {
    pub cli: Cli,
    pub launcher: Launcher,
    /// The receivers' runtime.
    pub receivers_runtime: tokio::runtime::Handle,
    pub data_dir: PathBuf,
    pub progress: Progress,
    pub ticks: u64,
}

impl Bench {
    fn database(&self, label: &str) -> String {
        match &self.cli.database {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}",
                self.data_dir.join(format!("{label}.db")).display()
            ),
        }
    }

    async fn server(&self, label: &str, database: &str, no_worker: bool) -> anyhow::Result<Server> {
        self.launcher.start(label, database, no_worker).await
    }

    fn receivers(&self, listeners: usize) -> anyhow::Result<Arc<Receivers>> {
        Ok(Arc::new(Receivers::start(
            &self.receivers_runtime,
            listeners,
        )?))
    }

    fn seconds(&self) -> Duration {
        Duration::from_secs(self.cli.seconds.max(1))
    }

    fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.cli.drain_timeout)
    }
}

/// The API side of a load phase.
#[derive(Debug, Clone, Serialize)]
pub struct LoadSummary {
    /// 2xx answers.
    pub ok: u64,
    /// Other answers by status code.
    pub refused: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub first_error: Option<String>,
    pub elapsed_s: f64,
    /// 2xx answers per second.
    pub ok_per_s: f64,
    /// From sending the request to its 2xx.
    pub api_latency: Option<LatencySummary>,
}

fn load_summary(o: &Outcome) -> LoadSummary {
    let mut api = Latencies::default();
    for a in &o.acked {
        api.record(a.acked.saturating_duration_since(a.sent));
    }
    LoadSummary {
        ok: o.acked.len() as u64,
        refused: o.refused.clone(),
        transport_errors: o.transport_errors,
        first_error: o.first_error.clone(),
        elapsed_s: o.elapsed().as_secs_f64(),
        ok_per_s: per_second(o.acked.len() as u64, o.elapsed()),
        api_latency: api.summary(),
    }
}

/// Delivery times of one phase, first receipt of each (endpoint, event) only.
#[derive(Debug, Default)]
pub struct DeliveryTimes {
    /// From the 2xx of the user's creation to the receipt.
    pub latencies: Latencies,
    /// Receipts that arrived before the bench had read the 2xx (counted as 0 µs).
    pub before_ack: u64,
    /// Receipts of users the bench did not see acknowledged.
    pub unmatched: u64,
    /// Receipt instants, sorted.
    pub arrivals: Vec<Instant>,
    /// Each matched receipt's 2xx instant and latency, in no order (for [`by_second`]).
    pub by_ack: Vec<(Instant, Duration)>,
}

/// One second of a run (by the 2xx instant, from the first): how many receipts and their
/// p99 and max, to tell a tail spread over the run from a stall or a slow start.
#[derive(Debug, Clone, Serialize)]
pub struct SecondLatency {
    pub second: u64,
    pub count: u64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Splits `by_ack` into seconds from its earliest 2xx.
pub fn by_second(by_ack: &[(Instant, Duration)]) -> Vec<SecondLatency> {
    let Some(start) = by_ack.iter().map(|(at, _)| *at).min() else {
        return Vec::new();
    };
    let mut seconds: Vec<Latencies> = Vec::new();
    for (at, latency) in by_ack {
        let i = at.saturating_duration_since(start).as_secs() as usize;
        if seconds.len() <= i {
            seconds.resize_with(i + 1, Latencies::default);
        }
        seconds[i].record(*latency);
    }
    seconds
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            l.summary().map(|s| SecondLatency {
                second: i as u64,
                count: s.count,
                p99_ms: s.p99_ms,
                max_ms: s.max_ms,
            })
        })
        .collect()
}

/// Matches receipts at `endpoints` to the acknowledged users by user id.
pub fn delivery_times(
    acked: &[Acked],
    receipts: &[Receipt],
    endpoints: &HashSet<u32>,
) -> DeliveryTimes {
    let ack_of: HashMap<&str, Instant> = acked.iter().map(|a| (&*a.user_id, a.acked)).collect();
    let mut first: HashMap<(u32, &str), (&str, Instant)> = HashMap::new();
    for r in receipts.iter().filter(|r| endpoints.contains(&r.endpoint)) {
        let slot = first
            .entry((r.endpoint, &r.event_id))
            .or_insert((&r.user_id, r.at));
        if r.at < slot.1 {
            slot.1 = r.at;
        }
    }
    let mut times = DeliveryTimes::default();
    for (user, at) in first.into_values() {
        times.arrivals.push(at);
        match ack_of.get(user) {
            Some(&acked) => {
                if at < acked {
                    times.before_ack += 1;
                }
                let latency = at.saturating_duration_since(acked);
                times.latencies.record(latency);
                times.by_ack.push((acked, latency));
            }
            None => times.unmatched += 1,
        }
    }
    times.arrivals.sort_unstable();
    times
}

/// Creates one endpoint per entry of `behaviours` in the organization of `key`, pointing at
/// `receivers`, `concurrency` at a time; returns their receiver numbers in the same order.
async fn create_endpoints(
    api: &Api,
    key: &str,
    receivers: &Arc<Receivers>,
    behaviours: Vec<Behaviour>,
    concurrency: usize,
    bar: &ProgressBar,
) -> anyhow::Result<Vec<u32>> {
    let behaviours = Arc::new(behaviours);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, behaviours.len().max(1)) {
        let (api, key, receivers) = (api.clone(), key.to_owned(), receivers.clone());
        let (behaviours, next, done) = (behaviours.clone(), next.clone(), done.clone());
        workers.spawn(async move {
            let mut made = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&behaviour) = behaviours.get(i) else {
                    break;
                };
                let (n, url) = receivers.reserve();
                let endpoint = api.create_endpoint(&key, &url).await?;
                let secret = Secret::parse(&endpoint.secret)
                    .with_context(|| format!("the secret of {}", endpoint.id))?;
                receivers.arm(n, Verifier::new(secret), behaviour);
                made.push((i, n));
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(made)
        });
    }
    let mut all = Vec::with_capacity(behaviours.len());
    let joined = tracked(
        async {
            while let Some(made) = workers.join_next().await {
                all.extend(made??);
            }
            anyhow::Ok(())
        },
        || bar.set_position(done.load(Ordering::Relaxed)),
    )
    .await;
    joined?;
    all.sort_unstable();
    Ok(all.into_iter().map(|(_, n)| n).collect())
}

/// One healthy endpoint in the organization of `key`; its receiver number.
async fn one_endpoint(
    api: &Api,
    key: &str,
    receivers: &Arc<Receivers>,
) -> anyhow::Result<Vec<u32>> {
    create_endpoints(
        api,
        key,
        receivers,
        vec![Behaviour::Healthy],
        1,
        &ProgressBar::hidden(),
    )
    .await
}

/// Creates `n` users as fast as the server answers, over `--connections`.
async fn create_users(
    b: &Bench,
    label: &str,
    base_url: &str,
    key: &str,
    n: u64,
    receivers: &Receivers,
) -> anyhow::Result<Outcome> {
    let plan = Plan {
        connections: b.cli.connections,
        stop: Stop::Count(n),
        rate: None,
    };
    drive(b, label, base_url, key, plan, receivers).await
}

/// Waits until the receivers have `target` distinct receipts in all, or `timeout`. True when
/// they got there.
async fn wait_for_receipts(
    receivers: &Receivers,
    target: u64,
    timeout: Duration,
    bar: &ProgressBar,
    base: u64,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let unique = receivers.recorder().counts().unique;
        bar.set_position(unique.saturating_sub(base));
        if unique >= target {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One load phase of user creations with a bar showing seconds (timed) or requests (counted).
async fn drive(
    b: &Bench,
    label: &str,
    base_url: &str,
    key: &str,
    plan: Plan,
    receivers: &Receivers,
) -> anyhow::Result<Outcome> {
    let ok = Arc::new(AtomicU64::new(0));
    let (len, unit) = match &plan.stop {
        Stop::After(d) => (d.as_secs(), "s"),
        Stop::Count(n) => (*n, "users"),
        Stop::Until(_) => (0, "s"),
    };
    let stop = plan.stop.clone();
    let bar = b.progress.bar(label, len, unit);
    let started = Instant::now();
    let delivered0 = receivers.recorder().counts().unique;
    let target = Target::CreateUsers {
        base: base_url.to_owned(),
        key: key.to_owned(),
    };
    let outcome = tracked(load::run(target, plan, ok.clone()), || {
        let created = ok.load(Ordering::Relaxed);
        match &stop {
            Stop::After(d) => bar.set_position(started.elapsed().min(*d).as_secs()),
            Stop::Count(_) => bar.set_position(created),
            Stop::Until(_) => {
                let s = started.elapsed().as_secs();
                bar.set_length(s.max(1));
                bar.set_position(s);
            }
        }
        let delivered = receivers.recorder().counts().unique - delivered0;
        bar.set_message(format!("{created} created, {delivered} delivered"));
    })
    .await;
    bar.finish_and_clear();
    outcome
}

/// Waits for `expected` more distinct receipts than `base`, with a bar.
async fn drain(
    b: &Bench,
    label: &str,
    receivers: &Receivers,
    base: u64,
    expected: u64,
    timeout: Duration,
) -> bool {
    let bar = b.progress.bar(label, expected, "deliveries");
    let drained = wait_for_receipts(receivers, base + expected, timeout, &bar, base).await;
    bar.finish_and_clear();
    if !drained {
        b.progress.note(&format!(
            "  {label}: gave up after {} s with {} of {expected} deliveries",
            timeout.as_secs(),
            receivers.recorder().counts().unique - base
        ));
    }
    drained
}

async fn stop(b: &Bench, server: Server) {
    let log = server.log_path.clone();
    match server.stop().await {
        Ok(status) if status.success() => {}
        Ok(status) => b.progress.note(&format!(
            "  note: the server exited with {status} (log: {})",
            log.display()
        )),
        Err(e) => b
            .progress
            .note(&format!("  note: stopping the server: {e:#}")),
    }
}

fn endpoint_set(endpoints: &[u32]) -> HashSet<u32> {
    endpoints.iter().copied().collect()
}

// ---------------------------------------------------------------------------------------------
// 6. ceiling

#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub connections: usize,
    pub seconds: u64,
    /// The plain loop: signed POSTs answered 2xx per second.
    pub requests_per_s: f64,
    pub load: LoadSummary,
    pub receivers: Counts,
    pub usage: Usage,
}

pub async fn ceiling(b: &Bench) -> anyhow::Result<Ceiling> {
    let receivers = b.receivers(1)?;
    let secret = Secret::generate();
    let (n, url) = receivers.reserve();
    receivers.arm(n, Verifier::new(secret.clone()), Behaviour::Healthy);
    let meter = Meter::start(None, b.ticks);
    let plan = Plan {
        connections: b.cli.connections,
        stop: Stop::After(b.seconds()),
        rate: None,
    };
    let ok = Arc::new(AtomicU64::new(0));
    let bar = b
        .progress
        .bar("6 ceiling: plain POST loop", b.cli.seconds, "s");
    let started = Instant::now();
    let seconds = b.seconds();
    let outcome = tracked(
        load::run(Target::Direct { url, secret }, plan, ok.clone()),
        || {
            bar.set_position(started.elapsed().min(seconds).as_secs());
            bar.set_message(format!("{} requests", ok.load(Ordering::Relaxed)));
        },
    )
    .await?;
    bar.finish_and_clear();
    let usage = meter.finish();
    let _ = receivers.recorder().take();
    Ok(Ceiling {
        connections: b.cli.connections,
        seconds: b.cli.seconds,
        requests_per_s: per_second(outcome.acked.len() as u64, outcome.elapsed()),
        load: load_summary(&outcome),
        receivers: receivers.recorder().counts(),
        usage,
    })
}

// ---------------------------------------------------------------------------------------------
// 1. sustained

#[derive(Debug, Clone, Serialize)]
pub struct Sustained {
    pub database: String,
    pub connections: usize,
    pub seconds: u64,
    pub load: LoadSummary,
    /// Deliveries that arrived while the load ran, per second of load: what delivery keeps
    /// up with while intake runs flat out.
    pub delivered_in_window_per_s: f64,
    /// Deliveries after the load stopped, per second from the end of the load to the last
    /// receipt: the drain rate of the backlog the load left.
    pub delivered_after_load_per_s: Option<f64>,
    /// All deliveries over the time from the start of the load to the last receipt: the
    /// rate the whole pipeline sustained, backlog drained included.
    pub end_to_end_per_s: f64,
    pub last_receipt_after_s: Option<f64>,
    pub drained: bool,
    /// 2xx → receipt, under saturation.
    pub latency: Option<LatencySummary>,
    pub arrived_before_ack: u64,
    /// Server CPU time per delivered event, µs.
    pub server_cpu_us_per_event: Option<f64>,
    pub tally: Tally,
    pub receivers: Counts,
    pub first_bad_signature: Option<String>,
    pub usage: Usage,
}

pub async fn sustained(b: &Bench) -> anyhow::Result<Sustained> {
    let database = b.database("sustained");
    let server = b.server("sustained", &database, false).await?;
    let api = Api::new(server.base_url.clone(), 4)?;
    let receivers = b.receivers(1)?;
    let org = api
        .create_org(&server.admin_token, "bench sustained")
        .await?;
    let endpoints = one_endpoint(&api, &org.api_key, &receivers).await?;
    let meter = Meter::start(Some(&server), b.ticks);
    let plan = Plan {
        connections: b.cli.connections,
        stop: Stop::After(b.seconds()),
        rate: None,
    };
    let outcome = drive(
        b,
        "1 sustained: load",
        &server.base_url,
        &org.api_key,
        plan,
        &receivers,
    )
    .await?;
    let drained = drain(
        b,
        "1 sustained: drain",
        &receivers,
        0,
        outcome.acked.len() as u64,
        b.drain_timeout(),
    )
    .await;
    let usage = meter.finish();
    let (receipts, first_bad_signature) = receivers.recorder().take();
    let events = api.created_events(&org.api_key).await?;
    stop(b, server).await;

    let tally = check::tally(
        outcome.acked.iter().map(|a| &*a.user_id),
        &events,
        &endpoints,
        &receipts,
    );
    let times = delivery_times(&outcome.acked, &receipts, &endpoint_set(&endpoints));
    let window_end = outcome.started + b.seconds();
    let in_window = times.arrivals.partition_point(|t| *t <= window_end) as u64;
    let last = times
        .arrivals
        .last()
        .map(|t| t.saturating_duration_since(outcome.started));
    let delivered = times.arrivals.len() as u64;
    Ok(Sustained {
        database,
        connections: b.cli.connections,
        seconds: b.cli.seconds,
        load: load_summary(&outcome),
        delivered_in_window_per_s: per_second(in_window, b.seconds()),
        delivered_after_load_per_s: times
            .arrivals
            .last()
            .filter(|last| **last > window_end)
            .map(|last| {
                per_second(
                    delivered - in_window,
                    last.saturating_duration_since(window_end),
                )
            }),
        end_to_end_per_s: last.map_or(0.0, |d| per_second(delivered, d)),
        last_receipt_after_s: last.map(|d| d.as_secs_f64()),
        drained,
        latency: times.latencies.summary(),
        arrived_before_ack: times.before_ack,
        server_cpu_us_per_event: usage
            .server_cpu
            .filter(|_| delivered > 0)
            .map(|c| c.total() * 1e6 / delivered as f64),
        tally,
        receivers: receivers.recorder().counts(),
        first_bad_signature,
        usage,
    })
}

// ---------------------------------------------------------------------------------------------
// 2. latency

#[derive(Debug, Clone, Serialize)]
pub struct LatencyRun {
    /// Requested users/s.
    pub rate: f64,
    pub seconds: u64,
    pub load: LoadSummary,
    /// 2xx → receipt.
    pub latency: Option<LatencySummary>,
    /// The same, second by second.
    pub by_second: Vec<SecondLatency>,
    pub arrived_before_ack: u64,
    pub drained: bool,
    pub tally: Tally,
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyScenario {
    pub database: String,
    pub connections: usize,
    pub runs: Vec<LatencyRun>,
    pub receivers: Counts,
    pub first_bad_signature: Option<String>,
}

pub async fn latency(b: &Bench) -> anyhow::Result<LatencyScenario> {
    let database = b.database("latency");
    let server = b.server("latency", &database, false).await?;
    let api = Api::new(server.base_url.clone(), 4)?;
    let receivers = b.receivers(1)?;
    let mut runs = Vec::new();
    let mut first_bad_signature = None;
    for &rate in &b.cli.rates {
        let org = api
            .create_org(&server.admin_token, &format!("bench latency {rate}/s"))
            .await?;
        let endpoints = one_endpoint(&api, &org.api_key, &receivers).await?;
        let base = receivers.recorder().counts().unique;
        let meter = Meter::start(Some(&server), b.ticks);
        let plan = Plan {
            connections: b.cli.connections,
            stop: Stop::After(b.seconds()),
            rate: Some(rate),
        };
        let label = format!("2 latency: {rate}/s");
        let outcome = drive(b, &label, &server.base_url, &org.api_key, plan, &receivers).await?;
        let drained = drain(
            b,
            &format!("{label} drain"),
            &receivers,
            base,
            outcome.acked.len() as u64,
            b.drain_timeout(),
        )
        .await;
        let usage = meter.finish();
        let (receipts, bad) = receivers.recorder().take();
        first_bad_signature = first_bad_signature.or(bad);
        let events = api.created_events(&org.api_key).await?;
        let tally = check::tally(
            outcome.acked.iter().map(|a| &*a.user_id),
            &events,
            &endpoints,
            &receipts,
        );
        let times = delivery_times(&outcome.acked, &receipts, &endpoint_set(&endpoints));
        runs.push(LatencyRun {
            rate,
            seconds: b.cli.seconds,
            load: load_summary(&outcome),
            latency: times.latencies.summary(),
            by_second: by_second(&times.by_ack),
            arrived_before_ack: times.before_ack,
            drained,
            tally,
            usage,
        });
    }
    stop(b, server).await;
    Ok(LatencyScenario {
        database,
        connections: b.cli.connections,
        runs,
        receivers: receivers.recorder().counts(),
        first_bad_signature,
    })
}

// ---------------------------------------------------------------------------------------------
// 5. isolation

#[derive(Debug, Clone, Serialize)]
pub struct IsolationPhase {
    pub hanging_endpoints: usize,
    pub load: LoadSummary,
    /// 2xx → receipt at the healthy endpoints.
    pub latency: Option<LatencySummary>,
    pub arrived_before_ack: u64,
    pub drained: bool,
    /// Healthy endpoints only.
    pub tally: Tally,
    /// Requests the hanging endpoint received (and held).
    pub hung_requests: u64,
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize)]
pub struct Isolation {
    pub database: String,
    pub endpoints: usize,
    pub deliveries_per_s: f64,
    pub users_per_s: f64,
    pub hang_s: u64,
    pub baseline: IsolationPhase,
    pub with_hanging: IsolationPhase,
    /// p99 with the hanging endpoint over the baseline p99.
    pub p99_ratio: Option<f64>,
    pub receivers: Counts,
    pub first_bad_signature: Option<String>,
}

pub async fn isolation(b: &Bench) -> anyhow::Result<Isolation> {
    let database = b.database("isolation");
    let server = b.server("isolation", &database, false).await?;
    let api = Api::new(server.base_url.clone(), b.cli.connections)?;
    let receivers = b.receivers(b.cli.receivers)?;
    let n = b.cli.isolation_endpoints.max(2);
    let users_per_s = b.cli.isolation_rate / n as f64;
    let mut phases = Vec::new();
    let mut first_bad_signature = None;
    for hanging in [0usize, 1] {
        let name = if hanging == 0 {
            "baseline"
        } else {
            "one hanging"
        };
        let org = api
            .create_org(&server.admin_token, &format!("bench isolation {name}"))
            .await?;
        let behaviours: Vec<Behaviour> = (0..n)
            .map(|i| {
                if i < hanging {
                    Behaviour::Hang(Duration::from_secs(b.cli.hang_seconds))
                } else {
                    Behaviour::Healthy
                }
            })
            .collect();
        let bar = b
            .progress
            .bar(&format!("5 isolation: {name}: endpoints"), n as u64, "");
        let endpoints = create_endpoints(
            &api,
            &org.api_key,
            &receivers,
            behaviours,
            b.cli.connections,
            &bar,
        )
        .await?;
        bar.finish_and_clear();
        let healthy: Vec<u32> = endpoints[hanging..].to_vec();
        let hung0 = receivers.recorder().counts().hung_requests;
        let base = receivers.recorder().counts().unique;
        let meter = Meter::start(Some(&server), b.ticks);
        let plan = Plan {
            connections: b.cli.connections,
            stop: Stop::After(b.seconds()),
            rate: Some(users_per_s),
        };
        let label = format!("5 isolation: {name}");
        let outcome = drive(b, &label, &server.base_url, &org.api_key, plan, &receivers).await?;
        let expected = outcome.acked.len() as u64 * healthy.len() as u64;
        let drained = drain(
            b,
            &format!("{label} drain"),
            &receivers,
            base,
            expected,
            b.drain_timeout(),
        )
        .await;
        let usage = meter.finish();
        let (receipts, bad) = receivers.recorder().take();
        first_bad_signature = first_bad_signature.or(bad);
        let events = api.created_events(&org.api_key).await?;
        let tally = check::tally(
            outcome.acked.iter().map(|a| &*a.user_id),
            &events,
            &healthy,
            &receipts,
        );
        let times = delivery_times(&outcome.acked, &receipts, &endpoint_set(&healthy));
        phases.push(IsolationPhase {
            hanging_endpoints: hanging,
            load: load_summary(&outcome),
            latency: times.latencies.summary(),
            arrived_before_ack: times.before_ack,
            drained,
            tally,
            hung_requests: receivers.recorder().counts().hung_requests - hung0,
            usage,
        });
    }
    stop(b, server).await;
    let with_hanging = phases.pop().expect("two phases");
    let baseline = phases.pop().expect("two phases");
    let p99_ratio = match (&baseline.latency, &with_hanging.latency) {
        (Some(a), Some(h)) if a.p99_ms > 0.0 => Some(h.p99_ms / a.p99_ms),
        _ => None,
    };
    Ok(Isolation {
        database,
        endpoints: n,
        deliveries_per_s: b.cli.isolation_rate,
        users_per_s,
        hang_s: b.cli.hang_seconds,
        baseline,
        with_hanging,
        p99_ratio,
        receivers: receivers.recorder().counts(),
        first_bad_signature,
    })
}

// ---------------------------------------------------------------------------------------------
// 3. fan-out

#[derive(Debug, Clone, Serialize)]
pub struct FanoutEvent {
    /// From the API's 2xx to the first, median and last receipt.
    pub to_first_ms: f64,
    pub to_median_ms: f64,
    pub to_last_ms: f64,
    pub delivered: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutRun {
    pub endpoints: usize,
    /// Time to create the endpoints through the API.
    pub create_endpoints_s: f64,
    pub events: Vec<FanoutEvent>,
    pub to_last_ms_median: Option<f64>,
    pub to_last_ms_worst: Option<f64>,
    pub drained: bool,
    pub tally: Tally,
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize)]
pub struct Fanout {
    pub database: String,
    pub listeners: usize,
    pub runs: Vec<FanoutRun>,
    pub receivers: Counts,
    pub first_bad_signature: Option<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(sorted: &[f64]) -> Option<f64> {
    (!sorted.is_empty()).then(|| sorted[sorted.len() / 2])
}

pub async fn fanout(b: &Bench) -> anyhow::Result<Fanout> {
    let database = b.database("fanout");
    let server = b.server("fanout", &database, false).await?;
    let api = Api::new(server.base_url.clone(), b.cli.connections)?;
    let receivers = b.receivers(b.cli.receivers)?;
    let mut runs = Vec::new();
    let mut first_bad_signature = None;
    for &size in &b.cli.fanout {
        let org = api
            .create_org(&server.admin_token, &format!("bench fan-out {size}"))
            .await?;
        let bar = b
            .progress
            .bar(&format!("3 fan-out {size}: endpoints"), size as u64, "");
        let t = Instant::now();
        let endpoints = create_endpoints(
            &api,
            &org.api_key,
            &receivers,
            vec![Behaviour::Healthy; size],
            b.cli.connections,
            &bar,
        )
        .await?;
        let create_endpoints_s = t.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let set = endpoint_set(&endpoints);
        let meter = Meter::start(Some(&server), b.ticks);
        let mut events = Vec::new();
        let mut all_acked = Vec::new();
        let mut all_receipts = Vec::new();
        let mut drained = true;
        for r in 0..b.cli.fanout_repeats.max(1) {
            let base = receivers.recorder().counts().unique;
            let plan = Plan {
                connections: 1,
                stop: Stop::Count(1),
                rate: None,
            };
            let target = Target::CreateUsers {
                base: server.base_url.clone(),
                key: org.api_key.clone(),
            };
            let outcome = load::run(target, plan, Arc::new(AtomicU64::new(0))).await?;
            let Some(acked) = outcome.acked.first().cloned() else {
                anyhow::bail!(
                    "fan-out {size}: creating the user failed: {}",
                    outcome.first_error.unwrap_or_default()
                );
            };
            let label = format!("3 fan-out {size}: event {}", r + 1);
            drained &= drain(b, &label, &receivers, base, size as u64, b.drain_timeout()).await;
            let (receipts, bad) = receivers.recorder().take();
            first_bad_signature = first_bad_signature.or(bad);
            let times = delivery_times(std::slice::from_ref(&acked), &receipts, &set);
            if let (Some(first), Some(last)) = (times.arrivals.first(), times.arrivals.last()) {
                let mid = times.arrivals[times.arrivals.len() / 2];
                events.push(FanoutEvent {
                    to_first_ms: ms(first.saturating_duration_since(acked.acked)),
                    to_median_ms: ms(mid.saturating_duration_since(acked.acked)),
                    to_last_ms: ms(last.saturating_duration_since(acked.acked)),
                    delivered: times.arrivals.len() as u64,
                });
            }
            all_acked.push(acked);
            all_receipts.extend(receipts);
        }
        let usage = meter.finish();
        let events_out = api.created_events(&org.api_key).await?;
        let tally = check::tally(
            all_acked.iter().map(|a| &*a.user_id),
            &events_out,
            &endpoints,
            &all_receipts,
        );
        let mut lasts: Vec<f64> = events.iter().map(|e| e.to_last_ms).collect();
        lasts.sort_by(f64::total_cmp);
        runs.push(FanoutRun {
            endpoints: size,
            create_endpoints_s,
            to_last_ms_median: median(&lasts),
            to_last_ms_worst: lasts.last().copied(),
            events,
            drained,
            tally,
            usage,
        });
    }
    stop(b, server).await;
    Ok(Fanout {
        database,
        listeners: b.cli.receivers,
        runs,
        receivers: receivers.recorder().counts(),
        first_bad_signature,
    })
}

// ---------------------------------------------------------------------------------------------
// 4. backlog

#[derive(Debug, Clone, Serialize)]
pub struct Backlog {
    pub database: String,
    pub events: u64,
    /// Building the backlog with `serve --no-worker`.
    pub build: LoadSummary,
    pub build_server_peak_rss_kb: Option<u64>,
    /// Restart with workers: spawn → `/readyz`.
    pub startup_s: f64,
    /// Spawn → first receipt.
    pub first_receipt_s: Option<f64>,
    /// Spawn → last receipt.
    pub drain_s: Option<f64>,
    /// Events / (spawn → last receipt).
    pub drain_per_s: f64,
    /// Events / (first → last receipt).
    pub steady_per_s: f64,
    pub drained: bool,
    /// The draining server's whole-life CPU seconds (startup included).
    pub server_cpu_s: f64,
    pub server_cpu_us_per_event: Option<f64>,
    /// The draining server's peak RSS (VmHWM), KiB.
    pub server_peak_rss_kb: Option<u64>,
    pub tally: Tally,
    pub receivers: Counts,
    pub first_bad_signature: Option<String>,
    /// From `/readyz` of the draining server to the end of the drain.
    pub usage: Usage,
}

pub async fn backlog(b: &Bench) -> anyhow::Result<Backlog> {
    let n = b.cli.backlog.max(1);
    let database = b.database("backlog");
    let builder = b.server("backlog-build", &database, true).await?;
    let api = Api::new(builder.base_url.clone(), 4)?;
    let receivers = b.receivers(1)?;
    let org = api
        .create_org(&builder.admin_token, "bench backlog")
        .await?;
    let endpoints = one_endpoint(&api, &org.api_key, &receivers).await?;
    let build = create_users(
        b,
        "4 backlog: build (no worker)",
        &builder.base_url,
        &org.api_key,
        n,
        &receivers,
    )
    .await?;
    let build_server_peak_rss_kb = Some(builder.memory().peak_rss_kb).filter(|&k| k > 0);
    if receivers.recorder().counts().total > 0 {
        b.progress
            .note("  note: deliveries arrived from a --no-worker server");
    }
    stop(b, builder).await;

    let expected = build.acked.len() as u64;
    let server = b.server("backlog-drain", &database, false).await?;
    let api = Api::new(server.base_url.clone(), 4)?;
    let meter = Meter::start(Some(&server), b.ticks);
    let timeout = b.drain_timeout() + Duration::from_secs(expected / 1000);
    let drained = drain(b, "4 backlog: drain", &receivers, 0, expected, timeout).await;
    let usage = meter.finish();
    let server_cpu_s = server.cpu().total();
    let server_peak_rss_kb = Some(server.memory().peak_rss_kb).filter(|&k| k > 0);
    let (receipts, first_bad_signature) = receivers.recorder().take();
    let events = api.created_events(&org.api_key).await?;
    let spawned = server.spawned_at;
    let startup_s = server
        .ready_at
        .saturating_duration_since(spawned)
        .as_secs_f64();
    stop(b, server).await;

    let tally = check::tally(
        build.acked.iter().map(|a| &*a.user_id),
        &events,
        &endpoints,
        &receipts,
    );
    let times = delivery_times(&build.acked, &receipts, &endpoint_set(&endpoints));
    let delivered = times.arrivals.len() as u64;
    let first = times
        .arrivals
        .first()
        .map(|t| t.saturating_duration_since(spawned));
    let last = times
        .arrivals
        .last()
        .map(|t| t.saturating_duration_since(spawned));
    let steady = match (times.arrivals.first(), times.arrivals.last()) {
        (Some(f), Some(l)) => per_second(delivered, l.saturating_duration_since(*f)),
        _ => 0.0,
    };
    Ok(Backlog {
        database,
        events: n,
        build: load_summary(&build),
        build_server_peak_rss_kb,
        startup_s,
        first_receipt_s: first.map(|d| d.as_secs_f64()),
        drain_s: last.map(|d| d.as_secs_f64()),
        drain_per_s: last.map_or(0.0, |d| per_second(delivered, d)),
        steady_per_s: steady,
        drained,
        server_cpu_s,
        server_cpu_us_per_event: (delivered > 0).then(|| server_cpu_s * 1e6 / delivered as f64),
        server_peak_rss_kb,
        tally,
        receivers: receivers.recorder().counts(),
        first_bad_signature,
        usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_times_use_the_first_receipt_and_clamp_early_ones() {
        let t0 = Instant::now();
        let acked = vec![
            Acked {
                user_id: "u1".into(),
                version: Some(1),
                sent: t0,
                acked: t0 + Duration::from_millis(10),
            },
            Acked {
                user_id: "u2".into(),
                version: Some(1),
                sent: t0,
                acked: t0 + Duration::from_millis(20),
            },
        ];
        let receipt = |endpoint, event: &str, user: &str, after_ms| Receipt {
            endpoint,
            event_id: event.into(),
            user_id: user.into(),
            version: 1,
            at: t0 + Duration::from_millis(after_ms),
        };
        let receipts = vec![
            receipt(0, "e1", "u1", 13),
            receipt(0, "e1", "u1", 50), // a duplicate: ignored
            receipt(0, "e2", "u2", 19), // before the bench read the 2xx
            receipt(1, "e1", "u1", 99), // another endpoint: ignored
            receipt(0, "e9", "u9", 30), // nobody acknowledged u9
        ];
        let times = delivery_times(&acked, &receipts, &HashSet::from([0]));
        assert_eq!(times.arrivals.len(), 3);
        assert_eq!(times.before_ack, 1);
        assert_eq!(times.unmatched, 1);
        let s = times.latencies.summary().unwrap();
        assert_eq!(s.count, 2);
        assert!((s.max_ms - 3.0).abs() < 0.01, "{s:?}");
        assert!(s.min_ms < 0.01, "{s:?}");
    }
}
