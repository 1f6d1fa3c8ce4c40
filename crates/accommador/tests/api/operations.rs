//! Health, readiness, metrics, the OpenAPI document and the docs page.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz"] {
        let r = app.get_anonymous(path).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    app.create_user(&t, json!({"email": "m@b.co"})).await;
    let text = app.metrics().await;
    assert!(
        text.lines().any(|l| l.starts_with("http_requests_total{")
            && l.contains(r#"route="/v1/users""#)
            && l.contains(r#"status="201""#)),
        "{text}"
    );
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn the_openapi_document_covers_every_route_and_its_errors() {
    let app = spawn_app().await;
    let doc = app.openapi().await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = &doc["paths"];
    for (path, method, statuses) in [
        (
            "/v1/organizations",
            "post",
            &["201", "401", "404", "422"][..],
        ),
        (
            "/v1/users",
            "post",
            &["201", "400", "401", "409", "413", "415", "422"],
        ),
        ("/v1/users", "get", &["200", "401", "422"]),
        ("/v1/users/{id}", "get", &["200", "401", "404"]),
        ("/v1/users/{id}", "patch", &["200", "404", "409", "422"]),
        ("/v1/users/{id}", "delete", &["204", "404"]),
        ("/v1/endpoints", "post", &["201", "401", "415", "422"]),
        ("/v1/endpoints", "get", &["200", "401", "422"]),
        ("/v1/endpoints/{id}", "get", &["200", "404"]),
        ("/v1/endpoints/{id}", "patch", &["200", "404", "422"]),
        ("/v1/endpoints/{id}", "delete", &["204", "404"]),
        ("/v1/endpoints/{id}/secret", "get", &["200", "404"]),
        ("/v1/endpoints/{id}/secret/rotate", "post", &["200", "404"]),
        (
            "/v1/endpoints/{id}/recover",
            "post",
            &["202", "404", "409", "422"],
        ),
        ("/v1/endpoints/{id}/test", "post", &["202", "404", "409"]),
        ("/v1/deliveries", "get", &["200", "401", "422"]),
        ("/v1/deliveries/{id}", "get", &["200", "404"]),
        ("/v1/deliveries/{id}/attempts", "get", &["200", "404"]),
        ("/v1/deliveries/{id}/retry", "post", &["202", "404", "409"]),
        ("/v1/events", "get", &["200", "401", "422"]),
        ("/v1/events/{id}", "get", &["200", "404"]),
        ("/healthz", "get", &["200"]),
        ("/readyz", "get", &["200", "503"]),
        ("/metrics", "get", &["200"]),
    ] {
        let op = &paths[path][method];
        assert!(op.is_object(), "{method} {path} is missing");
        for s in statuses.iter().chain(&["500"]) {
            assert!(op["responses"][*s].is_object(), "{method} {path} lacks {s}");
        }
    }
    for schema in [
        "User",
        "Event",
        "Endpoint",
        "EndpointSecret",
        "Problem",
        "FieldError",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema} missing"
        );
    }
}

#[tokio::test]
async fn the_docs_page_is_served_offline() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    assert!(html.contains("swagger"), "not the docs page");
    assert!(
        !html.contains("https://"),
        "the docs page loads assets from the network"
    );
}
