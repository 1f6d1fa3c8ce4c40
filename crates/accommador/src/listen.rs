//! `accommador listen`: a local webhook receiver for development. It accepts POSTs on any path,
//! verifies the Standard Webhooks signature when given the endpoint's secret, prints each
//! request, and answers 204 (or 401 when the signature does not verify).

use std::net::SocketAddr;

use accommador_webhooks::{Secret, Verifier, WebhookHeaders};
use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use serde_json::{Value, json};

#[derive(Clone, Debug)]
struct Listener {
    verifier: Option<Verifier>,
    json: bool,
}

/// Serves until SIGINT/SIGTERM.
pub async fn run(port: u16, secret: Option<&str>, json: bool) -> anyhow::Result<()> {
    let verifier = secret
        .map(|s| Secret::parse(s).map(Verifier::new))
        .transpose()
        .context("--secret")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    eprintln!(
        "listening on http://{} ({})",
        listener.local_addr()?,
        if verifier.is_some() {
            "verifying signatures"
        } else {
            "not verifying: pass --secret whsec_… to check signatures"
        }
    );
    let app = axum::Router::new()
        .fallback(receive)
        .with_state(Listener { verifier, json });
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::startup::shutdown_signal())
        .await
        .context("serving")
}

async fn receive(
    State(l): State<Listener>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let verdict = l.verifier.as_ref().map(|v| {
        WebhookHeaders::from_pairs(headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
            .and_then(|h| v.verify(&h, &body))
    });
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let parsed: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
    if l.json {
        println!(
            "{}",
            json!({
                "path": uri.path(),
                "webhook_id": header("webhook-id"),
                "webhook_timestamp": header("webhook-timestamp"),
                "verified": verdict.as_ref().map(Result::is_ok),
                "error": verdict.as_ref().and_then(|r| r.as_ref().err()).map(ToString::to_string),
                "body": parsed,
            })
        );
    } else {
        let mark = match &verdict {
            None => "unverified".to_owned(),
            Some(Ok(())) => "signature ok".to_owned(),
            Some(Err(e)) => format!("SIGNATURE REJECTED: {e}"),
        };
        println!(
            "POST {} {} {} [{mark}]",
            uri.path(),
            header("webhook-id"),
            parsed.get("type").and_then(Value::as_str).unwrap_or("-"),
        );
        println!(
            "{}",
            serde_json::to_string_pretty(&parsed).unwrap_or_default()
        );
    }
    match verdict {
        Some(Err(_)) => StatusCode::UNAUTHORIZED,
        _ => StatusCode::NO_CONTENT,
    }
}
