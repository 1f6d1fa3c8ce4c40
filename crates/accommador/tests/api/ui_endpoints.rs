//! The UI's endpoint pages as an operator reads them: each endpoint's last error (what failed,
//! when, and which delivery), the delivery policies (ordering, rate limit, a concurrency held
//! down by the receiver) shown and edited with the API's own validation messages, and an
//! attempt sent out of order saying so. (Beside `ui.rs`, which holds the sign-in, session and
//! escaping stories and the `Browser` they share.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Tenant, TestApp, spawn_app, spawn_app_with};
use crate::ui::{Browser, api_json, csrf_in};

/// A receiver on a real local socket: `/ok` answers 200, `/fail` 503, `/busy` 429 (no
/// `Retry-After`), `/gone` 410, `/flaky` 503 to its first request and 200 after, `/ordered`
/// 500 to the first request whose body holds version 1 of a user and 200 to the rest.
async fn receiver() -> String {
    use axum::routing::post;
    let flaky = Arc::new(AtomicUsize::new(0));
    let first_versions = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .route("/ok", post(|| async { StatusCode::OK }))
        .route("/fail", post(|| async { StatusCode::SERVICE_UNAVAILABLE }))
        .route("/busy", post(|| async { StatusCode::TOO_MANY_REQUESTS }))
        .route("/gone", post(|| async { StatusCode::GONE }))
        .route(
            "/flaky",
            post(move || async move {
                match flaky.fetch_add(1, Ordering::SeqCst) {
                    0 => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::OK,
                }
            }),
        )
        .route(
            "/ordered",
            post(move |body: String| async move {
                if body.contains(r#""version":1"#)
                    && first_versions.fetch_add(1, Ordering::SeqCst) == 0
                {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// Polls `path` with `t`'s key until `done` holds (20 s at most).
async fn eventually(app: &TestApp, t: &Tenant, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = api_json(app, t, path).await;
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{path} never got there: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn endpoint_at(app: &TestApp, t: &Tenant, url: String) -> String {
    let r = app.post(t, "/v1/endpoints", &json!({ "url": url })).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The endpoint's deliveries, once each has been attempted at least once.
async fn attempted(app: &TestApp, t: &Tenant, endpoint: &str, count: usize) -> Vec<Value> {
    let list = eventually(
        app,
        t,
        &format!("/v1/deliveries?endpoint_id={endpoint}"),
        |l| {
            let items = l["data"].as_array().unwrap();
            items.len() == count && items.iter().all(|d| d["attempt_count"].as_u64() >= Some(1))
        },
    )
    .await;
    list["data"].as_array().unwrap().clone()
}

/// The table row (`<tr>…</tr>`) of a page that mentions `id`.
fn row_of<'a>(html: &'a str, id: &str) -> &'a str {
    let at = html
        .find(&format!(r#">{id}</a>"#))
        .unwrap_or_else(|| panic!("no row for {id}: {html}"));
    let start = html[..at].rfind("<tr>").unwrap();
    let end = at + html[at..].find("</tr>").unwrap();
    &html[start..end]
}

#[tokio::test]
async fn the_endpoints_page_shows_each_endpoints_last_error_linked_to_its_delivery() {
    let app = spawn_app().await;
    let acme = app.create_org("Acme").await;
    let globex = app.create_org("Globex").await;
    let rx = receiver().await;
    let failing = endpoint_at(&app, &acme, format!("{rx}/fail")).await;
    let healthy = endpoint_at(&app, &acme, format!("{rx}/ok")).await;
    let flaky = endpoint_at(&app, &acme, format!("{rx}/flaky")).await;
    let theirs = endpoint_at(&app, &globex, format!("{rx}/fail")).await;
    app.create_user(&acme, json!({"email": "ada@example.com"}))
        .await;
    app.create_user(&globex, json!({"email": "grace@example.com"}))
        .await;
    let failed = attempted(&app, &acme, &failing, 1).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    attempted(&app, &acme, &healthy, 1).await;
    let their_delivery = attempted(&app, &globex, &theirs, 1).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The flaky endpoint's first attempt failed; its retry (1 s later) succeeds.
    let flaky_delivery = attempted(&app, &acme, &flaky, 1).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut b = Browser::new(&app);
    b.sign_in(&acme.key).await;
    let (status, html) = b.page("/ui/endpoints").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Last error</th>"), "{html}");
    let row = row_of(&html, &failing);
    assert!(
        row.contains(&format!(r#"href="/ui/deliveries/{failed}""#)),
        "the last error links its delivery: {row}"
    );
    assert!(row.contains("HTTP 503 Service Unavailable"), "{row}");
    assert!(
        row.contains("an error on the receiving server"),
        "plain words on hover: {row}"
    );
    let attempts = api_json(&app, &acme, &format!("/v1/deliveries/{failed}/attempts")).await;
    let started = attempts["data"][0]["started_at"].as_str().unwrap();
    assert!(
        row.contains(&format!(r#"title="{started}""#)),
        "relative time, the absolute one on hover: {row}"
    );
    let row = row_of(&html, &healthy);
    assert!(!row.contains("/ui/deliveries/"), "{row}");
    assert!(row.contains(r#"<span class="muted">none</span>"#), "{row}");
    assert!(
        !html.contains(&their_delivery) && !html.contains(&theirs),
        "another organization's failure never shows"
    );

    // The endpoint's own page says the same, in a sentence.
    let (_, page) = b.page(&format!("/ui/endpoints/{failing}")).await;
    assert!(page.contains(&format!(r#"href="/ui/deliveries/{failed}""#)));
    assert!(page.contains("HTTP 503 Service Unavailable"));
    assert!(page.contains("The endpoint answered 503: an error on the receiving server."));
    let (_, page) = b.page(&format!("/ui/endpoints/{healthy}")).await;
    assert!(page.contains("none: no delivery is failing"), "{page}");

    // A failure that a retry made good is no error any more.
    eventually(
        &app,
        &acme,
        &format!("/v1/deliveries/{flaky_delivery}"),
        |d| d["status"] == "succeeded",
    )
    .await;
    let (_, html) = b.page("/ui/endpoints").await;
    let row = row_of(&html, &flaky);
    assert!(row.contains(r#"<span class="muted">none</span>"#), "{row}");

    // Globex sees its own failure and none of Acme's.
    let mut g = Browser::new(&app);
    g.sign_in(&globex.key).await;
    let (_, html) = g.page("/ui/endpoints").await;
    assert!(html.contains(&format!(r#"href="/ui/deliveries/{their_delivery}""#)));
    assert!(!html.contains(&failed) && !html.contains(&failing));
}

#[tokio::test]
async fn the_endpoint_disabled_by_a_410_shows_that_410_as_its_last_error() {
    let app = spawn_app().await;
    let acme = app.create_org("Acme").await;
    let rx = receiver().await;
    let endpoint = endpoint_at(&app, &acme, format!("{rx}/gone")).await;
    for i in 0..3 {
        app.create_user(&acme, json!({ "email": format!("u{i}@example.com") }))
            .await;
    }
    // The first 410 disables the endpoint and the other deliveries end with it, unsent.
    eventually(&app, &acme, &format!("/v1/endpoints/{endpoint}"), |e| {
        e["status"] == "disabled"
    })
    .await;
    let list = eventually(
        &app,
        &acme,
        &format!("/v1/deliveries?endpoint_id={endpoint}"),
        |l| {
            l["data"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["status"] == "failed")
        },
    )
    .await;
    let sent = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["last_status_code"] == 410)
        .unwrap_or_else(|| panic!("no delivery got the 410: {list}"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut b = Browser::new(&app);
    b.sign_in(&acme.key).await;
    let (_, html) = b.page("/ui/endpoints").await;
    let row = row_of(&html, &endpoint);
    assert!(row.contains("HTTP 410 Gone"), "{row}");
    assert!(row.contains(&format!(r#"href="/ui/deliveries/{sent}""#)));
    let (_, overview) = b.page("/ui/").await;
    assert!(
        row_of(&overview, &endpoint).contains("HTTP 410 Gone"),
        "the overview's failing endpoints show it too: {overview}"
    );
}

/// Submits an endpoint form; returns the response's status and page.
async fn submit(b: &mut Browser, path: &str, fields: &[(&str, &str)]) -> (StatusCode, String) {
    let r = b.post(path, fields).await;
    (r.status(), r.text().await.unwrap())
}

/// What the API answers for this endpoint body: the detail of its one field error.
async fn api_message(app: &TestApp, t: &Tenant, body: Value) -> String {
    let r = app.post(t, "/v1/endpoints", &body).await;
    let p = crate::helpers::problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(p["errors"].as_array().unwrap().len(), 1, "{p}");
    p["errors"][0]["detail"].as_str().unwrap().to_owned()
}

/// `text` as a page shows it (HTML-escaped).
fn escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[tokio::test]
async fn endpoint_forms_set_and_clear_ordering_and_rate_limit_with_the_apis_messages() {
    let app = spawn_app().await;
    let acme = app.create_org("Acme").await;
    let mut b = Browser::new(&app);
    b.sign_in(&acme.key).await;
    let csrf = b.csrf().await;
    let (_, new) = b.page("/ui/endpoints/new").await;
    assert!(
        new.contains(r#"<select id="ordering" name="ordering""#),
        "{new}"
    );
    assert!(new.contains(r#"name="rate_limit""#));

    let (status, _) = submit(
        &mut b,
        "/ui/endpoints",
        &[
            ("csrf", &csrf),
            ("url", "http://127.0.0.1:9/hook"),
            ("ordering", "per_user"),
            ("rate_limit", "20"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let list = api_json(&app, &acme, "/v1/endpoints").await;
    let e = &list["data"][0];
    assert_eq!(e["ordering"], "per_user");
    assert_eq!(e["rate_limit"], 20);
    let id = e["id"].as_str().unwrap().to_owned();
    let path = format!("/ui/endpoints/{id}");

    // Shown on the list and the page, and the edit form starts from them.
    let (_, html) = b.page("/ui/endpoints").await;
    let row = row_of(&html, &id);
    assert!(row.contains("in order per user"), "{row}");
    assert!(row.contains("at most 20 per second"), "{row}");
    let (_, page) = b.page(&path).await;
    assert!(
        page.contains("per user: one user's events arrive in commit order"),
        "{page}"
    );
    assert!(page.contains("at most 20 deliveries per second"));
    assert!(
        page.contains(r#"<option value="per_user" selected>"#),
        "{page}"
    );
    assert!(page.contains(r#"value="20""#));
    assert!(
        page.contains("16 attempts at once"),
        "the configured bound: {page}"
    );

    // Cleared: an empty rate limit is no limit.
    let (status, _) = submit(
        &mut b,
        &path,
        &[
            ("csrf", &csrf),
            ("url", "http://127.0.0.1:9/hook"),
            ("ordering", "none"),
            ("rate_limit", ""),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let e = api_json(&app, &acme, &format!("/v1/endpoints/{id}")).await;
    assert_eq!(e["ordering"], "none");
    assert_eq!(e["rate_limit"], Value::Null);
    let (_, html) = b.page("/ui/endpoints").await;
    assert!(row_of(&html, &id).contains("defaults"));

    // Refused with the API's message for the field, the form keeping what was typed.
    for (field, typed, api_body) in [
        (
            "rate_limit",
            "0",
            json!({"url": "http://127.0.0.1:9/x", "rate_limit": 0}),
        ),
        (
            "rate_limit",
            "fast",
            json!({"url": "http://127.0.0.1:9/x", "rate_limit": "fast"}),
        ),
        (
            "ordering",
            "sideways",
            json!({"url": "http://127.0.0.1:9/x", "ordering": "sideways"}),
        ),
    ] {
        let message = api_message(&app, &acme, api_body).await;
        for target in ["/ui/endpoints", path.as_str()] {
            let (status, html) = submit(
                &mut b,
                target,
                &[
                    ("csrf", &csrf),
                    ("url", "http://127.0.0.1:9/hook"),
                    (field, typed),
                ],
            )
            .await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{target} {typed}");
            let shown = format!("<code>{field}</code> {}", escaped(&message));
            assert!(html.contains(&shown), "{shown} in {html}");
            if field == "rate_limit" {
                assert!(html.contains(&format!(r#"value="{typed}""#)), "{html}");
            }
        }
    }
    let e = api_json(&app, &acme, &format!("/v1/endpoints/{id}")).await;
    assert_eq!(
        (&e["ordering"], &e["rate_limit"]),
        (&json!("none"), &Value::Null)
    );
}

#[tokio::test]
async fn a_concurrency_the_receiver_slowed_down_is_shown_as_reduced() {
    // One attempt each: the 429 halves the endpoint's concurrency and nothing raises it again.
    let app = spawn_app_with(|s| s.retry_schedule = vec![]).await;
    let acme = app.create_org("Acme").await;
    let rx = receiver().await;
    let busy = endpoint_at(&app, &acme, format!("{rx}/busy")).await;
    app.create_user(&acme, json!({"email": "ada@example.com"}))
        .await;
    let e = eventually(&app, &acme, &format!("/v1/endpoints/{busy}"), |e| {
        e["current_concurrency"].as_u64() < Some(16)
    })
    .await;
    let n = e["current_concurrency"].as_u64().unwrap();
    let mut b = Browser::new(&app);
    b.sign_in(&acme.key).await;
    let (_, page) = b.page(&format!("/ui/endpoints/{busy}")).await;
    assert!(page.contains("reduced"), "{page}");
    assert!(
        page.contains(&format!("{n} of 16 attempts at once")),
        "{page}"
    );
    assert!(
        page.contains("answered 429 or 503 without Retry-After"),
        "why: {page}"
    );
    let (_, html) = b.page("/ui/endpoints").await;
    assert!(
        row_of(&html, &busy).contains(&format!("slowed: {n} of 16 at once")),
        "{html}"
    );
}

#[tokio::test]
async fn an_attempt_sent_after_a_later_delivery_of_its_user_is_marked_out_of_order() {
    // No retries: version 1's one failure ends it, which lets version 2 through.
    let app = spawn_app_with(|s| s.retry_schedule = vec![]).await;
    let acme = app.create_org("Acme").await;
    let rx = receiver().await;
    let r = app
        .post(
            &acme,
            "/v1/endpoints",
            &json!({"url": format!("{rx}/ordered"), "ordering": "per_user"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let endpoint = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let user = app
        .create_user(&acme, json!({"email": "ada@example.com"}))
        .await;
    let user = user["id"].as_str().unwrap();
    let r = app
        .patch(&acme, &format!("/v1/users/{user}"), &json!({"name": "Ada"}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let list = eventually(
        &app,
        &acme,
        &format!("/v1/deliveries?endpoint_id={endpoint}"),
        |l| {
            let items = l["data"].as_array().unwrap();
            items.len() == 2
                && items.iter().any(|d| d["status"] == "failed")
                && items.iter().any(|d| d["status"] == "succeeded")
        },
    )
    .await;
    let first = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["status"] == "failed")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut b = Browser::new(&app);
    b.sign_in(&acme.key).await;
    let page = format!("/ui/deliveries/{first}");
    let (_, html) = b.page(&page).await;
    assert!(
        !html.contains("out of order"),
        "the first attempt was in order"
    );
    let csrf = csrf_in(&html);
    assert_eq!(
        b.act(&format!("{page}/retry"), &csrf).await,
        StatusCode::SEE_OTHER
    );
    eventually(&app, &acme, &format!("/v1/deliveries/{first}"), |d| {
        d["status"] == "succeeded"
    })
    .await;
    let (_, html) = b.page(&page).await;
    assert!(html.contains("Attempt 2</strong> · manual"), "{html}");
    assert_eq!(
        html.matches(r#"<span class="badge s-warn">out of order</span>"#)
            .count(),
        1,
        "only the manual attempt: {html}"
    );
    assert!(html.contains("a later delivery of the same user had already been"));
}
