//! The address guard through the API and real deliveries. No test sends traffic outside
//! 127.0.0.0/8: public addresses are only ever accepted at creation (no user change follows
//! in that organization), and blocked ones are refused before any connection.

use std::net::IpAddr;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Tenant, TestApp, error_fields, problem, spawn_app_with};
use crate::receiver::{Receiver, Reply};
use crate::{WAIT, attempts, endpoint, eventually, failed_attempts};

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

/// Literal spellings of inner addresses, each as an endpoint URL. The loopback ones (and those
/// a connection would reach this machine through: `0.0.0.0`, `[::]`) name `port`, where the
/// test's receiver listens, so a spelling that slipped through would be seen arriving.
fn literal_spellings(port: u16) -> Vec<String> {
    let local = [
        // Loopback, plainly and in every IPv4 notation the URL standard accepts.
        "http://127.0.0.1:{p}/a",
        "http://127.255.255.254:{p}/a",
        "HTTP://127.0.0.1:{p}/a",
        "http://2130706433:{p}/decimal",
        "http://0x7f000001:{p}/hex",
        "http://0X7F000001:{p}/hex",
        "http://017700000001:{p}/octal",
        "http://0177.0.0.1:{p}/octal",
        "http://0177.0000.0000.0001:{p}/octal",
        "http://127.000.000.001:{p}/zeros",
        "http://0x7f.0x0.0x0.0x1:{p}/hex",
        "http://0x7f.1:{p}/short",
        "http://127.1:{p}/short",
        "http://127.0.1:{p}/short",
        // Trailing dots, userinfo, percent-encoding and full-width digits.
        "http://127.0.0.1.:{p}/dot",
        "http://example.com@127.0.0.1:{p}/userinfo",
        "http://user:pass@127.0.0.1:{p}/userinfo",
        "http://example.com:443@127.0.0.1:{p}/userinfo",
        "http://127.0.0.1:{p}\\@example.com/backslash",
        "http://%31%32%37.0.0.1:{p}/percent",
        "http://%31%32%37%2e%30%2e%30%2e%31:{p}/percent",
        "http://\u{ff11}\u{ff12}\u{ff17}\u{ff0e}\u{ff10}\u{ff0e}\u{ff10}\u{ff0e}\u{ff11}:{p}/fullwidth",
        "http://127\u{3002}0\u{3002}0\u{3002}1:{p}/ideographic",
        // "This host": connecting to it reaches loopback.
        "http://0:{p}/zero",
        "http://0.0.0.0:{p}/zero",
        "http://[::]:{p}/zero",
        // IPv6 loopback, and IPv4 loopback inside IPv6 (mapped, compatible, translated, NAT64).
        "http://[::1]:{p}/v6",
        "http://[0:0:0:0:0:0:0:1]:{p}/v6",
        "http://[0000::0001]:{p}/v6",
        "http://[::ffff:127.0.0.1]:{p}/mapped",
        "http://[::ffff:7f00:1]:{p}/mapped",
        "http://[::127.0.0.1]:{p}/compatible",
        "http://[::ffff:0:7f00:1]:{p}/translated",
        "http://[64:ff9b::7f00:1]:{p}/nat64",
        "http://[64:ff9b::127.0.0.1]:{p}/nat64",
        "http://[64:ff9b:1::7f00:1]:{p}/nat64",
        "http://[2002:7f00:1::1]:{p}/6to4",
    ];
    let remote = [
        // RFC 1918, link-local, metadata, CGNAT, in plain and other notations.
        "http://10.0.0.1/",
        "http://167772161/",
        "http://0xa000001/",
        "http://012.0.0.1/",
        "http://172.16.0.1/",
        "http://172.31.255.255/",
        "http://192.168.0.1/",
        "http://192.168.1/",
        "http://169.254.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://2852039166/latest/meta-data/",
        "http://0xa9.0xfe.0xa9.0xfe/",
        "http://169.254.170.2/v2/credentials",
        "http://100.100.100.200/latest/meta-data/",
        "http://100.64.0.1/",
        "http://100.127.255.254/",
        // IPv6 unique-local, link-local, metadata, and IPv4 inner addresses inside IPv6.
        "http://[fc00::1]/",
        "http://[fd12:3456:789a::1]/",
        "http://[fe80::1]/",
        "http://[fd00:ec2::254]/",
        "http://[::ffff:10.0.0.1]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[::ffff:192.168.0.1]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[64:ff9b::10.0.0.1]/",
        "http://[2001:db8::1]/",
    ];
    local
        .iter()
        .map(|u| u.replace("{p}", &port.to_string()))
        .chain(remote.iter().map(|u| u.to_string()))
        .collect()
}

/// Spellings the URL parser refuses outright (an IPv6 zone, a broken literal): refused at
/// creation as invalid, so they never reach a delivery.
const INVALID: [&str; 4] = [
    "http://[fe80::1%25eth0]/",
    "http://[::1/",
    "http://127.0.0.1:99999/",
    "http://256.0.0.1/",
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
    urls.extend(literal_spellings(9));
    for (i, inner) in INNER.iter().enumerate() {
        let name = format!("inner{i}.test");
        app.lookup.answer(&name, vec![vec![ip(inner)]]);
        urls.push(format!("https://{name}/hook"));
    }
    for name in ["localhost", "localhost.", "loop.test"] {
        app.lookup
            .answer(name, vec![vec![ip("127.0.0.1"), ip("::1")]]);
    }
    urls.push("http://localhost:9000/".into());
    urls.push("http://LocalHost/".into());
    urls.push("http://localhost./".into());
    urls.push("http://user@loop.test/".into());
    urls.push("http://lo%6fp.test/".into());
    app.lookup.answer(
        "mixed.test",
        vec![vec![ip("93.184.216.34"), ip("10.0.0.7")]],
    );
    urls.push("https://mixed.test/".into());
    assert!(urls.len() >= 100, "{}", urls.len());
    for url in &urls {
        let p = problem(
            app.post(&t, "/v1/endpoints", &json!({ "url": url })).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(error_fields(&p), ["url"], "{url}");
        // Userinfo is refused on its own (credentials belong in headers, not URLs); the
        // delivery test shows the address behind it is blocked too.
        let detail = p["errors"][0]["detail"].as_str().unwrap();
        assert!(
            detail.contains("blocked") || (url.contains('@') && detail.contains("credentials")),
            "{url}: {p}"
        );
    }
    for url in INVALID {
        let p = problem(
            app.post(&t, "/v1/endpoints", &json!({ "url": url })).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(error_fields(&p), ["url"], "{url}");
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
        // Look like inner addresses, are not: the host is public.test in each.
        "https://public.test/?next=http://127.0.0.1/",
        "https://public.test/127.0.0.1",
        "https://PUBLIC.test./hook",
        // Public addresses in other notations.
        "https://134744072/",
        "https://0x8.0x8.0x8.0x8/",
        "https://[2a00:1450:4001::200e]/",
    ];
    for url in allowed {
        let r = app.post(&t, "/v1/endpoints", &json!({ "url": url })).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{url}");
    }
}

/// Waits for the delivery to `endpoint_id` to fail, and checks that it made one attempt, refused
/// as `blocked_address` (`what` names the case in a failure).
async fn assert_blocked_once(app: &TestApp, t: &Tenant, endpoint_id: &str, what: &str) {
    let v = eventually(
        app,
        t,
        &format!("/v1/deliveries?endpoint_id={endpoint_id}"),
        |v| v["data"][0]["status"] == "failed",
    )
    .await;
    let log = attempts(app, t, v["data"][0]["id"].as_str().unwrap()).await;
    assert_eq!(log.len(), 1, "{what}: {log:?}");
    assert_eq!(log[0]["error_class"], "blocked_address", "{what}: {log:?}");
    assert!(
        log[0]["error"].as_str().unwrap().contains("blocked"),
        "{what}: {log:?}"
    );
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
        assert_blocked_once(&app, &t, &e.id, "a rebinding name").await;
    }
    assert!(
        rx.received("/rebind").is_empty(),
        "a blocked delivery reached the receiver"
    );
}

#[tokio::test]
async fn every_blocked_spelling_is_blocked_at_delivery_too() {
    let app = strict_app().await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let port = rx.addr.port();
    app.lookup
        .answer("public.test", vec![vec![ip("93.184.216.34")]]);
    let mut endpoints = Vec::new();
    for (i, url) in literal_spellings(port).iter().enumerate() {
        // Written to the row as a server that allowed private targets would have (or a
        // release before the guard): the delivery itself must refuse it.
        let e = endpoint(&app, &t, &format!("https://public.test/{i}"), None).await;
        let sql = format!(
            "UPDATE endpoints SET url = '{}' WHERE id = '{}'",
            url.replace('\'', "''"),
            e.id
        );
        app.db.execute(&sql, &sql).await;
        endpoints.push((url.clone(), e));
    }
    // Names that resolve to loopback by the time of the delivery (public when created), the
    // last one to a public and a loopback address at once.
    let public = vec![ip("93.184.216.34")];
    for (name, later) in [
        ("localhost.", vec![ip("127.0.0.1")]),
        ("loop.test", vec![ip("127.0.0.1")]),
        ("six.test", vec![ip("::1")]),
        ("mapped.test", vec![ip("::ffff:127.0.0.1")]),
        ("both.test", vec![ip("93.184.216.34"), ip("127.0.0.1")]),
    ] {
        app.lookup.answer(name, vec![public.clone(), later]);
        let url = format!("http://{name}:{port}/name");
        endpoints.push((url.clone(), endpoint(&app, &t, &url, None).await));
    }
    app.create_user(&t, json!({"email": "a@example.com"})).await;
    for (url, e) in &endpoints {
        assert_blocked_once(&app, &t, &e.id, url).await;
    }
    assert!(
        rx.all().is_empty(),
        "a blocked delivery reached the receiver: {:?}",
        rx.all().iter().map(|r| &r.path).collect::<Vec<_>>()
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
    let log = failed_attempts(&app, &t, &e.id).await;
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
    let log = failed_attempts(&app, &t, &meta.id).await;
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
