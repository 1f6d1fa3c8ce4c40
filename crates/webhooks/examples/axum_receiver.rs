//! A complete Rust receiver with the `axum` extractor:
//!
//! ```sh
//! WEBHOOK_SECRET=whsec_… cargo run -p accommador-webhooks --example axum_receiver --features axum
//! accommador endpoints create --url http://127.0.0.1:3000/webhooks   # (allow private targets)
//! ```
//!
//! Each verified event is processed once (by `webhook-id`) and user events never go back to an
//! older version. A bad signature is answered 401 and a bad body 400 by the extractor itself.

use std::sync::{Arc, Mutex};

use accommador_webhooks::extract::VerifiedWebhook;
use accommador_webhooks::{Secret, SeenIds, UserData, UserVersions, Verifier, WebhookEvent};
use axum::extract::{FromRef, State};
use axum::http::StatusCode;

#[derive(Clone)]
struct App {
    verifier: Verifier,
    seen: Arc<Mutex<(SeenIds, UserVersions)>>,
}

impl FromRef<App> for Verifier {
    fn from_ref(app: &App) -> Verifier {
        app.verifier.clone()
    }
}

async fn webhook(State(app): State<App>, VerifiedWebhook(event): VerifiedWebhook) -> StatusCode {
    let mut guard = app.seen.lock().expect("not poisoned");
    let (seen, versions) = &mut *guard;
    if !seen.first_time(event.id()) {
        return StatusCode::NO_CONTENT; // a redelivery
    }
    if let Some(user) = event.user() {
        if !versions.is_newer(user.user_id(), user.version()) {
            return StatusCode::NO_CONTENT; // stale
        }
        match user {
            UserData::Present(d) => {
                println!("{} {} v{}", event.event_type(), d.user.id, d.user.version)
            }
            UserData::Erased { user } => println!("erase everything about {}", user.id),
        }
    } else if let WebhookEvent::Unknown(e) = &event {
        println!("a new event type: {}", e.event_type);
    } else {
        println!("{} {}", event.event_type(), event.id());
    }
    StatusCode::NO_CONTENT
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = std::env::var("WEBHOOK_SECRET").map_err(|_| "set WEBHOOK_SECRET=whsec_…")?;
    let app = App {
        verifier: Verifier::new(Secret::parse(&secret)?),
        seen: Arc::new(Mutex::new((SeenIds::new(100_000), UserVersions::default()))),
    };
    let router = axum::Router::new()
        .route("/webhooks", axum::routing::post(webhook))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}/webhooks", listener.local_addr()?);
    axum::serve(listener, router).await?;
    Ok(())
}
