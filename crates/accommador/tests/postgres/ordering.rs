//! Per-user ordering across instances (DESIGN §10): two workers sharing one database never
//! send one user's events to a `per_user` endpoint out of order, even when deliveries fail
//! and retry at random.

use std::collections::HashMap;

use super::*;

#[tokio::test]
async fn two_workers_deliver_every_users_events_in_version_order_despite_failures() {
    if !postgres_configured() {
        return;
    }
    // ACCOMMADOR_TEST_FULL=1: the 10,000 events of 1,000 users (about 10 minutes on
    // a busy 2-core machine, most of it the 9,000 PATCHes); otherwise a fifth of it.
    let users = if std::env::var("ACCOMMADOR_TEST_FULL").is_ok() {
        1000
    } else {
        200
    };
    const EVENTS_PER_USER: u64 = 10;
    // Failed attempts retry within 50 ms, up to five times (each delivery fails at most
    // twice), so every delivery succeeds in the end.
    let (_db, rx, servers, client, key) =
        two_instances(&[("ACCOMMADOR_RETRY_SCHEDULE", "20ms,50ms,50ms,50ms,50ms")]).await;
    rx.flaky(2);
    let r = client
        .post(servers[0].url("/v1/endpoints"))
        .bearer_auth(&key)
        .json(&json!({"url": rx.url("/ordered"), "ordering": "per_user"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // Each user is created on one instance and changed on both, one change after another;
    // 16 users at a time.
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (client, key) = (client.clone(), key.clone());
        let urls = [servers[0].url(""), servers[1].url("")];
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (w..users).step_by(16) {
                let r = client
                    .post(format!("{}/v1/users", urls[i % 2]))
                    .bearer_auth(&key)
                    .json(&json!({"email": format!("u{i}@example.com")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::CREATED);
                let id = r.json::<Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                for v in 2..=EVENTS_PER_USER {
                    let r = client
                        .patch(format!("{}/v1/users/{id}", urls[v as usize % 2]))
                        .bearer_auth(&key)
                        .json(&json!({"name": format!("v{v}")}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), StatusCode::OK);
                }
                ids.push(id);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    let expected = users * EVENTS_PER_USER as usize;
    wait_distinct(&rx, expected, Duration::from_secs(300)).await;

    // Per user, every request (failed ones included) in arrival order: versions never go
    // back, and each one arrives.
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    let all = rx.all();
    for r in &all {
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        let user = &body["data"]["user"];
        seen.entry(user["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(user["version"].as_u64().unwrap());
    }
    assert_eq!(seen.len(), users);
    for id in &ids {
        let versions = &seen[id];
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "{id} received versions out of order: {versions:?}"
        );
        let mut distinct = versions.clone();
        distinct.dedup();
        assert_eq!(distinct, (1..=EVENTS_PER_USER).collect::<Vec<_>>(), "{id}");
    }
    let failures = all.len() - expected;
    eprintln!(
        "{expected} events of {users} users delivered in order; {failures} failed attempts retried"
    );
    assert!(
        failures > expected / 2,
        "too few failures to test: {failures}"
    );
    assert_eq!(
        rx.overlaps(),
        0,
        "two workers attempted one delivery at once"
    );
}
