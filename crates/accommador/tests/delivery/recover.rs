//! `recover` over a window larger than one batch (DESIGN §10: no tenant action holds a lock or
//! the SQLite writer for more than 1,000 rows at a time): the work is split, and the answer
//! still counts every re-queued and created delivery exactly once.

use futures_util::future::join_all;

use super::*;

/// More than one batch (1,000) of each kind.
const MANY: usize = 1_050;

/// Creates `n` users, 16 requests at a time.
async fn create_many(app: &TestApp, t: &Tenant, n: usize, tag: &str) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        join_all(
            chunk
                .iter()
                .map(|i| app.create_user(t, json!({"email": format!("{tag}{i}@example.com")}))),
        )
        .await;
    }
}

/// Waits (bounded) until `query` lists `n` deliveries.
async fn until_count(app: &TestApp, t: &Tenant, query: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let got = count_deliveries(app, t, query).await;
        if got == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{query}: {got} deliveries, never {n}"
        );
        tokio::time::sleep(ms(200)).await;
    }
}

#[tokio::test]
async fn recover_beyond_one_batch_counts_every_delivery_once() {
    let app = spawn_app_with(|s| s.retry_schedule = vec![]).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    // The first MANY deliveries fail for good (no retries); then the endpoint answers 204.
    rx.script("/bulk", vec![Reply::status(500); MANY]);
    let ep = endpoint(&app, &t, &rx.url("/bulk"), None).await;
    let since = accommador::domain::Timestamp::now().to_rfc3339();
    create_many(&app, &t, MANY, "failed").await;
    let failed = format!("endpoint_id={}&status=failed", ep.id);
    until_count(&app, &t, &failed, MANY).await;

    // While it is disabled, MANY more events pass it by (an observer shows fan-out is done).
    let path = format!("/v1/endpoints/{}", ep.id);
    app.patch(&t, &path, &json!({"status": "disabled"})).await;
    let observer = endpoint(&app, &t, &rx.url("/observer"), None).await;
    create_many(&app, &t, MANY, "missed").await;
    until_count(&app, &t, &format!("endpoint_id={}", observer.id), MANY).await;
    app.patch(&t, &path, &json!({"status": "enabled"})).await;

    assert_eq!(
        recover(&app, &t, &ep.id, &since).await,
        json!({"requeued": MANY, "created": MANY})
    );
    // Nothing is left to recover: each delivery was counted, and handled, once.
    assert_eq!(
        recover(&app, &t, &ep.id, &since).await,
        json!({"requeued": 0, "created": 0})
    );

    // Every one of them is delivered.
    until_count(
        &app,
        &t,
        &format!("endpoint_id={}&status=succeeded", ep.id),
        2 * MANY,
    )
    .await;
    let received: std::collections::HashSet<String> =
        rx.received("/bulk").into_iter().map(|r| r.id).collect();
    assert_eq!(received.len(), 2 * MANY);
}
