//! Per-user ordering (`"ordering": "per_user"`, DESIGN §10): one endpoint receives one user's
//! events strictly in commit order, while other users' events are not held back; a manual
//! retry of an overtaken delivery says so (`out_of_order`); `recover` re-queues in order.

use super::contract::retry_by_hand;
use super::*;

/// An endpoint that orders per user, at `url`.
async fn ordered_endpoint(app: &TestApp, t: &Tenant, url: &str) -> Endpoint {
    let e = app
        .create_endpoint(t, json!({"url": url, "ordering": "per_user"}))
        .await;
    assert_eq!(e["ordering"], "per_user");
    Endpoint::of(&e)
}

/// The user a request is about and its version.
fn user_version(r: &Received) -> (String, u64) {
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    let user = &body["data"]["user"];
    (
        user["id"].as_str().unwrap().to_owned(),
        user["version"].as_u64().unwrap(),
    )
}

/// The versions of `user` in the order its requests arrived.
fn arrivals_of(rx: &Receiver, path: &str, user: &str) -> Vec<u64> {
    rx.received(path)
        .iter()
        .map(user_version)
        .filter(|(u, _)| u == user)
        .map(|(_, v)| v)
        .collect()
}

async fn change(app: &TestApp, t: &Tenant, user: &str, name: &str) {
    let r = app
        .patch(t, &format!("/v1/users/{user}"), &json!({"name": name}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

async fn attempts(app: &TestApp, t: &Tenant, delivery_id: &str) -> Vec<Value> {
    json_of(app, t, &format!("/v1/deliveries/{delivery_id}/attempts")).await["data"]
        .as_array()
        .unwrap()
        .clone()
}

/// The delivery of `user`'s event of `version` to the endpoint.
async fn delivery_of(
    app: &TestApp,
    t: &Tenant,
    endpoint_id: &str,
    user: &str,
    version: u64,
) -> Value {
    let events = app.all_events(t, &format!("&user_id={user}")).await;
    let event = events
        .iter()
        .find(|e| e["data"]["user"]["version"] == version)
        .unwrap_or_else(|| panic!("no event of version {version}: {events:?}"));
    let list = json_of(
        app,
        t,
        &format!(
            "/v1/deliveries?endpoint_id={endpoint_id}&event_id={}",
            event["id"].as_str().unwrap()
        ),
    )
    .await;
    list["data"][0].clone()
}

#[tokio::test]
async fn a_users_later_events_wait_for_its_first_while_other_users_go_ahead() {
    // Retries a second apart: A's first event takes two of them to get through.
    let app = spawn_app_with(|s| s.retry_schedule = vec![ms(1000), ms(1000), ms(1000)]).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let ep = ordered_endpoint(&app, &t, &rx.url("/ordered")).await;
    rx.script_body(
        "ada@example.com",
        vec![Reply::status(500), Reply::status(500)],
    );

    let ada = app
        .create_user(&t, json!({"email": "ada@example.com"}))
        .await;
    let ada = ada["id"].as_str().unwrap().to_owned();
    change(&app, &t, &ada, "Ada").await;
    let r = app.delete(&t, &format!("/v1/users/{ada}")).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Her first attempt has failed: now other users sign up.
    rx.wait_for("/ordered", 1, WAIT).await;
    let mut others = Vec::new();
    for i in 0..5 {
        let u = app
            .create_user(&t, json!({"email": format!("user{i}@example.com")}))
            .await;
        others.push(u["id"].as_str().unwrap().to_owned());
    }

    // Ada's three attempts of version 1, then 2 and 3; everyone else's once.
    let got = rx
        .wait_for("/ordered", 5 + 5, Duration::from_secs(20))
        .await;
    for r in &got {
        verify(&ep.secret, r);
    }
    assert_eq!(arrivals_of(&rx, "/ordered", &ada), [1, 1, 1, 2, 3]);
    let ada_success = got
        .iter()
        .filter(|r| user_version(r).0 == ada)
        .nth(2)
        .unwrap()
        .at;
    for other in &others {
        let first = got
            .iter()
            .find(|r| &user_version(r).0 == other)
            .unwrap_or_else(|| panic!("{other} never arrived"));
        assert!(
            first.at < ada_success,
            "{other} was held back behind Ada's failing event"
        );
    }
    // Every delivery ended well, none of them out of order.
    let first = delivery_of(&app, &t, &ep.id, &ada, 1).await;
    assert_eq!(first["status"], "succeeded");
    let log = attempts(&app, &t, first["id"].as_str().unwrap()).await;
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|a| a["out_of_order"] == false), "{log:?}");
}

#[tokio::test]
async fn a_failed_delivery_releases_the_next_and_its_manual_retry_is_marked_out_of_order() {
    // No retries: one failure ends a delivery `failed`.
    let app = spawn_app_with(|s| s.retry_schedule = vec![]).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let ep = ordered_endpoint(&app, &t, &rx.url("/ordered")).await;
    rx.script_body("\"version\":1", vec![Reply::status(500)]);
    let grace = app
        .create_user(&t, json!({"email": "grace@example.com"}))
        .await;
    let grace = grace["id"].as_str().unwrap().to_owned();
    change(&app, &t, &grace, "Grace").await;
    // Version 1 failed for good; version 2 went out after it.
    rx.wait_for("/ordered", 2, WAIT).await;
    assert_eq!(arrivals_of(&rx, "/ordered", &grace), [1, 2]);
    let first = delivery_of(&app, &t, &ep.id, &grace, 1).await;
    let first_id = first["id"].as_str().unwrap().to_owned();
    eventually(&app, &t, &format!("/v1/deliveries/{first_id}"), |d| {
        d["status"] == "failed"
    })
    .await;
    let second = delivery_of(&app, &t, &ep.id, &grace, 2).await;
    let second_id = second["id"].as_str().unwrap().to_owned();
    eventually(&app, &t, &format!("/v1/deliveries/{second_id}"), |d| {
        d["status"] == "succeeded"
    })
    .await;

    // Version 1 by hand, after version 2: allowed, and its attempt says so.
    retry_by_hand(&app, &t, &first_id).await;
    rx.wait_for("/ordered", 3, WAIT).await;
    assert_eq!(arrivals_of(&rx, "/ordered", &grace), [1, 2, 1]);
    eventually(&app, &t, &format!("/v1/deliveries/{first_id}"), |d| {
        d["status"] == "succeeded"
    })
    .await;
    let log = attempts(&app, &t, &first_id).await;
    assert_eq!(log.len(), 2);
    assert_eq!(log[0]["out_of_order"], false);
    assert_eq!(log[1]["trigger"], "manual");
    assert_eq!(log[1]["out_of_order"], true, "{log:?}");

    // The latest one by hand overtakes nothing.
    retry_by_hand(&app, &t, &second_id).await;
    rx.wait_for("/ordered", 4, WAIT).await;
    let log = eventually(
        &app,
        &t,
        &format!("/v1/deliveries/{second_id}/attempts"),
        |a| a["data"].as_array().unwrap().len() == 2,
    )
    .await;
    assert_eq!(log["data"][1]["trigger"], "manual");
    assert_eq!(log["data"][1]["out_of_order"], false);
}

#[tokio::test]
async fn recover_requeues_each_users_failed_deliveries_in_commit_order() {
    let app = spawn_app_with(|s| s.retry_schedule = vec![]).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    rx.default_reply(Reply::status(500));
    let ep = ordered_endpoint(&app, &t, &rx.url("/ordered")).await;
    let since = accommador::domain::Timestamp::now().to_rfc3339();
    let mut users = Vec::new();
    for name in ["alan", "barbara"] {
        let u = app
            .create_user(&t, json!({"email": format!("{name}@example.com")}))
            .await;
        let id = u["id"].as_str().unwrap().to_owned();
        change(&app, &t, &id, "two").await;
        change(&app, &t, &id, "three").await;
        users.push(id);
    }
    // Every delivery fails once and for good (each released the next).
    rx.wait_for("/ordered", 6, WAIT).await;
    eventually(
        &app,
        &t,
        &format!("/v1/deliveries?endpoint_id={}&status=failed", ep.id),
        |v| v["data"].as_array().unwrap().len() == 6,
    )
    .await;

    rx.default_reply(Reply::status(204));
    let counts = recover(&app, &t, &ep.id, &since).await;
    assert_eq!(counts["requeued"], 6);
    rx.wait_for("/ordered", 12, WAIT).await;
    for user in &users {
        assert_eq!(arrivals_of(&rx, "/ordered", user), [1, 2, 3, 1, 2, 3]);
        // Versions 1 and 2 come again after later ones were sent: their attempts say so.
        for (version, overtaken) in [(1, true), (2, true), (3, false)] {
            let d = delivery_of(&app, &t, &ep.id, user, version).await;
            let id = d["id"].as_str().unwrap();
            let log = eventually(&app, &t, &format!("/v1/deliveries/{id}/attempts"), |a| {
                a["data"].as_array().unwrap().len() == 2
            })
            .await;
            assert_eq!(
                log["data"][1]["out_of_order"], overtaken,
                "version {version}"
            );
        }
    }
}

#[tokio::test]
async fn back_to_no_ordering_sends_what_waited_at_once() {
    // A failed attempt waits a minute for its retry: the user's later events wait behind it.
    let app = spawn_app_with(|s| s.retry_schedule = vec![Duration::from_secs(60)]).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let ep = ordered_endpoint(&app, &t, &rx.url("/ordered")).await;
    rx.script_body("\"version\":1", vec![Reply::status(500)]);
    let u = app
        .create_user(&t, json!({"email": "edsger@example.com"}))
        .await;
    let user = u["id"].as_str().unwrap().to_owned();
    change(&app, &t, &user, "two").await;
    change(&app, &t, &user, "three").await;
    rx.wait_for("/ordered", 1, WAIT).await;
    // Versions 2 and 3 wait (the gauge counts them).
    let waiting = |body: &str| {
        body.lines()
            .find(|l| l.starts_with("webhook_deliveries_ordered_waiting "))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<f64>().ok())
    };
    // The gauge is read every 5 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = app.metrics().await;
        if waiting(&metrics) == Some(2.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gauge never counted 2 waiting: {:?}",
            waiting(&metrics)
        );
        tokio::time::sleep(ms(100)).await;
    }
    assert_eq!(arrivals_of(&rx, "/ordered", &user), [1]);

    let r = app
        .patch(
            &t,
            &format!("/v1/endpoints/{}", ep.id),
            &json!({"ordering": "none"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["ordering"], "none");
    rx.wait_for("/ordered", 3, WAIT).await;
    let mut later = arrivals_of(&rx, "/ordered", &user)[1..].to_vec();
    later.sort_unstable();
    assert_eq!(later, [2, 3]);
}
