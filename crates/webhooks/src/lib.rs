//! # accommador-webhooks
//!
//! What an integrator needs to consume Accommador's user-lifecycle webhooks, and what the
//! server itself uses to produce them:
//!
//! - [`payload`]: the wire types of a webhook body (and of `GET /v1/events/{id}`), in the exact
//!   field order the server writes them: the `user.*` events, and the operational
//!   `endpoint.disabled`, `endpoint.enabled` and `delivery.failed` events an endpoint receives
//!   only when it lists them.
//! - [`signing`]: Standard Webhooks v1 signatures: the `whsec_…` endpoint [`Secret`], signing
//!   each attempt, and the [`Verifier`] a receiver runs on the `webhook-*` headers.
//!
//! The crate has no async runtime and does no I/O, so it fits any receiver.

pub mod payload;
pub mod signing;

pub use payload::{
    Delivery, DeliveryEventData, EndpointEventData, EndpointState, Event, EventType, User,
    UserEventData,
};
pub use signing::{
    HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, Secret, SecretError, TOLERANCE_SECS, Verifier,
    VerifyError, WebhookHeaders, sign,
};
