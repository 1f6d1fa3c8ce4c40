//! Operators are told (DESIGN §10): `endpoint.disabled`, `endpoint.enabled` and
//! `delivery.failed` reach the endpoints that list them, signed and retried like user events,
//! never the endpoint they describe, never an endpoint with the default subscription; bulk
//! endings and failed deliveries of operational events report nothing.

use super::*;

const OPERATIONAL: [&str; 3] = ["endpoint.disabled", "endpoint.enabled", "delivery.failed"];

fn body_of(r: &Received) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

/// The event types of an endpoint's deliveries, oldest first.
async fn delivered_types(app: &TestApp, t: &Tenant, endpoint_id: &str) -> Vec<String> {
    let mut types: Vec<String> = deliveries_of(app, t, endpoint_id)
        .await
        .iter()
        .rev()
        .map(|d| d["event_type"].as_str().unwrap().to_owned())
        .collect();
    types.dedup();
    types
}

/// A change that numbers every event committed before it (PostgreSQL numbers events after
/// their commit): once it has answered, the events list shows everything committed earlier.
async fn settle_outbox(app: &TestApp, t: &Tenant, email: &str) -> Value {
    app.create_user(t, json!({ "email": email })).await
}

#[tokio::test]
async fn a_410_is_told_to_the_endpoints_that_listen_and_to_no_other() {
    let app = fast_app().await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    rx.script("/a", vec![Reply::status(410)]);
    // A listens to everything, operational events included: still none about itself.
    let mut all_types = vec!["user.created"];
    all_types.extend(OPERATIONAL);
    let a = endpoint(&app, &t, &rx.url("/a"), Some(&all_types)).await;
    let b = endpoint(&app, &t, &rx.url("/b"), Some(&["endpoint.disabled"])).await;
    let c = endpoint(&app, &t, &rx.url("/c"), None).await;

    app.create_user(&t, json!({"email": "ada@example.com"}))
        .await;
    let got = rx.wait_for("/b", 1, WAIT).await;
    verify(&b.secret, &got[0]);
    let event = body_of(&got[0]);
    assert_eq!(event["type"], "endpoint.disabled");
    assert_eq!(got[0].id, event["id"].as_str().unwrap());
    let described = &event["data"]["endpoint"];
    assert_eq!(described["id"], a.id.as_str());
    assert_eq!(described["url"], rx.url("/a"));
    assert_eq!(described["status"], "disabled");
    assert!(
        described["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("410"),
        "{event}"
    );
    assert_eq!(
        described.as_object().unwrap().len(),
        4,
        "id, url, status and disabled_reason only: {event}"
    );

    // It is an event like any other: listed, by its type too, with the bytes that were sent.
    let listed = app.all_events(&t, "&type=endpoint.disabled").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], event["id"]);
    let stored = app
        .get(&t, &format!("/v1/events/{}", got[0].id))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(stored, got[0].body);

    // Fan-out went past the event (B has it): A and C were given nothing of it.
    rx.wait_for("/c", 1, WAIT).await;
    assert_eq!(delivered_types(&app, &t, &a.id).await, ["user.created"]);
    assert_eq!(delivered_types(&app, &t, &c.id).await, ["user.created"]);
    assert_eq!(
        delivered_types(&app, &t, &b.id).await,
        ["endpoint.disabled"]
    );
    assert_eq!(rx.received("/a").len(), 1);
    assert!(
        rx.received("/c")
            .iter()
            .all(|r| body_of(r)["type"] == "user.created")
    );
}

#[tokio::test]
async fn disabling_and_enabling_by_patch_are_told_in_commit_order() {
    let app = fast_app().await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let mut all_types = vec!["user.created"];
    all_types.extend(OPERATIONAL);
    let a = endpoint(&app, &t, &rx.url("/a"), Some(&all_types)).await;
    let b = endpoint(
        &app,
        &t,
        &rx.url("/b"),
        Some(&["endpoint.enabled", "endpoint.disabled"]),
    )
    .await;
    let c = endpoint(&app, &t, &rx.url("/c"), None).await;
    let path = format!("/v1/endpoints/{}", a.id);

    let r = app.patch(&t, &path, &json!({"status": "disabled"})).await;
    assert_eq!(r.status(), StatusCode::OK);
    // Disabling again, or a change that leaves the status as it is, tells nothing.
    let r = app.patch(&t, &path, &json!({"status": "disabled"})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .patch(&t, &path, &json!({"description": "still off"}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let first = rx.wait_for("/b", 1, WAIT).await;
    let r = app.patch(&t, &path, &json!({"status": "enabled"})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let got = rx.wait_for("/b", 2, WAIT).await;
    assert_eq!(first[0].id, got[0].id);
    for r in &got {
        verify(&b.secret, r);
    }
    let (off, on) = (body_of(&got[0]), body_of(&got[1]));
    assert_eq!(off["type"], "endpoint.disabled");
    assert_eq!(off["data"]["endpoint"]["id"], a.id.as_str());
    assert_eq!(off["data"]["endpoint"]["status"], "disabled");
    assert_eq!(
        off["data"]["endpoint"]["disabled_reason"],
        "disabled through the API"
    );
    assert_eq!(on["type"], "endpoint.enabled");
    assert_eq!(on["data"]["endpoint"]["id"], a.id.as_str());
    assert_eq!(on["data"]["endpoint"]["status"], "enabled");
    assert_eq!(on["data"]["endpoint"]["disabled_reason"], Value::Null);
    assert!(off["timestamp"].as_str() <= on["timestamp"].as_str());

    // The events list has both, in commit order, and filters by each type.
    settle_outbox(&app, &t, "after@example.com").await;
    let ops: Vec<Value> = app
        .all_events(&t, "")
        .await
        .into_iter()
        .filter(|e| e["type"] != "user.created")
        .collect();
    let ids: Vec<&Value> = ops.iter().map(|e| &e["id"]).collect();
    assert_eq!(ids, [&off["id"], &on["id"]]);
    for (kind, event) in [("endpoint.disabled", &off), ("endpoint.enabled", &on)] {
        let listed = app.all_events(&t, &format!("&type={kind}")).await;
        assert_eq!(listed.len(), 1, "{kind}");
        assert_eq!(&listed[0], event);
    }

    // A, enabled again, gets the user event after them, and nothing about itself; C, on the
    // default subscription, no operational event.
    rx.wait_for("/a", 1, WAIT).await;
    rx.wait_for("/c", 1, WAIT).await;
    assert_eq!(delivered_types(&app, &t, &a.id).await, ["user.created"]);
    assert_eq!(delivered_types(&app, &t, &c.id).await, ["user.created"]);
}

#[tokio::test]
async fn a_delivery_that_uses_up_its_schedule_is_told_once_and_a_told_failure_is_not_told() {
    let app = fast_app().await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    // Every attempt of the first event fails, at A and at B (the first attempt and three
    // retries); what comes after succeeds.
    rx.script("/a", (0..4).map(|_| Reply::status(500)).collect());
    rx.script("/b", (0..4).map(|_| Reply::status(500)).collect());
    let a = endpoint(
        &app,
        &t,
        &rx.url("/a"),
        Some(&["user.created", "delivery.failed"]),
    )
    .await;
    let b = endpoint(&app, &t, &rx.url("/b"), Some(&["delivery.failed"])).await;

    app.create_user(&t, json!({"email": "ada@example.com"}))
        .await;
    // The first attempt and three retries: then the delivery is failed and B is told.
    let got = rx.wait_for("/b", 1, WAIT).await;
    verify(&b.secret, &got[0]);
    let event = body_of(&got[0]);
    assert_eq!(event["type"], "delivery.failed");
    let told = &event["data"]["delivery"];
    let shown = json_of(
        &app,
        &t,
        &format!("/v1/deliveries/{}", told["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(told, &shown, "the delivery object as the API shows it");
    assert_eq!(told["endpoint_id"], a.id.as_str());
    assert_eq!(told["event_type"], "user.created");
    assert_eq!(told["status"], "failed");
    assert_eq!(told["attempt_count"], 4);
    assert_eq!(told["last_status_code"], 500);
    assert_eq!(rx.received("/a").len(), 4);

    // B's delivery of that event fails too, all its schedule: that is not told (A listens
    // to delivery.failed and would get it), and nothing loops.
    rx.wait_for("/b", 4, WAIT).await;
    eventually(
        &app,
        &t,
        &format!("/v1/deliveries?endpoint_id={}", b.id),
        |v| v["data"][0]["status"] == "failed",
    )
    .await;
    settle_outbox(&app, &t, "after@example.com").await;
    rx.wait_for("/a", 5, WAIT).await;
    let failed = app.all_events(&t, "&type=delivery.failed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["id"], event["id"]);
    assert_eq!(delivered_types(&app, &t, &a.id).await, ["user.created"]);
    assert_eq!(delivered_types(&app, &t, &b.id).await, ["delivery.failed"]);
    assert!(rx.received("/b").iter().all(|r| r.id == got[0].id));
}

#[tokio::test]
async fn a_backlog_failed_in_bulk_is_not_told_as_failed_deliveries() {
    // Retries an hour apart: the first failure leaves each delivery pending.
    let app = spawn_app_with(|s| s.retry_schedule = vec![Duration::from_secs(3600)]).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    rx.script("/a", (0..3).map(|_| Reply::status(500)).collect());
    let a = endpoint(&app, &t, &rx.url("/a"), None).await;
    let b = endpoint(
        &app,
        &t,
        &rx.url("/b"),
        Some(&["delivery.failed", "endpoint.disabled"]),
    )
    .await;
    for i in 0..3 {
        app.create_user(&t, json!({ "email": format!("u{i}@example.com") }))
            .await;
    }
    rx.wait_for("/a", 3, WAIT).await;
    eventually(
        &app,
        &t,
        &format!("/v1/deliveries?endpoint_id={}&status=pending", a.id),
        |v| {
            let data = v["data"].as_array().unwrap();
            data.len() == 3 && data.iter().all(|d| d["attempt_count"] == 1)
        },
    )
    .await;

    let r = app
        .patch(
            &t,
            &format!("/v1/endpoints/{}", a.id),
            &json!({"status": "disabled"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    eventually(
        &app,
        &t,
        &format!("/v1/deliveries?endpoint_id={}&status=failed", a.id),
        |v| v["data"].as_array().unwrap().len() == 3,
    )
    .await;
    let got = rx.wait_for("/b", 1, WAIT).await;
    assert_eq!(body_of(&got[0])["type"], "endpoint.disabled");

    // Fan-out has gone past everything committed so far once an endpoint on the default
    // subscription gets a later user event.
    let observer = endpoint(&app, &t, &rx.url("/observer"), None).await;
    settle_outbox(&app, &t, "after@example.com").await;
    rx.wait_for("/observer", 1, WAIT).await;
    assert!(
        app.all_events(&t, "&type=delivery.failed").await.is_empty(),
        "bulk endings are not told"
    );
    assert_eq!(
        delivered_types(&app, &t, &b.id).await,
        ["endpoint.disabled"]
    );
    assert_eq!(rx.received("/b").len(), 1);
    assert_eq!(deliveries_of(&app, &t, &observer.id).await.len(), 1);
}

#[tokio::test]
async fn operational_events_are_retried_like_user_events() {
    let app = fast_app().await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    rx.script("/a", vec![Reply::status(410)]);
    rx.script("/b", vec![Reply::status(500)]);
    endpoint(&app, &t, &rx.url("/a"), None).await;
    let b = endpoint(&app, &t, &rx.url("/b"), Some(&["endpoint.disabled"])).await;
    app.create_user(&t, json!({"email": "ada@example.com"}))
        .await;

    let got = rx.wait_for("/b", 2, WAIT).await;
    assert_eq!(got[0].id, got[1].id, "one webhook-id for every attempt");
    assert_eq!(got[0].body, got[1].body);
    for r in &got {
        verify(&b.secret, r);
    }
    let done = eventually(
        &app,
        &t,
        &format!("/v1/deliveries?endpoint_id={}", b.id),
        |v| v["data"][0]["status"] == "succeeded",
    )
    .await;
    let d = &done["data"][0];
    assert_eq!(d["event_type"], "endpoint.disabled");
    assert_eq!(d["attempt_count"], 2);
    let log = attempts(&app, &t, d["id"].as_str().unwrap()).await;
    let codes: Vec<_> = log.iter().map(|a| a["status_code"].clone()).collect();
    assert_eq!(codes, [json!(500), json!(204)]);
}

#[tokio::test]
async fn recover_creates_the_operational_events_an_endpoint_missed_but_none_about_itself() {
    let app = fast_app().await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let since = accommador::domain::Timestamp::now().to_rfc3339();
    let a = endpoint(
        &app,
        &t,
        &rx.url("/a"),
        Some(&["endpoint.disabled", "endpoint.enabled"]),
    )
    .await;
    let d = endpoint(&app, &t, &rx.url("/d"), None).await;
    let a_path = format!("/v1/endpoints/{}", a.id);
    let d_path = format!("/v1/endpoints/{}", d.id);
    // A is told nothing about itself; while it is disabled it misses D's disabling.
    app.patch(&t, &a_path, &json!({"status": "disabled"})).await;
    app.patch(&t, &d_path, &json!({"status": "disabled"})).await;
    let observer = endpoint(&app, &t, &rx.url("/observer"), None).await;
    settle_outbox(&app, &t, "after@example.com").await;
    rx.wait_for("/observer", 1, WAIT).await;
    app.patch(&t, &a_path, &json!({"status": "enabled"})).await;
    assert_eq!(app.all_events(&t, "&type=endpoint.disabled").await.len(), 2);

    let r = app
        .post(&t, &format!("{a_path}/recover"), &json!({"since": since}))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"requeued": 0, "created": 1}),
        "only D's endpoint.disabled: not the two events about A"
    );
    let got = rx.wait_for("/a", 1, WAIT).await;
    verify(&a.secret, &got[0]);
    let event = body_of(&got[0]);
    assert_eq!(event["type"], "endpoint.disabled");
    assert_eq!(event["data"]["endpoint"]["id"], d.id.as_str());
    assert_eq!(
        delivered_types(&app, &t, &a.id).await,
        ["endpoint.disabled"]
    );
    assert_eq!(deliveries_of(&app, &t, &a.id).await.len(), 1);
    assert_eq!(deliveries_of(&app, &t, &observer.id).await.len(), 1);
}

#[tokio::test]
async fn an_endpoint_failing_for_too_long_is_told_as_disabled_with_the_reason() {
    // Ten retries 100 ms apart, disabled after failing for 250 ms: the schedule is not used
    // up, so the delivery ends in bulk (`endpoint_disabled`), which is not told either.
    let app = spawn_app_with(|s| {
        s.retry_schedule = vec![ms(100); 10];
        s.disable_after = ms(250);
    })
    .await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    rx.script("/a", (0..20).map(|_| Reply::status(500)).collect());
    let a = endpoint(&app, &t, &rx.url("/a"), None).await;
    let b = endpoint(
        &app,
        &t,
        &rx.url("/b"),
        Some(&["endpoint.disabled", "delivery.failed"]),
    )
    .await;
    app.create_user(&t, json!({"email": "ada@example.com"}))
        .await;

    let got = rx.wait_for("/b", 1, WAIT).await;
    verify(&b.secret, &got[0]);
    let event = body_of(&got[0]);
    assert_eq!(event["type"], "endpoint.disabled");
    let described = &event["data"]["endpoint"];
    assert_eq!(described["id"], a.id.as_str());
    let shown = json_of(&app, &t, &format!("/v1/endpoints/{}", a.id)).await;
    assert_eq!(shown["status"], "disabled");
    assert_eq!(described["disabled_reason"], shown["disabled_reason"]);
    assert!(
        described["disabled_reason"]
            .as_str()
            .unwrap()
            .starts_with("failing continuously since "),
        "{event}"
    );

    eventually(
        &app,
        &t,
        &format!("/v1/deliveries?endpoint_id={}", a.id),
        |v| v["data"][0]["status"] == "failed",
    )
    .await;
    let observer = endpoint(&app, &t, &rx.url("/observer"), None).await;
    settle_outbox(&app, &t, "after@example.com").await;
    rx.wait_for("/observer", 1, WAIT).await;
    assert!(app.all_events(&t, "&type=delivery.failed").await.is_empty());
    assert_eq!(
        delivered_types(&app, &t, &b.id).await,
        ["endpoint.disabled"]
    );
    assert_eq!(deliveries_of(&app, &t, &observer.id).await.len(), 1);
}
