//! Scenario 11, noisy-neighbour: one organization's misbehaving endpoints and bulk delete must
//! not hurt another organization (issue 11, DESIGN §9-10).
//!
//! Organization B has one healthy endpoint and creates `--noisy-rate` users/s (open loop). First
//! B runs alone (the baseline). Then organization A gets an endpoint that hangs every request
//! with a backlog of `--noisy-backlog` pending deliveries (built flat out through the API), and
//! `--noisy-hanging` more hanging endpoints fed by a trickle of A's users
//! (`--noisy-trickle` users/s), which together want far more than A's share of the dispatcher.
//! B runs at the same rate beside them; a third of the way in, the backlog endpoint is
//! deleted (`DELETE /v1/endpoints/{id}`), so the server fails its backlog in the background
//! while B goes on. The delete is over when `webhook_deliveries_cancelled_total` has reached the
//! backlog or stops growing (sampled every 100 ms).
//!
//! Measured: B's p99 from the API's 2xx to the receipt, noisy phase over baseline (target ≤ 2×),
//! and the p99 of B's `POST /v1/users` sent while the delete ran (target ≤ 50 ms). Every one of
//! B's users must arrive exactly as in the other scenarios.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use accommador_webhooks::{Secret, Verifier};
use anyhow::Context;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{
    Bench, LoadSummary, create_endpoints, create_users, delivery_times, drain, drive, load_summary,
    one_endpoint, stop,
};
use crate::api::Api;
use crate::check::{self, Tally};
use crate::load::{self, Acked, Plan, Stop, Target};
use crate::meter::{Meter, Usage};
use crate::receivers::{Behaviour, Counts};
use crate::stats::{Latencies, LatencySummary};

/// How often the delete's progress is read from `/metrics`.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The delete is taken as over when the cancelled counter has not grown for this long.
const QUIET_FOR: Duration = Duration::from_secs(2);

/// The server's counter of deliveries failed by the background cancel.
const CANCELLED: &str = "webhook_deliveries_cancelled_total";

/// The server's gauge of pending deliveries that are due.
const DUE: &str = "webhook_due_deliveries";

/// How long the backlog's fan-out may take.
const FANNED_OUT_WITHIN: Duration = Duration::from_secs(120);

/// Waits until `name` in `/metrics` is at least `at_least`, or `timeout`; true when it got
/// there.
async fn wait_for_metric(api: &Api, name: &str, at_least: f64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = api.metrics().await
            && metric(&text, name) >= at_least
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(SAMPLE_EVERY * 5).await;
    }
}

/// The value of an unlabelled counter or gauge in the Prometheus text (0 when absent: a
/// counter that was never incremented is not exported yet).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim().rsplit_once(' '))
        .find(|(series, _)| *series == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

/// What the delete of the backlog endpoint cost, as the server and B saw it.
#[derive(Debug, Clone, Serialize)]
pub struct DeleteWindow {
    /// Pending deliveries of the backlog endpoint just before the delete (its users created).
    pub backlog: u64,
    /// `DELETE` sent → answered, ms.
    pub answer_ms: f64,
    /// `DELETE` sent → the cancelled counter reached the backlog or stopped growing, s.
    pub cancel_s: f64,
    /// Deliveries the server failed in the background (`webhook_deliveries_cancelled_total`).
    pub cancelled: u64,
    /// `true` when the counter reached the backlog; `false` when it stopped short (or the
    /// phase ended first).
    pub reached_backlog: bool,
    /// B's creates sent while the delete ran (sent → 2xx).
    pub b_api_latency: Option<LatencySummary>,
    /// B's deliveries created while the delete ran (2xx → receipt).
    pub b_receipt_latency: Option<LatencySummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NoisyPhase {
    pub load: LoadSummary,
    /// B: 2xx → receipt.
    pub latency: Option<LatencySummary>,
    pub arrived_before_ack: u64,
    pub drained: bool,
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize)]
pub struct Noisy {
    pub database: String,
    /// B's users/s in both phases.
    pub rate: f64,
    pub seconds: u64,
    pub hanging_endpoints: usize,
    pub hang_s: u64,
    /// Building A's backlog (closed loop, after the baseline).
    pub backlog_build: LoadSummary,
    pub baseline: NoisyPhase,
    pub noisy: NoisyPhase,
    /// A's users during the noisy phase (each one a delivery to every hanging endpoint).
    pub a_trickle: LoadSummary,
    pub delete: Option<DeleteWindow>,
    /// Requests A's hanging endpoints (backlog one included) received and held.
    pub hung_requests: u64,
    /// Noisy p99 over baseline p99 (2xx → receipt).
    pub p99_ratio: Option<f64>,
    /// B's users over both phases, checked against B's outbox.
    pub tally: Tally,
    pub receivers: Counts,
    pub first_bad_signature: Option<String>,
}

fn latency_of<'a>(
    acked: impl IntoIterator<Item = &'a Acked>,
    d: impl Fn(&Acked) -> Duration,
) -> Option<LatencySummary> {
    let mut l = Latencies::default();
    for a in acked {
        l.record(d(a));
    }
    l.summary()
}

/// Waits `after`, deletes `endpoint_id`, then follows the cancelled counter until it reaches
/// `backlog`, stops growing for [`QUIET_FOR`], or `give_up` is cancelled. Returns the instants
/// the delete was sent and answered and the window's end, with the count.
async fn delete_and_follow(
    api: Api,
    key: String,
    endpoint_id: String,
    backlog: u64,
    after: Duration,
    give_up: CancellationToken,
) -> anyhow::Result<(Instant, Instant, Instant, u64, bool)> {
    tokio::select! {
        () = tokio::time::sleep(after) => {}
        () = give_up.cancelled() => anyhow::bail!("the noisy phase ended before the delete"),
    }
    let before = metric(&api.metrics().await?, CANCELLED) as u64;
    let sent = Instant::now();
    api.delete_endpoint(&key, &endpoint_id).await?;
    let answered = Instant::now();
    let (mut last, mut grew_at) = (before, answered);
    loop {
        let now_count = match api.metrics().await {
            Ok(text) => metric(&text, CANCELLED) as u64,
            Err(_) => last,
        };
        let now = Instant::now();
        if now_count > last {
            last = now_count;
            grew_at = now;
        }
        let cancelled = last - before;
        if cancelled >= backlog {
            return Ok((sent, answered, now, cancelled, true));
        }
        if now.duration_since(grew_at) >= QUIET_FOR || give_up.is_cancelled() {
            return Ok((sent, answered, grew_at, cancelled, false));
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

pub async fn noisy(b: &Bench) -> anyhow::Result<Noisy> {
    let quick = b.cli.noisy_quick;
    let backlog_wanted = if quick { 10_000 } else { b.cli.noisy_backlog };
    let seconds = if quick {
        10
    } else {
        b.cli.noisy_seconds.max(3)
    };
    let phase = Duration::from_secs(seconds);
    let hanging_n = b.cli.noisy_hanging;
    let rate = b.cli.noisy_rate.max(1.0);
    let hang = Duration::from_secs(b.cli.hang_seconds);
    let database = b.database("noisy");
    let server = b.server("noisy", &database, false).await?;
    let api = Api::new(server.base_url.clone(), b.cli.connections)?;
    let receivers = b.receivers(b.cli.receivers)?;

    // 1. B alone.
    let org_b = api.create_org(&server.admin_token, "bench noisy B").await?;
    let b_endpoints = one_endpoint(&api, &org_b.api_key, &receivers).await?;
    let b_set: HashSet<u32> = b_endpoints.iter().copied().collect();
    let meter = Meter::start(Some(&server), b.ticks);
    let plan = Plan {
        connections: b.cli.connections,
        stop: Stop::After(phase),
        rate: Some(rate),
    };
    let base = receivers.recorder().counts().unique;
    let baseline = drive(
        b,
        "11 noisy: B alone (baseline)",
        &server.base_url,
        &org_b.api_key,
        plan,
        &receivers,
    )
    .await?;
    let baseline_drained = drain(
        b,
        "11 noisy: baseline drain",
        &receivers,
        base,
        baseline.acked.len() as u64,
        b.drain_timeout(),
    )
    .await;
    let baseline_usage = meter.finish();
    let (baseline_receipts, bad_baseline) = receivers.recorder().take();

    // 2. A: the backlog endpoint, its backlog, then the hanging endpoints (created after the
    // backlog, they do not get it: an endpoint gets the events committed after its creation).
    let org_a = api.create_org(&server.admin_token, "bench noisy A").await?;
    let (n, url) = receivers.reserve();
    let backlog_endpoint = api.create_endpoint(&org_a.api_key, &url).await?;
    let secret =
        Secret::parse(&backlog_endpoint.secret).context("the backlog endpoint's secret")?;
    receivers.arm(n, Verifier::new(secret), Behaviour::Hang(hang));
    let build = create_users(
        b,
        "11 noisy: A's backlog",
        &server.base_url,
        &org_a.api_key,
        backlog_wanted,
        &receivers,
    )
    .await?;
    // Fan-out runs behind the API: the backlog is complete once the server counts it due
    // (`webhook_due_deliveries`, refreshed every few seconds).
    let backlog_n = build.acked.len() as u64;
    let fanned_out = wait_for_metric(
        &api,
        DUE,
        backlog_n.saturating_sub(backlog_n / 100) as f64,
        FANNED_OUT_WITHIN,
    )
    .await;
    if !fanned_out {
        b.progress.note(&format!(
            "  11 noisy: the server did not count {backlog_n} due deliveries within {} s",
            FANNED_OUT_WITHIN.as_secs()
        ));
    }
    let bar = b
        .progress
        .bar("11 noisy: A's hanging endpoints", hanging_n as u64, "");
    create_endpoints(
        &api,
        &org_a.api_key,
        &receivers,
        vec![Behaviour::Hang(hang); hanging_n],
        b.cli.connections,
        &bar,
    )
    .await?;
    bar.finish_and_clear();

    // 3. B beside A's trickle, and the delete a third of the way in.
    let hung0 = receivers.recorder().counts().hung_requests;
    let base = receivers.recorder().counts().unique;
    let ended = CancellationToken::new();
    let _end_on_error = ended.clone().drop_guard();
    let trickle = tokio::spawn(load::run(
        Target::CreateUsers {
            base: server.base_url.clone(),
            key: org_a.api_key.clone(),
        },
        Plan {
            connections: 4,
            stop: Stop::Until(ended.clone()),
            rate: Some(b.cli.noisy_trickle.max(0.1)),
        },
        Arc::new(AtomicU64::new(0)),
    ));
    let deleting = tokio::spawn(delete_and_follow(
        api.clone(),
        org_a.api_key.clone(),
        backlog_endpoint.id,
        backlog_n,
        phase / 3,
        ended.clone(),
    ));
    // The phase lasts `seconds`, and at least until the delete is over (bounded by the drain
    // timeout).
    let timer = {
        let ended = ended.clone();
        let deleting_done = deleting.abort_handle();
        let limit = phase + b.drain_timeout();
        tokio::spawn(async move {
            tokio::time::sleep(phase).await;
            let started = Instant::now();
            while !deleting_done.is_finished() && started.elapsed() < limit {
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
            ended.cancel();
        })
    };
    let meter = Meter::start(Some(&server), b.ticks);
    let plan = Plan {
        connections: b.cli.connections,
        stop: Stop::Until(ended.clone()),
        rate: Some(rate),
    };
    let noisy = drive(
        b,
        "11 noisy: B beside A",
        &server.base_url,
        &org_b.api_key,
        plan,
        &receivers,
    )
    .await?;
    timer.await?;
    let trickle = trickle.await??;
    let deleted = deleting.await?;
    let drained = drain(
        b,
        "11 noisy: drain",
        &receivers,
        base,
        noisy.acked.len() as u64,
        b.drain_timeout(),
    )
    .await;
    let usage = meter.finish();
    let hung_requests = receivers.recorder().counts().hung_requests - hung0;
    let (receipts, bad_noisy) = receivers.recorder().take();
    let events = api.created_events(&org_b.api_key).await?;
    stop(b, server).await;

    let base_times = delivery_times(&baseline.acked, &baseline_receipts, &b_set);
    let times = delivery_times(&noisy.acked, &receipts, &b_set);
    let all_receipts: Vec<_> = baseline_receipts.into_iter().chain(receipts).collect();
    let tally = check::tally(
        baseline
            .acked
            .iter()
            .chain(&noisy.acked)
            .map(|a| &*a.user_id),
        &events,
        &b_endpoints,
        &all_receipts,
    );
    let delete = match deleted {
        Ok((sent, answered, over, cancelled, reached_backlog)) => {
            let during: Vec<Acked> = noisy
                .acked
                .iter()
                .filter(|a| a.sent >= sent && a.sent <= over)
                .cloned()
                .collect();
            let during_times = delivery_times(&during, &all_receipts, &b_set);
            Some(DeleteWindow {
                backlog: backlog_n,
                answer_ms: answered.duration_since(sent).as_secs_f64() * 1000.0,
                cancel_s: over.duration_since(sent).as_secs_f64(),
                cancelled,
                reached_backlog,
                b_api_latency: latency_of(&during, |a| a.acked.saturating_duration_since(a.sent)),
                b_receipt_latency: during_times.latencies.summary(),
            })
        }
        Err(e) => {
            b.progress.note(&format!("  11 noisy: the delete: {e:#}"));
            None
        }
    };
    let baseline_latency = base_times.latencies.summary();
    let noisy_latency = times.latencies.summary();
    let p99_ratio = match (&baseline_latency, &noisy_latency) {
        (Some(a), Some(n)) if a.p99_ms > 0.0 => Some(n.p99_ms / a.p99_ms),
        _ => None,
    };
    Ok(Noisy {
        database,
        rate,
        seconds,
        hanging_endpoints: hanging_n,
        hang_s: b.cli.hang_seconds,
        backlog_build: load_summary(&build),
        baseline: NoisyPhase {
            load: load_summary(&baseline),
            latency: baseline_latency,
            arrived_before_ack: base_times.before_ack,
            drained: baseline_drained,
            usage: baseline_usage,
        },
        noisy: NoisyPhase {
            load: load_summary(&noisy),
            latency: noisy_latency,
            arrived_before_ack: times.before_ack,
            drained,
            usage,
        },
        a_trickle: load_summary(&trickle),
        delete,
        hung_requests,
        p99_ratio,
        tally,
        receivers: receivers.recorder().counts(),
        first_bad_signature: bad_baseline.or(bad_noisy),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlabelled_metrics_from_the_prometheus_text() {
        let text = "\
# TYPE webhook_deliveries_cancelled_total counter
webhook_deliveries_cancelled_total 99000
webhook_deliveries_cancelled_total_other 7
webhook_deliveries_in_flight 64
";
        assert_eq!(metric(text, CANCELLED), 99_000.0);
        assert_eq!(metric(text, "webhook_deliveries_in_flight"), 64.0);
        // Never incremented: not exported yet.
        assert_eq!(metric("# nothing\n", CANCELLED), 0.0);
    }
}
