//! A host name whose resolver never answers does not hold an endpoint request: the guard's
//! look-up is bounded (5 s), and a name that does not answer in time is treated like one that
//! does not resolve today: accepted now, checked again at every delivery.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Tenant, TestApp, spawn_app_with};

/// The guard's bound (5 s) with generous slack for a loaded machine.
const LIMIT: Duration = Duration::from_secs(15);

/// `send` must answer within [`LIMIT`]; the response and how long it took.
async fn bounded(
    what: &str,
    send: impl std::future::Future<Output = reqwest::Response>,
) -> (reqwest::Response, Duration) {
    let started = Instant::now();
    let r = tokio::time::timeout(LIMIT, send)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer within {LIMIT:?}"));
    (r, started.elapsed())
}

async fn json_of(app: &TestApp, t: &Tenant, path: &str) -> Value {
    let r = app.get(t, path).await;
    assert_eq!(r.status(), StatusCode::OK, "GET {path}");
    r.json().await.unwrap()
}

#[tokio::test]
async fn endpoints_on_a_name_that_never_answers_are_accepted_within_the_bound() {
    // The attempt's own timeout above the look-up's bound, so the look-up is what gives up.
    let app = spawn_app_with(|s| {
        s.delivery_timeout = Duration::from_secs(30);
        s.retry_schedule = vec![];
    })
    .await;
    app.lookup.hang("slow.test");
    app.lookup.hang("slower.test");
    let t = app.create_org("Acme").await;

    let (r, took) = bounded(
        "POST /v1/endpoints",
        app.post(
            &t,
            "/v1/endpoints",
            &json!({"url": "https://slow.test/hook"}),
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED, "took {took:?}");
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["url"], "https://slow.test/hook");
    assert_eq!(created["status"], "enabled");

    let (r, took) = bounded(
        "PATCH /v1/endpoints/{id}",
        app.patch(
            &t,
            &format!("/v1/endpoints/{id}"),
            &json!({"url": "https://slower.test/hook"}),
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK, "took {took:?}");
    assert_eq!(
        r.json::<Value>().await.unwrap()["url"],
        "https://slower.test/hook"
    );

    // At delivery the name is looked up again, with the same bound: the attempt fails as a
    // DNS error instead of holding a worker.
    app.create_user(&t, json!({"email": "ada@example.com"}))
        .await;
    let deadline = Instant::now() + LIMIT + LIMIT;
    let attempt = loop {
        let deliveries = json_of(&app, &t, &format!("/v1/deliveries?endpoint_id={id}")).await;
        if let Some(d) = deliveries["data"].as_array().and_then(|d| d.first()) {
            let path = format!("/v1/deliveries/{}/attempts", d["id"].as_str().unwrap());
            let attempts = json_of(&app, &t, &path).await;
            if let Some(a) = attempts["data"].as_array().and_then(|a| a.first()) {
                break a.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no attempt was recorded within {:?}",
            LIMIT + LIMIT
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(attempt["error_class"], "dns", "{attempt}");
    assert!(
        attempt["error"]
            .as_str()
            .is_some_and(|e| e.contains("slower.test")),
        "{attempt}"
    );
    assert!(
        attempt["duration_ms"]
            .as_u64()
            .is_some_and(|ms| ms < LIMIT.as_millis() as u64),
        "{attempt}"
    );
}
