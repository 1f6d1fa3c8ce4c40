//! No organization can read or change another's data: every route answers 404 for another
//! organization's IDs, and nothing changes.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, problem, spawn_app};

#[tokio::test]
async fn another_organizations_key_sees_nothing_and_changes_nothing() {
    let app = spawn_app().await;
    let acme = app.create_org("Acme").await;
    let globex = app.create_org("Globex").await;
    let user = app
        .create_user(&acme, json!({"email": "a@acme.test", "name": "A"}))
        .await;
    let uid = user["id"].as_str().unwrap();
    let events = app.all_events(&acme, "").await;
    let eid = events[0]["id"].as_str().unwrap();

    problem(
        app.get(&globex, &format!("/v1/users/{uid}")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.patch(
            &globex,
            &format!("/v1/users/{uid}"),
            &json!({"name": "pwned"}),
        )
        .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.delete(&globex, &format!("/v1/users/{uid}")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.get(&globex, &format!("/v1/events/{eid}")).await,
        StatusCode::NOT_FOUND,
    )
    .await;

    let list: Value = app.get(&globex, "/v1/users").await.json().await.unwrap();
    assert_eq!(list["data"], json!([]));
    let list: Value = app.get(&globex, "/v1/events").await.json().await.unwrap();
    assert_eq!(list["data"], json!([]));
    // Another organization's IDs are no cursor here either.
    problem(
        app.get(&globex, &format!("/v1/events?after={eid}")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    problem(
        app.get(&globex, &format!("/v1/users?after={uid}")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;

    // Acme's data is untouched.
    let again: Value = app
        .get(&acme, &format!("/v1/users/{uid}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again, user);
    assert_eq!(app.all_events(&acme, "").await, events);
    // The same email is free in Globex: uniqueness is per organization.
    app.create_user(&globex, json!({"email": "a@acme.test"}))
        .await;
}

#[tokio::test]
async fn requests_without_a_valid_key_are_unauthorized() {
    let app = spawn_app().await;
    let acme = app.create_org("Acme").await;
    let cases = [
        None,
        Some("Bearer".to_owned()),
        Some("Bearer acm_not-a-real-key".to_owned()),
        Some(format!("Bearer {}x", acme.key)),
        Some(format!("Basic {}", acme.key)),
        Some(format!("Bearer {ADMIN_TOKEN}")),
    ];
    for auth in cases {
        for (method, path) in [
            ("GET", "/v1/users"),
            ("POST", "/v1/users"),
            ("GET", "/v1/events"),
        ] {
            let mut req = app.client.request(method.parse().unwrap(), app.url(path));
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            let r = req
                .json(&json!({"email": "x@example.com"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
            problem(r, StatusCode::UNAUTHORIZED).await;
        }
    }
    let list: Value = app.get(&acme, "/v1/users").await.json().await.unwrap();
    assert_eq!(
        list["data"],
        json!([]),
        "an unauthorized request created a user"
    );
}
