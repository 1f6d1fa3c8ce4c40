//! # accommador-webhooks
//!
//! Receive Accommador's user-lifecycle webhooks: verify each request's Standard Webhooks v1
//! signature, get the event as a typed enum, process it once, and never go back to an older
//! state of a user.
//!
//! ```
//! use accommador_webhooks::{
//!     SeenIds, UserData, UserVersions, Verifier, Secret, WebhookEvent, WebhookHeaders,
//! };
//!
//! // Once, at start: the endpoint's secret (shown when the endpoint was created).
//! let verifier = Verifier::new(Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?);
//! let mut seen = SeenIds::new(100_000);
//! let mut versions = UserVersions::default();
//!
//! // Per request: the raw body bytes and the three `webhook-*` headers, as received.
//! # let body = br#"{"id":"evt_01JDX","type":"user.created","timestamp":"2026-11-27T01:02:03.456Z","data":{"user":{"id":"usr_1","email":"ada@example.com","name":"Ada","attributes":{},"version":1,"created_at":"2026-11-27T01:02:03.456Z","updated_at":"2026-11-27T01:02:03.456Z"}}}"#;
//! # let now = 1_764_201_600;
//! # let signature = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?.sign("evt_01JDX", now, body);
//! # let timestamp = now.to_string();
//! let headers = WebhookHeaders { id: "evt_01JDX", timestamp: &timestamp, signature: &signature };
//! # let event = verifier.verify_event_at(now, &headers, body)?;
//! # /*
//! let event = verifier.verify_event(&headers, body)?; // Err: answer 401 (signature) or 400 (body)
//! # */
//!
//! if !seen.first_time(event.id()) {
//!     return Ok(()); // a redelivery: answer 2xx, do nothing
//! }
//! match &event {
//!     WebhookEvent::UserCreated(e) | WebhookEvent::UserUpdated(e) | WebhookEvent::UserDeleted(e) => {
//!         if !versions.is_newer(e.data.user_id(), e.data.version()) {
//!             return Ok(()); // older than what we have: drop it
//!         }
//!         match &e.data {
//!             UserData::Present(d) => println!("{} is now {}", d.user.id, d.user.email),
//!             UserData::Erased { user } => println!("forget everything about {}", user.id),
//!         }
//!     }
//!     WebhookEvent::DeliveryFailed(e) => println!("{} was not delivered", e.data.delivery.event_id),
//!     other => println!("ignoring {}", other.event_type()), // new types arrive as `Unknown`
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Layout
//!
//! - [`signing`]: the `whsec_…` endpoint [`Secret`], signing each attempt, and the [`Verifier`]
//!   a receiver runs on the `webhook-*` headers.
//! - [`typed`]: [`WebhookEvent`], one enum over every body (user events, the operational
//!   `endpoint.disabled`, `endpoint.enabled` and `delivery.failed`, `webhook.test`, and
//!   [`UnknownEvent`] for types this version does not know), and [`Verifier::verify_event`].
//! - [`payload`]: the wire types in the exact field order the server writes them (the server
//!   serialises through them); [`Event<D>`] is one event with a known `data` shape.
//! - [`receive`]: [`SeenIds`] (idempotency on `webhook-id`) and [`UserVersions`] (drop stale
//!   updates by the user's `version`).
//! - `extract` (feature `axum`): the `VerifiedWebhook` extractor, 401 on a bad signature and
//!   400 on a bad body.
//!
//! Default features have no async runtime and do no I/O, so the crate fits any receiver.

#[cfg(feature = "axum")]
pub mod extract;
pub mod payload;
pub mod receive;
pub mod signing;
pub mod typed;

pub use payload::{
    Delivery, DeliveryEventData, EndpointEventData, EndpointState, Event, EventType, TestEventData,
    User, UserEventData,
};
pub use receive::{SeenIds, UserVersions};
pub use signing::{
    HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, Secret, SecretError, TOLERANCE_SECS, Verifier,
    VerifyError, WebhookHeaders, sign,
};
pub use typed::{ErasedUser, UnknownEvent, UserData, VerifyEventError, WebhookEvent};
