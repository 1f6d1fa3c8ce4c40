//! An organization manages its own API keys: creates named ones (shown once), lists them
//! (never the secret), revokes them (a revoked key is refused at once), and cannot lock itself
//! out by revoking its last one. Another organization sees none of it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Tenant, TestApp, error_fields, field_names, problem, spawn_app};

/// Creates a key named `name` with `t`'s key and returns the 201 body.
async fn create_key(app: &TestApp, t: &Tenant, name: &str) -> Value {
    let r = app.post(t, "/v1/api-keys", &json!({ "name": name })).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

/// The tenant that authenticates with a key just created for it.
fn with_key(t: &Tenant, created: &Value) -> Tenant {
    Tenant {
        id: t.id.clone(),
        key: created["api_key"].as_str().unwrap().to_owned(),
    }
}

async fn list_keys(app: &TestApp, t: &Tenant, query: &str) -> Value {
    let r = app.get(t, &format!("/v1/api-keys{query}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

#[tokio::test]
async fn a_key_is_created_listed_without_its_secret_and_revoked() {
    let app = spawn_app().await;
    let first = app.create_org("Acme").await;

    let created = create_key(&app, &first, "  ci deploy ").await;
    let plain = created["api_key"].as_str().unwrap();
    assert!(created["id"].as_str().unwrap().starts_with("key_"));
    assert_eq!(created["name"], "ci deploy");
    let prefix = created["prefix"].as_str().unwrap();
    assert!(prefix.starts_with("acm_") && prefix.len() == 12, "{prefix}");
    assert!(
        plain.starts_with(prefix),
        "the prefix is how the key starts"
    );
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));
    // The new key works like the first one.
    let second = with_key(&first, &created);
    assert_eq!(app.get(&second, "/v1/users").await.status(), StatusCode::OK);

    // Oldest first; the key made with the organization is called `default`; no secret.
    let page = list_keys(&app, &second, "").await;
    let keys = page["data"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["name"], "default");
    assert!(first.key.starts_with(keys[0]["prefix"].as_str().unwrap()));
    assert_eq!(keys[1]["id"], created["id"]);
    assert_eq!(page["next_cursor"], Value::Null);
    for key in keys {
        assert_eq!(field_names(key), ["created_at", "id", "name", "prefix"]);
    }
    let text = app.get(&first, "/v1/api-keys").await.text().await.unwrap();
    assert!(!text.contains(plain) && !text.contains(&first.key));
    // Paged like every list.
    let one = list_keys(&app, &first, "?limit=1").await;
    assert_eq!(one["data"].as_array().unwrap().len(), 1);
    let cursor = one["next_cursor"].as_str().unwrap();
    let rest = list_keys(&app, &first, &format!("?limit=1&after={cursor}")).await;
    assert_eq!(rest["data"][0]["id"], created["id"]);
    assert_eq!(rest["next_cursor"], Value::Null);

    // Revoke the first key with the second: refused at once (this instance answered).
    let first_id = keys[0]["id"].as_str().unwrap();
    // It authenticated a moment ago, so it is in the key cache.
    assert_eq!(app.get(&first, "/v1/users").await.status(), StatusCode::OK);
    let r = app
        .delete(&second, &format!("/v1/api-keys/{first_id}"))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let revoked_at = Instant::now();
    problem(app.get(&first, "/v1/users").await, StatusCode::UNAUTHORIZED).await;
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
    // Gone from the list; revoking it again finds nothing.
    let page = list_keys(&app, &second, "").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    let r = app
        .delete(&second, &format!("/v1/api-keys/{first_id}"))
        .await;
    problem(r, StatusCode::NOT_FOUND).await;
    // A revoked key's ID is still a cursor of this list.
    list_keys(&app, &second, &format!("?after={first_id}")).await;
}

#[tokio::test]
async fn the_last_key_cannot_be_revoked() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let only = list_keys(&app, &t, "").await["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app.delete(&t, &format!("/v1/api-keys/{only}")).await;
    let p = problem(r, StatusCode::CONFLICT).await;
    assert!(p["detail"].as_str().unwrap().contains("last"), "{p}");
    assert_eq!(app.get(&t, "/v1/users").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn two_keys_revoking_each_other_at_once_leave_one() {
    let app = Arc::new(spawn_app().await);
    for round in 0..5 {
        let a = app.create_org(&format!("Race {round}")).await;
        let created = create_key(&app, &a, "b").await;
        let b = with_key(&a, &created);
        let a_id = list_keys(&app, &a, "").await["data"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let b_id = created["id"].as_str().unwrap().to_owned();
        let revoke = |who: Tenant, id: String| {
            let app = app.clone();
            tokio::spawn(async move {
                app.delete(&who, &format!("/v1/api-keys/{id}"))
                    .await
                    .status()
            })
        };
        let (x, y) = (revoke(a.clone(), b_id), revoke(b.clone(), a_id));
        let statuses = [x.await.unwrap(), y.await.unwrap()];
        assert!(
            statuses
                .iter()
                .filter(|s| **s == StatusCode::NO_CONTENT)
                .count()
                <= 1,
            "both revoked: {statuses:?}"
        );
        // Whatever the order, the organization still has a working key.
        let a_works = app.get(&a, "/v1/users").await.status() == StatusCode::OK;
        let b_works = app.get(&b, "/v1/users").await.status() == StatusCode::OK;
        assert!(a_works || b_works, "no key left after {statuses:?}");
    }
}

#[tokio::test]
async fn another_organization_neither_sees_nor_revokes_a_key() {
    let app = spawn_app().await;
    let a = app.create_org("A").await;
    let b = app.create_org("B").await;
    let extra = create_key(&app, &a, "extra").await;
    let a_ids: Vec<Value> = list_keys(&app, &a, "").await["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].clone())
        .collect();
    let b_page = list_keys(&app, &b, "").await;
    assert_eq!(b_page["data"].as_array().unwrap().len(), 1);
    assert!(!a_ids.contains(&b_page["data"][0]["id"]));
    for id in &a_ids {
        let id = id.as_str().unwrap();
        let r = app.delete(&b, &format!("/v1/api-keys/{id}")).await;
        problem(r, StatusCode::NOT_FOUND).await;
        // Nor is it a cursor of B's list.
        let r = app.get(&b, &format!("/v1/api-keys?after={id}")).await;
        let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&p), ["after"]);
    }
    assert_eq!(app.get(&a, "/v1/users").await.status(), StatusCode::OK);
    let extra = with_key(&a, &extra);
    assert_eq!(app.get(&extra, "/v1/users").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_bad_key_name_is_422_naming_the_field() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let cases = [
        (json!({}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": " \t "}), "name"),
        (json!({"name": "k".repeat(201)}), "name"),
        (json!({"name": 7}), "name"),
        (json!({"name": "a\u{0}b"}), "name"),
        (json!({"name": "ok", "scopes": ["all"]}), "scopes"),
    ];
    for (body, field) in cases {
        let r = app.post(&t, "/v1/api-keys", &body).await;
        let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&p), [field], "{body}");
    }
    // 200 characters is the most.
    create_key(&app, &t, &"k".repeat(200)).await;
    // Without a key: 401.
    let r = app
        .client
        .post(app.url("/v1/api-keys"))
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::UNAUTHORIZED).await;
}
