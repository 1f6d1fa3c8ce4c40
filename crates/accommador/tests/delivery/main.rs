//! Webhook delivery end to end: a real server on port 0 delivering to a real local receiver,
//! every request verified with the `accommador-webhooks` crate.

mod cancel;
mod contract;
mod crash;
mod deleted_org;
mod fanout;
mod fault_receiver;
mod faults;
mod guard;
#[path = "../api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
mod lifetime;
mod operational;
mod ordering;
mod policies;
#[allow(dead_code)] // shared with tests/postgres, which uses more of it
mod receiver;
mod recover;
mod secrets;
#[path = "../common/spawn.rs"]
#[allow(dead_code)]
mod spawn;
mod stale;
mod tenants;
mod user_filter;

use std::time::Duration;

use accommador_webhooks::{Secret, Verifier, WebhookHeaders};
use helpers::{Tenant, TestApp, error_fields, problem, spawn_api_only, spawn_app_with};
use receiver::{Received, Receiver, Reply};
use reqwest::StatusCode;
use serde_json::{Value, json};

pub(crate) const WAIT: Duration = Duration::from_secs(10);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A server whose retries come quickly: 50 ms apart, three of them.
async fn fast_app() -> TestApp {
    spawn_app_with(|s| s.retry_schedule = vec![ms(50), ms(50), ms(50)]).await
}

pub(crate) struct Endpoint {
    pub(crate) id: String,
    pub(crate) secret: String,
}

impl Endpoint {
    /// The ID and secret of an endpoint as the API returned it.
    fn of(e: &Value) -> Endpoint {
        Endpoint {
            id: e["id"].as_str().unwrap().to_owned(),
            secret: e["secret"].as_str().unwrap().to_owned(),
        }
    }
}

pub(crate) async fn endpoint(
    app: &TestApp,
    t: &Tenant,
    url: &str,
    types: Option<&[&str]>,
) -> Endpoint {
    let mut body = json!({ "url": url });
    if let Some(types) = types {
        body["event_types"] = json!(types);
    }
    Endpoint::of(&app.create_endpoint(t, body).await)
}

pub(crate) use receiver::verify;

async fn json_of(app: &TestApp, t: &Tenant, path: &str) -> Value {
    let r = app.get(t, path).await;
    assert_eq!(r.status(), StatusCode::OK, "GET {path}");
    r.json().await.unwrap()
}

/// Polls `path` until `check` holds (bounded), returning the last body.
pub(crate) async fn eventually(
    app: &TestApp,
    t: &Tenant,
    path: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    eventually_within(app, t, path, WAIT, check).await
}

/// [`eventually`] for a state that may take longer than [`WAIT`] to reach: within `limit`.
pub(crate) async fn eventually_within(
    app: &TestApp,
    t: &Tenant,
    path: &str,
    limit: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let body = json_of(app, t, path).await;
        if check(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never reached the expected state: {body}"
        );
        tokio::time::sleep(ms(20)).await;
    }
}

async fn deliveries_of(app: &TestApp, t: &Tenant, endpoint_id: &str) -> Vec<Value> {
    json_of(
        app,
        t,
        &format!("/v1/deliveries?endpoint_id={endpoint_id}&limit=500"),
    )
    .await["data"]
        .as_array()
        .unwrap()
        .clone()
}

/// `POST /v1/endpoints/{endpoint_id}/recover` from `since`: its counts (answered 202).
pub(crate) async fn recover(app: &TestApp, t: &Tenant, endpoint_id: &str, since: &str) -> Value {
    let r = app
        .post(
            t,
            &format!("/v1/endpoints/{endpoint_id}/recover"),
            &json!({"since": since}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    r.json().await.unwrap()
}

/// How many deliveries `/v1/deliveries?{query}` lists, following `next_cursor` to the end.
pub(crate) async fn count_deliveries(app: &TestApp, t: &Tenant, query: &str) -> usize {
    let mut n = 0;
    let mut after = String::new();
    loop {
        let page = json_of(app, t, &format!("/v1/deliveries?{query}&limit=500{after}")).await;
        n += page["data"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(c) => after = format!("&after={c}"),
            None => return n,
        }
    }
}

/// Waits until the endpoint's newest delivery has failed; that delivery's attempt log.
pub(crate) async fn failed_attempts(app: &TestApp, t: &Tenant, endpoint_id: &str) -> Vec<Value> {
    let v = eventually(
        app,
        t,
        &format!("/v1/deliveries?endpoint_id={endpoint_id}"),
        |v| v["data"][0]["status"] == "failed",
    )
    .await;
    attempts(app, t, v["data"][0]["id"].as_str().unwrap()).await
}

pub(crate) async fn attempts(app: &TestApp, t: &Tenant, delivery_id: &str) -> Vec<Value> {
    json_of(app, t, &format!("/v1/deliveries/{delivery_id}/attempts")).await["data"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn each_change_reaches_every_subscribed_endpoint_signed_and_byte_for_byte() {
    let app = fast_app().await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let all = endpoint(&app, &t, &rx.url("/all"), None).await;
    let deletes = endpoint(&app, &t, &rx.url("/deletes"), Some(&["user.deleted"])).await;

    let user = app
        .create_user(&t, json!({"email": "ada@example.com"}))
        .await;
    let path = format!("/v1/users/{}", user["id"].as_str().unwrap());
    app.patch(&t, &path, &json!({"name": "Ada"})).await;
    app.delete(&t, &path).await;

    let got = rx.wait_for("/all", 3, WAIT).await;
    let events = app.all_events(&t, "").await;
    let mut got_ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
    got_ids.sort();
    let mut event_ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    event_ids.sort();
    assert_eq!(got_ids, event_ids, "webhook-id must be the event ID");
    for r in &got {
        verify(&all.secret, r);
        let stored = app
            .get(&t, &format!("/v1/events/{}", r.id))
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(
            r.body, stored,
            "the body is the stored event, byte for byte"
        );
        assert!(
            r.user_agent.starts_with("Accommador-Webhooks/"),
            "{}",
            r.user_agent
        );
        assert_eq!(r.content_type, "application/json");
    }

    let got = rx.wait_for("/deletes", 1, WAIT).await;
    verify(&deletes.secret, &got[0]);
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["type"], "user.deleted");

    // An endpoint created after these events gets none of them, only what comes next.
    let late = endpoint(&app, &t, &rx.url("/late"), None).await;
    let next = app
        .create_user(&t, json!({"email": "grace@example.com"}))
        .await;
    let got = rx.wait_for("/late", 1, WAIT).await;
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["data"]["user"]["id"], next["id"]);
    rx.wait_for("/all", 4, WAIT).await;
    assert_eq!(deliveries_of(&app, &t, &late.id).await.len(), 1);
    // Fan-out has written the last event's deliveries (it reached /late): the filtered
    // endpoint's list says for good whether it was given another type.
    let filtered: Vec<Value> = deliveries_of(&app, &t, &deletes.id).await;
    assert_eq!(
        filtered
            .iter()
            .map(|d| d["event_type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["user.deleted"],
        "the filtered endpoint was given another type"
    );
    let ok = eventually(
        &app,
        &t,
        &format!("/v1/deliveries?endpoint_id={}&status=succeeded", all.id),
        |v| v["data"].as_array().unwrap().len() == 4,
    )
    .await;
    for d in ok["data"].as_array().unwrap() {
        assert_eq!(d["attempt_count"], 1);
        assert_eq!(d["last_status_code"], 204);
        assert_eq!(d["next_attempt_at"], Value::Null);
    }
}

#[tokio::test]
async fn failures_are_retried_with_the_same_webhook_id_until_success() {
    let app = fast_app().await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    rx.script(
        "/flaky",
        vec![Reply::status(500), Reply::status(500), Reply::status(200)],
    );
    let ep = endpoint(&app, &t, &rx.url("/flaky"), None).await;
    app.create_user(&t, json!({"email": "a@example.com"})).await;

    let got = rx.wait_for("/flaky", 3, WAIT).await;
    assert!(
        got.iter().all(|r| r.id == got[0].id),
        "one webhook-id for every attempt"
    );
    for r in &got {
        verify(&ep.secret, r);
    }
    let deliveries = eventually(
        &app,
        &t,
        &format!("/v1/deliveries?endpoint_id={}", ep.id),
        |v| v["data"][0]["status"] == "succeeded",
    )
    .await;
    let d = &deliveries["data"][0];
    assert_eq!(d["attempt_count"], 3);
    assert_eq!(d["last_status_code"], 200);
    assert_eq!(d["event_id"], got[0].id.as_str());
    let log = attempts(&app, &t, d["id"].as_str().unwrap()).await;
    let codes: Vec<_> = log.iter().map(|a| a["status_code"].clone()).collect();
    assert_eq!(codes, [json!(500), json!(500), json!(200)]);
    let numbers: Vec<_> = log.iter().map(|a| a["number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert_eq!(log[0]["error_class"], "http_status");
    assert_eq!(log[2]["error_class"], Value::Null);
    assert!(log.iter().all(|a| a["trigger"] == "scheduled"));
}

#[tokio::test]
async fn a_timeout_is_logged_as_one_and_exhaustion_fails_the_delivery() {
    let app = spawn_app_with(|s| {
        s.retry_schedule = vec![];
        s.delivery_timeout = ms(300);
    })
    .await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    rx.script(
        "/slow",
        vec![Reply::status(200).after(Duration::from_secs(3))],
    );
    let ep = endpoint(&app, &t, &rx.url("/slow"), None).await;
    app.create_user(&t, json!({"email": "a@example.com"})).await;
    let log = failed_attempts(&app, &t, &ep.id).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["error_class"], "timeout");
    assert_eq!(log[0]["status_code"], Value::Null);
    assert!(log[0]["duration_ms"].as_u64().unwrap() < 2000);
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_fails_its_pending_deliveries() {
    let app = spawn_app_with(|s| s.retry_schedule = vec![Duration::from_secs(3600)]).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    rx.script("/gone", vec![Reply::status(500), Reply::status(410)]);
    let ep = endpoint(&app, &t, &rx.url("/gone"), None).await;
    app.create_user(&t, json!({"email": "first@example.com"}))
        .await;
    rx.wait_for("/gone", 1, WAIT).await;
    // The first delivery now waits an hour for its retry; the second meets the 410.
    eventually(
        &app,
        &t,
        &format!("/v1/deliveries?endpoint_id={}", ep.id),
        |v| v["data"][0]["attempt_count"] == 1,
    )
    .await;
    app.create_user(&t, json!({"email": "second@example.com"}))
        .await;
    rx.wait_for("/gone", 2, WAIT).await;

    let e = eventually(&app, &t, &format!("/v1/endpoints/{}", ep.id), |v| {
        v["status"] == "disabled"
    })
    .await;
    assert!(
        e["disabled_reason"].as_str().unwrap().contains("410"),
        "{e}"
    );
    let all = eventually(
        &app,
        &t,
        &format!("/v1/deliveries?endpoint_id={}", ep.id),
        |v| {
            let data = v["data"].as_array().unwrap();
            !data.is_empty() && data.iter().all(|d| d["status"] == "failed")
        },
    )
    .await;
    let first = all["data"].as_array().unwrap().last().unwrap().clone();
    let log = attempts(&app, &t, first["id"].as_str().unwrap()).await;
    assert_eq!(log.last().unwrap()["error_class"], "endpoint_disabled");
    // A disabled endpoint receives nothing more (the observer shows fan-out went past).
    endpoint(&app, &t, &rx.url("/observer"), None).await;
    app.create_user(&t, json!({"email": "third@example.com"}))
        .await;
    app.create_user(&t, json!({"email": "fourth@example.com"}))
        .await;
    rx.wait_for("/observer", 2, WAIT).await;
    assert_eq!(deliveries_of(&app, &t, &ep.id).await.len(), 2);
    assert_eq!(rx.received("/gone").len(), 2);
}

#[tokio::test]
async fn retry_after_lengthens_the_next_delay() {
    let app = fast_app().await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    rx.script("/busy", vec![Reply::status(503).header("retry-after", "1")]);
    endpoint(&app, &t, &rx.url("/busy"), None).await;
    app.create_user(&t, json!({"email": "a@example.com"})).await;
    let got = rx.wait_for("/busy", 2, WAIT).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= ms(950),
        "Retry-After: 1 was not honoured (gap {gap:?})"
    );
}

#[tokio::test]
async fn an_exhausted_delivery_can_be_retried_by_hand() {
    let app = spawn_app_with(|s| s.retry_schedule = vec![ms(50)]).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    rx.script(
        "/down",
        vec![Reply::status(500), Reply::status(502), Reply::status(500)],
    );
    let ep = endpoint(&app, &t, &rx.url("/down"), None).await;
    app.create_user(&t, json!({"email": "a@example.com"})).await;
    let v = eventually(
        &app,
        &t,
        &format!("/v1/deliveries?endpoint_id={}", ep.id),
        |v| v["data"][0]["status"] == "failed",
    )
    .await;
    let id = v["data"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(v["data"][0]["attempt_count"], 2);

    // A failed manual attempt is not retried.
    let r = app
        .post(&t, &format!("/v1/deliveries/{id}/retry"), &json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    eventually(&app, &t, &format!("/v1/deliveries/{id}"), |d| {
        d["status"] == "failed" && d["attempt_count"] == 3
    })
    .await;
    // The next manual attempt succeeds.
    let r = app
        .post(&t, &format!("/v1/deliveries/{id}/retry"), &json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    eventually(&app, &t, &format!("/v1/deliveries/{id}"), |d| {
        d["status"] == "succeeded"
    })
    .await;
    let log = attempts(&app, &t, &id).await;
    let triggers: Vec<_> = log.iter().map(|a| a["trigger"].as_str().unwrap()).collect();
    assert_eq!(triggers, ["scheduled", "scheduled", "manual", "manual"]);
    assert_eq!(rx.received("/down").len(), 4);
    assert!(
        rx.received("/down")
            .iter()
            .all(|r| r.id == rx.received("/down")[0].id)
    );
}

/// A server and an organization whose one delivery's first attempt is in flight throughout
/// the test: the reply is held far longer than a few API calls can take, however slow the
/// machine, and the attempt's timeout is longer still. Returns the delivery's ID.
async fn one_attempt_in_flight() -> (TestApp, Tenant, String) {
    let app = spawn_app_with(|s| s.delivery_timeout = Duration::from_secs(120)).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    rx.script(
        "/hang",
        vec![Reply::status(200).after(Duration::from_secs(60))],
    );
    let ep = endpoint(&app, &t, &rx.url("/hang"), None).await;
    app.create_user(&t, json!({"email": "a@example.com"})).await;
    rx.wait_for("/hang", 1, WAIT).await;
    // The receiver goes on serving (and holding the reply) after `rx` is dropped.
    let id = deliveries_of(&app, &t, &ep.id).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    (app, t, id)
}

#[tokio::test]
async fn a_retry_while_an_attempt_is_in_flight_is_409() {
    let (app, t, delivery_id) = one_attempt_in_flight().await;
    let r = app
        .post(
            &t,
            &format!("/v1/deliveries/{delivery_id}/retry"),
            &json!({}),
        )
        .await;
    problem(r, StatusCode::CONFLICT).await;
}

#[tokio::test]
async fn a_delivery_in_flight_shows_when_it_was_scheduled() {
    // While its first attempt is in flight, a delivery is pending and its next attempt is the
    // time it was scheduled for (its creation), on both backends: not the end of the lease
    // PostgreSQL holds on it (2 × 120 s + 5 s away).
    let (app, t, delivery_id) = one_attempt_in_flight().await;
    let shown = json_of(&app, &t, &format!("/v1/deliveries/{delivery_id}")).await;
    assert_eq!(shown["status"], "pending", "{shown}");
    assert_eq!(shown["attempt_count"], 0, "{shown}");
    assert_eq!(
        shown["next_attempt_at"], shown["created_at"],
        "an attempt in flight moved the schedule: {shown}"
    );
}

#[tokio::test]
async fn recover_requeues_failed_deliveries_and_creates_missing_ones() {
    let app = spawn_app_with(|s| s.retry_schedule = vec![]).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    rx.script("/rec", vec![Reply::status(500)]);
    let ep = endpoint(&app, &t, &rx.url("/rec"), None).await;
    let since = accommador::domain::Timestamp::now().to_rfc3339();
    app.create_user(&t, json!({"email": "failed@example.com"}))
        .await;
    eventually(
        &app,
        &t,
        &format!("/v1/deliveries?endpoint_id={}", ep.id),
        |v| v["data"][0]["status"] == "failed",
    )
    .await;

    let path = format!("/v1/endpoints/{}", ep.id);
    app.patch(&t, &path, &json!({"status": "disabled"})).await;
    // An observer endpoint shows when fan-out has passed the next event: one transaction
    // fans an event out to every endpoint, so the disabled one was skipped by then.
    endpoint(&app, &t, &rx.url("/observer"), None).await;
    app.create_user(&t, json!({"email": "missed@example.com"}))
        .await;
    rx.wait_for("/observer", 1, WAIT).await;
    problem(
        app.post(&t, &format!("{path}/recover"), &json!({"since": since}))
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    app.patch(&t, &path, &json!({"status": "enabled"})).await;

    assert_eq!(
        recover(&app, &t, &ep.id, &since).await,
        json!({"requeued": 1, "created": 1})
    );
    let got = rx.wait_for("/rec", 3, WAIT).await;
    let emails: Vec<String> = got[1..]
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["data"]["user"]["email"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        emails.contains(&"failed@example.com".to_owned())
            && emails.contains(&"missed@example.com".to_owned()),
        "{emails:?}"
    );
    eventually(
        &app,
        &t,
        &format!("/v1/deliveries?endpoint_id={}&status=succeeded", ep.id),
        |v| v["data"].as_array().unwrap().len() == 2,
    )
    .await;

    for (body, field) in [
        (json!({}), "since"),
        (json!({"since": "yesterday"}), "since"),
        (
            json!({"since": since, "until": "2000-01-01T00:00:00Z"}),
            "until",
        ),
        (json!({"since": since, "x": 1}), "x"),
    ] {
        let p = problem(
            app.post(&t, &format!("{path}/recover"), &body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(error_fields(&p), [field], "for {body}");
    }
}

#[tokio::test]
async fn a_test_event_goes_to_that_endpoint_only_and_is_not_listed() {
    let app = fast_app().await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let filtered = endpoint(&app, &t, &rx.url("/filtered"), Some(&["user.deleted"])).await;
    let other = endpoint(&app, &t, &rx.url("/other"), None).await;
    let r = app
        .post(
            &t,
            &format!("/v1/endpoints/{}/test", filtered.id),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let sent: Value = r.json().await.unwrap();
    let got = rx.wait_for("/filtered", 1, WAIT).await;
    verify(&filtered.secret, &got[0]);
    assert_eq!(got[0].id, sent["event_id"].as_str().unwrap());
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["type"], "webhook.test");
    assert_eq!(body["data"], json!({"endpoint_id": filtered.id}));
    assert!(
        app.all_events(&t, "").await.is_empty(),
        "test events are not listed"
    );
    problem(
        app.get(&t, &format!("/v1/events/{}", got[0].id)).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let d = json_of(
        &app,
        &t,
        &format!("/v1/deliveries/{}", sent["delivery_id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(d["event_type"], "webhook.test");
    // The test delivery is written with the request; no other endpoint was given one.
    assert_eq!(
        deliveries_of(&app, &t, &other.id).await,
        Vec::<Value>::new()
    );
    assert!(rx.received("/other").is_empty());
}

#[tokio::test]
async fn after_rotation_both_secrets_sign_until_the_overlap_ends() {
    let app = fast_app().await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let ep = endpoint(&app, &t, &rx.url("/rot"), None).await;
    let rotated: Value = app
        .post(
            &t,
            &format!("/v1/endpoints/{}/secret/rotate", ep.id),
            &json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    let new_secret = rotated["secret"].as_str().unwrap();
    app.create_user(&t, json!({"email": "a@example.com"})).await;
    let got = rx.wait_for("/rot", 1, WAIT).await;
    assert_eq!(
        got[0].signature.split(' ').count(),
        2,
        "{}",
        got[0].signature
    );
    verify(&ep.secret, &got[0]);
    verify(new_secret, &got[0]);

    // When the overlap ends (made to end now), only the new secret signs.
    let ended = "UPDATE endpoint_secrets SET expires_at = 1 WHERE expires_at IS NOT NULL";
    app.db.execute(ended, ended).await;
    app.create_user(&t, json!({"email": "after-overlap@example.com"}))
        .await;
    let got = rx.wait_for("/rot", 2, WAIT).await;
    assert_eq!(
        got[1].signature.split(' ').count(),
        1,
        "{}",
        got[1].signature
    );
    verify(new_secret, &got[1]);
    let headers = WebhookHeaders {
        id: &got[1].id,
        timestamp: &got[1].timestamp,
        signature: &got[1].signature,
    };
    assert!(
        Verifier::new(Secret::parse(&ep.secret).unwrap())
            .verify(&headers, &got[1].body)
            .is_err(),
        "the old secret still signs after the overlap"
    );

    // Rotating again ends the oldest secret: still two signatures, the first secret no longer.
    let third: Value = app
        .post(
            &t,
            &format!("/v1/endpoints/{}/secret/rotate", ep.id),
            &json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    app.create_user(&t, json!({"email": "b@example.com"})).await;
    let got = rx.wait_for("/rot", 3, WAIT).await;
    verify(third["secret"].as_str().unwrap(), &got[2]);
    verify(new_secret, &got[2]);
    let headers = WebhookHeaders {
        id: &got[2].id,
        timestamp: &got[2].timestamp,
        signature: &got[2].signature,
    };
    assert!(
        Verifier::new(Secret::parse(&ep.secret).unwrap())
            .verify(&headers, &got[2].body)
            .is_err()
    );
}

/// Creates `n` users `{tag}{i}@example.com` one at a time, returning when each creation was
/// answered, by user ID.
async fn create_users_timed(
    app: &TestApp,
    t: &Tenant,
    tag: &str,
    n: usize,
) -> std::collections::HashMap<String, std::time::Instant> {
    let mut created = std::collections::HashMap::new();
    for i in 0..n {
        let u = app
            .create_user(t, json!({"email": format!("{tag}{i}@example.com")}))
            .await;
        created.insert(
            u["id"].as_str().unwrap().to_owned(),
            std::time::Instant::now(),
        );
    }
    created
}

/// The longest time from a user's creation being answered to its `user.created` arriving at
/// the receiver, over `got`.
fn slowest_delivery(
    got: &[Received],
    created: &std::collections::HashMap<String, std::time::Instant>,
) -> Duration {
    assert_eq!(got.len(), created.len());
    got.iter()
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            let at = created[body["data"]["user"]["id"].as_str().unwrap()];
            r.at.saturating_duration_since(at)
        })
        .max()
        .unwrap()
}

#[tokio::test]
async fn a_hanging_endpoint_does_not_delay_a_healthy_one() {
    let app = spawn_app_with(|s| {
        s.retry_schedule = vec![];
        s.delivery_timeout = Duration::from_secs(120);
        s.endpoint_concurrency = 4;
    })
    .await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    // Each reply is held for a minute: a healthy delivery queued behind one would wait that long.
    rx.script(
        "/hang",
        (0..40)
            .map(|_| Reply::status(200).after(Duration::from_secs(60)))
            .collect(),
    );
    endpoint(&app, &t, &rx.url("/hang"), None).await;
    endpoint(&app, &t, &rx.url("/healthy"), None).await;
    let created = create_users_timed(&app, &t, "u", 30).await;
    let got = rx.wait_for("/healthy", 30, Duration::from_secs(30)).await;
    let slowest = slowest_delivery(&got, &created);
    assert!(
        slowest < Duration::from_secs(10),
        "a healthy delivery waited {slowest:?} behind the hanging endpoint"
    );
    // The hanging endpoint holds exactly its own bound: 4 in flight, no fifth before one ends.
    let hung = rx.wait_for("/hang", 4, WAIT).await;
    assert!(
        hung[0].at.elapsed() < Duration::from_secs(60),
        "a held reply ended, so the bound is not shown"
    );
    assert_eq!(rx.received("/hang").len(), 4);
}

#[tokio::test]
async fn an_endpoint_failing_for_too_long_is_disabled_with_the_reason() {
    let app = spawn_app_with(|s| {
        s.retry_schedule = vec![ms(100); 10];
        s.disable_after = ms(250);
    })
    .await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    rx.script("/broken", (0..20).map(|_| Reply::status(500)).collect());
    let ep = endpoint(&app, &t, &rx.url("/broken"), None).await;
    app.create_user(&t, json!({"email": "a@example.com"})).await;
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
    let log = failed_attempts(&app, &t, &ep.id).await;
    // Failing since the first attempt, 100 ms apart, disabled once 250 ms have passed: at least
    // three real attempts, each a 500, numbered in order; the last may be the disabling one.
    let numbers: Vec<u64> = log.iter().map(|a| a["number"].as_u64().unwrap()).collect();
    assert_eq!(
        numbers,
        (1..=log.len() as u64).collect::<Vec<_>>(),
        "{log:?}"
    );
    let (last, sent) = log.split_last().unwrap();
    assert!(sent.len() >= 2, "{log:?}");
    for a in sent {
        assert_eq!(a["status_code"], 500, "{a}");
        assert_eq!(a["error_class"], "http_status", "{a}");
    }
    assert!(
        last["error_class"] == "http_status" || last["error_class"] == "endpoint_disabled",
        "{last}"
    );
    let real = log.iter().filter(|a| a["status_code"] == 500).count();
    assert!(
        real >= 3,
        "fewer than three attempts before disabling: {log:?}"
    );
    assert_eq!(rx.received("/broken").len(), real);
    let metrics = app.metrics().await;
    assert!(metrics.contains("webhook_attempts_total"), "{metrics}");
}

#[tokio::test]
async fn the_delivery_log_is_private_and_checks_its_filters() {
    let app = fast_app().await;
    let acme = app.create_org("Acme").await;
    let globex = app.create_org("Globex").await;
    let rx = Receiver::start().await;
    let ep = endpoint(&app, &acme, &rx.url("/x"), None).await;
    app.create_user(&acme, json!({"email": "a@example.com"}))
        .await;
    rx.wait_for("/x", 1, WAIT).await;
    let d = deliveries_of(&app, &acme, &ep.id).await;
    let id = d[0]["id"].as_str().unwrap();
    for path in [
        format!("/v1/deliveries/{id}"),
        format!("/v1/deliveries/{id}/attempts"),
    ] {
        problem(app.get(&globex, &path).await, StatusCode::NOT_FOUND).await;
    }
    problem(
        app.post(&globex, &format!("/v1/deliveries/{id}/retry"), &json!({}))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.post(
            &globex,
            &format!("/v1/endpoints/{}/test", ep.id),
            &json!({}),
        )
        .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.post(
            &globex,
            &format!("/v1/endpoints/{}/recover", ep.id),
            &json!({"since": "2020-01-01T00:00:00Z"}),
        )
        .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(
        json_of(&app, &globex, "/v1/deliveries").await["data"],
        json!([])
    );

    for (query, field) in [
        ("status=done", "status"),
        ("event_type=user.exploded", "event_type"),
        ("since=yesterday", "since"),
        ("until=2020", "until"),
        ("limit=0", "limit"),
        ("colour=red", "colour"),
    ] {
        let p = problem(
            app.get(&acme, &format!("/v1/deliveries?{query}")).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(error_fields(&p), [field], "for {query}");
    }
    for query in [
        format!("event_id={}", d[0]["event_id"].as_str().unwrap()),
        "event_type=user.created".into(),
        "status=succeeded".into(),
        "since=2020-01-01T00:00:00Z".into(),
    ] {
        let v = eventually(&app, &acme, &format!("/v1/deliveries?{query}"), |v| {
            v["data"].as_array().unwrap().len() == 1
        })
        .await;
        assert_eq!(v["data"][0]["id"], id, "for {query}");
    }
    assert_eq!(
        json_of(&app, &acme, "/v1/deliveries?until=2020-01-01T00:00:00Z").await["data"],
        json!([])
    );
    assert_eq!(
        json_of(&app, &acme, "/v1/deliveries?status=failed").await["data"],
        json!([])
    );
}

#[tokio::test]
async fn a_backlogged_endpoint_does_not_delay_the_others() {
    let app = spawn_app_with(|s| {
        s.retry_schedule = vec![];
        s.endpoint_concurrency = 4;
    })
    .await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    // 4 at a time, 500 ms each: 100 deliveries keep this endpoint busy for 12.5 s, so a
    // healthy delivery queued behind the backlog would wait seconds.
    rx.script(
        "/backlog",
        (0..100)
            .map(|_| Reply::status(204).after(ms(500)))
            .collect(),
    );
    endpoint(&app, &t, &rx.url("/backlog"), None).await;
    endpoint(&app, &t, &rx.url("/healthy"), None).await;
    let created = create_users_timed(&app, &t, "b", 100).await;
    let got = rx.wait_for("/healthy", 100, Duration::from_secs(30)).await;
    let backlog_so_far = rx.received("/backlog").len();
    assert!(
        backlog_so_far < 100,
        "the backlog drained first, so this test shows nothing"
    );
    let slowest = slowest_delivery(&got, &created);
    assert!(
        slowest < Duration::from_secs(4),
        "a healthy delivery waited {slowest:?} behind the backlog"
    );
}

/// Recover may create a delivery before fan-out reaches its event; fan-out must then skip
/// that pair and go on (it used to fail on the duplicate, for every organization, forever).
#[tokio::test]
async fn recover_before_fan_out_does_not_block_fan_out() {
    let app = spawn_api_only().await;
    let t = app.create_org("Acme").await;
    let ep = endpoint(&app, &t, "http://127.0.0.1:9/never", None).await;
    let since = accommador::domain::Timestamp(0).to_rfc3339();
    app.create_user(&t, json!({"email": "first@example.com"}))
        .await;
    let r = app
        .post(
            &t,
            &format!("/v1/endpoints/{}/recover", ep.id),
            &json!({ "since": since }),
        )
        .await;
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"requeued": 0, "created": 1})
    );
    app.create_user(&t, json!({"email": "second@example.com"}))
        .await;

    // Drive fan-out by hand on the same database.
    let store = accommador::store::Store::open(
        &accommador::store::DatabaseUrl::parse(&app.db.url).unwrap(),
        accommador::store::Ownership::Tool,
        2,
    )
    .await
    .unwrap();
    let mut taken = 0;
    loop {
        let step = store
            .fan_out()
            .await
            .expect("fan-out must not fail on a recovered pair");
        if step.events == 0 {
            break;
        }
        taken += step.events;
    }
    assert_eq!(taken, 2);
    let ds = deliveries_of(&app, &t, &ep.id).await;
    assert_eq!(ds.len(), 2, "one delivery per event: {ds:?}");
}
