//! Webhook endpoints: create, read, list, update, delete; filters, status, secrets, rotation.

use accommador_webhooks::{Secret, Verifier, WebhookHeaders};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{error_fields, problem, spawn_app};

#[tokio::test]
async fn an_endpoint_is_created_with_a_secret_shown_only_where_promised() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let r = app
        .post(
            &t,
            "/v1/endpoints",
            &json!({"url": "https://hooks.example.com/accommador", "description": "CRM sync"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("ep_"));
    assert_eq!(created["url"], "https://hooks.example.com/accommador");
    assert_eq!(
        created["event_types"],
        json!(["user.created", "user.updated", "user.deleted"])
    );
    assert_eq!(created["description"], "CRM sync");
    assert_eq!(created["status"], "enabled");
    assert_eq!(created["disabled_reason"], Value::Null);
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));
    // 32 random bytes, usable by the verifying crate.
    let parsed = Secret::parse(secret).unwrap();
    let body = br#"{"ok":true}"#;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let sig = parsed.sign("evt_1", now, body);
    let ts = now.to_string();
    let headers = WebhookHeaders {
        id: "evt_1",
        timestamp: &ts,
        signature: &sig,
    };
    Verifier::new(Secret::parse(secret).unwrap())
        .verify(&headers, body)
        .unwrap();

    let fetched: Value = app
        .get(&t, &format!("/v1/endpoints/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        fetched.get("secret").is_none(),
        "GET must not show the secret"
    );
    let mut without_secret = created.clone();
    without_secret.as_object_mut().unwrap().remove("secret");
    assert_eq!(fetched, without_secret);
    let list: Value = app.get(&t, "/v1/endpoints").await.json().await.unwrap();
    assert_eq!(list["data"], json!([without_secret]));
    let shown: Value = app
        .get(&t, &format!("/v1/endpoints/{id}/secret"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown, json!({"secret": secret}));
}

#[tokio::test]
async fn bad_endpoints_are_422_with_the_field_named() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    for (body, fields) in [
        (json!({}), vec!["url"]),
        (json!({"url": "ftp://example.com/"}), vec!["url"]),
        (json!({"url": "https://"}), vec!["url"]),
        (json!({"url": "example.com/hook"}), vec!["url"]),
        (
            json!({"url": "https://a.example/", "event_types": ["user.exploded"]}),
            vec!["event_types"],
        ),
        (
            json!({"url": "https://a.example/", "event_types": []}),
            vec!["event_types"],
        ),
        (
            json!({"url": "https://a.example/", "event_types": ["webhook.test"]}),
            vec!["event_types"],
        ),
        (
            json!({"url": "https://a.example/", "event_types": "user.created"}),
            vec!["event_types"],
        ),
        (
            json!({"url": "https://a.example/", "secret": "whsec_x"}),
            vec!["secret"],
        ),
        (
            json!({"url": "https://a.example/", "description": 5}),
            vec!["description"],
        ),
    ] {
        let p = problem(
            app.post(&t, "/v1/endpoints", &body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(error_fields(&p), fields, "for {body}");
    }
    // A name resolving to a metadata address is refused even where private targets are allowed.
    app.lookup.answer(
        "metadata.test",
        vec![vec!["169.254.169.254".parse().unwrap()]],
    );
    let p = problem(
        app.post(
            &t,
            "/v1/endpoints",
            &json!({"url": "http://metadata.test/"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(error_fields(&p), ["url"]);
    let list: Value = app.get(&t, "/v1/endpoints").await.json().await.unwrap();
    assert_eq!(list["data"], json!([]));
}

#[tokio::test]
async fn endpoints_are_updated_disabled_reenabled_and_deleted() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let e: Value = app
        .post(&t, "/v1/endpoints", &json!({"url": "https://a.example/h"}))
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/v1/endpoints/{}", e["id"].as_str().unwrap());

    let r = app
        .patch(
            &t,
            &path,
            &json!({"event_types": ["user.deleted", "user.created"], "url": "https://b.example/h"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let updated: Value = r.json().await.unwrap();
    assert_eq!(
        updated["event_types"],
        json!(["user.created", "user.deleted"])
    );
    assert_eq!(updated["url"], "https://b.example/h");

    let off: Value = app
        .patch(&t, &path, &json!({"status": "disabled"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(off["status"], "disabled");
    assert!(off["disabled_reason"].as_str().unwrap().contains("API"));
    let on: Value = app
        .patch(&t, &path, &json!({"status": "enabled"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(on["status"], "enabled");
    assert_eq!(on["disabled_reason"], Value::Null);

    let p = problem(
        app.patch(&t, &path, &json!({"status": "paused"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(error_fields(&p), ["status"]);

    assert_eq!(app.delete(&t, &path).await.status(), StatusCode::NO_CONTENT);
    problem(app.get(&t, &path).await, StatusCode::NOT_FOUND).await;
    problem(
        app.get(&t, &format!("{path}/secret")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(app.delete(&t, &path).await, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn rotation_keeps_at_most_one_previous_secret() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let e: Value = app
        .post(&t, "/v1/endpoints", &json!({"url": "https://a.example/h"}))
        .await
        .json()
        .await
        .unwrap();
    let id = e["id"].as_str().unwrap();
    let first = e["secret"].as_str().unwrap().to_owned();

    let r = app
        .post(&t, &format!("/v1/endpoints/{id}/secret/rotate"), &json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let second = r.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(second, first);
    let shown: Value = app
        .get(&t, &format!("/v1/endpoints/{id}/secret"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["secret"], second.as_str());

    let service_store = accommador::store::Store::open(
        &accommador::store::DatabaseUrl::parse(&app.db.url).unwrap(),
        accommador::store::Ownership::Tool,
        2,
    )
    .await
    .unwrap();
    let org = t.id.clone();
    let signing = service_store
        .signing_secrets(org.clone(), id.to_owned())
        .await
        .unwrap();
    assert_eq!(
        signing,
        vec![second.clone(), first.clone()],
        "both sign during the overlap, current first"
    );

    let third = app
        .post(&t, &format!("/v1/endpoints/{id}/secret/rotate"), &json!({}))
        .await
        .json::<Value>()
        .await
        .unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let signing = service_store
        .signing_secrets(org, id.to_owned())
        .await
        .unwrap();
    assert_eq!(
        signing,
        vec![third, second],
        "rotating again ends the oldest secret"
    );
}

#[tokio::test]
async fn another_organization_cannot_see_or_touch_an_endpoint() {
    let app = spawn_app().await;
    let acme = app.create_org("Acme").await;
    let globex = app.create_org("Globex").await;
    let e: Value = app
        .post(
            &acme,
            "/v1/endpoints",
            &json!({"url": "https://a.example/h"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/v1/endpoints/{}", e["id"].as_str().unwrap());
    problem(app.get(&globex, &path).await, StatusCode::NOT_FOUND).await;
    problem(
        app.get(&globex, &format!("{path}/secret")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.post(&globex, &format!("{path}/secret/rotate"), &json!({}))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.patch(&globex, &path, &json!({"status": "disabled"}))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(app.delete(&globex, &path).await, StatusCode::NOT_FOUND).await;
    let list: Value = app
        .get(&globex, "/v1/endpoints")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"], json!([]));
    let mine: Value = app.get(&acme, &path).await.json().await.unwrap();
    assert_eq!(mine["status"], "enabled");
    let secret: Value = app
        .get(&acme, &format!("{path}/secret"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(secret["secret"], e["secret"]);
}

#[tokio::test]
async fn operational_event_types_are_taken_only_when_listed() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let r = app
        .post(
            &t,
            "/v1/endpoints",
            &json!({"url": "https://ops.example/h",
                    "event_types": ["delivery.failed", "endpoint.enabled", "user.deleted",
                                    "endpoint.disabled"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    assert_eq!(
        created["event_types"],
        json!([
            "user.deleted",
            "endpoint.disabled",
            "endpoint.enabled",
            "delivery.failed"
        ])
    );
    let path = format!("/v1/endpoints/{}", created["id"].as_str().unwrap());
    let r = app
        .patch(&t, &path, &json!({"event_types": ["endpoint.disabled"]}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let updated: Value = r.json().await.unwrap();
    assert_eq!(updated["event_types"], json!(["endpoint.disabled"]));
    // null (like an absent list on create) means the user events, never the operational ones.
    let r = app.patch(&t, &path, &json!({"event_types": null})).await;
    let updated: Value = r.json().await.unwrap();
    assert_eq!(
        updated["event_types"],
        json!(["user.created", "user.updated", "user.deleted"])
    );

    // The events list filters by them; the test type is not listed, so not a filter.
    for kind in ["endpoint.disabled", "endpoint.enabled", "delivery.failed"] {
        let r = app.get(&t, &format!("/v1/events?type={kind}")).await;
        assert_eq!(r.status(), StatusCode::OK, "{kind}");
        let r = app
            .get(&t, &format!("/v1/deliveries?event_type={kind}"))
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{kind}");
    }
    let p = problem(
        app.get(&t, "/v1/events?type=webhook.test").await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(error_fields(&p), ["type"]);
}

#[tokio::test]
async fn ordering_is_none_by_default_per_user_on_request_and_checked() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let url = "https://hooks.example.com/ordered";
    let plain: Value = app
        .post(&t, "/v1/endpoints", &json!({"url": url}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(plain["ordering"], "none");
    let r = app
        .post(
            &t,
            "/v1/endpoints",
            &json!({"url": url, "ordering": "per_user"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let ordered: Value = r.json().await.unwrap();
    assert_eq!(ordered["ordering"], "per_user");
    let path = format!("/v1/endpoints/{}", ordered["id"].as_str().unwrap());
    let got: Value = app.get(&t, &path).await.json().await.unwrap();
    assert_eq!(got["ordering"], "per_user");
    let listed: Value = app.get(&t, "/v1/endpoints").await.json().await.unwrap();
    let orderings: Vec<&Value> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["ordering"])
        .collect();
    assert_eq!(orderings, [&json!("none"), &json!("per_user")]);

    // PATCH changes it both ways.
    let r = app.patch(&t, &path, &json!({"ordering": "none"})).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["ordering"], "none");
    let r = app.patch(&t, &path, &json!({"ordering": "per_user"})).await;
    assert_eq!(r.json::<Value>().await.unwrap()["ordering"], "per_user");

    // Anything else is a 422 naming the field, on create and on PATCH, and changes nothing.
    for bad in [
        json!("fifo"),
        json!("PER_USER"),
        json!(1),
        json!(["per_user"]),
    ] {
        let r = app
            .post(&t, "/v1/endpoints", &json!({"url": url, "ordering": bad}))
            .await;
        let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&p), ["ordering"], "{bad}");
        let r = app.patch(&t, &path, &json!({"ordering": bad})).await;
        let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&p), ["ordering"], "{bad}");
    }
    let got: Value = app.get(&t, &path).await.json().await.unwrap();
    assert_eq!(got["ordering"], "per_user");
}

#[tokio::test]
async fn a_rate_limit_is_set_changed_and_cleared_and_bad_ones_are_422() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let url = "https://hooks.example.com/paced";
    for bad in [
        json!(0),
        json!(-5),
        json!(2.5),
        json!("20"),
        json!(true),
        json!(10_001),
    ] {
        let r = app
            .post(&t, "/v1/endpoints", &json!({"url": url, "rate_limit": bad}))
            .await;
        let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&p), ["rate_limit"], "{bad}: {p}");
    }

    // Absent: no limit; current_concurrency is the configured bound, read-only.
    let r = app.post(&t, "/v1/endpoints", &json!({"url": url})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["rate_limit"], Value::Null);
    assert_eq!(e["current_concurrency"], 16);
    let path = format!("/v1/endpoints/{}", e["id"].as_str().unwrap());

    let r = app.patch(&t, &path, &json!({"rate_limit": 50})).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["rate_limit"], 50);
    let got: Value = app.get(&t, &path).await.json().await.unwrap();
    assert_eq!(got["rate_limit"], 50);
    let listed: Value = app.get(&t, "/v1/endpoints").await.json().await.unwrap();
    assert_eq!(listed["data"][0]["rate_limit"], 50);
    assert_eq!(listed["data"][0]["current_concurrency"], 16);

    for bad in [json!(0), json!("fast")] {
        let r = app.patch(&t, &path, &json!({"rate_limit": bad})).await;
        let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&p), ["rate_limit"], "{bad}: {p}");
    }
    let r = app
        .patch(&t, &path, &json!({"current_concurrency": 1}))
        .await;
    let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(error_fields(&p), ["current_concurrency"], "read-only: {p}");

    let r = app.patch(&t, &path, &json!({"rate_limit": null})).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["rate_limit"], Value::Null);
    let got: Value = app.get(&t, &path).await.json().await.unwrap();
    assert_eq!(got["rate_limit"], Value::Null);

    let r = app
        .post(&t, "/v1/endpoints", &json!({"url": url, "rate_limit": 1}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.json::<Value>().await.unwrap()["rate_limit"], 1);
}
