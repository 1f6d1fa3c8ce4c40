//! Limits that keep one tenant, or one client, from hurting the others: the per-organization
//! API rate limit (`ACCOMMADOR_ORG_RATE_LIMIT`), the throttle on failed authentications per
//! client address (behind a trusted proxy, the address it forwards), and `/metrics` labels
//! that no request can multiply.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use accommador::config::{Overrides, Settings};
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::Value;
use tokio::task::JoinSet;

use crate::helpers::{Tenant, TestApp, problem, spawn_app, spawn_app_with};

/// `Retry-After` as whole seconds, asserting it is there and at least 1.
fn retry_after(r: &Response) -> u64 {
    let value = r
        .headers()
        .get("retry-after")
        .expect("a 429 says when to retry")
        .to_str()
        .unwrap();
    let seconds: u64 = value
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {value:?} is not whole seconds"));
    assert!(seconds >= 1, "Retry-After {seconds}");
    seconds
}

/// Sends `n` GETs of `path` with `t`'s key at once; their statuses, and the first 429.
async fn burst(
    app: &TestApp,
    t: &Tenant,
    path: &str,
    n: usize,
) -> (Vec<StatusCode>, Option<Response>) {
    let mut set = JoinSet::new();
    for _ in 0..n {
        let request = app.client.get(app.url(path)).bearer_auth(&t.key);
        set.spawn(async move { request.send().await.unwrap() });
    }
    let mut statuses = Vec::new();
    let mut limited = None;
    while let Some(r) = set.join_next().await {
        let r = r.unwrap();
        statuses.push(r.status());
        if r.status() == StatusCode::TOO_MANY_REQUESTS && limited.is_none() {
            limited = Some(r);
        }
    }
    (statuses, limited)
}

#[tokio::test]
async fn an_organization_over_its_rate_limit_gets_429_and_the_others_do_not() {
    // 5 requests/s, bursts of 10: 40 at once cannot all pass, however slow the machine.
    let app = spawn_app_with(|s| s.org_rate_limit = 5).await;
    let noisy = app.create_org("Noisy").await;
    let quiet = app.create_org("Quiet").await;

    let (statuses, limited) = burst(&app, &noisy, "/v1/users", 40).await;
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let limited = limited.unwrap_or_else(|| panic!("no 429 among {statuses:?}"));
    let wait = retry_after(&limited);
    assert!(wait <= 2, "Retry-After {wait} for a 5/s limit");
    let body = problem(limited, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(
        body["type"], "urn:accommador:problem:rate-limited",
        "{body}"
    );

    // Another organization has its own allowance.
    for _ in 0..5 {
        let r = app.get(&quiet, "/v1/users").await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    // Every authenticated route counts, writes too.
    let (statuses, _) = burst(&app, &noisy, "/v1/endpoints", 20).await;
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );

    // Operational routes are never limited.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        for _ in 0..15 {
            let r = app
                .client
                .get(app.url(path))
                .bearer_auth(&noisy.key)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{path}");
        }
    }

    // Having waited as told, the organization is served again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let r = app.get(&noisy, "/v1/users").await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn without_a_rate_limit_nothing_is_limited() {
    let app = spawn_app().await;
    let t = app.create_org("Busy").await;
    let (statuses, _) = burst(&app, &t, "/v1/users", 40).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn the_openapi_document_states_the_429_of_authenticated_operations() {
    let app = spawn_app().await;
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut authenticated = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let api_key = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("api_key").is_some()));
            let limited = &op["responses"]["429"];
            if api_key {
                authenticated += 1;
                assert!(limited.is_object(), "{method} {path} lacks 429");
                assert!(
                    limited["headers"]["Retry-After"].is_object(),
                    "{method} {path}: 429 without Retry-After"
                );
                assert!(
                    limited["content"]["application/problem+json"].is_object(),
                    "{method} {path}: 429 is not problem+json"
                );
            } else {
                assert!(limited.is_null(), "{method} {path} is not limited");
            }
        }
    }
    assert!(
        authenticated >= 15,
        "{authenticated} authenticated operations"
    );
}

/// `org_rate_limit` is read like the other numeric settings: a whole number, 0 by default.
#[test]
fn the_rate_limit_setting_is_a_whole_number_and_off_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("accommador.toml");
    let load = |text: &str| {
        std::fs::write(&path, text).unwrap();
        Settings::load(Some(&path), &Overrides::default())
    };
    // Only when the environment leaves the setting alone.
    if std::env::var_os("ACCOMMADOR_ORG_RATE_LIMIT").is_none() {
        assert_eq!(load("").unwrap().org_rate_limit, 0);
        assert_eq!(load("org_rate_limit = 50\n").unwrap().org_rate_limit, 50);
        assert_eq!(load("org_rate_limit = \"7\"\n").unwrap().org_rate_limit, 7);
        for bad in ["-1", "1.5", "\"many\"", "\"\""] {
            let e = load(&format!("org_rate_limit = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("org_rate_limit"), "{bad}: {e}");
            assert!(!e.contains('\n'), "{bad}: {e}");
        }
    }
}

/// A client bound to `ip` (any of 127.0.0.0/8 is this machine).
fn client_from(ip: Ipv4Addr) -> Client {
    Client::builder()
        .local_address(IpAddr::V4(ip))
        .build()
        .unwrap()
}

async fn get_with(client: &Client, app: &TestApp, key: &str) -> Response {
    get_via(client, app, key, &[]).await
}

/// `GET /v1/users` with `key` and extra `headers` (what a reverse proxy adds).
async fn get_via(client: &Client, app: &TestApp, key: &str, headers: &[(&str, &str)]) -> Response {
    let mut request = client.get(app.url("/v1/users")).bearer_auth(key);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// Sends wrong keys from `client` until one is answered 429 (only 401s before it): how many
/// 401s came first, and until when the throttle holds at least (from its `Retry-After`).
async fn flood(client: &Client, app: &TestApp) -> (usize, Instant) {
    flood_via(client, app, |_| Vec::new()).await
}

/// [`flood`] with the headers `headers(i)` on the `i`-th request.
async fn flood_via(
    client: &Client,
    app: &TestApp,
    headers: impl Fn(usize) -> Vec<(&'static str, String)>,
) -> (usize, Instant) {
    for i in 0..200 {
        let extra = headers(i);
        let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = get_via(client, app, &format!("wrong-key-{i}"), &extra).await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            let holds = Instant::now() + Duration::from_secs(retry_after(&r) - 1);
            let body = problem(r, StatusCode::TOO_MANY_REQUESTS).await;
            assert_eq!(
                body["type"], "urn:accommador:problem:authentication-throttled",
                "{body}"
            );
            return (i, holds);
        }
        problem(r, StatusCode::UNAUTHORIZED).await;
    }
    panic!("wrong keys are never throttled");
}

/// Makes sure `client`'s address is throttled for at least `for_at_least` more (on a slow
/// machine the window may be about to end: then waits it out and starts a new one).
async fn throttled(client: &Client, app: &TestApp, for_at_least: Duration) -> Instant {
    throttled_via(client, app, &[], for_at_least).await
}

/// [`throttled`] for requests that carry `headers`.
async fn throttled_via(
    client: &Client,
    app: &TestApp,
    headers: &[(&'static str, &str)],
    for_at_least: Duration,
) -> Instant {
    let owned: Vec<(&'static str, String)> =
        headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    loop {
        let (_, holds) = flood_via(client, app, |_| owned.clone()).await;
        if holds.saturating_duration_since(Instant::now()) >= for_at_least {
            return holds;
        }
        tokio::time::sleep(
            holds.saturating_duration_since(Instant::now()) + Duration::from_secs(2),
        )
        .await;
    }
}

#[tokio::test]
async fn failed_authentications_are_throttled_per_client_address() {
    let app = spawn_app().await;
    let known = app.create_org("Known").await;
    let fresh = app.create_org("Fresh").await;
    let here = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let elsewhere = client_from(Ipv4Addr::new(127, 0, 0, 2));

    // The known key authenticates once from this address before the flood.
    assert_eq!(
        get_with(&here, &app, &known.key).await.status(),
        StatusCode::OK
    );

    // Wrong keys: at least 20 honest 401s, then 429s.
    let (failures, _) = flood(&here, &app).await;
    assert!(failures >= 20, "throttled after only {failures} failures");

    // A key this server already knows to be good still works from the throttled address; a
    // key it has not seen yet waits like the wrong ones.
    throttled(&here, &app, Duration::from_secs(2)).await;
    let r = get_with(&here, &app, &fresh.key).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    retry_after(&r);
    for _ in 0..3 {
        assert_eq!(
            get_with(&here, &app, &known.key).await.status(),
            StatusCode::OK
        );
    }

    // Another address is not held back, neither with a good key nor with a wrong one.
    assert_eq!(
        get_with(&elsewhere, &app, &fresh.key).await.status(),
        StatusCode::OK
    );
    let r = get_with(&elsewhere, &app, "wrong-key-elsewhere").await;
    problem(r, StatusCode::UNAUTHORIZED).await;

    // Throttled requests do not reach the database: with the keys' table gone, a lookup would
    // be a 500, and the throttled address still gets its 429.
    let holds = throttled(&here, &app, Duration::from_secs(5)).await;
    app.db
        .execute(
            "ALTER TABLE api_keys RENAME TO api_keys_gone",
            "ALTER TABLE api_keys RENAME TO api_keys_gone",
        )
        .await;
    for i in 0..5 {
        let r = get_with(&here, &app, &format!("wrong-again-{i}")).await;
        if Instant::now() >= holds {
            eprintln!("the machine is too slow to check the last requests in the window");
            break;
        }
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    }
}

/// Behind a reverse proxy every request comes from the proxy's address: with
/// `ACCOMMADOR_TRUST_PROXY=true` the throttle counts the client the proxy names instead (the
/// entry the proxy added, not one the client sent), so one client's wrong keys do not lock out
/// everyone behind the same proxy.
#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_throttled_not_the_proxy() {
    let app = spawn_app_with(|s| s.trust_proxy = true).await;
    let other = app.create_org("Behind the proxy").await;
    let proxy = client_from(Ipv4Addr::new(127, 0, 0, 1));
    // The client sent its own X-Forwarded-For naming someone else; the proxy appended the
    // address it saw.
    let attacker = [("x-forwarded-for", "198.51.100.99, 203.0.113.7")];

    let (failures, _) = flood_via(&proxy, &app, |_| {
        vec![("x-forwarded-for", "198.51.100.99, 203.0.113.7".to_owned())]
    })
    .await;
    assert!(failures >= 20, "throttled after only {failures} failures");
    let holds = throttled_via(&proxy, &app, &attacker, Duration::from_secs(3)).await;

    // The same client, however it names itself first, or in the standard header.
    let r = get_via(&proxy, &app, &other.key, &attacker).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = get_via(
        &proxy,
        &app,
        &other.key,
        &[("x-forwarded-for", "192.0.2.1, 203.0.113.7")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = get_via(
        &proxy,
        &app,
        "wrong-key-forwarded",
        &[("forwarded", "for=\"203.0.113.7:5000\";proto=https")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);

    // Other clients of the same proxy are not held back, with a good key or a wrong one.
    let r = get_via(
        &proxy,
        &app,
        &other.key,
        &[("x-forwarded-for", "203.0.113.8")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = get_via(
        &proxy,
        &app,
        "wrong-key-neighbour",
        &[("forwarded", "for=\"[2001:db8::8]\"")],
    )
    .await;
    problem(r, StatusCode::UNAUTHORIZED).await;
    // A request without the header counts against the proxy's own address, which is free.
    let r = get_with(&proxy, &app, &other.key).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        Instant::now() < holds,
        "the machine is too slow: the window ended during the checks"
    );
}

/// Without `ACCOMMADOR_TRUST_PROXY` the forwarding headers are never believed: a client
/// cannot escape the throttle by naming a new address on every request.
#[tokio::test]
async fn forwarding_headers_are_ignored_unless_the_proxy_is_trusted() {
    let app = spawn_app().await;
    let other = app.create_org("Direct").await;
    let here = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let elsewhere = client_from(Ipv4Addr::new(127, 0, 0, 2));

    let (failures, _) = flood_via(&here, &app, |i| {
        vec![
            ("x-forwarded-for", format!("198.51.100.{}", i % 250)),
            ("forwarded", format!("for=203.0.113.{}", i % 250)),
        ]
    })
    .await;
    assert!(failures >= 20, "throttled after only {failures} failures");
    let holds = throttled(&here, &app, Duration::from_secs(3)).await;
    let r = get_via(
        &here,
        &app,
        &other.key,
        &[("x-forwarded-for", "192.0.2.200")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // The socket address decides: another one is free.
    let r = get_via(
        &elsewhere,
        &app,
        &other.key,
        &[("x-forwarded-for", "127.0.0.1")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        Instant::now() < holds,
        "the machine is too slow: the window ended during the checks"
    );
}

#[tokio::test]
async fn metrics_labels_cannot_be_multiplied_by_requests() {
    let app = spawn_app().await;
    let t = app.create_org("Labels").await;
    let marker = format!("lbl{}", std::process::id());
    let mut paths = Vec::new();
    for i in 1..=5 {
        let method = Method::from_bytes(format!("ZZ{i}").as_bytes()).unwrap();
        let random = format!("/{marker}-random-{i}");
        for path in [random.as_str(), "/v1/users", "/healthz"] {
            let r = app
                .client
                .request(method.clone(), app.url(path))
                .bearer_auth(&t.key)
                .send()
                .await
                .unwrap();
            assert!(
                r.status().is_client_error(),
                "{method} {path}: {}",
                r.status()
            );
        }
        let r = app
            .client
            .get(app.url(&format!("{random}/x?y={marker}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        paths.push(random);
    }
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let offending: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ZZ") || l.contains(&marker))
        .collect();
    assert!(offending.is_empty(), "{offending:#?}");
    assert!(
        text.lines().any(|l| l.starts_with("http_requests_total{")
            && l.contains(r#"method="other""#)
            && l.contains(r#"route="/v1/users""#)),
        "{text}"
    );
    for line in text
        .lines()
        .filter(|l| l.starts_with("http_requests_total{"))
    {
        let method = line
            .split("method=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no method label: {line}"));
        assert!(
            [
                "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"
            ]
            .contains(&method),
            "{line}"
        );
        let route = line
            .split("route=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no route label: {line}"));
        assert!(
            route == "unmatched" || route.starts_with('/') && !route.contains(&marker),
            "{line}"
        );
    }
}
