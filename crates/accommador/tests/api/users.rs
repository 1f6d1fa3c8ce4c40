//! The user lifecycle through HTTP and the events it produces.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{problem, spawn_app};

#[tokio::test]
async fn create_update_delete_produce_versioned_events_in_commit_order() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;

    let created = app
        .create_user(
            &t,
            json!({"email": "Ada@Example.com", "name": "Ada", "attributes": {"plan": "free"}}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("usr_"));
    assert_eq!(created["email"], "Ada@Example.com");
    assert_eq!(created["version"], 1);
    assert_eq!(created["attributes"], json!({"plan": "free"}));
    assert_eq!(created["created_at"], created["updated_at"]);
    assert!(created.get("deleted_at").is_none());

    let r = app
        .patch(
            &t,
            &format!("/v1/users/{id}"),
            &json!({"email": "ada@lovelace.dev", "attributes": {"plan": "pro"}}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let updated: Value = r.json().await.unwrap();
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["email"], "ada@lovelace.dev");
    assert_eq!(updated["name"], "Ada");
    assert_eq!(updated["created_at"], created["created_at"]);

    let fetched: Value = app
        .get(&t, &format!("/v1/users/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, updated);

    let r = app.delete(&t, &format!("/v1/users/{id}")).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    problem(
        app.get(&t, &format!("/v1/users/{id}")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.delete(&t, &format!("/v1/users/{id}")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.patch(&t, &format!("/v1/users/{id}"), &json!({"name": "x"}))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;

    let events = app.all_events(&t, "").await;
    let types: Vec<_> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["user.created", "user.updated", "user.deleted"]);
    let versions: Vec<_> = events
        .iter()
        .map(|e| e["data"]["user"]["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3]);
    for e in &events {
        assert!(e["id"].as_str().unwrap().starts_with("evt_"));
        assert_eq!(e["data"]["user"]["id"], id.as_str());
    }

    // created: the user as created, no previous_attributes
    assert_eq!(events[0]["data"]["user"], created);
    assert_eq!(events[0]["timestamp"], created["created_at"]);
    assert!(events[0]["data"].get("previous_attributes").is_none());
    // updated: the user after, and the old values of exactly the changed fields
    assert_eq!(events[1]["data"]["user"], updated);
    assert_eq!(
        events[1]["data"]["previous_attributes"],
        json!({"email": "Ada@Example.com", "attributes": {"plan": "free"}})
    );
    assert_eq!(events[1]["timestamp"], updated["updated_at"]);
    // deleted: the last state, version + 1, deleted_at
    let last = &events[2]["data"]["user"];
    assert_eq!(last["email"], "ada@lovelace.dev");
    assert_eq!(last["attributes"], json!({"plan": "pro"}));
    assert_eq!(last["deleted_at"], events[2]["timestamp"]);
    assert!(events[2]["data"].get("previous_attributes").is_none());

    // timestamps are RFC 3339 UTC with milliseconds
    let ts = events[0]["timestamp"].as_str().unwrap();
    assert_eq!(ts.len(), 24, "{ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.');
}

#[tokio::test]
async fn event_payloads_are_byte_identical_on_every_read() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let user = app
        .create_user(
            &t,
            json!({"email": "b@example.com", "attributes": {"z": 1, "a": [true, null, 2.5]}}),
        )
        .await;
    let events = app.all_events(&t, "").await;
    let id = events[0]["id"].as_str().unwrap();
    let first = app
        .get(&t, &format!("/v1/events/{id}"))
        .await
        .text()
        .await
        .unwrap();
    for _ in 0..3 {
        let again = app
            .get(&t, &format!("/v1/events/{id}"))
            .await
            .text()
            .await
            .unwrap();
        assert_eq!(again, first);
    }
    // The list carries the same bytes as the single read.
    let list = app.get(&t, "/v1/events").await.text().await.unwrap();
    assert!(
        list.contains(&first),
        "list does not embed the stored payload verbatim"
    );
    let parsed: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(parsed["data"]["user"], user);
    // Field order on the wire is fixed: id, type, timestamp, data.
    assert!(first.starts_with(&format!(
        r#"{{"id":"{id}","type":"user.created","timestamp":""#
    )));
}

#[tokio::test]
async fn a_patch_that_changes_nothing_makes_no_version_and_no_event() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let user = app
        .create_user(&t, json!({"email": "c@example.com", "name": "C"}))
        .await;
    let id = user["id"].as_str().unwrap();
    for body in [
        json!({}),
        json!({"name": "C"}),
        json!({"email": "c@example.com", "attributes": {}}),
    ] {
        let r = app.patch(&t, &format!("/v1/users/{id}"), &body).await;
        assert_eq!(r.status(), StatusCode::OK);
        let same: Value = r.json().await.unwrap();
        assert_eq!(same, user, "PATCH {body} changed the user");
    }
    assert_eq!(app.all_events(&t, "").await.len(), 1);

    // Setting the name to null is a change.
    let r = app
        .patch(&t, &format!("/v1/users/{id}"), &json!({"name": null}))
        .await;
    let after: Value = r.json().await.unwrap();
    assert_eq!(after["name"], Value::Null);
    assert_eq!(after["version"], 2);
    let events = app.all_events(&t, "&type=user.updated").await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0]["data"]["previous_attributes"],
        json!({"name": "C"})
    );
}

#[tokio::test]
async fn emails_are_unique_case_insensitively_among_live_users() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let first = app
        .create_user(&t, json!({"email": "dup@example.com"}))
        .await;
    let r = app
        .post(&t, "/v1/users", &json!({"email": "DUP@example.com"}))
        .await;
    problem(r, StatusCode::CONFLICT).await;

    // Updating another user onto the taken email conflicts too, and changes nothing.
    let other = app
        .create_user(&t, json!({"email": "other@example.com"}))
        .await;
    let oid = other["id"].as_str().unwrap();
    let r = app
        .patch(
            &t,
            &format!("/v1/users/{oid}"),
            &json!({"email": "Dup@Example.com"}),
        )
        .await;
    problem(r, StatusCode::CONFLICT).await;
    let unchanged: Value = app
        .get(&t, &format!("/v1/users/{oid}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unchanged, other);

    // Changing the case of one's own email is allowed and is a change.
    let fid = first["id"].as_str().unwrap();
    let r = app
        .patch(
            &t,
            &format!("/v1/users/{fid}"),
            &json!({"email": "Dup@example.com"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // Once deleted, the email is free again.
    assert_eq!(
        app.delete(&t, &format!("/v1/users/{fid}")).await.status(),
        StatusCode::NO_CONTENT
    );
    let again = app
        .create_user(&t, json!({"email": "dup@example.com"}))
        .await;
    assert_ne!(again["id"], first["id"]);
    assert_eq!(again["version"], 1);

    // Another organization may use the same email.
    let t2 = app.create_org("Globex").await;
    app.create_user(&t2, json!({"email": "dup@example.com"}))
        .await;
}

#[tokio::test]
async fn lists_page_oldest_first_and_filter_events_by_type() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let u = app
            .create_user(&t, json!({"email": format!("u{i}@example.com")}))
            .await;
        ids.push(u["id"].as_str().unwrap().to_owned());
    }
    app.delete(&t, &format!("/v1/users/{}", ids[2])).await;
    app.patch(
        &t,
        &format!("/v1/users/{}", ids[4]),
        &json!({"name": "Four"}),
    )
    .await;

    let mut seen = Vec::new();
    let mut path = "/v1/users?limit=3".to_owned();
    loop {
        let page: Value = app.get(&t, &path).await.json().await.unwrap();
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 3);
        seen.extend(data.iter().map(|u| u["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/users?limit=3&after={c}"),
            None => break,
        }
    }
    let expected: Vec<_> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(seen, expected);

    let default_page: Value = app.get(&t, "/v1/users").await.json().await.unwrap();
    assert_eq!(default_page["data"].as_array().unwrap().len(), 6);
    assert_eq!(default_page["next_cursor"], Value::Null);

    assert_eq!(app.all_events(&t, "&type=user.created").await.len(), 7);
    assert_eq!(app.all_events(&t, "&type=user.deleted").await.len(), 1);
    let updated = app.all_events(&t, "&type=user.updated").await;
    assert_eq!(updated.len(), 1);
    assert_eq!(updated[0]["data"]["user"]["name"], "Four");
    let all = app.all_events(&t, "").await;
    assert_eq!(all.len(), 9);

    // An event ID works as a cursor: everything after it, in commit order.
    let third = all[2]["id"].as_str().unwrap();
    let rest: Value = app
        .get(&t, &format!("/v1/events?after={third}"))
        .await
        .json()
        .await
        .unwrap();
    let rest_ids: Vec<_> = rest["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    let expected: Vec<_> = all[3..].iter().map(|e| e["id"].clone()).collect();
    assert_eq!(rest_ids, expected);
}
