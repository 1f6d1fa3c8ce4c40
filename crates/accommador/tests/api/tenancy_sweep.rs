//! The tenancy sweep: every operation of `/openapi.json`, called with another organization's
//! key and this organization's IDs, behaves as `tenancy.rs` defines, and changes nothing. The
//! calls are generated from the document, so a new route or parameter is swept without
//! touching this file:
//! - an ID in the path answers 404 (every method, with a body the operation would accept);
//! - an ID as `after` answers 422 naming `after` (another organization's ID is no cursor);
//! - an ID as a filter gives an empty list, or a 422 naming the filter where the document
//!   says the filter must name one of the organization's own (`user_id`);
//! - operator routes (admin token) answer 401 to an organization's key.
//!
//! Afterwards everything the owner can read is exactly as before, and its key still works.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Tenant, TestApp, problem, spawn_app};

/// A receiver that answers 204 to everything, so the owner's delivery ends `succeeded` and
/// stays put while the sweep runs.
async fn accepting_receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async { StatusCode::NO_CONTENT });
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hook")
}

async fn json_of(r: reqwest::Response) -> Value {
    let status = r.status();
    let text = r.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: not JSON: {text}"))
}

/// Everything `t` can read about its own data, by path.
async fn everything(
    app: &TestApp,
    t: &Tenant,
    ids: &BTreeMap<&str, String>,
) -> BTreeMap<String, Value> {
    let mut paths = vec![
        "/v1/users?limit=500".to_owned(),
        "/v1/endpoints?limit=500".to_owned(),
        "/v1/events?limit=500".to_owned(),
        "/v1/deliveries?limit=500".to_owned(),
        "/v1/api-keys?limit=500".to_owned(),
        format!("/v1/users/{}", ids["usr"]),
        format!("/v1/endpoints/{}", ids["ep"]),
        format!("/v1/endpoints/{}/secret", ids["ep"]),
        format!("/v1/events/{}", ids["evt"]),
        format!("/v1/deliveries/{}", ids["dlv"]),
        format!("/v1/deliveries/{}/attempts", ids["dlv"]),
    ];
    paths.sort();
    let mut out = BTreeMap::new();
    for path in paths {
        let r = app.get(t, &path).await;
        assert_eq!(r.status(), StatusCode::OK, "the owner reads {path}");
        out.insert(path, json_of(r).await);
    }
    out
}

/// A schema with its `$ref` followed.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap();
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// The `xxx` of a parameter whose pattern is an ID pattern `^xxx_…`.
fn id_prefix(param: &Value) -> Option<&str> {
    let pattern = param["schema"]["pattern"].as_str()?;
    let rest = pattern.strip_prefix('^')?;
    let (prefix, _) = rest.split_once('_')?;
    prefix
        .chars()
        .all(|c| c.is_ascii_lowercase())
        .then_some(prefix)
}

/// A body the operation accepts when the ID is the caller's own: each required property gets a
/// plain value for its type and format; with none required, the first free-text property.
fn sample_body(doc: &Value, op: &Value) -> Option<Value> {
    let schema = op["requestBody"]["content"]["application/json"]["schema"].clone();
    if schema.is_null() {
        return None;
    }
    let schema = resolve(doc, &schema);
    let sample = |prop: &Value| -> Value {
        let prop = resolve(doc, prop);
        match (prop["format"].as_str(), prop["type"].as_str()) {
            (Some("date-time"), _) => json!("2020-01-01T00:00:00Z"),
            (_, Some("boolean")) => json!(false),
            (_, Some("integer")) => json!(1),
            _ => json!("sweep"),
        }
    };
    let mut body = serde_json::Map::new();
    let props = schema["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for name in schema["required"].as_array().into_iter().flatten() {
        let name = name.as_str().unwrap();
        body.insert(name.to_owned(), sample(&props[name]));
    }
    if body.is_empty()
        && let Some((name, _)) = props.iter().find(|(_, p)| {
            let p = resolve(doc, p);
            p["type"] == "string"
                && p.get("enum").is_none()
                && p.get("format").is_none()
                && p.get("pattern").is_none_or(|pat| pat == "^[^\\u0000]*$")
        })
    {
        body.insert(name.clone(), json!("sweep"));
    }
    Some(Value::Object(body))
}

async fn call(
    app: &TestApp,
    t: &Tenant,
    method: &Method,
    path: &str,
    body: Option<&Value>,
) -> reqwest::Response {
    let mut req = app
        .client
        .request(method.clone(), app.url(path))
        .bearer_auth(&t.key);
    if let Some(b) = body {
        req = req.json(b);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn every_route_of_the_document_keeps_organizations_apart() {
    let app = spawn_app().await;
    let acme = app.create_org("Acme").await;
    let globex = app.create_org("Globex").await;
    // Acme owns one of everything.
    let hook = accepting_receiver().await;
    let ep: Value = json_of(
        app.post(&acme, "/v1/endpoints", &json!({"url": hook}))
            .await,
    )
    .await;
    let user = app
        .create_user(&acme, json!({"email": "ada@acme.test", "name": "Ada"}))
        .await;
    let key: Value = json_of(
        app.post(&acme, "/v1/api-keys", &json!({"name": "second"}))
            .await,
    )
    .await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let delivery = loop {
        let list: Value = json_of(app.get(&acme, "/v1/deliveries").await).await;
        if let Some(d) = list["data"].as_array().unwrap().first()
            && d["status"] == "succeeded"
        {
            break d.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no succeeded delivery: {list}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let ids: BTreeMap<&str, String> = [
        ("usr", user["id"].as_str().unwrap().to_owned()),
        ("ep", ep["id"].as_str().unwrap().to_owned()),
        ("evt", delivery["event_id"].as_str().unwrap().to_owned()),
        ("dlv", delivery["id"].as_str().unwrap().to_owned()),
        ("key", key["id"].as_str().unwrap().to_owned()),
        ("org", acme.id.clone()),
    ]
    .into_iter()
    .collect();
    let before = everything(&app, &acme, &ids).await;

    let doc = app.openapi().await;
    let mut calls = 0;
    let mut swept = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let label = format!("{method} {path}");
            let schemes: Vec<&str> = op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s.as_object().unwrap().keys().map(String::as_str))
                .collect();
            let params: Vec<&Value> = op["parameters"].as_array().into_iter().flatten().collect();
            let mut concrete = path.clone();
            for p in params.iter().filter(|p| p["in"] == "path") {
                let prefix = id_prefix(p)
                    .unwrap_or_else(|| panic!("{label}: a path parameter without an ID pattern"));
                let id = ids
                    .get(prefix)
                    .unwrap_or_else(|| panic!("{label}: no fixture for {prefix}_ IDs"));
                concrete = concrete.replace(&format!("{{{}}}", p["name"].as_str().unwrap()), id);
            }
            let body = sample_body(&doc, op);
            if schemes.is_empty() {
                // Health, readiness, metrics: no organization's data behind them.
                continue;
            }
            if schemes == ["admin_token"] {
                let r = call(&app, &globex, &method, &concrete, body.as_ref()).await;
                assert_eq!(
                    r.status(),
                    StatusCode::UNAUTHORIZED,
                    "{label} with an organization's key"
                );
                problem(r, StatusCode::UNAUTHORIZED).await;
                calls += 1;
                swept.push(label);
                continue;
            }
            assert_eq!(schemes, ["api_key"], "{label}: an unknown security scheme");
            if concrete != *path {
                // Another organization's ID in the path.
                let r = call(&app, &globex, &method, &concrete, body.as_ref()).await;
                assert_eq!(
                    r.status(),
                    StatusCode::NOT_FOUND,
                    "{label} with Acme's ID: {}",
                    r.text().await.unwrap()
                );
                calls += 1;
                swept.push(label);
                continue;
            }
            // Another organization's IDs as query parameters, one at a time.
            let mut any = false;
            for p in params.iter().filter(|p| p["in"] == "query") {
                let Some(prefix) = id_prefix(p) else { continue };
                let name = p["name"].as_str().unwrap();
                let id = ids
                    .get(prefix)
                    .unwrap_or_else(|| panic!("{label}: no fixture for {prefix}_ IDs"));
                let target = format!("{path}?{name}={id}");
                let r = call(&app, &globex, &method, &target, body.as_ref()).await;
                let refuses = name == "after"
                    || p["description"]
                        .as_str()
                        .is_some_and(|d| d.contains("(422)"));
                if refuses {
                    let pr = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
                    assert_eq!(pr["errors"][0]["field"], name, "{target}");
                } else {
                    assert_eq!(r.status(), StatusCode::OK, "{target}");
                    let page = json_of(r).await;
                    assert_eq!(
                        page["data"],
                        json!([]),
                        "{target} showed another organization's data"
                    );
                }
                calls += 1;
                any = true;
            }
            if any {
                swept.push(label);
            }
        }
    }
    // Every route that takes an ID was swept (the document has them all).
    for must in [
        "GET /v1/users/{id}",
        "PATCH /v1/users/{id}",
        "DELETE /v1/users/{id}",
        "POST /v1/users/{id}/erase",
        "POST /v1/endpoints/{id}/recover",
        "POST /v1/endpoints/{id}/secret/rotate",
        "GET /v1/endpoints/{id}/secret",
        "POST /v1/deliveries/{id}/retry",
        "DELETE /v1/api-keys/{id}",
        "GET /v1/deliveries",
        "GET /v1/events",
        "DELETE /v1/organizations/{id}",
    ] {
        assert!(
            swept.iter().any(|s| s == must),
            "{must} was not swept: {swept:?}"
        );
    }
    eprintln!(
        "tenancy sweep: {calls} calls over {} operations",
        swept.len()
    );

    // Acme's data is exactly as it was, and its key still works.
    assert_eq!(everything(&app, &acme, &ids).await, before);
    let r = app.get(&acme, "/v1/users").await;
    assert_eq!(r.status(), StatusCode::OK);
}
