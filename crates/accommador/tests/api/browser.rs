//! The delivery-log UI in a real browser: Debian's headless Chromium driven by playwright-core
//! (`tests/browser/flows.mjs`). Gated like the PostgreSQL suite: without
//! `ACCOMMADOR_TEST_BROWSER=1` it does nothing; with it, a missing browser, Node or
//! playwright-core fails the test. Screenshots of every page land in `target/ui-screenshots/`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::spawn_app;

pub const BROWSER_ENV: &str = "ACCOMMADOR_TEST_BROWSER";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A receiver that fails every delivery with HTML in its body (shown as text by the UI).
async fn failing_receiver() -> String {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(|| async {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [("content-type", "text/html")],
                "<h1>Oops</h1><script>alert(1)</script>",
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hook")
}

#[tokio::test]
async fn the_ui_works_in_headless_chromium() {
    if std::env::var(BROWSER_ENV).map_or(true, |v| v.is_empty() || v == "0") {
        eprintln!("skipped: set {BROWSER_ENV}=1 to run the browser suite");
        return;
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script_dir = manifest.join("tests/browser");
    assert!(
        Path::new(CHROMIUM).exists(),
        "{BROWSER_ENV} is set but {CHROMIUM} is missing: apt-get install -y chromium"
    );
    assert!(
        script_dir.join("node_modules/playwright-core").exists(),
        "{BROWSER_ENV} is set but playwright-core is missing: npm ci --prefix {}",
        script_dir.display()
    );
    let shots: PathBuf = manifest.join("../../target/ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    let app = spawn_app().await;
    let acme = app.create_org("Acme").await;
    let r = app
        .post(
            &acme,
            "/v1/endpoints",
            &json!({"url": failing_receiver().await, "description": "Billing service",
                    "rate_limit": 20}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let endpoint: Value = r.json().await.unwrap();
    let user = app
        .create_user(
            &acme,
            json!({"email": "ada@example.com", "name": "<script>alert(1)</script>",
                   "attributes": {"plan": "pro"}}),
        )
        .await;
    app.patch(
        &acme,
        &format!("/v1/users/{}", user["id"].as_str().unwrap()),
        &json!({"attributes": {"plan": "team"}}),
    )
    .await;
    // The first delivery fails for good (the test schedule has one retry after 1 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivery = loop {
        let list: Value = app
            .get(&acme, "/v1/deliveries?status=failed")
            .await
            .json()
            .await
            .unwrap();
        if let Some(d) = list["data"].as_array().unwrap().last() {
            break d["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no delivery failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let link: Value = app
        .post(&acme, "/v1/portal-links", &json!({"read_only": true}))
        .await
        .json()
        .await
        .unwrap();

    let out = tokio::process::Command::new("node")
        .arg(script_dir.join("flows.mjs"))
        .env("UI_BASE_URL", app.url(""))
        .env("UI_SCREENSHOTS", &shots)
        .env("UI_CHROMIUM", CHROMIUM)
        .env("UI_API_KEY", &acme.key)
        .env("UI_DELIVERY_ID", &delivery)
        .env("UI_ENDPOINT_ID", endpoint["id"].as_str().unwrap())
        .env("UI_USER_ID", user["id"].as_str().unwrap())
        .env("UI_PORTAL_PATH", link["url"].as_str().unwrap())
        .kill_on_drop(true)
        .output()
        .await
        .expect("node runs (apt-get install -y nodejs)");
    assert!(
        out.status.success(),
        "browser flows failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
