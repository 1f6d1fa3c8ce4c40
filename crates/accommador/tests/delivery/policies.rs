//! Per-endpoint delivery policies (DESIGN §10): `rate_limit` and adaptive concurrency, seen
//! from the receiver's side and in the attempt log.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::helpers::{Tenant, TestApp, spawn_app_with};
use super::receiver::{Receiver, Reply};
use super::{attempts, eventually, eventually_within, json_of, ms};

/// Creates `n` users, 8 requests at a time.
async fn create_users(app: &Arc<TestApp>, t: &Tenant, n: usize, tag: &str) {
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (app, t, tag) = (app.clone(), t.clone(), tag.to_owned());
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(8) {
                app.create_user(&t, json!({ "email": format!("{tag}{i}@example.com") }))
                    .await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Every delivery of `endpoint_id` (following the cursor).
async fn all_deliveries(app: &TestApp, t: &Tenant, endpoint_id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let page = json_of(
            app,
            t,
            &format!("/v1/deliveries?endpoint_id={endpoint_id}&limit=500{after}"),
        )
        .await;
        out.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => after = format!("&after={c}"),
            None => return out,
        }
    }
}

/// The most of `times` (milliseconds, any order) that fall within one 1 s window.
fn busiest_second(times: &mut [i64]) -> usize {
    times.sort_unstable();
    (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| **t < times[i] + 1000)
                .count()
        })
        .max()
        .unwrap_or(0)
}

fn started_ms(attempt: &Value) -> i64 {
    let at = attempt["started_at"].as_str().unwrap();
    let t =
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).unwrap();
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Waits until no delivery of endpoint `id` is pending.
async fn nothing_pending(app: &TestApp, t: &Tenant, id: &str) {
    eventually(
        app,
        t,
        &format!("/v1/deliveries?endpoint_id={id}&status=pending"),
        |v| v["data"].as_array().unwrap().is_empty(),
    )
    .await;
}

/// A server that keeps up to 8 attempts per endpoint in flight and retries on `schedule`, an
/// organization on it, and a receiver.
async fn eight_at_once(schedule: Vec<Duration>) -> (Arc<TestApp>, Tenant, Receiver) {
    let app = Arc::new(
        spawn_app_with(|s| {
            s.endpoint_concurrency = 8;
            s.retry_schedule = schedule;
        })
        .await,
    );
    let t = app.create_org("Acme").await;
    (app, t, Receiver::start().await)
}

#[tokio::test]
async fn a_rate_limit_spaces_every_attempt_retries_included_and_delivers_everything() {
    // 400 deliveries to an endpoint limited to 20 per second; its first 20 answers are 500s,
    // so 20 retries (50 ms later) compete for the same slots.
    let app = Arc::new(spawn_app_with(|s| s.retry_schedule = vec![ms(50); 3]).await);
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    rx.script("/paced", vec![Reply::status(500); 20]);
    let ep = app
        .create_endpoint(&t, json!({"url": rx.url("/paced"), "rate_limit": 20}))
        .await;
    assert_eq!(ep["rate_limit"], 20);
    let id = ep["id"].as_str().unwrap();
    // An unlimited endpoint of the same organization is not held back by the paced one.
    let free = app
        .create_endpoint(&t, json!({"url": rx.url("/free")}))
        .await;
    create_users(&app, &t, 400, "u").await;
    let free_done = std::time::Instant::now();
    rx.wait_for("/free", 400, Duration::from_secs(15)).await;
    assert!(
        free_done.elapsed() < Duration::from_secs(10),
        "the unlimited endpoint waited behind the limited one ({:?})",
        free_done.elapsed()
    );
    assert!(free["rate_limit"].is_null());

    let got = rx.wait_for("/paced", 420, Duration::from_secs(60)).await;
    let distinct: std::collections::HashSet<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(distinct.len(), 400, "every event arrives");

    // What the receiver saw: never more than 22 requests in any second.
    let first = got[0].at;
    let mut arrived: Vec<i64> = got
        .iter()
        .map(|r| r.at.duration_since(first).as_millis() as i64)
        .collect();
    let busiest = busiest_second(&mut arrived);
    assert!(
        busiest <= 22,
        "{busiest} requests arrived within one second"
    );
    // And not much slower than the limit either: 420 attempts at 20/s take 21 s.
    let span = got.last().unwrap().at.duration_since(first);
    assert!(
        span >= Duration::from_millis(19_500) && span < Duration::from_secs(30),
        "420 attempts at 20/s took {span:?}"
    );

    // What the attempt log says: the same, by `started_at` (once the last is recorded).
    nothing_pending(&app, &t, id).await;
    let deliveries = all_deliveries(&app, &t, id).await;
    assert_eq!(deliveries.len(), 400);
    let mut started = Vec::new();
    for d in &deliveries {
        assert_eq!(d["status"], "succeeded", "{d}");
        for a in attempts(&app, &t, d["id"].as_str().unwrap()).await {
            started.push(started_ms(&a));
        }
    }
    assert_eq!(started.len(), 420, "400 first attempts and 20 retries");
    let busiest = busiest_second(&mut started);
    assert!(
        busiest <= 22,
        "{busiest} attempts started within one second"
    );
}

#[tokio::test]
async fn too_many_requests_halves_concurrency_down_to_one_and_successes_bring_it_back() {
    let (app, t, rx) = eight_at_once(vec![ms(100); 200]).await;
    // Overloaded: every request is held a while (so they overlap) and refused with 429,
    // without Retry-After.
    rx.default_reply(Reply::status(429).after(ms(100)));
    rx.watch("/busy");
    let ep = app
        .create_endpoint(&t, json!({"url": rx.url("/busy")}))
        .await;
    assert_eq!(ep["current_concurrency"], 8, "at the bound to begin with");
    let id = ep["id"].as_str().unwrap().to_owned();
    create_users(&app, &t, 40, "u").await;

    // 8 at once at first; each 429 halves: 8, 4, 2, 1.
    rx.wait_for("/busy", 8, super::WAIT).await;
    eventually(&app, &t, &format!("/v1/endpoints/{id}"), |e| {
        e["current_concurrency"] == 1
    })
    .await;
    let peak = rx.peak_open("/busy");
    assert!(peak <= 8, "{peak} requests open at once (bound 8)");
    // From then on the receiver sees one request at a time, however many are due.
    rx.watch("/busy");
    let seen = rx.received("/busy").len();
    rx.wait_for("/busy", seen + 15, super::WAIT).await;
    assert_eq!(
        rx.peak_open("/busy"),
        1,
        "requests overlapped at concurrency 1"
    );
    let e = json_of(&app, &t, &format!("/v1/endpoints/{id}")).await;
    assert_eq!(e["current_concurrency"], 1, "more 429s keep it at 1");
    let listed = json_of(&app, &t, "/v1/endpoints").await;
    assert_eq!(listed["data"][0]["current_concurrency"], 1);

    // The receiver recovers: each success raises the bound by one, back to 8.
    rx.default_reply(Reply::status(200).after(ms(100)));
    rx.watch("/busy");
    eventually_within(
        &app,
        &t,
        &format!("/v1/endpoints/{id}"),
        Duration::from_secs(20),
        |e| e["current_concurrency"] == 8,
    )
    .await;
    nothing_pending(&app, &t, &id).await;
    let peak = rx.peak_open("/busy");
    assert!(
        (2..=8).contains(&peak),
        "{peak} requests open at once while recovering (bound 8)"
    );

    // /metrics counts the halvings (no per-endpoint series).
    let metrics = app.metrics().await;
    let halvings: f64 = metrics
        .lines()
        .find(|l| l.starts_with("webhook_endpoint_concurrency_halvings_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no halvings counter in /metrics:\n{metrics}"));
    assert!(halvings >= 3.0, "{halvings} halvings counted");
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("webhook_endpoint") && l.contains(&id)),
        "a per-endpoint series in /metrics"
    );
}

#[tokio::test]
async fn too_many_requests_with_retry_after_does_not_halve() {
    let (app, t, rx) = eight_at_once(vec![ms(50); 3]).await;
    // The first 8 answers say "too many, come back in a second" (both spellings of busy).
    let mut busy = vec![Reply::status(429).header("retry-after", "1"); 4];
    busy.extend(vec![Reply::status(503).header("retry-after", "1"); 4]);
    rx.script("/polite", busy);
    let ep = app
        .create_endpoint(&t, json!({"url": rx.url("/polite")}))
        .await;
    let id = ep["id"].as_str().unwrap().to_owned();
    create_users(&app, &t, 8, "u").await;

    // All 8 arrive again after their Retry-After, and succeed.
    rx.wait_for("/polite", 16, super::WAIT).await;
    eventually(
        &app,
        &t,
        &format!("/v1/deliveries?endpoint_id={id}&status=succeeded"),
        |v| v["data"].as_array().unwrap().len() == 8,
    )
    .await;
    let e = json_of(&app, &t, &format!("/v1/endpoints/{id}")).await;
    assert_eq!(
        e["current_concurrency"], 8,
        "a 429/503 with Retry-After halved the concurrency"
    );
}
