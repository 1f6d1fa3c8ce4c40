//! The `axum` extractor in a test app: a signed delivery reaches the handler typed, a bad
//! signature is 401 and never reaches it, a signed body that is not an event is 400.
#![cfg(feature = "axum")]

use std::sync::{Arc, Mutex};

use accommador_webhooks::extract::VerifiedWebhook;
use accommador_webhooks::{Secret, Verifier, WebhookEvent};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn app(got: Arc<Mutex<Vec<String>>>) -> axum::Router {
    let verifier = Verifier::new(Secret::parse(SECRET).unwrap());
    axum::Router::new()
        .route(
            "/webhooks",
            axum::routing::post(move |VerifiedWebhook(event): VerifiedWebhook| async move {
                let what = match &event {
                    WebhookEvent::UserCreated(e) => format!("created {}", e.data.user_id()),
                    WebhookEvent::Unknown(e) => format!("unknown {}", e.event_type),
                    other => other.event_type().to_owned(),
                };
                got.lock().unwrap().push(what);
                StatusCode::NO_CONTENT
            }),
        )
        .with_state(verifier)
}

fn request(id: &str, body: &str, signature: Option<String>) -> Request<Body> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let signature = signature.unwrap_or_else(|| {
        Secret::parse(SECRET)
            .unwrap()
            .sign(id, now, body.as_bytes())
    });
    Request::post("/webhooks")
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", signature)
        .body(Body::from(body.to_owned()))
        .unwrap()
}

async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, String) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_extractor_hands_verified_events_to_the_handler_and_refuses_the_rest() {
    let got = Arc::new(Mutex::new(Vec::new()));
    let app = app(got.clone());
    let created = r#"{"id":"evt_1","type":"user.created","timestamp":"2026-11-27T01:02:03.456Z","data":{"user":{"id":"usr_1","email":"a@example.com","name":null,"attributes":{},"version":1,"created_at":"2026-11-27T01:02:03.456Z","updated_at":"2026-11-27T01:02:03.456Z"}}}"#;
    assert_eq!(
        send(&app, request("evt_1", created, None)).await.0,
        StatusCode::NO_CONTENT
    );

    let future =
        r#"{"id":"evt_2","type":"user.renamed","timestamp":"2026-11-27T01:02:03.456Z","data":{}}"#;
    assert_eq!(
        send(&app, request("evt_2", future, None)).await.0,
        StatusCode::NO_CONTENT
    );

    let forged = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned();
    let (status, text) = send(&app, request("evt_3", created, Some(forged))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    assert!(text.contains("signature"), "{text}");

    let unsigned = Request::post("/webhooks")
        .body(Body::from(created.to_owned()))
        .unwrap();
    assert_eq!(send(&app, unsigned).await.0, StatusCode::UNAUTHORIZED);

    let (status, text) = send(&app, request("evt_4", "not json", None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let (status, text) = send(&app, request("evt_other", created, None)).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the body's id differs: {text}"
    );

    assert_eq!(
        *got.lock().unwrap(),
        ["created usr_1", "unknown user.renamed"],
        "only verified events reach the handler"
    );
}
