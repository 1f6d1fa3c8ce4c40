//! A user change and its event commit together or not at all, and group commit isolates
//! requests: one failing request in a batch fails alone.
//!
//! Failures are injected with a SQLite trigger that aborts the event insert for marked emails,
//! so the failure happens inside the real transaction, after the user row was written.

use std::collections::HashSet;
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, problem, spawn_app};

/// Makes every event insert matching the SQL condition `when` abort its transaction.
async fn fail_events_where(app: &TestApp, when: &str) {
    app.db
        .execute(
            &format!(
                "CREATE TRIGGER fail_marked BEFORE INSERT ON events
                 WHEN {when}
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
            ),
            &format!(
                "CREATE FUNCTION fail_marked() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                   IF {when} THEN RAISE EXCEPTION 'injected failure'; END IF;
                   RETURN NEW;
                 END $$;
                 CREATE TRIGGER fail_marked BEFORE INSERT ON events
                 FOR EACH ROW EXECUTE FUNCTION fail_marked();"
            ),
        )
        .await;
}

#[tokio::test]
async fn a_change_whose_transaction_fails_leaves_neither_row_nor_event() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let keep = app.create_user(&t, json!({"email": "keep@ok.test"})).await;
    fail_events_where(
        &app,
        "NEW.payload LIKE '%@doomed.test%' OR NEW.type = 'user.deleted'",
    )
    .await;

    let p = problem(
        app.post(&t, "/v1/users", &json!({"email": "x@doomed.test"}))
            .await,
        StatusCode::INTERNAL_SERVER_ERROR,
    )
    .await;
    assert!(
        !p["detail"].as_str().unwrap().contains("injected"),
        "5xx bodies must not leak causes"
    );

    let path = format!("/v1/users/{}", keep["id"].as_str().unwrap());
    problem(
        app.patch(&t, &path, &json!({"email": "keep@doomed.test"}))
            .await,
        StatusCode::INTERNAL_SERVER_ERROR,
    )
    .await;
    problem(
        app.delete(&t, &path).await,
        StatusCode::INTERNAL_SERVER_ERROR,
    )
    .await;

    let users: Value = app.get(&t, "/v1/users").await.json().await.unwrap();
    assert_eq!(
        users["data"],
        json!([keep]),
        "the failed create left a row, or the update/delete applied"
    );
    let events = app.all_events(&t, "").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "user.created");
    // The email of the failed create is still free.
    app.create_user(&t, json!({"email": "x@fine.test"})).await;
}

#[tokio::test]
async fn one_failing_request_in_a_batch_fails_alone() {
    let app = Arc::new(spawn_app().await);
    let t = app.create_org("Acme").await;
    fail_events_where(&app, "NEW.payload LIKE '%@doomed.test%'").await;
    let mut emails: Vec<String> = (0..60).map(|i| format!("u{i}@ok.test")).collect();
    emails.push("dup@ok.test".into());
    emails.push("DUP@ok.test".into());
    emails.push("boom@doomed.test".into());

    let mut tasks = Vec::new();
    for email in emails {
        let (app, t) = (app.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let r = app.post(&t, "/v1/users", &json!({ "email": email })).await;
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            (email, status, body)
        }));
    }
    let mut created = HashSet::new();
    let (mut conflicts, mut failures) = (0, 0);
    for task in tasks {
        let (email, status, body) = task.await.unwrap();
        match status {
            StatusCode::CREATED => {
                created.insert(body["id"].as_str().unwrap().to_owned());
            }
            StatusCode::CONFLICT => {
                assert!(email.eq_ignore_ascii_case("dup@ok.test"));
                conflicts += 1;
            }
            StatusCode::INTERNAL_SERVER_ERROR => {
                assert_eq!(email, "boom@doomed.test");
                failures += 1;
            }
            other => panic!("{email}: unexpected {other}"),
        }
    }
    assert_eq!((created.len(), conflicts, failures), (61, 1, 1));

    let stored: HashSet<String> = {
        let list: Value = app
            .get(&t, "/v1/users?limit=500")
            .await
            .json()
            .await
            .unwrap();
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(stored, created);
    let evented: HashSet<String> = app
        .all_events(&t, "&type=user.created")
        .await
        .iter()
        .map(|e| e["data"]["user"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(evented, created);
}

/// A failure that rolls back a whole batch transaction (as an I/O error or a full disk would)
/// must not let any request of that batch commit unanswered or be answered 201 without being
/// stored. Both backends write creations in batches (SQLite's group commit, PostgreSQL's
/// batched intake), so both are tested.
#[tokio::test]
async fn a_batch_that_the_database_rolls_back_commits_nothing_it_did_not_acknowledge() {
    let app = Arc::new(spawn_app().await);
    let t = app.create_org("Acme").await;
    app.db
        .execute(
            "CREATE TRIGGER rollback_all BEFORE INSERT ON events
             WHEN NEW.payload LIKE '%@rollback.test%'
             BEGIN SELECT RAISE(ROLLBACK, 'injected rollback'); END;",
            "CREATE FUNCTION rollback_all() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.payload LIKE '%@rollback.test%' THEN
                 RAISE EXCEPTION 'injected rollback';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER rollback_all BEFORE INSERT ON events
             FOR EACH ROW EXECUTE FUNCTION rollback_all();",
        )
        .await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (app, t) = (app.clone(), t.clone());
        let email = if i == 50 {
            "boom@rollback.test".to_owned()
        } else {
            format!("u{i}@ok.test")
        };
        tasks.push(tokio::spawn(async move {
            let r = app.post(&t, "/v1/users", &json!({ "email": email })).await;
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            (email, status, body)
        }));
    }
    let mut acknowledged = HashSet::new();
    let mut refused = HashSet::new();
    for task in tasks {
        let (email, status, body) = task.await.unwrap();
        match status {
            StatusCode::CREATED => {
                acknowledged.insert(email);
            }
            StatusCode::INTERNAL_SERVER_ERROR => {
                assert!(body["detail"].is_string());
                refused.insert(email);
            }
            other => panic!("{email}: unexpected {other}"),
        }
    }
    assert!(refused.contains("boom@rollback.test"));
    let list: Value = app
        .get(&t, "/v1/users?limit=500")
        .await
        .json()
        .await
        .unwrap();
    let stored: HashSet<String> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        stored, acknowledged,
        "stored users differ from the acknowledged ones"
    );
    assert_eq!(
        app.all_events(&t, "&type=user.created").await.len(),
        acknowledged.len()
    );
    // The writer carries on after the broken batch.
    app.create_user(&t, json!({"email": "after@ok.test"})).await;
}
