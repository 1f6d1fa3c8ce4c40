//! Data has a lifetime (DESIGN §10): retention purges expired events with their deliveries and
//! attempts, keeps those still pending, and keeps cursors working; erasure leaves no byte of a
//! user's personal data in the database, on both backends.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::helpers::{Tenant, TestApp, TestDb, spawn_app_with};
use super::receiver::{Receiver, Reply};
use super::{WAIT, endpoint, json_of, verify};

/// Polls `check` until it holds, failing with `what` after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status_of(app: &TestApp, t: &Tenant, path: &str) -> StatusCode {
    app.get(t, path).await.status()
}

async fn deliveries_of(app: &TestApp, t: &Tenant, event_id: &str) -> Vec<Value> {
    json_of(app, t, &format!("/v1/deliveries?event_id={event_id}")).await["data"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn expired_events_go_with_their_deliveries_and_attempts_and_pending_ones_stay() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(|s| {
        s.retention = Duration::from_secs(2);
        s.retry_schedule = vec![Duration::from_secs(3600)];
    })
    .await;
    let t = app.create_org("Acme").await;
    endpoint(&app, &t, &receiver.url("/ok"), None).await;
    // Gets only deletions, and fails: that delivery stays pending (next try in an hour).
    receiver.script("/down", vec![Reply::status(500)]);
    endpoint(&app, &t, &receiver.url("/down"), Some(&["user.deleted"])).await;

    let a = app.create_user(&t, json!({"email": "a@example.com"})).await;
    let id_a = a["id"].as_str().unwrap();
    let r = app
        .patch(&t, &format!("/v1/users/{id_a}"), &json!({"name": "A"}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let b = app.create_user(&t, json!({"email": "b@example.com"})).await;
    let r = app
        .delete(&t, &format!("/v1/users/{}", b["id"].as_str().unwrap()))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    receiver.wait_for("/ok", 4, WAIT).await;
    receiver.wait_for("/down", 1, WAIT).await;
    let events = app.all_events(&t, "").await;
    let ids: Vec<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 4);
    let first_delivery = deliveries_of(&app, &t, &ids[0]).await;
    assert_eq!(first_delivery.len(), 1);
    let first_delivery = first_delivery[0]["id"].as_str().unwrap().to_owned();
    let pending = deliveries_of(&app, &t, &ids[3])
        .await
        .into_iter()
        .find(|d| d["status"] == "pending")
        .expect("the deletion's delivery to /down is pending");

    eventually(
        Duration::from_secs(20),
        "the oldest event is purged",
        || {
            let path = format!("/v1/events/{}", ids[0]);
            let (app, t) = (&app, &t);
            async move { status_of(app, t, &path).await == StatusCode::NOT_FOUND }
        },
    )
    .await;
    // The three events whose deliveries ended are gone, with their deliveries and attempts.
    eventually(
        Duration::from_secs(10),
        "the ended events are purged",
        || {
            let (app, t, ids) = (&app, &t, &ids);
            async move {
                for id in &ids[..3] {
                    if status_of(app, t, &format!("/v1/events/{id}")).await != StatusCode::NOT_FOUND
                    {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    assert_eq!(
        status_of(&app, &t, &format!("/v1/deliveries/{first_delivery}")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of(
            &app,
            &t,
            &format!("/v1/deliveries/{first_delivery}/attempts")
        )
        .await,
        StatusCode::NOT_FOUND
    );
    // The deletion has a pending delivery: it stays, and so do all of its deliveries.
    assert_eq!(
        status_of(&app, &t, &format!("/v1/events/{}", ids[3])).await,
        StatusCode::OK
    );
    let kept = json_of(
        &app,
        &t,
        &format!("/v1/deliveries/{}", pending["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(kept["status"], "pending");
    assert_eq!(deliveries_of(&app, &t, &ids[3]).await.len(), 2);

    // A poller whose cursor names a purged event carries on with the next event kept.
    let c = app.create_user(&t, json!({"email": "c@example.com"})).await;
    let page = json_of(&app, &t, &format!("/v1/events?after={}", ids[0])).await;
    let listed: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed[0], ids[3], "{page}");
    assert_eq!(listed.len(), 2, "{page}");
    assert_eq!(page["data"][1]["data"]["user"]["id"], c["id"]);
    // A cursor that never named an event (one made now) is still refused.
    let unknown = accommador::domain::ids::new_id("evt_");
    let r = app.get(&t, &format!("/v1/events?after={unknown}")).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let metrics = app.metrics().await;
    let purged = metrics
        .lines()
        .find(|l| l.starts_with("accommador_purged_rows_total{table=\"events\"}"))
        .unwrap_or_else(|| panic!("no purge counter in /metrics:\n{metrics}"));
    let n: f64 = purged.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 3.0, "{purged}");
    assert!(metrics.contains("accommador_oldest_event_age_seconds"));
}

const EMAIL: &str = "zebulon.erase-me@example.com";
const NAME: &str = "Zebulon Quuxworth";
const PLAN: &str = "plan-violet-7731";
const NEW_PLAN: &str = "plan-amber-4409";
const KEPT_EMAIL: &str = "kept.person-5521@example.com";

/// Waits until none of `values` is left in the test's database, failing with where they are.
async fn wait_until_gone(db: &TestDb, values: &[&str], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let found = find_in_database(db, values).await;
        if found.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still in the database after {limit:?}: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Where each of `values` still appears in the test's database: byte offsets in the SQLite
/// file and its write-ahead log, or `table.column` of every text column on PostgreSQL.
async fn find_in_database(db: &TestDb, values: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    if db.is_postgres() {
        let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let columns = client
            .query(
                "SELECT table_name::text, column_name::text FROM information_schema.columns
                 WHERE table_schema = 'public' AND data_type IN ('text', 'character varying')",
                &[],
            )
            .await
            .unwrap();
        assert!(columns.len() > 10, "text columns found: {}", columns.len());
        for c in columns {
            let (table, column): (String, String) = (c.get(0), c.get(1));
            for v in values {
                let n: i64 = client
                    .query_one(
                        &format!("SELECT count(*) FROM {table} WHERE strpos({column}, $1) > 0"),
                        &[v],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if n > 0 {
                    found.push(format!("{v} in {table}.{column}"));
                }
            }
        }
    } else {
        let path = db.url.trim_start_matches("sqlite://").to_owned();
        for file in [path.clone(), format!("{path}-wal")] {
            let bytes = std::fs::read(&file).unwrap_or_default();
            for v in values {
                if bytes.windows(v.len()).any(|w| w == v.as_bytes()) {
                    found.push(format!("{v} in {file}"));
                }
            }
        }
    }
    found
}

#[tokio::test]
async fn erasure_leaves_no_byte_of_the_user_in_the_database() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(|s| s.retry_schedule = vec![Duration::from_secs(3600)]).await;
    let t = app.create_org("Acme").await;
    // A receiver that echoes what it was sent, so the attempt log holds the email too.
    receiver.default_reply(Reply::status(200).body(format!("welcome {EMAIL} on {PLAN}")));
    let echo = endpoint(&app, &t, &receiver.url("/echo"), None).await;
    // And one that fails: its deliveries are pending when the erasure comes.
    receiver.script(
        "/down",
        vec![Reply::status(500), Reply::status(500), Reply::status(500)],
    );
    endpoint(&app, &t, &receiver.url("/down"), None).await;

    let r = app
        .client
        .post(app.url("/v1/users"))
        .bearer_auth(&t.key)
        .header("idempotency-key", "signup-zebulon")
        .json(&json!({"email": EMAIL, "name": NAME, "attributes": {"plan": PLAN}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let user: Value = r.json().await.unwrap();
    let id = user["id"].as_str().unwrap().to_owned();
    let r = app
        .patch(
            &t,
            &format!("/v1/users/{id}"),
            &json!({"attributes": {"plan": NEW_PLAN}}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    receiver.wait_for("/echo", 2, WAIT).await;
    // From now on the receiver echoes nothing of that user (it answers another user's events).
    receiver.default_reply(Reply::status(200).body("welcome back"));
    let kept = app
        .create_user(&t, json!({"email": KEPT_EMAIL, "name": "Kept Person"}))
        .await;
    receiver.wait_for("/echo", 3, WAIT).await;
    receiver.wait_for("/down", 3, WAIT).await;
    let values = [EMAIL, NAME, PLAN, NEW_PLAN];
    assert!(
        !find_in_database(&app.db, &values).await.is_empty(),
        "the search finds the values before the erasure"
    );

    let r = app
        .post(&t, &format!("/v1/users/{id}/erase"), &json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"id": id, "erased": true})
    );
    assert_eq!(
        status_of(&app, &t, &format!("/v1/users/{id}")).await,
        StatusCode::NOT_FOUND
    );

    // The deletion goes out, already erased.
    let got = receiver.wait_for("/echo", 4, WAIT).await;
    let deletion: Value = serde_json::from_slice(&got[3].body).unwrap();
    assert_eq!(deletion["type"], "user.deleted");
    assert_eq!(
        deletion["data"],
        json!({"user": {"id": id, "erased": true}})
    );
    verify(&echo.secret, &got[3]);

    // Every stored event of the user reads erased, and the pending deliveries of the earlier
    // ones ended `erased`; the deletion's own delivery to /down is still its to make.
    eventually(WAIT, "every event of the user is erased", || {
        let (app, t, id) = (&app, &t, &id);
        async move {
            let events = app.all_events(t, &format!("&user_id={id}")).await;
            events.len() == 3
                && events
                    .iter()
                    .all(|e| e["data"] == json!({"user": {"id": id, "erased": true}}))
        }
    })
    .await;
    let events = app.all_events(&t, &format!("&user_id={id}")).await;
    for (i, event) in events.iter().enumerate() {
        for d in deliveries_of(&app, &t, event["id"].as_str().unwrap()).await {
            let attempts = json_of(
                &app,
                &t,
                &format!("/v1/deliveries/{}/attempts", d["id"].as_str().unwrap()),
            )
            .await;
            for a in attempts["data"].as_array().unwrap() {
                let body = a["response_body"].as_str().unwrap();
                assert!(body.is_empty() || body == "welcome back", "{a}");
            }
            let last = attempts["data"].as_array().unwrap().last().cloned();
            if d["endpoint_id"] != echo.id.as_str() && i < 2 {
                assert_eq!(d["status"], "failed", "{d}");
                assert_eq!(last.unwrap()["error_class"], "erased", "{d}");
            } else if i == 2 {
                assert_ne!(
                    last.map(|a| a["error_class"].clone()),
                    Some(json!("erased"))
                );
            }
        }
    }
    // The saved response of the creation is erased too; its key still answers.
    let r = app
        .client
        .post(app.url("/v1/users"))
        .bearer_auth(&t.key)
        .header("idempotency-key", "signup-zebulon")
        .json(&json!({"email": EMAIL, "name": NAME, "attributes": {"plan": PLAN}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"id": id, "erased": true})
    );

    // No byte of it is left in the database files (or any text column); the other user is.
    wait_until_gone(&app.db, &values, Duration::from_secs(20)).await;
    assert!(!find_in_database(&app.db, &[KEPT_EMAIL]).await.is_empty());
    let still = json_of(
        &app,
        &t,
        &format!("/v1/users/{}", kept["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(still["email"], KEPT_EMAIL);

    // Erasing again, or another organization's user, or nobody.
    let r = app
        .post(&t, &format!("/v1/users/{id}/erase"), &json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(app.all_events(&t, &format!("&user_id={id}")).await.len(), 3);
    let other = app.create_org("Other").await;
    let r = app
        .post(
            &other,
            &format!("/v1/users/{}/erase", kept["id"].as_str().unwrap()),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let nobody = accommador::domain::ids::new_id("usr_");
    let r = app
        .post(&t, &format!("/v1/users/{nobody}/erase"), &json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn deleted_users_are_erased_automatically_after_the_setting() {
    let app = spawn_app_with(|s| s.erase_deleted_after = Duration::from_secs(1)).await;
    let t = app.create_org("Acme").await;
    let user = app
        .create_user(
            &t,
            json!({"email": EMAIL, "name": NAME, "attributes": {"plan": PLAN}}),
        )
        .await;
    let id = user["id"].as_str().unwrap().to_owned();
    let live = app.create_user(&t, json!({"email": KEPT_EMAIL})).await;
    let r = app.delete(&t, &format!("/v1/users/{id}")).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let deleted = app.all_events(&t, &format!("&user_id={id}")).await;
    assert_eq!(
        deleted[1]["data"]["user"]["email"], EMAIL,
        "not erased at once"
    );

    eventually(
        Duration::from_secs(15),
        "the deleted user is erased",
        || {
            let (app, t, id) = (&app, &t, &id);
            async move {
                app.all_events(t, &format!("&user_id={id}"))
                    .await
                    .iter()
                    .all(|e| e["data"] == json!({"user": {"id": id, "erased": true}}))
            }
        },
    )
    .await;
    wait_until_gone(&app.db, &[EMAIL, NAME, PLAN], Duration::from_secs(20)).await;
    // A live user is never erased by the timer.
    let still = json_of(
        &app,
        &t,
        &format!("/v1/users/{}", live["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(still["email"], KEPT_EMAIL);
}

#[tokio::test]
async fn an_event_with_more_deliveries_than_one_step_holds_is_purged_over_several() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(|s| s.retention = Duration::from_secs(2)).await;
    let t = app.create_org("Acme").await;
    // More deliveries for one event than a purge step takes (about 1,000 rows).
    let endpoints = 1_200;
    for i in 0..endpoints {
        endpoint(&app, &t, &receiver.url(&format!("/e{i}")), None).await;
    }
    let user = app.create_user(&t, json!({"email": "a@example.com"})).await;
    // Read now, while its deliveries are pending and keep it whole: once they have all
    // succeeded it is two seconds from being purged.
    let event = app.all_events(&t, "").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(event, {
        let events = app
            .all_events(&t, &format!("&user_id={}", user["id"].as_str().unwrap()))
            .await;
        events[0]["id"].as_str().unwrap().to_owned()
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.all().len() < endpoints {
        assert!(
            Instant::now() < deadline,
            "{} deliveries",
            receiver.all().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually(
        Duration::from_secs(30),
        "the event and every delivery go",
        || {
            let (app, t, event) = (&app, &t, &event);
            async move {
                status_of(app, t, &format!("/v1/events/{event}")).await == StatusCode::NOT_FOUND
                    && json_of(app, t, &format!("/v1/deliveries?event_id={event}")).await["data"]
                        == json!([])
            }
        },
    )
    .await;
    // Nothing of it is left to list.
    let left = json_of(&app, &t, "/v1/deliveries?limit=500").await;
    assert_eq!(left["data"], json!([]), "{left}");
}
