//! The `axum` extractor (feature `axum`): a handler that takes [`VerifiedWebhook`] runs only for
//! a request whose signature verifies, and gets the typed event.
//!
//! The [`Verifier`] comes from the router's state (`Verifier: FromRef<S>`). A missing or wrong
//! signature, or a timestamp out of tolerance, is answered `401`; a signed body that is not a
//! webhook event (or is over [`MAX_BODY_BYTES`]) `400`. The answer names the reason, never a
//! secret.

use axum::extract::{FromRef, FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::signing::{Verifier, VerifyError, WebhookHeaders};
use crate::typed::{VerifyEventError, WebhookEvent};

/// The largest body read: the server's bodies are far smaller.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A verified, parsed webhook.
///
/// ```
/// use accommador_webhooks::{Secret, Verifier, WebhookEvent};
/// use accommador_webhooks::extract::VerifiedWebhook;
///
/// async fn hook(VerifiedWebhook(event): VerifiedWebhook) -> &'static str {
///     match event {
///         WebhookEvent::UserCreated(e) => println!("welcome {}", e.data.user_id()),
///         other => println!("{} ignored", other.event_type()),
///     }
///     "ok"
/// }
///
/// let verifier = Verifier::new(Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap());
/// let app: axum::Router = axum::Router::new()
///     .route("/webhooks", axum::routing::post(hook))
///     .with_state(verifier);
/// ```
#[derive(Debug, Clone)]
pub struct VerifiedWebhook(pub WebhookEvent);

/// Why the extractor refused a request.
#[derive(Debug)]
#[non_exhaustive]
pub enum WebhookRejection {
    /// 401: not signed by the server with this endpoint's secret.
    Unauthorized(VerifyError),
    /// 400: signed, but not a webhook event (or unreadable).
    BadRequest(String),
}

impl IntoResponse for WebhookRejection {
    fn into_response(self) -> Response {
        match self {
            WebhookRejection::Unauthorized(e) => {
                (StatusCode::UNAUTHORIZED, format!("signature rejected: {e}")).into_response()
            }
            WebhookRejection::BadRequest(why) => {
                (StatusCode::BAD_REQUEST, format!("bad webhook body: {why}")).into_response()
            }
        }
    }
}

impl<S> FromRequest<S> for VerifiedWebhook
where
    Verifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = WebhookRejection;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = Verifier::from_ref(state);
        let (parts, body) = req.into_parts();
        let headers = WebhookHeaders::from_pairs(
            parts
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_bytes())),
        )
        .map_err(WebhookRejection::Unauthorized)?;
        let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
            .await
            .map_err(|e| WebhookRejection::BadRequest(e.to_string()))?;
        match verifier.verify_event(&headers, &bytes) {
            Ok(event) => Ok(VerifiedWebhook(event)),
            Err(VerifyEventError::Signature(e)) => Err(WebhookRejection::Unauthorized(e)),
            Err(VerifyEventError::Body(why)) => Err(WebhookRejection::BadRequest(why)),
        }
    }
}
