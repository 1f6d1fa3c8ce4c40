//! `Idempotency-Key` on POST: a retry with the same key and JSON replays the first response and
//! changes nothing; the same key with other JSON is refused.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Tenant, TestApp, error_fields, problem, spawn_app};

async fn post_with_key(app: &TestApp, t: &Tenant, key: &str, body: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/users"))
        .bearer_auth(&t.key)
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

async fn user_count(app: &TestApp, t: &Tenant) -> usize {
    let list: Value = app
        .get(t, "/v1/users?limit=500")
        .await
        .json()
        .await
        .unwrap();
    list["data"].as_array().unwrap().len()
}

#[tokio::test]
async fn a_retry_with_the_same_key_and_json_replays_the_first_response() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let first = post_with_key(
        &app,
        &t,
        "signup-42",
        r#"{"email":"a@b.co","name":"A","attributes":{"x":1,"y":2}}"#,
    )
    .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first_body = first.text().await.unwrap();

    // Same JSON, written with another key order and spacing: the same request.
    let again = post_with_key(
        &app,
        &t,
        "signup-42",
        r#"{ "attributes": {"y":2,"x":1}, "name":"A", "email":"a@b.co" }"#,
    )
    .await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.text().await.unwrap(), first_body);

    // The replay is the original response even after the user changed.
    let id = serde_json::from_str::<Value>(&first_body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .patch(&t, &format!("/v1/users/{id}"), &json!({"name": "B"}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let later = post_with_key(
        &app,
        &t,
        "signup-42",
        r#"{"email":"a@b.co","name":"A","attributes":{"x":1,"y":2}}"#,
    )
    .await;
    assert_eq!(later.text().await.unwrap(), first_body);

    assert_eq!(user_count(&app, &t).await, 1);
    assert_eq!(app.all_events(&t, "&type=user.created").await.len(), 1);
}

#[tokio::test]
async fn the_same_key_with_different_json_is_422_and_changes_nothing() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    assert_eq!(
        post_with_key(&app, &t, "k1", r#"{"email":"a@b.co"}"#)
            .await
            .status(),
        StatusCode::CREATED
    );
    let p = problem(
        post_with_key(&app, &t, "k1", r#"{"email":"other@b.co"}"#).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(error_fields(&p), ["Idempotency-Key"]);
    assert_eq!(user_count(&app, &t).await, 1);

    // Keys belong to one organization: another may use the same key freely.
    let t2 = app.create_org("Globex").await;
    assert_eq!(
        post_with_key(&app, &t2, "k1", r#"{"email":"other@b.co"}"#)
            .await
            .status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn a_conflict_is_replayed_as_it_was() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let taken = app.create_user(&t, json!({"email": "taken@b.co"})).await;
    let first = post_with_key(&app, &t, "k-conflict", r#"{"email":"taken@b.co"}"#).await;
    assert_eq!(first.status(), StatusCode::CONFLICT);
    assert!(
        !first.headers().contains_key("idempotent-replayed"),
        "the first answer is no replay"
    );
    let first_body = first.text().await.unwrap();
    // Even once the email is free, the key answers with the first response.
    app.delete(&t, &format!("/v1/users/{}", taken["id"].as_str().unwrap()))
        .await;
    let again = post_with_key(&app, &t, "k-conflict", r#"{"email":"taken@b.co"}"#).await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.text().await.unwrap(), first_body);
    assert_eq!(user_count(&app, &t).await, 0);
}

#[tokio::test]
async fn concurrent_duplicates_create_one_user() {
    let app = std::sync::Arc::new(spawn_app().await);
    let t = app.create_org("Acme").await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (app, t) = (app.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let r = post_with_key(&app, &t, "race", r#"{"email":"race@b.co"}"#).await;
            let replayed = r.headers().contains_key("idempotent-replayed");
            (r.status(), replayed, r.text().await.unwrap())
        }));
    }
    // One request runs; a duplicate that arrives while it runs is 409, one that arrives after
    // it committed gets its response replayed. Never a second user.
    let mut bodies = Vec::new();
    let mut fresh = 0;
    for task in tasks {
        let (status, replayed, body) = task.await.unwrap();
        match status {
            StatusCode::CREATED => {
                if !replayed {
                    fresh += 1;
                }
                bodies.push(body);
            }
            StatusCode::CONFLICT => assert!(body.contains("idempotency-key-in-progress"), "{body}"),
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(
        fresh, 1,
        "exactly one request may run; the others are replays or 409"
    );
    assert!(bodies.iter().all(|b| *b == bodies[0]), "replays differ");
    assert_eq!(user_count(&app, &t).await, 1);
    assert_eq!(app.all_events(&t, "").await.len(), 1);
}

/// Holds the database's write lock (SQLite) or a lock on the idempotency table (PostgreSQL)
/// from outside the server, so a request with an Idempotency-Key stays running until released.
struct HeldDatabase {
    release: Box<dyn FnOnce() + Send>,
}

impl HeldDatabase {
    async fn hold(app: &TestApp) -> HeldDatabase {
        if app.db.is_postgres() {
            let (client, conn) = tokio_postgres::connect(&app.db.url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client
                .batch_execute("BEGIN; LOCK TABLE idempotency_keys IN ACCESS EXCLUSIVE MODE")
                .await
                .unwrap();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(async move {
                let _ = rx.await;
                client.batch_execute("COMMIT").await.unwrap();
            });
            HeldDatabase {
                release: Box::new(move || {
                    let _ = tx.send(());
                }),
            }
        } else {
            let path = app.db.url.trim_start_matches("sqlite://").to_owned();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
            let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
            std::thread::spawn(move || {
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.busy_timeout(std::time::Duration::from_secs(30))
                    .unwrap();
                conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                ready_tx.send(()).unwrap();
                let _ = release_rx.recv();
                conn.execute_batch("COMMIT").unwrap();
            });
            tokio::task::spawn_blocking(move || ready_rx.recv().unwrap())
                .await
                .unwrap();
            HeldDatabase {
                release: Box::new(move || {
                    let _ = release_tx.send(());
                }),
            }
        }
    }
}

#[tokio::test]
async fn a_duplicate_while_the_first_request_runs_is_409_then_replayed() {
    let app = std::sync::Arc::new(spawn_app().await);
    let t = app.create_org("Acme").await;
    let held = HeldDatabase::hold(&app).await;
    let send = |app: std::sync::Arc<TestApp>, t: Tenant| {
        tokio::spawn(async move {
            let r = post_with_key(&app, &t, "held", r#"{"email":"held@b.co"}"#).await;
            (r.status(), r.text().await.unwrap())
        })
    };
    let mut a = send(app.clone(), t.clone());
    let mut b = send(app.clone(), t.clone());
    // Whichever request claimed the key waits for the database; the other is answered 409
    // at once, while the first is still running.
    let ((status, body), rest) = tokio::select! {
        r = &mut a => (r.unwrap(), b),
        r = &mut b => (r.unwrap(), a),
    };
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let p: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(p["status"], 409);
    assert!(
        p["type"]
            .as_str()
            .unwrap()
            .contains("idempotency-key-in-progress"),
        "{p}"
    );
    (held.release)();
    let (status, first) = rest.await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{first}");
    // Once it has finished, the same request is replayed.
    let again = post_with_key(&app, &t, "held", r#"{"email":"held@b.co"}"#).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert!(again.headers().contains_key("idempotent-replayed"));
    assert_eq!(again.text().await.unwrap(), first);
    assert_eq!(user_count(&app, &t).await, 1);
}

#[tokio::test]
async fn invalid_keys_are_named() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let long = "k".repeat(256);
    for key in ["has space", long.as_str()] {
        let p = problem(
            post_with_key(&app, &t, key, r#"{"email":"a@b.co"}"#).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(error_fields(&p), ["Idempotency-Key"]);
    }
    assert_eq!(user_count(&app, &t).await, 0);
}
