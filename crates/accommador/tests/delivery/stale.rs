//! No stale sends (DESIGN §10): once `PATCH` or `DELETE` of an endpoint has answered, no
//! attempt starts with its old URL, secrets or status. A delivery already read (on PostgreSQL:
//! leased ahead and queued behind a slow attempt) goes to the new URL with the new secret, or,
//! after disable or delete, ends `failed` / `endpoint_disabled` without being sent. An attempt
//! that was already in flight is logged, and its delivery keeps the status it was ended with:
//! both backends record the same.
//!
//! On SQLite a delivery is read only when it can start at once (nothing is leased ahead), so
//! there these tests show the outcome a user sees but cannot hold a read delivery back across
//! the change; the check itself is exercised on PostgreSQL, whose lease-ahead queue does.

use super::*;

/// A server with one slot per endpoint, so the second delivery waits behind the first.
async fn one_slot_app() -> TestApp {
    spawn_app_with(|s| {
        s.retry_schedule = vec![ms(50), ms(50)];
        s.delivery_timeout = Duration::from_secs(30);
        s.endpoint_concurrency = 1;
    })
    .await
}

/// The deliveries of `endpoint_id`, oldest first.
async fn oldest_first(app: &TestApp, t: &Tenant, endpoint_id: &str) -> Vec<Value> {
    let mut ds = deliveries_of(app, t, endpoint_id).await;
    ds.reverse();
    ds
}

/// Two users' deliveries to `ep`: the first is in flight (its reply held for `hold`), the
/// second is due behind it (on PostgreSQL: leased ahead and queued, with the endpoint's data
/// as it was read). Returns their delivery IDs.
async fn first_in_flight_second_queued(
    app: &TestApp,
    t: &Tenant,
    rx: &Receiver,
    ep: &Endpoint,
    path: &str,
    hold: Duration,
) -> (String, String) {
    rx.script(path, vec![Reply::status(200).after(hold)]);
    app.create_user(t, json!({"email": "first@example.com"}))
        .await;
    app.create_user(t, json!({"email": "second@example.com"}))
        .await;
    rx.wait_for(path, 1, WAIT).await;
    let ds = eventually(
        app,
        t,
        &format!("/v1/deliveries?endpoint_id={}", ep.id),
        |v| v["data"].as_array().unwrap().len() == 2,
    )
    .await;
    let ids: Vec<String> = ds["data"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    if app.db.is_postgres() {
        // Wait until the second is leased ahead. The delivery log shows only its schedule,
        // so the test looks at the lease in the database itself.
        let (client, conn) = tokio_postgres::connect(&app.db.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let deadline = tokio::time::Instant::now() + WAIT;
        while !client
            .query_one(
                "SELECT lease_token IS NOT NULL FROM deliveries WHERE id = $1",
                &[&ids[1]],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the second delivery was never leased ahead"
            );
            tokio::time::sleep(ms(10)).await;
        }
    }
    (ids[0].clone(), ids[1].clone())
}

#[tokio::test]
async fn a_delivery_read_before_a_url_change_and_rotation_goes_to_the_new_url_with_the_new_secret()
{
    let app = one_slot_app().await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let ep = endpoint(&app, &t, &rx.url("/old"), None).await;
    let (first, second) =
        first_in_flight_second_queued(&app, &t, &rx, &ep, "/old", Duration::from_secs(2)).await;

    patch_url(&app, &t, &ep.id, &rx.url("/new")).await;
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

    // The second delivery goes to the new URL, signed with the new secret.
    let got = rx.wait_for("/new", 1, WAIT).await;
    verify(new_secret, &got[0]);
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["data"]["user"]["email"], "second@example.com");
    eventually(&app, &t, &format!("/v1/deliveries/{second}"), |d| {
        d["status"] == "succeeded"
    })
    .await;
    eventually(&app, &t, &format!("/v1/deliveries/{first}"), |d| {
        d["status"] == "succeeded"
    })
    .await;
    // Only the attempt already in flight before the change reached the old URL.
    assert_eq!(rx.received("/old").len(), 1);
    assert_eq!(attempts(&app, &t, &second).await.len(), 1);
}

/// Disables (`PATCH {"status": "disabled"}`) or deletes the endpoint while one delivery is in
/// flight and one is queued behind it.
async fn ending_the_endpoint_sends_nothing_more(delete: bool) {
    let app = one_slot_app().await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let ep = endpoint(&app, &t, &rx.url("/ending"), None).await;
    let (first, second) =
        first_in_flight_second_queued(&app, &t, &rx, &ep, "/ending", Duration::from_secs(2)).await;

    let path = format!("/v1/endpoints/{}", ep.id);
    let r = if delete {
        app.delete(&t, &path).await
    } else {
        app.patch(&t, &path, &json!({"status": "disabled"})).await
    };
    assert!(r.status().is_success(), "{}", r.status());

    // The attempt in flight ends (its reply was held 2 s) and is logged; its delivery stays
    // ended. The queued one was free to start the moment that reply came.
    let log = eventually(&app, &t, &format!("/v1/deliveries/{first}/attempts"), |v| {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["status_code"] == 200)
    })
    .await;
    let classes: Vec<&Value> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["error_class"])
        .collect();
    assert!(classes.contains(&&json!("endpoint_disabled")), "{log}");
    let d = json_of(&app, &t, &format!("/v1/deliveries/{first}")).await;
    assert_eq!(d["status"], "failed", "an ended delivery came back: {d}");
    // The late attempt is only logged: it decides nothing about the ended delivery.
    assert_eq!(d["last_status_code"], Value::Null, "{d}");

    // The queued delivery is never sent: over a further 1.5 s its log keeps only the ending.
    let deadline = tokio::time::Instant::now() + ms(1500);
    while tokio::time::Instant::now() < deadline {
        let log = attempts(&app, &t, &second).await;
        assert_eq!(log.len(), 1, "{log:?}");
        assert_eq!(log[0]["error_class"], "endpoint_disabled", "{log:?}");
        assert_eq!(rx.received("/ending").len(), 1, "a send after the answer");
        tokio::time::sleep(ms(50)).await;
    }
    let d = json_of(&app, &t, &format!("/v1/deliveries/{second}")).await;
    assert_eq!(d["status"], "failed");
    assert_eq!(oldest_first(&app, &t, &ep.id).await.len(), 2);
}

#[tokio::test]
async fn after_disabling_a_queued_delivery_is_not_sent_and_ends_endpoint_disabled() {
    ending_the_endpoint_sends_nothing_more(false).await;
}

#[tokio::test]
async fn after_deleting_a_queued_delivery_is_not_sent_and_ends_endpoint_disabled() {
    ending_the_endpoint_sends_nothing_more(true).await;
}

/// An endpoint at `slow.test` (resolving to the receiver), whose look-ups are then held until
/// the returned gate opens; one user's delivery is started and waits on its look-up.
async fn a_send_waiting_on_its_look_up(
    app: &TestApp,
    t: &Tenant,
    rx: &Receiver,
) -> (Endpoint, accommador::delivery::guard::LookupGate) {
    let loopback = vec!["127.0.0.1".parse().unwrap()];
    app.lookup.answer("slow.test", vec![loopback.clone()]);
    let ep = endpoint(
        app,
        t,
        &rx.url("/old").replace("127.0.0.1", "slow.test"),
        None,
    )
    .await;
    let gate = app.lookup.hold("slow.test", loopback);
    app.create_user(t, json!({"email": "slow@example.com"}))
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while gate.asked() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the delivery never looked its host up"
        );
        tokio::time::sleep(ms(10)).await;
    }
    (ep, gate)
}

#[tokio::test]
async fn a_send_held_up_by_a_slow_look_up_goes_to_the_url_patched_meanwhile() {
    let app = spawn_app_with(|s| s.retry_schedule = vec![ms(50)]).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let (ep, gate) = a_send_waiting_on_its_look_up(&app, &t, &rx).await;

    patch_url(&app, &t, &ep.id, &rx.url("/new")).await;
    // The resolver answers only now, after the change has answered.
    gate.open();

    let got = rx.wait_for("/new", 1, WAIT).await;
    verify(&ep.secret, &got[0]);
    let d = eventually(
        &app,
        &t,
        &format!("/v1/deliveries?endpoint_id={}", ep.id),
        |v| v["data"][0]["status"] == "succeeded",
    )
    .await;
    let id = d["data"][0]["id"].as_str().unwrap();
    assert_eq!(attempts(&app, &t, id).await.len(), 1);
    assert!(rx.received("/old").is_empty(), "sent to the removed URL");
}

#[tokio::test]
async fn a_send_held_up_by_a_slow_look_up_is_not_made_after_a_delete() {
    let app = spawn_app_with(|s| s.retry_schedule = vec![ms(50)]).await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let (ep, gate) = a_send_waiting_on_its_look_up(&app, &t, &rx).await;

    let r = app.delete(&t, &format!("/v1/endpoints/{}", ep.id)).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    gate.open();

    let log = failed_attempts(&app, &t, &ep.id).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["error_class"], "endpoint_disabled");
    // Given time to go out, had it been sent.
    tokio::time::sleep(ms(300)).await;
    assert!(rx.received("/old").is_empty(), "sent to a deleted endpoint");
}

/// `PATCH`es the endpoint's URL; the change has answered when this returns.
async fn patch_url(app: &TestApp, t: &Tenant, endpoint_id: &str, url: &str) {
    let r = app
        .patch(
            t,
            &format!("/v1/endpoints/{endpoint_id}"),
            &json!({ "url": url }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}
