//! `accommador listen --forward-to URL`: a verified delivery reaches the local app with the same
//! headers and body, the app's answer goes back to the sender and is printed; a forged one never
//! reaches the app; an app that is down is a 502; and a real server's delivery goes through
//! listen to the app, whose answer lands in the delivery log.

use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::support::command;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A `listen` child and its port, read back from "listening on http://…".
struct Listen {
    child: Child,
    port: u16,
    out: std::path::PathBuf,
}

impl Drop for Listen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn listen(dir: &Path, name: &str, forward_to: &str) -> Listen {
    let out = dir.join(format!("{name}.out"));
    let err = dir.join(format!("{name}.err"));
    let mut child = command(dir)
        .args(["listen", "--port", "0", "--secret", SECRET, "--json"])
        .args(["--forward-to", forward_to])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let (port, said) = crate::support::listen_port(&mut child, &err).await;
    assert!(said.contains("forwarding to"), "{said}");
    Listen { child, port, out }
}

/// Posts `body` to the listener, signed with the secret (or a made-up signature when `forged`).
async fn deliver(port: u16, id: &str, body: &str, forged: bool) -> (u16, String) {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let signature = if forged {
        "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned()
    } else {
        accommador_webhooks::Secret::parse(SECRET)
            .unwrap()
            .sign(id, ts, body.as_bytes())
    };
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/hooks"))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

type Seen = Arc<Mutex<Vec<(HeaderMap, String)>>>;

/// The integrator's app: answers 201 `made <n>` to the first request, 500 `boom` after.
async fn app() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let router = axum::Router::new().route(
        "/webhooks",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let record = record.clone();
            async move {
                let mut seen = record.lock().unwrap();
                seen.push((headers, body));
                if seen.len() == 1 {
                    (StatusCode::CREATED, "made 1".to_owned())
                } else {
                    (StatusCode::INTERNAL_SERVER_ERROR, "boom".to_owned())
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}/webhooks"), seen)
}

fn printed(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn listen_forwards_verified_deliveries_to_the_app_and_reports_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (url, seen) = app().await;
    let relay = listen(dir.path(), "relay", &url).await;

    let body =
        r#"{"id":"evt_1","type":"user.created","timestamp":"2026-11-27T01:02:03.456Z","data":{}}"#;
    assert_eq!(
        deliver(relay.port, "evt_1", body, false).await,
        (201, "made 1".to_owned()),
        "the sender gets the app's answer"
    );
    assert_eq!(
        deliver(relay.port, "evt_2", body, true).await.0,
        401,
        "a forged delivery is refused"
    );
    assert_eq!(
        deliver(relay.port, "evt_3", body, false).await,
        (500, "boom".to_owned())
    );

    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "the forged delivery reached the app");
        let (headers, got) = &seen[0];
        assert_eq!(got, body, "the body changed on the way");
        assert_eq!(headers["webhook-id"], "evt_1");
        assert_eq!(headers["content-type"], "application/json");
        // The app can verify the relayed request itself.
        let pairs = headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
        let parsed = accommador_webhooks::WebhookHeaders::from_pairs(pairs).unwrap();
        accommador_webhooks::Verifier::new(accommador_webhooks::Secret::parse(SECRET).unwrap())
            .verify(&parsed, got.as_bytes())
            .expect("the relayed signature verifies");
    }

    let lines = printed(&relay.out);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["forwarded"]["status"], 201);
    assert_eq!(lines[0]["forwarded"]["body"], "made 1");
    assert_eq!(lines[1]["verified"], false);
    assert_eq!(lines[1]["forwarded"], Value::Null);
    assert_eq!(lines[2]["forwarded"]["status"], 500);

    // An app that is not running: 502, and the reason printed.
    let down = listen(dir.path(), "down", "http://127.0.0.1:9/webhooks").await;
    assert_eq!(deliver(down.port, "evt_4", body, false).await.0, 502);
    let lines = printed(&down.out);
    assert!(
        lines[0]["forwarded"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{lines:?}"
    );
}

#[test]
fn a_forward_url_that_is_not_http_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.args([
        "listen",
        "--port",
        "0",
        "--forward-to",
        "ftp://app.example/x",
    ]);
    let line = crate::support::run(dir.path(), cmd).one_line_failure();
    assert!(line.contains("--forward-to"), "{line}");
}

/// The whole loop: a real server delivers to `listen`, which relays to the app; the delivery log
/// records the app's own answer.
#[tokio::test]
async fn a_real_delivery_reaches_the_app_through_listen_and_its_answer_is_logged() {
    use crate::resources::{Client, eventually, start};
    use crate::support::Database;

    let files = tempfile::tempdir().unwrap();
    let (dir, server, key) = start(&Database::sqlite(files.path())).await;
    let cli = Client::of(dir.path(), &server, &key);
    let (app_url, seen) = app().await;

    // The endpoint first (its secret is what listen verifies with), then its URL.
    let ep = cli.json(&["endpoints", "create", "--url", "http://127.0.0.1:9/later"]);
    let secret = ep["secret"].as_str().unwrap().to_owned();
    let ep_id = ep["id"].as_str().unwrap().to_owned();
    let out = dir.path().join("relay.out");
    let err = dir.path().join("relay.err");
    let mut child = command(dir.path())
        .args(["listen", "--port", "0", "--secret", &secret, "--json"])
        .args(["--forward-to", &app_url])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let (port, _) = crate::support::listen_port(&mut child, &err).await;
    let _relay = Listen { child, port, out };
    let hook = format!("http://127.0.0.1:{port}/hooks");
    cli.json(&["endpoints", "update", &ep_id, "--url", &hook]);

    let user = cli.json(&["users", "create", "--email", "relay@example.com"]);
    let delivery = eventually("the delivery through listen", || {
        let list = cli.json(&["deliveries", "list", "--endpoint-id", &ep_id]);
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["status"] == "succeeded")
            .cloned()
    })
    .await;
    let attempts = cli.json(&["deliveries", "attempts", delivery["id"].as_str().unwrap()]);
    assert_eq!(attempts["data"][0]["status_code"], 201, "{attempts}");
    assert_eq!(attempts["data"][0]["response_body"], "made 1", "{attempts}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let body: Value = serde_json::from_str(&seen[0].1).unwrap();
    assert_eq!(body["data"]["user"]["id"], user["id"]);
}
