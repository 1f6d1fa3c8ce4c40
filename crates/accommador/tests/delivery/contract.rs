//! What DESIGN §6–7 promise about delivery and the API, each checked end to end on both
//! backends against a real local receiver.

use std::time::{SystemTime, UNIX_EPOCH};

use accommador::domain::Timestamp;

use super::*;

/// An RFC 3339 field of a response, as a timestamp.
fn ts(v: &Value) -> Timestamp {
    let s = v.as_str().unwrap_or_else(|| panic!("not a date-time: {v}"));
    Timestamp::parse_rfc3339(s).unwrap_or_else(|| panic!("not RFC 3339: {s}"))
}

/// Returns once the clock has moved past `t`: a later timestamp can no longer equal it.
async fn past(t: Timestamp) {
    while Timestamp::now() <= t {
        tokio::task::yield_now().await;
    }
}

/// The ID of the `kind` event of `user` (polled: listing may lag a commit slightly).
async fn event_of(app: &TestApp, t: &Tenant, user: &Value, kind: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let events = app.all_events(t, &format!("&type={kind}")).await;
        if let Some(e) = events
            .iter()
            .find(|e| e["data"]["user"]["id"] == user["id"])
        {
            return e["id"].as_str().unwrap().to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {kind} event for {user}"
        );
        tokio::time::sleep(ms(20)).await;
    }
}

/// The delivery of `event_id` to `endpoint_id`, once `check` holds for it.
async fn delivery_when(
    app: &TestApp,
    t: &Tenant,
    endpoint_id: &str,
    event_id: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let v = eventually(
        app,
        t,
        &format!("/v1/deliveries?endpoint_id={endpoint_id}&event_id={event_id}"),
        |v| {
            let data = v["data"].as_array().unwrap();
            data.len() == 1 && check(&data[0])
        },
    )
    .await;
    v["data"][0].clone()
}

fn id_of(v: &Value) -> &str {
    v["id"].as_str().unwrap()
}

async fn recover(app: &TestApp, t: &Tenant, endpoint_id: &str, body: Value) -> Value {
    let r = app
        .post(t, &format!("/v1/endpoints/{endpoint_id}/recover"), &body)
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED, "recover {body}");
    r.json().await.unwrap()
}

async fn set_status(app: &TestApp, t: &Tenant, endpoint_id: &str, status: &str) -> Value {
    let r = app
        .patch(
            t,
            &format!("/v1/endpoints/{endpoint_id}"),
            &json!({ "status": status }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["status"], status);
    e
}

/// Asks for a manual attempt. The failed attempt just read may not have left the dispatcher
/// yet, which answers 409 for that moment: asked again then (bounded).
pub(crate) async fn retry_by_hand(app: &TestApp, t: &Tenant, delivery_id: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = app
            .post(
                t,
                &format!("/v1/deliveries/{delivery_id}/retry"),
                &json!({}),
            )
            .await;
        if r.status() == StatusCode::ACCEPTED {
            return;
        }
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the retry of {delivery_id} stays in conflict"
        );
        tokio::time::sleep(ms(20)).await;
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn every_attempt_is_signed_with_a_fresh_timestamp() {
    // Retries 1.5 s ± 20 % apart: the retry starts at least 1.2 s after the first arrived.
    let app = spawn_app_with(|s| s.retry_schedule = vec![ms(1500)]).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    rx.script("/ts", vec![Reply::status(500)]);
    let ep = endpoint(&app, &t, &rx.url("/ts"), None).await;
    app.create_user(&t, json!({"email": "a@example.com"})).await;

    let got = rx.wait_for("/ts", 2, WAIT).await;
    assert_eq!(got[0].id, got[1].id, "one webhook-id for every attempt");
    let mut stamps = Vec::new();
    for r in &got {
        verify(&ep.secret, r);
        let stamp: u64 = r.timestamp.parse().unwrap();
        let arrived = unix_secs(r.wall);
        assert!(
            stamp <= arrived && arrived - stamp <= 5,
            "webhook-timestamp {stamp} is not the time of its attempt (arrived at {arrived})"
        );
        stamps.push(stamp);
    }
    assert!(
        stamps[1] > unix_secs(got[0].wall),
        "the retry reuses an old timestamp: {stamps:?}"
    );
}

#[tokio::test]
async fn a_deleted_endpoint_gets_nothing_more_not_even_its_pending_retries() {
    // The schedule alone would retry in 50 ms; Retry-After makes the doomed endpoint's retry
    // due 3 s after its first attempt (room to delete it first) and the witness's 4 s after.
    let app = fast_app().await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    rx.script(
        "/doomed",
        vec![Reply::status(503).header("retry-after", "3")],
    );
    rx.script(
        "/witness",
        vec![Reply::status(503).header("retry-after", "4")],
    );
    let doomed = endpoint(&app, &t, &rx.url("/doomed"), None).await;
    let witness = endpoint(&app, &t, &rx.url("/witness"), None).await;
    let a = app
        .create_user(&t, json!({"email": "before@example.com"}))
        .await;
    let a_event = event_of(&app, &t, &a, "user.created").await;
    let retrying = |d: &Value| d["status"] == "pending" && d["attempt_count"] == 1;
    let pending = delivery_when(&app, &t, &doomed.id, &a_event, retrying).await;
    let witnessed = delivery_when(&app, &t, &witness.id, &a_event, retrying).await;
    assert!(
        ts(&witnessed["next_attempt_at"]) > ts(&pending["next_attempt_at"]),
        "the witness must retry after the doomed endpoint would: {witnessed} {pending}"
    );

    let path = format!("/v1/endpoints/{}", doomed.id);
    assert_eq!(app.delete(&t, &path).await.status(), StatusCode::NO_CONTENT);
    problem(app.get(&t, &path).await, StatusCode::NOT_FOUND).await;
    let b = app
        .create_user(&t, json!({"email": "after@example.com"}))
        .await;
    let b_event = event_of(&app, &t, &b, "user.created").await;

    // The witness got the new event and its own retry, due after the doomed one's.
    delivery_when(&app, &t, &witness.id, &a_event, |d| {
        d["status"] == "succeeded"
    })
    .await;
    delivery_when(&app, &t, &witness.id, &b_event, |d| {
        d["status"] == "succeeded"
    })
    .await;
    let to_witness = rx.received("/witness");
    let count = |id: &str| to_witness.iter().filter(|r| r.id == id).count();
    assert_eq!((count(&a_event), count(&b_event)), (2, 1));

    assert_eq!(
        rx.received("/doomed").len(),
        1,
        "the deleted endpoint was sent more"
    );
    let ds = deliveries_of(&app, &t, &doomed.id).await;
    assert_eq!(ds.len(), 1, "a delivery after the delete: {ds:?}");
    let d = &ds[0];
    assert_eq!(d["id"], pending["id"]);
    assert_eq!(d["status"], "failed");
    assert_eq!(d["next_attempt_at"], Value::Null);
    // Cancelled: no HTTP attempt after the first.
    let log = attempts(&app, &t, id_of(d)).await;
    let sent: Vec<&Value> = log
        .iter()
        .filter(|a| !a["status_code"].is_null())
        .map(|a| &a["status_code"])
        .collect();
    assert_eq!(sent, [&json!(503)], "{log:?}");
}

#[tokio::test]
async fn the_failure_clock_restarts_after_a_success_so_only_continuous_failure_disables() {
    let disable_after = Duration::from_secs(2);
    let app = spawn_app_with(|s| {
        s.retry_schedule = vec![ms(50)];
        s.disable_after = disable_after;
    })
    .await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let flaky = endpoint(&app, &t, &rx.url("/flaky"), None).await;
    let broken = endpoint(&app, &t, &rx.url("/broken"), None).await;

    // Round after round, /flaky fails each event once and takes its retry; /broken fails
    // every attempt. The rounds go on until both have been failing for longer than
    // `disable_after`, then one more.
    let mut rounds = 0;
    let mut last = false;
    while !last {
        let first_failures = [rx.received("/flaky"), rx.received("/broken")];
        last = first_failures.iter().all(|got| {
            got.first()
                .is_some_and(|r| r.at.elapsed() > disable_after + ms(200))
        });
        rx.script("/flaky", vec![Reply::status(500)]);
        rx.script("/broken", vec![Reply::status(500), Reply::status(500)]);
        app.create_user(&t, json!({"email": format!("u{rounds}@example.com")}))
            .await;
        rounds += 1;
        eventually(
            &app,
            &t,
            &format!("/v1/deliveries?endpoint_id={}&status=succeeded", flaky.id),
            |v| v["data"].as_array().unwrap().len() == rounds,
        )
        .await;
    }
    assert!(rounds >= 3, "{rounds} rounds");

    let e = json_of(&app, &t, &format!("/v1/endpoints/{}", flaky.id)).await;
    assert_eq!(e["status"], "enabled", "{e}");
    assert_eq!(e["disabled_reason"], Value::Null);
    // Every round failed once: the failures span longer than `disable_after`.
    let ds = deliveries_of(&app, &t, &flaky.id).await;
    assert_eq!(ds.len(), rounds);
    let mut first_attempts = Vec::new();
    for d in &ds {
        let log = attempts(&app, &t, id_of(d)).await;
        let codes: Vec<&Value> = log.iter().map(|a| &a["status_code"]).collect();
        assert_eq!(codes, [&json!(500), &json!(204)], "{d}");
        first_attempts.push(ts(&log[0]["started_at"]).millis());
    }
    let span = first_attempts.iter().max().unwrap() - first_attempts.iter().min().unwrap();
    assert!(
        span > disable_after.as_millis() as i64,
        "the failures span only {span} ms"
    );

    let e = eventually(&app, &t, &format!("/v1/endpoints/{}", broken.id), |v| {
        v["status"] == "disabled"
    })
    .await;
    assert!(
        e["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("failing continuously"),
        "{e}"
    );
}

#[tokio::test]
async fn patching_url_and_event_types_changes_where_and_what_later_deliveries_go() {
    // No retries: a failed delivery waits for a manual one.
    let app = spawn_app_with(|s| s.retry_schedule = vec![]).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    rx.script("/old", vec![Reply::status(500)]);
    let ep = endpoint(&app, &t, &rx.url("/old"), None).await;
    let first = app
        .create_user(&t, json!({"email": "first@example.com"}))
        .await;
    let first_event = event_of(&app, &t, &first, "user.created").await;
    let failed = delivery_when(&app, &t, &ep.id, &first_event, |d| d["status"] == "failed").await;

    let path = format!("/v1/endpoints/{}", ep.id);
    let r = app.patch(&t, &path, &json!({"url": rx.url("/new")})).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["url"], rx.url("/new"));

    // A new event, and a retry of an old delivery, both go to the new URL.
    let second = app
        .create_user(&t, json!({"email": "second@example.com"}))
        .await;
    let second_event = event_of(&app, &t, &second, "user.created").await;
    rx.wait_for("/new", 1, WAIT).await;
    retry_by_hand(&app, &t, id_of(&failed)).await;
    let got = rx.wait_for("/new", 2, WAIT).await;
    assert_eq!(
        [got[0].id.as_str(), got[1].id.as_str()],
        [second_event.as_str(), first_event.as_str()]
    );
    for r in &got {
        verify(&ep.secret, r);
    }
    delivery_when(&app, &t, &ep.id, &first_event, |d| {
        d["status"] == "succeeded"
    })
    .await;

    // Narrowed to deletions: the update is skipped, the deletion delivered.
    let r = app
        .patch(&t, &path, &json!({"event_types": ["user.deleted"]}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap()["event_types"],
        json!(["user.deleted"])
    );
    let user_path = format!("/v1/users/{}", id_of(&second));
    assert_eq!(
        app.patch(&t, &user_path, &json!({"name": "Second"}))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.delete(&t, &user_path).await.status(),
        StatusCode::NO_CONTENT
    );
    let deleted_event = event_of(&app, &t, &second, "user.deleted").await;
    let got = rx.wait_for("/new", 3, WAIT).await;
    assert_eq!(got[2].id, deleted_event);
    verify(&ep.secret, &got[2]);
    // Fan-out goes in commit order: the update was passed over before the deletion.
    let mut types: Vec<String> = deliveries_of(&app, &t, &ep.id)
        .await
        .iter()
        .map(|d| d["event_type"].as_str().unwrap().to_owned())
        .collect();
    types.sort();
    assert_eq!(types, ["user.created", "user.created", "user.deleted"]);
    assert_eq!(rx.received("/old").len(), 1);
    assert_eq!(rx.received("/new").len(), 3);
}

#[tokio::test]
async fn disabling_by_patch_fails_pending_deliveries_and_recover_brings_back_exactly_those() {
    // A failed attempt waits an hour for its retry: it is pending when the endpoint is disabled.
    let app = spawn_app_with(|s| s.retry_schedule = vec![Duration::from_secs(3600)]).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let ep = endpoint(&app, &t, &rx.url("/p"), None).await;
    let since = Timestamp::now().to_rfc3339();
    let ok = app
        .create_user(&t, json!({"email": "ok@example.com"}))
        .await;
    let ok_event = event_of(&app, &t, &ok, "user.created").await;
    delivery_when(&app, &t, &ep.id, &ok_event, |d| d["status"] == "succeeded").await;

    rx.script("/p", vec![Reply::status(500), Reply::status(500)]);
    let mut pending = Vec::new();
    for email in ["p1@example.com", "p2@example.com"] {
        let u = app.create_user(&t, json!({ "email": email })).await;
        let event = event_of(&app, &t, &u, "user.created").await;
        delivery_when(&app, &t, &ep.id, &event, |d| {
            d["status"] == "pending" && d["attempt_count"] == 1
        })
        .await;
        pending.push(event);
    }

    let e = set_status(&app, &t, &ep.id, "disabled").await;
    assert!(e["disabled_reason"].is_string(), "{e}");
    for event in &pending {
        let d = delivery_when(&app, &t, &ep.id, event, |d| d["status"] == "failed").await;
        assert_eq!(d["attempt_count"], 2);
        assert_eq!(d["next_attempt_at"], Value::Null);
        let log = attempts(&app, &t, id_of(&d)).await;
        assert_eq!(log.len(), 2);
        assert_eq!(log[0]["error_class"], "http_status");
        assert_eq!(log[1]["error_class"], "endpoint_disabled");
        assert_eq!(log[1]["status_code"], Value::Null);
    }
    problem(
        app.post(
            &t,
            &format!("/v1/endpoints/{}/recover", ep.id),
            &json!({ "since": since }),
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;

    set_status(&app, &t, &ep.id, "enabled").await;
    let counts = recover(&app, &t, &ep.id, json!({ "since": since })).await;
    assert_eq!(counts, json!({"requeued": 2, "created": 0}));
    for event in &pending {
        let d = delivery_when(&app, &t, &ep.id, event, |d| d["status"] == "succeeded").await;
        let log = attempts(&app, &t, id_of(&d)).await;
        let classes: Vec<&Value> = log.iter().map(|a| &a["error_class"]).collect();
        assert_eq!(
            classes,
            [
                &json!("http_status"),
                &json!("endpoint_disabled"),
                &Value::Null
            ]
        );
    }
    let ok_delivery = delivery_when(&app, &t, &ep.id, &ok_event, |_| true).await;
    assert_eq!(ok_delivery["attempt_count"], 1, "a success was sent again");
    let mut sent: Vec<String> = rx.received("/p").iter().map(|r| r.id.clone()).collect();
    sent.sort();
    let mut expected = vec![
        ok_event.clone(),
        pending[0].clone(),
        pending[0].clone(),
        pending[1].clone(),
        pending[1].clone(),
    ];
    expected.sort();
    assert_eq!(sent, expected);
}

#[tokio::test]
async fn disabling_for_continuous_failure_fails_pending_deliveries_and_recover_brings_them_back() {
    let app = spawn_app_with(|s| {
        s.retry_schedule = vec![ms(100); 30];
        s.disable_after = ms(500);
    })
    .await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let ep = endpoint(&app, &t, &rx.url("/c"), None).await;
    let since = Timestamp::now().to_rfc3339();
    let ok = app
        .create_user(&t, json!({"email": "ok@example.com"}))
        .await;
    let ok_event = event_of(&app, &t, &ok, "user.created").await;
    delivery_when(&app, &t, &ep.id, &ok_event, |d| d["status"] == "succeeded").await;

    // Retries for 3 s at least; the endpoint is disabled after 0.5 s of them.
    rx.script("/c", (0..40).map(|_| Reply::status(500)).collect());
    let bad = app
        .create_user(&t, json!({"email": "bad@example.com"}))
        .await;
    let bad_event = event_of(&app, &t, &bad, "user.created").await;
    let e = eventually(&app, &t, &format!("/v1/endpoints/{}", ep.id), |v| {
        v["status"] == "disabled"
    })
    .await;
    assert!(
        e["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("failing continuously"),
        "{e}"
    );
    let d = delivery_when(&app, &t, &ep.id, &bad_event, |d| d["status"] == "failed").await;
    assert_eq!(d["next_attempt_at"], Value::Null);
    let log = attempts(&app, &t, id_of(&d)).await;
    let (last, before) = log.split_last().unwrap();
    assert_eq!(last["error_class"], "endpoint_disabled", "{log:?}");
    assert!(!before.is_empty());
    assert!(
        before.iter().all(|a| a["error_class"] == "http_status"),
        "{log:?}"
    );
    let sent_before = rx.received("/c").len();
    assert_eq!(sent_before, 1 + before.len());

    rx.clear_script("/c");
    set_status(&app, &t, &ep.id, "enabled").await;
    let counts = recover(&app, &t, &ep.id, json!({ "since": since })).await;
    assert_eq!(counts, json!({"requeued": 1, "created": 0}));
    let d = delivery_when(&app, &t, &ep.id, &bad_event, |d| d["status"] == "succeeded").await;
    assert_eq!(d["last_status_code"], 204);
    let got = rx.wait_for("/c", sent_before + 1, WAIT).await;
    assert_eq!(got.last().unwrap().id, bad_event);
    verify(&ep.secret, got.last().unwrap());
    let ok_delivery = delivery_when(&app, &t, &ep.id, &ok_event, |_| true).await;
    assert_eq!(ok_delivery["attempt_count"], 1, "a success was sent again");
    assert_eq!(rx.received("/c").len(), sent_before + 1);
}

#[tokio::test]
async fn recover_keeps_to_its_window_the_endpoint_age_and_filter_and_never_resends_successes() {
    let app = spawn_app_with(|s| s.retry_schedule = vec![]).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let since = Timestamp::now();
    // In the window but older than the endpoint.
    let early = app
        .create_user(&t, json!({"email": "early@example.com"}))
        .await;
    let early_event = event_of(&app, &t, &early, "user.created").await;
    let ep = endpoint(&app, &t, &rx.url("/r"), Some(&["user.created"])).await;
    let observer = endpoint(&app, &t, &rx.url("/obs"), None).await;

    // In the window: a failed delivery, a succeeded one, an event of another type, and an
    // event missed while disabled.
    rx.script("/r", vec![Reply::status(500)]);
    let failed_user = app
        .create_user(&t, json!({"email": "failed@example.com"}))
        .await;
    let failed_event = event_of(&app, &t, &failed_user, "user.created").await;
    let failed = delivery_when(&app, &t, &ep.id, &failed_event, |d| d["status"] == "failed").await;
    let ok_user = app
        .create_user(&t, json!({"email": "ok@example.com"}))
        .await;
    let ok_event = event_of(&app, &t, &ok_user, "user.created").await;
    let ok = delivery_when(&app, &t, &ep.id, &ok_event, |d| d["status"] == "succeeded").await;
    let r = app
        .patch(
            &t,
            &format!("/v1/users/{}", id_of(&ok_user)),
            &json!({"name": "Ok"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let updated_event = event_of(&app, &t, &ok_user, "user.updated").await;
    set_status(&app, &t, &ep.id, "disabled").await;
    let missed_user = app
        .create_user(&t, json!({"email": "missed@example.com"}))
        .await;
    let missed_event = event_of(&app, &t, &missed_user, "user.created").await;
    // The observer got all four, so fan-out is past them.
    delivery_when(&app, &t, &observer.id, &missed_event, |d| {
        d["status"] == "succeeded"
    })
    .await;
    set_status(&app, &t, &ep.id, "enabled").await;
    let until = Timestamp::now();
    past(until).await;

    // After the window: another failed delivery.
    rx.script("/r", vec![Reply::status(500)]);
    let late_user = app
        .create_user(&t, json!({"email": "late@example.com"}))
        .await;
    let late_event = event_of(&app, &t, &late_user, "user.created").await;
    let late = delivery_when(&app, &t, &ep.id, &late_event, |d| d["status"] == "failed").await;
    assert!(ts(&failed["created_at"]) < until && ts(&late["created_at"]) > until);

    let window = json!({"since": since.to_rfc3339(), "until": until.to_rfc3339()});
    let counts = recover(&app, &t, &ep.id, window.clone()).await;
    assert_eq!(counts, json!({"requeued": 1, "created": 1}));
    let d = delivery_when(&app, &t, &ep.id, &failed_event, |d| {
        d["status"] == "succeeded"
    })
    .await;
    assert_eq!(d["id"], failed["id"]);
    delivery_when(&app, &t, &ep.id, &missed_event, |d| {
        d["status"] == "succeeded"
    })
    .await;
    let late_now = delivery_when(&app, &t, &ep.id, &late_event, |_| true).await;
    assert_eq!(late_now["status"], "failed", "requeued outside the window");
    assert_eq!(late_now["attempt_count"], 1);
    let ok_now = delivery_when(&app, &t, &ep.id, &ok_event, |_| true).await;
    assert_eq!(ok_now["id"], ok["id"]);
    assert_eq!(ok_now["attempt_count"], 1, "a success was sent again");

    let mut got: Vec<String> = deliveries_of(&app, &t, &ep.id)
        .await
        .iter()
        .map(|d| d["event_id"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    let mut expected = vec![
        failed_event.clone(),
        ok_event.clone(),
        missed_event.clone(),
        late_event.clone(),
    ];
    expected.sort();
    assert_eq!(
        got, expected,
        "no delivery for the older event {early_event} nor the update {updated_event}"
    );
    let mut sent: Vec<String> = rx.received("/r").iter().map(|r| r.id.clone()).collect();
    sent.sort();
    let mut expected = vec![
        failed_event.clone(),
        failed_event,
        ok_event,
        missed_event,
        late_event,
    ];
    expected.sort();
    assert_eq!(sent, expected);

    // Nothing is left to recover in that window.
    let counts = recover(&app, &t, &ep.id, window).await;
    assert_eq!(counts, json!({"requeued": 0, "created": 0}));
}

/// Creates one endpoint per `(class, url)`, sends one event, and checks the error class of
/// each endpoint's single (failed) attempt. No retries, so each delivery fails at once.
async fn assert_error_classes(app: &TestApp, t: &Tenant, cases: &[(&str, String)]) {
    let mut endpoints = Vec::new();
    for (class, url) in cases {
        endpoints.push((class, url, endpoint(app, t, url, None).await));
    }
    app.create_user(t, json!({"email": "a@example.com"})).await;
    for (class, url, ep) in endpoints {
        let v = eventually(
            app,
            t,
            &format!("/v1/deliveries?endpoint_id={}", ep.id),
            |v| v["data"][0]["status"] == "failed",
        )
        .await;
        let log = attempts(app, t, id_of(&v["data"][0])).await;
        assert_eq!(log.len(), 1, "{url}: {log:?}");
        assert_eq!(log[0]["error_class"], **class, "{url}: {:?}", log[0]);
        assert_eq!(log[0]["status_code"], Value::Null);
        assert!(
            !log[0]["error"].as_str().unwrap().is_empty(),
            "{url}: no error message"
        );
    }
}

#[tokio::test]
async fn dns_and_connection_failures_are_classified_in_the_attempt_log() {
    let app = spawn_app_with(|s| s.retry_schedule = vec![]).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let port = rx.addr.port();
    let refused = Receiver::reserve();
    app.lookup.answer("empty.example", vec![vec![]]);
    assert_error_classes(
        &app,
        &t,
        &[
            // Names resolve only through the test's table: one it does not know, one it
            // answers with no address.
            ("dns", format!("http://unknown.example:{port}/hook")),
            ("dns", format!("http://empty.example:{port}/hook")),
            ("connect", refused.url("/hook")),
        ],
    )
    .await;
    assert!(rx.all().is_empty(), "{:?}", rx.all());
}

#[tokio::test]
async fn a_failed_tls_handshake_is_classified_as_tls() {
    let app = spawn_app_with(|s| s.retry_schedule = vec![]).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let port = rx.addr.port();
    assert_error_classes(
        &app,
        &t,
        &[("tls", format!("https://127.0.0.1:{port}/hook"))],
    )
    .await;
    assert!(
        rx.all().is_empty(),
        "a webhook reached the plain-HTTP receiver"
    );
}

#[tokio::test]
async fn the_error_class_does_not_depend_on_words_in_the_url() {
    let app = spawn_app_with(|s| s.retry_schedule = vec![]).await;
    let t = app.create_org("Acme").await;
    let refused = Receiver::reserve();
    assert_error_classes(
        &app,
        &t,
        &[
            ("connect", refused.url("/certificates")),
            ("connect", refused.url("/tls/handshake")),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_refused_connection_is_retried_until_the_receiver_listens() {
    let app = spawn_app_with(|s| s.retry_schedule = vec![ms(300); 30]).await;
    let t = app.create_org("Acme").await;
    let port = Receiver::reserve();
    let ep = endpoint(&app, &t, &port.url("/late"), None).await;
    app.create_user(&t, json!({"email": "a@example.com"})).await;

    let v = eventually(
        &app,
        &t,
        &format!("/v1/deliveries?endpoint_id={}", ep.id),
        |v| v["data"][0]["attempt_count"].as_u64() >= Some(2),
    )
    .await;
    let d = &v["data"][0];
    assert_eq!(d["status"], "pending", "{d}");
    assert!(d["next_attempt_at"].is_string(), "{d}");
    assert_eq!(d["last_status_code"], Value::Null);

    let rx = port.start();
    let got = rx.wait_for("/late", 1, WAIT).await;
    verify(&ep.secret, &got[0]);
    let d = eventually(&app, &t, &format!("/v1/deliveries/{}", id_of(d)), |d| {
        d["status"] == "succeeded"
    })
    .await;
    let log = attempts(&app, &t, id_of(&d)).await;
    assert_eq!(log.len() as u64, d["attempt_count"].as_u64().unwrap());
    let (last, before) = log.split_last().unwrap();
    assert!(before.len() >= 2, "{log:?}");
    for a in before {
        assert_eq!(a["error_class"], "connect", "{a}");
    }
    assert_eq!(last["status_code"], 204);
    assert_eq!(last["error_class"], Value::Null);
}

#[tokio::test]
async fn retry_after_on_429_and_503_delays_the_next_attempt_and_counts_as_one() {
    // The schedule alone retries in 50 ms.
    let app = fast_app().await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let throttled = endpoint(&app, &t, &rx.url("/throttled"), None).await;
    let unavailable = endpoint(&app, &t, &rx.url("/unavailable"), None).await;
    rx.script(
        "/throttled",
        vec![Reply::status(429).header("retry-after", "2")],
    );
    // A date at least 3 s ahead (HTTP dates have whole seconds).
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(4));
    let not_before = httpdate::parse_http_date(&date).unwrap();
    rx.script(
        "/unavailable",
        vec![Reply::status(503).header("retry-after", &date)],
    );
    let u = app.create_user(&t, json!({"email": "a@example.com"})).await;
    let event = event_of(&app, &t, &u, "user.created").await;

    let got = rx.wait_for("/throttled", 2, WAIT).await;
    let gap = got[1].at - got[0].at;
    assert!(gap >= ms(1990), "Retry-After: 2 was not honoured ({gap:?})");
    let got = rx.wait_for("/unavailable", 2, WAIT).await;
    assert!(
        not_before
            .duration_since(got[0].wall)
            .is_ok_and(|d| d >= Duration::from_secs(1)),
        "the first attempt came too late to show anything"
    );
    assert!(
        got[1].wall + ms(10) >= not_before,
        "retried {:?} before the Retry-After date",
        not_before.duration_since(got[1].wall).unwrap_or_default()
    );

    let not_before_ms = not_before.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    for (ep, code) in [(&throttled, 429), (&unavailable, 503)] {
        let d = delivery_when(&app, &t, &ep.id, &event, |d| d["status"] == "succeeded").await;
        assert_eq!(d["attempt_count"], 2, "{d}");
        let log = attempts(&app, &t, id_of(&d)).await;
        assert_eq!(log.len(), 2);
        assert_eq!(log[0]["status_code"], code);
        assert_eq!(log[0]["error_class"], "http_status");
        assert!(log[0]["response_headers"]["retry-after"].is_string());
        assert_eq!(log[1]["status_code"], 204);
        let (first, retry) = (ts(&log[0]["started_at"]), ts(&log[1]["started_at"]));
        if code == 429 {
            let waited = retry.millis() - first.millis();
            assert!(waited >= 2000, "429: the retry came after {waited} ms");
        } else {
            assert!(
                retry.millis() >= not_before_ms - 5,
                "503: retried at {} before {date}",
                retry.to_rfc3339()
            );
        }
    }
}

#[tokio::test]
async fn retry_after_is_ignored_on_other_statuses() {
    let app = fast_app().await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    rx.script(
        "/failing",
        vec![Reply::status(500).header("retry-after", "3600")],
    );
    let ep = endpoint(&app, &t, &rx.url("/failing"), None).await;
    app.create_user(&t, json!({"email": "a@example.com"})).await;
    // An hour's wait would be far beyond WAIT: the fast schedule retried.
    let got = rx.wait_for("/failing", 2, WAIT).await;
    assert_eq!(got[0].id, got[1].id);
    let v = eventually(
        &app,
        &t,
        &format!("/v1/deliveries?endpoint_id={}", ep.id),
        |v| v["data"][0]["status"] == "succeeded",
    )
    .await;
    assert_eq!(v["data"][0]["attempt_count"], 2);
    let log = attempts(&app, &t, id_of(&v["data"][0])).await;
    assert_eq!(log[0]["status_code"], 500);
    assert_eq!(log[0]["response_headers"]["retry-after"], "3600");
}

#[tokio::test]
async fn the_attempt_log_keeps_4_kib_of_body_the_headers_and_when_it_started() {
    let app = fast_app().await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let body: Vec<u8> = (0..10_000).map(|i| b'a' + (i % 26) as u8).collect();
    rx.script(
        "/talkative",
        vec![
            Reply::status(200)
                .header("x-receiver-says", "hello")
                .body(body.clone()),
        ],
    );
    let ep = endpoint(&app, &t, &rx.url("/talkative"), None).await;
    let before = Timestamp::now();
    app.create_user(&t, json!({"email": "a@example.com"})).await;
    let v = eventually(
        &app,
        &t,
        &format!("/v1/deliveries?endpoint_id={}", ep.id),
        |v| v["data"][0]["status"] == "succeeded",
    )
    .await;
    let after = Timestamp::now();
    let log = attempts(&app, &t, id_of(&v["data"][0])).await;
    assert_eq!(log.len(), 1);
    let a = &log[0];
    assert_eq!(a["status_code"], 200);
    let kept = a["response_body"].as_str().unwrap();
    assert_eq!(kept.len(), 4096);
    assert_eq!(kept.as_bytes(), &body[..4096]);
    assert_eq!(a["response_headers"]["x-receiver-says"], "hello");
    let started_text = a["started_at"].as_str().unwrap();
    let started = ts(&a["started_at"]);
    assert_eq!(
        started.to_rfc3339(),
        started_text,
        "not RFC 3339 UTC with milliseconds"
    );
    assert!(
        before <= started && started <= after,
        "{started_text} is not between {} and {}",
        before.to_rfc3339(),
        after.to_rfc3339()
    );
    assert!(a["duration_ms"].is_u64());
}

/// Every item of a list, following `next_cursor` `limit` at a time; checks the page sizes.
async fn all_pages(app: &TestApp, t: &Tenant, path: &str, limit: usize) -> Vec<String> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut out = Vec::new();
    let mut pages = 0;
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{path}{sep}limit={limit}");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let page = json_of(app, t, &url).await;
        pages += 1;
        let items = page["data"].as_array().unwrap();
        assert!(items.len() <= limit, "{url}: {} items", items.len());
        out.extend(items.iter().map(|i| id_of(i).to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(items.len(), limit, "{url}: a short page before the last");
                after = Some(c.to_owned());
            }
            None => break,
        }
        assert!(pages <= 100, "{path} pages without end");
    }
    assert_eq!(
        pages,
        out.len().div_ceil(limit).max(1),
        "{path} with limit {limit}: {pages} pages for {} items",
        out.len()
    );
    out
}

#[tokio::test]
async fn paging_endpoints_and_deliveries_returns_every_item_once_in_order() {
    let app = fast_app().await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(
            endpoint(&app, &t, &rx.url(&format!("/e{i}")), None)
                .await
                .id,
        );
    }
    for limit in [1, 3, 7, 50] {
        assert_eq!(
            all_pages(&app, &t, "/v1/endpoints", limit).await,
            created,
            "limit {limit}"
        );
    }

    for email in ["a@example.com", "b@example.com"] {
        app.create_user(&t, json!({ "email": email })).await;
    }
    let all = eventually(&app, &t, "/v1/deliveries?limit=500", |v| {
        v["data"].as_array().unwrap().len() == 14
    })
    .await;
    let all: Vec<String> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| id_of(d).to_owned())
        .collect();
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 14);
    for limit in [1, 4, 7, 14] {
        assert_eq!(
            all_pages(&app, &t, "/v1/deliveries", limit).await,
            all,
            "limit {limit}"
        );
    }
    // A filter pages the same way.
    let of_first = all_pages(
        &app,
        &t,
        &format!("/v1/deliveries?endpoint_id={}", created[0]),
        1,
    )
    .await;
    let expected: Vec<String> = deliveries_of(&app, &t, &created[0])
        .await
        .iter()
        .map(|d| id_of(d).to_owned())
        .collect();
    assert_eq!(expected.len(), 2);
    assert_eq!(of_first, expected);
}

async fn create_with_key(app: &TestApp, t: &Tenant, key: &str, body: &Value) -> (u16, Value) {
    let r = app
        .client
        .post(app.url("/v1/users"))
        .bearer_auth(&t.key)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn an_idempotency_key_expires_after_24_hours() {
    let app = spawn_api_only().await;
    let t = app.create_org("Acme").await;
    let first = json!({"email": "first@example.com"});
    let second = json!({"email": "second@example.com"});
    let (status, user) = create_with_key(&app, &t, "k-1", &first).await;
    assert_eq!(status, 201);
    let backdate = |hours: i64| {
        format!(
            "UPDATE idempotency_keys SET created_at = created_at - {} WHERE key = 'k-1'",
            hours * 3_600_000
        )
    };

    // 23 hours on, the key still holds.
    let sql = backdate(23);
    app.db.execute(&sql, &sql).await;
    let (status, replay) = create_with_key(&app, &t, "k-1", &first).await;
    assert_eq!((status, &replay["id"]), (201, &user["id"]));
    let (status, _) = create_with_key(&app, &t, "k-1", &second).await;
    assert_eq!(status, 422);

    // 25 hours on, it is free: other JSON creates a new user, and the key now keeps that.
    let sql = backdate(2);
    app.db.execute(&sql, &sql).await;
    let (status, fresh) = create_with_key(&app, &t, "k-1", &second).await;
    assert_eq!(status, 201, "{fresh}");
    assert_ne!(fresh["id"], user["id"]);
    assert_eq!(fresh["email"], "second@example.com");
    let (status, replay) = create_with_key(&app, &t, "k-1", &second).await;
    assert_eq!((status, &replay["id"]), (201, &fresh["id"]));
    let (status, _) = create_with_key(&app, &t, "k-1", &first).await;
    assert_eq!(status, 422);

    let users = json_of(&app, &t, "/v1/users").await;
    let emails: Vec<&str> = users["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["first@example.com", "second@example.com"]);
}

/// `recover` selects by the event's time for both of its halves: the deliveries it created for
/// a window, once failed, are found again by the same window.
#[tokio::test]
async fn recovering_the_same_window_twice_finds_what_the_first_recovery_created() {
    let app = spawn_app_with(|s| s.retry_schedule = vec![]).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    rx.default_reply(Reply::status(500));
    let ep = endpoint(&app, &t, &rx.url("/down"), None).await;
    set_status(&app, &t, &ep.id, "disabled").await;

    // Two events while the endpoint is disabled: fan-out gives it no delivery for them.
    let since = Timestamp::now();
    past(since).await;
    let a = app.create_user(&t, json!({"email": "a@example.com"})).await;
    let b = app.create_user(&t, json!({"email": "b@example.com"})).await;
    let (ea, eb) = (
        event_of(&app, &t, &a, "user.created").await,
        event_of(&app, &t, &b, "user.created").await,
    );
    let until = Timestamp::now();
    past(until).await;
    let window = json!({"since": since.to_rfc3339(), "until": until.to_rfc3339()});
    set_status(&app, &t, &ep.id, "enabled").await;

    // The first recovery creates both (after the window's end); both then fail for good.
    assert_eq!(
        recover(&app, &t, &ep.id, window.clone()).await,
        json!({"requeued": 0, "created": 2})
    );
    for e in [&ea, &eb] {
        delivery_when(&app, &t, &ep.id, e, |d| d["status"] == "failed").await;
    }
    // The same window again: the events are in it, so their failed deliveries are queued again.
    assert_eq!(
        recover(&app, &t, &ep.id, window).await,
        json!({"requeued": 2, "created": 0})
    );
    rx.wait_for("/down", 4, WAIT).await;
}
