//! A real `accommador serve` process killed with SIGKILL while attempts are in flight: after a
//! restart every event still reaches the endpoint at least once.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::Client;
use serde_json::{Value, json};

use crate::receiver::{Receiver, Reply};
use crate::spawn;

pub(crate) const ADMIN: &str = "crash-admin-token";

pub(crate) use crate::spawn::Server;

pub(crate) async fn start(dir: &std::path::Path) -> Server {
    spawn::serve(
        &dir.join("crash.db"),
        dir,
        &[
            ("ACCOMMADOR_ADMIN_TOKEN", ADMIN),
            ("ACCOMMADOR_ALLOW_PRIVATE_TARGETS", "true"),
            ("ACCOMMADOR_RETRY_SCHEDULE", "100ms,100ms,100ms"),
        ],
    )
    .await
}

#[tokio::test]
async fn deliveries_in_flight_at_sigkill_are_attempted_again_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start().await;
    // The first attempts hang, so they are in flight when the process dies.
    rx.script(
        "/crash",
        (0..8)
            .map(|_| Reply::status(200).after(Duration::from_secs(30)))
            .collect(),
    );
    let client = Client::new();
    let mut server = start(dir.path()).await;
    let org: Value = client
        .post(server.url("/v1/organizations"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "Crash"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = org["api_key"].as_str().unwrap().to_owned();
    let r = client
        .post(server.url("/v1/endpoints"))
        .bearer_auth(&key)
        .json(&json!({"url": rx.url("/crash")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for i in 0..20 {
        let r = client
            .post(server.url("/v1/users"))
            .bearer_auth(&key)
            .json(&json!({"email": format!("u{i}@example.com")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    rx.wait_for("/crash", 8, Duration::from_secs(30)).await;
    server.0.kill().unwrap();
    spawn::reap(&mut server.0).await;

    let server = start(dir.path()).await;
    let events: Value = client
        .get(server.url("/v1/events?limit=500"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let expected: HashSet<String> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(expected.len(), 20);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        // Answered requests only: the hung ones before the crash never completed.
        let answered: HashSet<String> = rx.received("/crash")[8..]
            .iter()
            .map(|r| r.id.clone())
            .collect();
        if expected.is_subset(&answered) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of 20 events delivered after the restart",
            expected.intersection(&answered).count()
        );
        rx.wait_for(
            "/crash",
            rx.received("/crash").len() + 1,
            Duration::from_secs(30),
        )
        .await;
    }
}
