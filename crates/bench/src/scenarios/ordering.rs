//! Scenario 8, per-user ordering (issue 16): what `"ordering": "per_user"` costs.
//!
//! One server, one endpoint, 1,000 users created before the endpoint exists (so only their
//! updates are delivered). Each phase PATCHes those users round-robin, so the events are
//! spread over 1,000 users with many events each, and waits for every delivery:
//!
//! 1. `none`, flat out (closed loop over `--connections`): the unordered end-to-end rate;
//! 2. `per_user`, flat out: the same, ordered; the target is ≥ 80 % of phase 1;
//! 3. `none` at a steady rate ([`STEADY_RATE`]): delivery latency, PATCH 2xx → receipt;
//! 4. `per_user` at the same rate while the receiver answers 500 to everything about one
//!    user (whose later events then wait): the others' p99 is to stay within 1.2× of phase 3.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use accommador_webhooks::{Secret, Verifier};
use anyhow::Context;
use serde::Serialize;

use super::{Bench, LoadSummary, drain, load_summary, stop};
use crate::api::Api;
use crate::load::{self, Plan, Stop, Target};
use crate::progress::tracked;
use crate::receivers::{Behaviour, Receivers};
use crate::stats::{Latencies, LatencySummary, per_second};

/// Distinct users the events are about.
pub const USERS: u64 = 1_000;
/// PATCHes per second in the latency phases.
pub const STEADY_RATE: f64 = 300.0;

/// One phase: the load, and the deliveries it made.
#[derive(Debug, Clone, Serialize)]
pub struct OrderingPhase {
    pub ordering: &'static str,
    /// `None`: flat out; else PATCHes per second asked for.
    pub rate: Option<f64>,
    pub load: LoadSummary,
    /// Deliveries waited for (the blocked user's excluded).
    pub expected: u64,
    pub drained: bool,
    /// Deliveries over the time from the start of the load to the last receipt.
    pub end_to_end_per_s: f64,
    /// PATCH 2xx → receipt, the first receipt of each (user, version).
    pub latency: Option<LatencySummary>,
    /// Requests the receiver refused (the blocked user's).
    pub refused: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OrderingScenario {
    pub database: String,
    pub connections: usize,
    pub seconds: u64,
    pub users: u64,
    pub none: OrderingPhase,
    pub per_user: OrderingPhase,
    pub none_steady: OrderingPhase,
    pub per_user_one_blocked: OrderingPhase,
    /// `per_user` end-to-end rate ÷ `none` (target ≥ 0.8).
    pub throughput_ratio: Option<f64>,
    /// Others' p99 with one user blocked ÷ unordered p99 at the same rate (target ≤ 1.2).
    pub p99_ratio: Option<f64>,
}

pub async fn ordering(b: &Bench) -> anyhow::Result<OrderingScenario> {
    let database = b.database("ordering");
    let server = b.server("ordering", &database, false).await?;
    let api = Api::new(server.base_url.clone(), 4)?;
    let receivers = b.receivers(1)?;
    let org = api
        .create_org(&server.admin_token, "bench ordering")
        .await?;
    let key = org.api_key.clone();
    // The users first, with no endpoint: their creations go nowhere.
    let created = load::run(
        Target::CreateUsers {
            base: server.base_url.clone(),
            key: key.clone(),
        },
        Plan {
            connections: b.cli.connections,
            stop: Stop::Count(USERS),
            rate: None,
        },
        Arc::new(AtomicU64::new(0)),
    )
    .await?;
    let ids: Arc<Vec<String>> = Arc::new(
        created
            .acked
            .iter()
            .map(|a| a.user_id.to_string())
            .collect(),
    );
    anyhow::ensure!(
        ids.len() as u64 == USERS,
        "created {} of {USERS} users",
        ids.len()
    );
    let (n, url) = receivers.reserve();
    let endpoint = api.create_endpoint(&key, &url).await?;
    let secret = Secret::parse(&endpoint.secret).context("the endpoint's secret")?;
    receivers.arm(n, Verifier::new(secret), Behaviour::Healthy);

    let run = |label: &'static str, ordering: &'static str, rate: Option<f64>| {
        let (api, ids, receivers, key) = (&api, ids.clone(), &receivers, key.clone());
        let (base, endpoint_id) = (server.base_url.clone(), endpoint.id.clone());
        async move {
            api.set_ordering(&key, &endpoint_id, ordering).await?;
            phase(
                b,
                label,
                ordering,
                rate,
                Target::UpdateUsers { base, key, ids },
                receivers,
            )
            .await
        }
    };
    let none = run("8 ordering: none, flat out", "none", None).await?;
    let per_user = run("8 ordering: per_user, flat out", "per_user", None).await?;
    let none_steady = run("8 ordering: none, steady", "none", Some(STEADY_RATE)).await?;
    receivers.refuse_user(Some(&ids[0]));
    let blocked = run(
        "8 ordering: per_user, one user failing",
        "per_user",
        Some(STEADY_RATE),
    )
    .await?;
    receivers.refuse_user(None);
    stop(b, server).await;
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    Ok(OrderingScenario {
        database,
        connections: b.cli.connections,
        seconds: b.cli.seconds,
        users: USERS,
        throughput_ratio: ratio(Some(per_user.end_to_end_per_s), Some(none.end_to_end_per_s)),
        p99_ratio: ratio(
            blocked.latency.as_ref().map(|l| l.p99_ms),
            none_steady.latency.as_ref().map(|l| l.p99_ms),
        ),
        none,
        per_user,
        none_steady,
        per_user_one_blocked: blocked,
    })
}

/// One load phase of `target` for `--seconds`, then every delivery it made (except those
/// about the refused user) waited for.
async fn phase(
    b: &Bench,
    label: &str,
    ordering: &'static str,
    rate: Option<f64>,
    target: Target,
    receivers: &Receivers,
) -> anyhow::Result<OrderingPhase> {
    let blocked: Option<String> = match &target {
        Target::UpdateUsers { ids, .. } if receivers.refusing() => Some(ids[0].clone()),
        _ => None,
    };
    let base = receivers.recorder().counts().unique;
    let refused0 = receivers.recorder().counts().refused_for_user;
    let plan = Plan {
        connections: b.cli.connections,
        stop: Stop::After(b.seconds()),
        rate,
    };
    let ok = Arc::new(AtomicU64::new(0));
    let bar = b.progress.bar(label, b.cli.seconds, "s");
    let started = Instant::now();
    let seconds = b.seconds();
    let outcome = tracked(load::run(target, plan, ok.clone()), || {
        bar.set_position(started.elapsed().min(seconds).as_secs());
    })
    .await?;
    bar.finish_and_clear();
    let expected = outcome
        .acked
        .iter()
        .filter(|a| blocked.as_deref() != Some(&*a.user_id))
        .count() as u64;
    let drained = drain(b, label, receivers, base, expected, b.drain_timeout()).await;
    let (receipts, _) = receivers.recorder().take();
    let acked: HashMap<(&str, u64), Instant> = outcome
        .acked
        .iter()
        .filter_map(|a| Some(((&*a.user_id, a.version?), a.acked)))
        .collect();
    let mut latencies = Latencies::default();
    let mut seen = std::collections::HashSet::new();
    let mut last: Option<Instant> = None;
    for r in &receipts {
        if !seen.insert((&*r.user_id, r.version)) {
            continue;
        }
        last = Some(last.map_or(r.at, |l| l.max(r.at)));
        if let Some(at) = acked.get(&(&*r.user_id, r.version)) {
            latencies.record(r.at.saturating_duration_since(*at));
        }
    }
    let delivered = seen.len() as u64;
    Ok(OrderingPhase {
        ordering,
        rate,
        load: load_summary(&outcome),
        expected,
        drained,
        end_to_end_per_s: last.map_or(0.0, |l| {
            per_second(
                delivered,
                l.saturating_duration_since(outcome.started)
                    .max(Duration::from_millis(1)),
            )
        }),
        latency: latencies.summary(),
        refused: receivers.recorder().counts().refused_for_user - refused0,
    })
}
