//! Disabling or deleting an endpoint with a backlog (DESIGN §10): the API answers once the
//! endpoint's row has changed; the pending deliveries are then failed (`endpoint_disabled`)
//! in the background, in batches of at most 1,000 rows, and none is attempted after the
//! answer.

use std::sync::Arc;

use accommador::store::{CANCEL_BATCH, CancelStep, DatabaseUrl, Ownership, Store};

use super::*;

/// Creates `n` users of `t`, eight at a time.
async fn create_users(app: &Arc<TestApp>, t: &Tenant, n: usize) {
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (app, t) = (app.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(8) {
                app.create_user(&t, json!({ "email": format!("u{i}@example.com") }))
                    .await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// How many deliveries of `endpoint_id` have `status`, counted over every page.
async fn count(app: &TestApp, t: &Tenant, endpoint_id: &str, status: &str) -> usize {
    count_deliveries(
        app,
        t,
        &format!("endpoint_id={endpoint_id}&status={status}"),
    )
    .await
}

/// A store of the test's database opened beside the server, to drive background work by hand.
async fn tool_store(app: &TestApp) -> Store {
    Store::open(
        &DatabaseUrl::parse(&app.db.url).unwrap(),
        Ownership::Tool,
        2,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_disabled_endpoints_backlog_is_failed_in_batches_of_at_most_a_thousand() {
    // No workers: fan-out and the background failing are driven by hand, step by step.
    let app = Arc::new(spawn_api_only().await);
    let t = app.create_org("Acme").await;
    let ep = endpoint(&app, &t, "http://127.0.0.1:9/never", None).await;
    let other = endpoint(&app, &t, "http://127.0.0.1:9/other", None).await;
    let store = tool_store(&app).await;
    // At most a thousand on either backend (fewer on SQLite, whose one writer every tenant
    // shares).
    let batch = store.cancel_batch();
    assert!(batch <= CANCEL_BATCH && batch > 0, "{batch}");
    let n = batch + 20;
    create_users(&app, &t, n).await;
    while store.fan_out().await.unwrap().events > 0 {}
    assert_eq!(count(&app, &t, &ep.id, "pending").await, n);

    let r = app
        .patch(
            &t,
            &format!("/v1/endpoints/{}", ep.id),
            &json!({"status": "disabled"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let reason = r.json::<Value>().await.unwrap()["disabled_reason"].clone();
    assert!(reason.is_string(), "{reason}");
    // The answer changed the endpoint only; its deliveries wait for the background steps.
    assert_eq!(count(&app, &t, &ep.id, "pending").await, n);

    let first = store.cancel_step(None).await.unwrap();
    assert_eq!(
        first,
        Some(CancelStep {
            endpoint_id: ep.id.clone(),
            failed: batch
        })
    );
    assert_eq!(count(&app, &t, &ep.id, "failed").await, batch);
    let second = store.cancel_step(None).await.unwrap();
    assert_eq!(
        second,
        Some(CancelStep {
            endpoint_id: ep.id.clone(),
            failed: 20
        })
    );
    assert_eq!(store.cancel_step(None).await.unwrap(), None, "nothing left");
    assert_eq!(count(&app, &t, &ep.id, "pending").await, 0);
    assert_eq!(count(&app, &t, &ep.id, "failed").await, n);
    // Each one's log says why; the other endpoint's deliveries are untouched.
    let sample = deliveries_of(&app, &t, &ep.id).await;
    let log = attempts(&app, &t, sample[0]["id"].as_str().unwrap()).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["error_class"], "endpoint_disabled");
    assert_eq!(log[0]["error"], reason, "the endpoint's disabled_reason");
    assert_eq!(count(&app, &t, &other.id, "pending").await, n);
}

#[tokio::test]
async fn deleting_an_endpoint_with_a_backlog_sends_nothing_more_and_fails_it_all() {
    let app = Arc::new(
        spawn_app_with(|s| {
            s.retry_schedule = vec![];
            s.delivery_timeout = Duration::from_secs(120);
            s.endpoint_concurrency = 1;
        })
        .await,
    );
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    // The first delivery hangs: the rest wait behind it.
    rx.script(
        "/backlog",
        vec![Reply::status(200).after(Duration::from_secs(60))],
    );
    let ep = endpoint(&app, &t, &rx.url("/backlog"), None).await;
    let n = 1500;
    create_users(&app, &t, n).await;
    rx.wait_for("/backlog", 1, WAIT).await;
    // Every event has been fanned out to the endpoint (after the delete, fan-out would make no
    // more deliveries for it): all of them are pending, one in flight.
    wait_until_pending(&app, &t, &ep.id, n).await;

    let r = app.delete(&t, &format!("/v1/endpoints/{}", ep.id)).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // In the background every delivery ends failed (the one in flight too: its reply is held
    // for a minute), each with the reason in its log.
    wait_until_failed(&app, &t, &ep.id, n).await;
    let sample = deliveries_of(&app, &t, &ep.id).await;
    let log = attempts(&app, &t, sample[0]["id"].as_str().unwrap()).await;
    assert_eq!(log[0]["error_class"], "endpoint_disabled");
    assert_eq!(log[0]["error"], "the endpoint was deleted");
    // Only the attempt in flight before the answer reached the receiver.
    assert_eq!(rx.received("/backlog").len(), 1);
}

#[tokio::test]
async fn an_enabled_endpoint_is_never_cancelled_even_if_marked() {
    // However the mark got there (a race with a re-enable), the background step checks the
    // endpoint's status: an enabled endpoint loses the mark and keeps its deliveries.
    let app = Arc::new(spawn_api_only().await);
    let t = app.create_org("Acme").await;
    let ep = endpoint(&app, &t, "http://127.0.0.1:9/never", None).await;
    create_users(&app, &t, 3).await;
    let store = tool_store(&app).await;
    while store.fan_out().await.unwrap().events > 0 {}
    app.db
        .execute(
            &format!(
                "UPDATE endpoints SET cancel_pending = 1 WHERE id = '{}'",
                ep.id
            ),
            &format!(
                "UPDATE endpoints SET cancel_pending = true WHERE id = '{}'",
                ep.id
            ),
        )
        .await;
    assert_eq!(
        store.cancel_step(None).await.unwrap(),
        Some(CancelStep {
            endpoint_id: ep.id.clone(),
            failed: 0
        })
    );
    assert_eq!(
        store.cancel_step(None).await.unwrap(),
        None,
        "the mark is gone"
    );
    assert_eq!(count(&app, &t, &ep.id, "pending").await, 3);
}

#[tokio::test]
async fn re_enabling_during_the_background_failing_still_fails_what_was_queued_before() {
    // Disabled with one batch and 20 more pending, one batch failed, then enabled again: the
    // other 20 were queued before the disable, so they end failed too (DESIGN §10);
    // deliveries made after the re-enable are the endpoint's to send.
    let app = Arc::new(spawn_api_only().await);
    let t = app.create_org("Acme").await;
    let ep = endpoint(&app, &t, "http://127.0.0.1:9/never", None).await;
    let store = tool_store(&app).await;
    let n = store.cancel_batch() + 20;
    create_users(&app, &t, n).await;
    while store.fan_out().await.unwrap().events > 0 {}
    let path = format!("/v1/endpoints/{}", ep.id);
    assert_eq!(
        app.patch(&t, &path, &json!({"status": "disabled"}))
            .await
            .status(),
        StatusCode::OK
    );
    store.cancel_step(None).await.unwrap();
    assert_eq!(
        app.patch(&t, &path, &json!({"status": "enabled"}))
            .await
            .status(),
        StatusCode::OK
    );
    let after = 3;
    for i in 0..after {
        app.create_user(&t, json!({ "email": format!("later{i}@example.com") }))
            .await;
    }
    while store.fan_out().await.unwrap().events > 0 {}

    assert_eq!(
        store.cancel_step(None).await.unwrap(),
        Some(CancelStep {
            endpoint_id: ep.id.clone(),
            failed: 20
        })
    );
    assert_eq!(store.cancel_step(None).await.unwrap(), None, "nothing left");
    assert_eq!(count(&app, &t, &ep.id, "failed").await, n);
    assert_eq!(count(&app, &t, &ep.id, "pending").await, after);
    // The ones made after the re-enable are the newest, and untouched.
    let newest = deliveries_of(&app, &t, &ep.id).await;
    assert!(
        newest[..after].iter().all(|d| d["status"] == "pending"),
        "{:?}",
        &newest[..after]
    );
    let log = attempts(&app, &t, newest[after]["id"].as_str().unwrap()).await;
    assert_eq!(log[0]["error_class"], "endpoint_disabled");
}

#[tokio::test]
async fn after_a_quick_disable_and_re_enable_only_later_deliveries_are_sent() {
    let app = Arc::new(
        spawn_app_with(|s| {
            s.retry_schedule = vec![Duration::from_secs(1); 20];
            s.endpoint_concurrency = 1;
        })
        .await,
    );
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    // Every attempt fails and is retried a second later: the backlog stays pending, and is
    // sent again and again unless it is failed.
    rx.default_reply(Reply::status(503));
    let ep = endpoint(&app, &t, &rx.url("/flip"), None).await;
    let n = 1500;
    create_users(&app, &t, n).await;
    wait_until_pending(&app, &t, &ep.id, n).await;

    // Disabled and enabled again at once, before the background failing can be over.
    let path = format!("/v1/endpoints/{}", ep.id);
    let r = app.patch(&t, &path, &json!({"status": "disabled"})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let sent_before = rx.received("/flip").len();
    let r = app.patch(&t, &path, &json!({"status": "enabled"})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let later = app
        .create_user(&t, json!({"email": "after-the-re-enable@example.com"}))
        .await;
    let later_id = later["id"].as_str().unwrap().to_owned();

    // The user made after the re-enable is sent; all n queued before the disable end failed.
    let got = rx.wait_for_body("/flip", &later_id, WAIT).await;
    verify(&ep.secret, &got);
    wait_until_failed(&app, &t, &ep.id, n).await;
    // Over two more retry intervals, none of them is sent again: only the one attempt that may
    // have been in flight when the disable answered.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old_sends = rx
        .received("/flip")
        .iter()
        .filter(|r| !String::from_utf8_lossy(&r.body).contains(&later_id))
        .count();
    assert!(
        old_sends <= sent_before + 1,
        "{} sends of deliveries queued before the disable after it answered",
        old_sends - sent_before
    );
    assert_eq!(count(&app, &t, &ep.id, "pending").await, 1, "the later one");
}

/// Waits (at most a minute) until `n` deliveries of the endpoint have ended failed.
async fn wait_until_failed(app: &TestApp, t: &Tenant, endpoint_id: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let failed = count(app, t, endpoint_id, "failed").await;
        if failed == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{failed} of {n} deliveries failed"
        );
        tokio::time::sleep(ms(100)).await;
    }
}

/// Waits (at most a minute) until fan-out has made `n` pending deliveries for the endpoint.
async fn wait_until_pending(app: &TestApp, t: &Tenant, endpoint_id: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count(app, t, endpoint_id, "pending").await < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fan-out never made all {n} deliveries"
        );
        tokio::time::sleep(ms(50)).await;
    }
}
