//! Bad input gets a clear problem+json naming what is wrong, and loses or changes nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_TOKEN, Tenant, TestApp, error_fields, problem, spawn_app, spawn_app_with,
};

async fn post_raw(
    app: &TestApp,
    t: &Tenant,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url("/v1/users"))
        .bearer_auth(&t.key)
        .body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.send().await.unwrap()
}

async fn assert_nothing_stored(app: &TestApp, t: &Tenant) {
    let users: Value = app.get(t, "/v1/users").await.json().await.unwrap();
    assert_eq!(users["data"], json!([]), "a rejected request stored a user");
    assert!(
        app.all_events(t, "").await.is_empty(),
        "a rejected request wrote an event"
    );
}

#[tokio::test]
async fn malformed_json_is_400_and_other_content_types_are_415() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    for body in [
        &b"{\"email\": "[..],
        b"not json",
        b"",
        b"{\"email\":\"a@b.co\"} trailing",
    ] {
        problem(
            post_raw(&app, &t, Some("application/json"), body.to_vec()).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let r = post_raw(&app, &t, ct, br#"{"email":"a@b.co"}"#.to_vec()).await;
        problem(r, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    }
    // A JSON value that is not an object is a validation failure of the body.
    let p = problem(
        post_raw(&app, &t, Some("application/json"), b"[1,2]".to_vec()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(error_fields(&p), ["body"]);
    assert_nothing_stored(&app, &t).await;
}

#[tokio::test]
async fn validation_failures_name_every_bad_field() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (json!({}), vec!["email"]),
        (json!({"email": 42}), vec!["email"]),
        (json!({"email": "not-an-email"}), vec!["email"]),
        (json!({"email": "a@b.co", "name": 7}), vec!["name"]),
        (
            json!({"email": "a@b.co", "attributes": [1]}),
            vec!["attributes"],
        ),
        (
            json!({"email": "a@b.co", "attributes": "x"}),
            vec!["attributes"],
        ),
        (json!({"email": "a@b.co", "role": "admin"}), vec!["role"]),
        (
            json!({"email": "a@b.co", "name": "x".repeat(257)}),
            vec!["name"],
        ),
        (
            json!({"email": false, "name": 1, "extra": 1}),
            vec!["extra", "email", "name"],
        ),
        (
            json!({"email": "a@b.co", "attributes": {"blob": "x".repeat(16 * 1024)}}),
            vec!["attributes"],
        ),
    ];
    for (body, fields) in cases {
        let p = problem(
            app.post(&t, "/v1/users", &body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(error_fields(&p), fields, "for {body}");
        for e in p["errors"].as_array().unwrap() {
            assert!(!e["detail"].as_str().unwrap().is_empty());
        }
    }
    // Just under the attribute limit is fine.
    let fits = "x".repeat(16 * 1024 - 20);
    app.create_user(
        &t,
        json!({"email": "fits@b.co", "attributes": {"blob": fits}}),
    )
    .await;

    let user = app.create_user(&t, json!({"email": "c@b.co"})).await;
    let path = format!("/v1/users/{}", user["id"].as_str().unwrap());
    for (body, fields) in [
        (json!({"email": "nope"}), vec!["email"]),
        (
            json!({"attributes": 5, "version": 9}),
            vec!["version", "attributes"],
        ),
        (json!({"id": "usr_x"}), vec!["id"]),
    ] {
        let p = problem(
            app.patch(&t, &path, &body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(error_fields(&p), fields, "for PATCH {body}");
    }
    let unchanged: Value = app.get(&t, &path).await.json().await.unwrap();
    assert_eq!(unchanged, user);
}

#[tokio::test]
async fn bodies_over_one_mebibyte_are_413() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let body = format!(
        r#"{{"email":"a@b.co","name":"{}"}}"#,
        "x".repeat(1024 * 1024)
    );
    let r = post_raw(&app, &t, Some("application/json"), body.into_bytes()).await;
    problem(r, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert_nothing_stored(&app, &t).await;
}

#[tokio::test]
async fn bad_cursors_limits_and_query_parameters_are_422() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    app.create_user(&t, json!({"email": "a@b.co"})).await;
    for (path, field) in [
        ("/v1/users?limit=0", "limit"),
        ("/v1/users?limit=501", "limit"),
        ("/v1/users?limit=ten", "limit"),
        ("/v1/users?limit=-1", "limit"),
        ("/v1/users?after=usr_nope", "after"),
        ("/v1/users?after=", "after"),
        ("/v1/users?afer=x", "afer"),
        ("/v1/events?after=evt_nope", "after"),
        ("/v1/events?limit=1000", "limit"),
        ("/v1/events?type=user.exploded", "type"),
        ("/v1/events?type=webhook.test", "type"),
    ] {
        let p = problem(app.get(&t, path).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&p), [field], "for {path}");
    }
    let ok: Value = app
        .get(&t, "/v1/users?limit=500")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ok["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn unknown_ids_and_routes_are_404_problems() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    problem(
        app.get(&t, "/v1/users/usr_01JXXXXXXXXXXXXXXXXXXXXXXX")
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.get(&t, "/v1/events/evt_nope").await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(app.get(&t, "/v1/nothing-here").await, StatusCode::NOT_FOUND).await;
    let r = app
        .client
        .put(app.url("/v1/users"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::METHOD_NOT_ALLOWED).await;
}

#[tokio::test]
async fn organization_route_needs_the_admin_token_and_hides_without_one() {
    let app = spawn_app().await;
    let r = app
        .client
        .post(app.url("/v1/organizations"))
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::UNAUTHORIZED).await;
    let r = app
        .client
        .post(app.url("/v1/organizations"))
        .bearer_auth("wrong")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::UNAUTHORIZED).await;
    for (body, field) in [
        (json!({}), "name"),
        (json!({"name": 3}), "name"),
        (json!({"name": "  "}), "name"),
        (json!({"name": "a", "x": 1}), "x"),
    ] {
        let r = app
            .client
            .post(app.url("/v1/organizations"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&p), [field], "for {body}");
    }

    let closed = spawn_app_with(|s| s.admin_token = None).await;
    let r = closed
        .client
        .post(closed.url("/v1/organizations"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::NOT_FOUND).await;
    // Nor does another method reveal that the route exists.
    let r = closed
        .client
        .put(closed.url("/v1/organizations"))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::NOT_FOUND).await;
    let r = app
        .client
        .put(app.url("/v1/organizations"))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::METHOD_NOT_ALLOWED).await;
    // The list needs the token too.
    let r = app.get_anonymous("/v1/organizations").await;
    problem(r, StatusCode::UNAUTHORIZED).await;
}

/// PostgreSQL cannot store U+0000 in text: a NUL in any stored string is refused as invalid
/// input (422 naming the field) on both backends, never a 500, and nothing is stored.
#[tokio::test]
async fn a_nul_character_in_a_stored_string_is_422_naming_the_field() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let nul = "a\u{0}b";

    let p = problem(
        app.post(
            &t,
            "/v1/users",
            &json!({"email": "a@example.com", "name": nul}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(error_fields(&p), ["name"]);
    assert_nothing_stored(&app, &t).await;

    let user = app
        .create_user(&t, json!({"email": "a@example.com", "name": "Ada"}))
        .await;
    let path = format!("/v1/users/{}", user["id"].as_str().unwrap());
    let p = problem(
        app.patch(&t, &path, &json!({"name": nul})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(error_fields(&p), ["name"]);
    let stored: Value = app.get(&t, &path).await.json().await.unwrap();
    assert_eq!(stored["name"], "Ada");
    assert_eq!(stored["version"], 1);

    // Inside attributes a NUL is only an escape in the stored JSON: accepted, and read back.
    let r = app
        .patch(&t, &path, &json!({"attributes": {"k": nul}}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let stored: Value = app.get(&t, &path).await.json().await.unwrap();
    assert_eq!(stored["attributes"]["k"], nul);

    let p = problem(
        app.post(
            &t,
            "/v1/endpoints",
            &json!({"url": "https://hooks.example.com/in", "description": nul}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(error_fields(&p), ["description"]);
    let ep = app
        .create_endpoint(&t, json!({"url": "https://hooks.example.com/in"}))
        .await;
    let p = problem(
        app.patch(
            &t,
            &format!("/v1/endpoints/{}", ep["id"].as_str().unwrap()),
            &json!({"description": nul}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(error_fields(&p), ["description"]);

    let r = app
        .client
        .post(app.url("/v1/organizations"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": nul}))
        .send()
        .await
        .unwrap();
    let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(error_fields(&p), ["name"]);
}
