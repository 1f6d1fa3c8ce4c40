//! `accommador listen`: a local webhook receiver for development. It accepts POSTs on any path,
//! verifies the Standard Webhooks signature when given the endpoint's secret, prints each
//! request, and answers 204 (or 401 when the signature does not verify).
//!
//! With `--forward-to URL` it relays each delivery that verified (or every one, without a
//! secret) to the integrator's app with the same `webhook-*` headers and body, like
//! `stripe listen --forward-to`: it prints the app's answer and gives that status and body back
//! to the sender, so the server's delivery log shows what the app said (502 when the app could
//! not be reached).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use accommador_webhooks::{Secret, Verifier, WebhookHeaders};
use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Clone, Debug)]
struct Listener {
    verifier: Option<Verifier>,
    json: bool,
    forward: Option<Forward>,
}

/// Where verified deliveries are relayed.
#[derive(Clone, Debug)]
struct Forward {
    url: String,
    client: reqwest::Client,
}

/// What the app answered a relayed delivery (its body cut to 4 KiB), or why it could not.
#[derive(Debug)]
enum Relayed {
    Answered {
        status: StatusCode,
        body: Bytes,
        took: Duration,
    },
    Failed(String),
}

/// The headers a delivery carries that the app needs to verify and process it.
const RELAYED_HEADERS: [&str; 5] = [
    "content-type",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

const RELAYED_BODY_LIMIT: usize = 4096;

/// Serves until SIGINT/SIGTERM.
pub async fn run(
    port: u16,
    secret: Option<&str>,
    json: bool,
    forward_to: Option<&str>,
) -> anyhow::Result<()> {
    let verifier = secret
        .map(|s| Secret::parse(s).map(Verifier::new))
        .transpose()
        .context("--secret")?;
    let forward = forward_to.map(forward_target).transpose()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    eprintln!(
        "listening on http://{} ({}{})",
        listener.local_addr()?,
        if verifier.is_some() {
            "verifying signatures"
        } else {
            "not verifying: pass --secret whsec_… to check signatures"
        },
        forward
            .as_ref()
            .map(|f| format!("; forwarding to {}", f.url))
            .unwrap_or_default()
    );
    let app = axum::Router::new().fallback(receive).with_state(Listener {
        verifier,
        json,
        forward,
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::startup::shutdown_signal())
        .await
        .context("serving")
}

fn forward_target(url: &str) -> anyhow::Result<Forward> {
    let parsed =
        url::Url::parse(url).with_context(|| format!("--forward-to {url:?} is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        anyhow::bail!("--forward-to {url:?} must be an http:// or https:// URL with a host");
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the forwarding client")?;
    Ok(Forward {
        url: parsed.to_string(),
        client,
    })
}

impl Forward {
    async fn relay(&self, headers: &HeaderMap, body: Bytes) -> Relayed {
        let mut req = self.client.post(&self.url).body(body);
        for name in RELAYED_HEADERS {
            if let Some(value) = headers.get(name) {
                req = req.header(name, value.as_bytes());
            }
        }
        let started = Instant::now();
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) => return Relayed::Failed(error_chain(&e)),
        };
        let status = StatusCode::from_u16(resp.status().as_u16())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match resp.bytes().await {
            Ok(mut body) => {
                body.truncate(RELAYED_BODY_LIMIT);
                Relayed::Answered {
                    status,
                    body,
                    took: started.elapsed(),
                }
            }
            Err(e) => Relayed::Failed(error_chain(&e)),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

async fn receive(State(l): State<Listener>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
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
    let relayed = match (&l.forward, &verdict) {
        (Some(forward), None | Some(Ok(()))) => Some(forward.relay(&headers, body.clone()).await),
        _ => None,
    };
    let forwarded = relayed.as_ref().map(|r| match r {
        Relayed::Answered { status, body, took } => json!({
            "status": status.as_u16(),
            "body": String::from_utf8_lossy(body),
            "duration_ms": took.as_millis() as u64,
        }),
        Relayed::Failed(error) => json!({ "error": error }),
    });
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
                "forwarded": forwarded,
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
        if let (Some(forward), Some(relayed)) = (&l.forward, &relayed) {
            match relayed {
                Relayed::Answered { status, body, took } => println!(
                    "  -> {} answered {status} in {} ms {}",
                    forward.url,
                    took.as_millis(),
                    String::from_utf8_lossy(body)
                ),
                Relayed::Failed(e) => println!("  -> {} failed: {e}", forward.url),
            }
        }
    }
    match (verdict, relayed) {
        (Some(Err(_)), _) => StatusCode::UNAUTHORIZED.into_response(),
        (_, Some(Relayed::Answered { status, body, .. })) => (status, body).into_response(),
        (_, Some(Relayed::Failed(_))) => StatusCode::BAD_GATEWAY.into_response(),
        (_, None) => StatusCode::NO_CONTENT.into_response(),
    }
}
