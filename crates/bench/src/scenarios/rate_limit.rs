//! Scenario 10, rate-limit: how close an endpoint's `rate_limit` comes to its N (issue 16), and
//! whether it stays smooth. For each N of `--rate-limits` one server (per scenario) gets a new
//! endpoint with `rate_limit: N` and a backlog of N × `--seconds` users created flat out (far
//! faster than N), so the limit, not the load, sets the pace; the receiver's arrival times
//! give the achieved rate (first to last arrival) and the busiest 1 s window. The endpoint is
//! disabled before the next N, so each run's endpoint receives only its own backlog.

use std::time::{Duration, Instant};

use accommador_webhooks::{Secret, Verifier};
use anyhow::Context;
use serde::Serialize;

use super::{Bench, LoadSummary, create_users, drain, load_summary, stop};
use crate::api::Api;
use crate::receivers::{Behaviour, Counts};

/// One N.
#[derive(Debug, Clone, Serialize)]
pub struct RateLimitRun {
    pub limit: u32,
    /// Users created (the endpoint's backlog).
    pub backlog: LoadSummary,
    pub delivered: u64,
    pub drained: bool,
    /// Deliveries per second from the first arrival to the last.
    pub achieved_per_s: f64,
    /// `achieved_per_s / limit`.
    pub achieved_ratio: f64,
    /// The most arrivals within any 1 s window.
    pub busiest_second: u64,
    /// `busiest_second / limit` (the issue allows 1.1).
    pub busiest_ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RateLimit {
    pub database: String,
    pub seconds: u64,
    pub runs: Vec<RateLimitRun>,
    pub receivers: Counts,
    pub first_bad_signature: Option<String>,
}

/// The most of `sorted` (ascending) that fall within any window of `window`.
pub fn busiest(sorted: &[Instant], window: Duration) -> u64 {
    let mut best = 0;
    let mut start = 0;
    for (end, t) in sorted.iter().enumerate() {
        while t.saturating_duration_since(sorted[start]) >= window {
            start += 1;
        }
        best = best.max(end + 1 - start);
    }
    best as u64
}

pub async fn rate_limit(b: &Bench) -> anyhow::Result<RateLimit> {
    let database = b.database("rate-limit");
    let server = b.server("rate-limit", &database, false).await?;
    let api = Api::new(server.base_url.clone(), 4)?;
    let receivers = b.receivers(1)?;
    let org = api
        .create_org(&server.admin_token, "bench rate limit")
        .await?;
    let mut runs = Vec::new();
    for limit in b.cli.rate_limits.clone() {
        let (n, url) = receivers.reserve();
        let endpoint = api.create_endpoint(&org.api_key, &url).await?;
        let secret = Secret::parse(&endpoint.secret)
            .with_context(|| format!("the secret of {}", endpoint.id))?;
        receivers.arm(n, Verifier::new(secret), Behaviour::Healthy);
        api.patch_endpoint(
            &org.api_key,
            &endpoint.id,
            serde_json::json!({ "rate_limit": limit }),
        )
        .await?;
        let users = u64::from(limit) * b.cli.seconds.max(1);
        let base = receivers.recorder().counts().unique;
        let label = format!("9 rate-limit {limit}/s");
        let backlog =
            create_users(b, &label, &server.base_url, &org.api_key, users, &receivers).await?;
        let expected = backlog.acked.len() as u64;
        let timeout = b.drain_timeout() + Duration::from_secs(2 * users / u64::from(limit));
        let drained = drain(b, &label, &receivers, base, expected, timeout).await;
        api.patch_endpoint(
            &org.api_key,
            &endpoint.id,
            serde_json::json!({ "status": "disabled" }),
        )
        .await?;
        let (receipts, _) = receivers.recorder().take();
        let mut arrivals: Vec<Instant> = receipts
            .iter()
            .filter(|r| r.endpoint == n)
            .map(|r| r.at)
            .collect();
        arrivals.sort_unstable();
        let delivered = arrivals.len() as u64;
        let achieved = match (arrivals.first(), arrivals.last()) {
            (Some(f), Some(l)) if delivered > 1 => {
                (delivered - 1) as f64 / l.saturating_duration_since(*f).as_secs_f64()
            }
            _ => 0.0,
        };
        let busiest_second = busiest(&arrivals, Duration::from_secs(1));
        runs.push(RateLimitRun {
            limit,
            backlog: load_summary(&backlog),
            delivered,
            drained,
            achieved_per_s: achieved,
            achieved_ratio: achieved / f64::from(limit),
            busiest_second,
            busiest_ratio: busiest_second as f64 / f64::from(limit),
        });
    }
    let (_, first_bad_signature) = receivers.recorder().take();
    stop(b, server).await;
    Ok(RateLimit {
        database,
        seconds: b.cli.seconds,
        runs,
        receivers: receivers.recorder().counts(),
        first_bad_signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_window_counts_arrivals_less_than_a_window_apart() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let times = [
            at(0),
            at(100),
            at(999),
            at(1000),
            at(1500),
            at(1600),
            at(1700),
        ];
        // [999, 1999) holds 999, 1000, 1500, 1600, 1700.
        assert_eq!(busiest(&times, Duration::from_secs(1)), 5);
        assert_eq!(busiest(&[], Duration::from_secs(1)), 0);
    }
}
