//! The address guard through the API and real deliveries. No test sends traffic outside
//! 127.0.0.0/8: public addresses are only ever accepted at creation (no user change follows
//! in that organization), and blocked ones are refused before any connection.

use std::net::IpAddr;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_fields, problem, spawn_app_with};
use crate::receiver::{Receiver, Reply};
use crate::{WAIT, attempts, endpoint, eventually};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn strict_app() -> TestApp {
    spawn_app_with(|s| {
        s.allow_private_targets = false;
        s.retry_schedule = vec![];
    })
    .await
}

/// Inner addresses a name may resolve to (one per range, plus mapped forms).
const INNER: [&str; 24] = [
    "127.0.0.1",
    "10.1.2.3",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",
    "169.254.1.1",
    "169.254.169.254",
    "0.0.0.0",
    "192.0.0.1",
    "192.0.2.1",
    "198.18.0.1",
    "198.51.100.1",
    "203.0.113.1",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "::1",
    "::ffff:127.0.0.1",
    "64:ff9b::a00:1",
    "fc00::1",
    "fe80::1",
    "fec0::1",
    "ff02::1",
    "fd00:ec2::254",
];

#[tokio::test]
async fn blocked_targets_are_refused_at_creation_in_every_spelling() {
    let app = strict_app().await;
    let t = app.create_org("Acme").await;
    let mut urls: Vec<String> = [
        "http://127.0.0.1/",
        "http://127.255.255.254:8080/x",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://0x7f.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://10.0.0.1/",
        "http://0.0.0.0/",
        "http://[::]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[2001:db8::1]/",
        "http://[fe80::1]/",
        "http://192.168.0.1/",
        "http://172.31.0.1/",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (i, inner) in INNER.iter().enumerate() {
        let name = format!("inner{i}.test");
        app.lookup.answer(&name, vec![vec![ip(inner)]]);
        urls.push(format!("https://{name}/hook"));
    }
    app.lookup
        .answer("localhost", vec![vec![ip("127.0.0.1"), ip("::1")]]);
    urls.push("http://localhost:9000/".into());
    app.lookup.answer(
        "mixed.test",
        vec![vec![ip("93.184.216.34"), ip("10.0.0.7")]],
    );
    urls.push("https://mixed.test/".into());
    assert!(urls.len() >= 40);
    for url in &urls {
        let p = problem(
            app.post(&t, "/v1/endpoints", &json!({ "url": url })).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(error_fields(&p), ["url"], "{url}");
        assert!(
            p["errors"][0]["detail"]
                .as_str()
                .unwrap()
                .contains("blocked"),
            "{url}: {p}"
        );
    }
    // Nor can an existing endpoint be moved onto one.
    app.lookup
        .answer("public.test", vec![vec![ip("93.184.216.34")]]);
    let e = endpoint(&app, &t, "https://public.test/hook", None).await;
    for url in ["http://127.0.0.1/", "https://inner0.test/"] {
        let p = problem(
            app.patch(
                &t,
                &format!("/v1/endpoints/{}", e.id),
                &json!({ "url": url }),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(error_fields(&p), ["url"]);
    }

    let allowed = [
        "https://93.184.216.34/",
        "https://8.8.8.8:8443/h",
        "http://1.1.1.1/",
        "https://[2606:4700:4700::1111]/",
        "https://172.32.0.1/",
        "https://100.128.0.1/",
        "https://192.169.0.1/",
        "https://198.20.0.1/",
        "https://[::ffff:8.8.8.8]/",
        "https://public.test/other",
        "https://unresolvable.test/",
    ];
    for url in allowed {
        let r = app.post(&t, "/v1/endpoints", &json!({ "url": url })).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{url}");
    }
}

#[tokio::test]
async fn a_name_that_rebinds_to_an_inner_address_is_blocked_at_delivery() {
    let app = strict_app().await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let mut endpoints = Vec::new();
    for (i, inner) in INNER.iter().enumerate() {
        // Public when the endpoint is created, inner (and, for the first, our receiver's
        // loopback address) when the delivery resolves it.
        let name = format!("rebind{i}.test");
        app.lookup
            .answer(&name, vec![vec![ip("93.184.216.34")], vec![ip(inner)]]);
        let port = rx.addr.port();
        endpoints.push(endpoint(&app, &t, &format!("http://{name}:{port}/rebind"), None).await);
    }
    app.create_user(&t, json!({"email": "a@example.com"})).await;
    for e in &endpoints {
        let v = eventually(
            &app,
            &t,
            &format!("/v1/deliveries?endpoint_id={}", e.id),
            |v| v["data"][0]["status"] == "failed",
        )
        .await;
        let log = attempts(&app, &t, v["data"][0]["id"].as_str().unwrap()).await;
        assert_eq!(log[0]["error_class"], "blocked_address", "{log:?}");
        assert!(
            log[0]["error"].as_str().unwrap().contains("blocked"),
            "{log:?}"
        );
    }
    assert!(
        rx.received("/rebind").is_empty(),
        "a blocked delivery reached the receiver"
    );
}

#[tokio::test]
async fn a_literal_inner_address_is_blocked_at_delivery_too() {
    let app = strict_app().await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    app.lookup
        .answer("public.test", vec![vec![ip("93.184.216.34")]]);
    let e = endpoint(&app, &t, "https://public.test/hook", None).await;
    // Simulate a row written before the guard existed: the literal path must refuse it.
    let sql = format!(
        "UPDATE endpoints SET url = '{}' WHERE id = '{}'",
        rx.url("/literal"),
        e.id
    );
    app.db.execute(&sql, &sql).await;
    app.create_user(&t, json!({"email": "a@example.com"})).await;
    let v = eventually(
        &app,
        &t,
        &format!("/v1/deliveries?endpoint_id={}", e.id),
        |v| v["data"][0]["status"] == "failed",
    )
    .await;
    let log = attempts(&app, &t, v["data"][0]["id"].as_str().unwrap()).await;
    assert_eq!(log[0]["error_class"], "blocked_address");
    assert!(rx.received("/literal").is_empty());
}

#[tokio::test]
async fn with_the_flag_loopback_works_and_metadata_stays_blocked() {
    let app = spawn_app_with(|s| {
        s.allow_private_targets = true;
        s.retry_schedule = vec![];
    })
    .await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    app.lookup
        .answer("receiver.test", vec![vec![ip("127.0.0.1")]]);
    let port = rx.addr.port();
    let e = endpoint(
        &app,
        &t,
        &format!("http://receiver.test:{port}/named"),
        None,
    )
    .await;
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://[::ffff:169.254.169.254]/",
    ] {
        problem(
            app.post(&t, "/v1/endpoints", &json!({ "url": url })).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    app.lookup.answer(
        "meta.test",
        vec![vec![ip("127.0.0.1")], vec![ip("169.254.169.254")]],
    );
    let meta = endpoint(&app, &t, &format!("http://meta.test:{port}/meta"), None).await;

    app.create_user(&t, json!({"email": "a@example.com"})).await;
    let got = rx.wait_for("/named", 1, WAIT).await;
    crate::verify(&e.secret, &got[0]);
    let v = eventually(
        &app,
        &t,
        &format!("/v1/deliveries?endpoint_id={}", meta.id),
        |v| v["data"][0]["status"] == "failed",
    )
    .await;
    let log = attempts(&app, &t, v["data"][0]["id"].as_str().unwrap()).await;
    assert_eq!(log[0]["error_class"], "blocked_address");
    assert!(
        log[0]["error"].as_str().unwrap().contains("metadata"),
        "{log:?}"
    );
    assert!(rx.received("/meta").is_empty());
}

#[tokio::test]
async fn redirects_are_not_followed_and_their_location_is_logged() {
    let app = spawn_app_with(|s| s.retry_schedule = vec![]).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    rx.script(
        "/moved",
        vec![Reply::status(302).header("location", &rx.url("/elsewhere"))],
    );
    let e = endpoint(&app, &t, &rx.url("/moved"), None).await;
    app.create_user(&t, json!({"email": "a@example.com"})).await;
    let v: Value = eventually(
        &app,
        &t,
        &format!("/v1/deliveries?endpoint_id={}", e.id),
        |v| v["data"][0]["status"] == "failed",
    )
    .await;
    let log = attempts(&app, &t, v["data"][0]["id"].as_str().unwrap()).await;
    assert_eq!(log[0]["status_code"], 302);
    assert_eq!(log[0]["error_class"], "http_status");
    assert_eq!(
        log[0]["response_headers"]["location"],
        rx.url("/elsewhere").as_str()
    );
    assert!(
        rx.received("/elsewhere").is_empty(),
        "the redirect was followed"
    );
}
