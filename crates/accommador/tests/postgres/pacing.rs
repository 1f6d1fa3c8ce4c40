//! Per-endpoint delivery policies across instances: one rate limit and one allowed
//! concurrency per endpoint, however many instances deliver to it.

use std::time::Duration;

use serde_json::{Value, json};

use super::{
    Server, create_endpoint, create_endpoint_with, create_users, postgres_configured, receiver,
    two_instances,
};

async fn current_concurrency(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    id: &str,
) -> u64 {
    let e: Value = client
        .get(server.url(&format!("/v1/endpoints/{id}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    e["current_concurrency"].as_u64().unwrap()
}

#[tokio::test]
async fn a_rate_limit_holds_across_instances() {
    if !postgres_configured() {
        return;
    }
    let (_db, rx, servers, client, key) = two_instances(&[]).await;
    create_endpoint_with(
        &client,
        &servers[0],
        &key,
        json!({"url": rx.url("/paced"), "rate_limit": 20}),
    )
    .await;
    let refs: Vec<&Server> = servers.iter().collect();
    // Half the users through each instance: both have the endpoint's deliveries to send.
    create_users(&client, &refs, &key, 200, "p").await;
    let got = rx.wait_for("/paced", 200, Duration::from_secs(40)).await;
    let first = got[0].at;
    let mut arrived: Vec<i64> = got
        .iter()
        .map(|r| r.at.duration_since(first).as_millis() as i64)
        .collect();
    arrived.sort_unstable();
    let busiest = (0..arrived.len())
        .map(|i| {
            arrived[i..]
                .iter()
                .take_while(|t| **t < arrived[i] + 1000)
                .count()
        })
        .max()
        .unwrap();
    assert!(
        busiest <= 22,
        "{busiest} requests arrived within one second"
    );
    let span = got.last().unwrap().at.duration_since(first);
    assert!(
        span >= Duration::from_millis(9_500),
        "200 deliveries at 20/s took only {span:?}"
    );
    assert_eq!(rx.overlaps(), 0);
}

#[tokio::test]
async fn a_halved_concurrency_holds_on_every_instance() {
    if !postgres_configured() {
        return;
    }
    let (_db, rx, servers, client, key) = two_instances(&[
        ("ACCOMMADOR_ENDPOINT_CONCURRENCY", "4"),
        ("ACCOMMADOR_RETRY_SCHEDULE", &["100ms"; 100].join(",")),
    ])
    .await;
    rx.default_reply(receiver::Reply::status(429).after(Duration::from_millis(100)));
    rx.watch("/busy");
    let id = create_endpoint(&client, &servers[0], &key, &rx.url("/busy")).await;
    let refs: Vec<&Server> = servers.iter().collect();
    create_users(&client, &refs, &key, 40, "b").await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while current_concurrency(&client, &servers[1], &key, &id).await != 1 {
        assert!(tokio::time::Instant::now() < deadline, "never fell to 1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each instance reads the shared value within a second: after ten more requests
    // (at least a second at one at a time), both keep to it.
    let seen = rx.received("/busy").len();
    rx.wait_for("/busy", seen + 10, Duration::from_secs(20))
        .await;
    rx.watch("/busy");
    let seen = rx.received("/busy").len();
    rx.wait_for("/busy", seen + 15, Duration::from_secs(20))
        .await;
    assert_eq!(
        rx.peak_open("/busy"),
        1,
        "the instances together kept more than one open"
    );
    assert_eq!(
        current_concurrency(&client, &servers[0], &key, &id).await,
        1
    );
}
