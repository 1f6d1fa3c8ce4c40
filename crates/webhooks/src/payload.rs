//! Wire types of the webhook body.
//!
//! The server serialises an event once, when the change commits, and sends those bytes on every
//! attempt; field order here is the order on the wire. Timestamps are RFC 3339 UTC strings with
//! millisecond precision (`2026-11-27T01:02:03.456Z`), kept as strings so a receiver that
//! re-serialises an event reproduces the same bytes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The event types of the user lifecycle, the operational events about an organization's own
/// endpoints and deliveries, and the test event an operator can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "user.created")]
    UserCreated,
    #[serde(rename = "user.updated")]
    UserUpdated,
    #[serde(rename = "user.deleted")]
    UserDeleted,
    /// An endpoint was disabled (through the API, by a `410 Gone`, or after failing too long).
    #[serde(rename = "endpoint.disabled")]
    EndpointDisabled,
    /// A disabled endpoint was enabled again through the API.
    #[serde(rename = "endpoint.enabled")]
    EndpointEnabled,
    /// A delivery of a user event used up its retry schedule and ended `failed`.
    #[serde(rename = "delivery.failed")]
    DeliveryFailed,
    #[serde(rename = "webhook.test")]
    WebhookTest,
}

impl EventType {
    /// The user-lifecycle types: what an endpoint receives when it names no types.
    pub const USER_EVENTS: [EventType; 3] = [
        EventType::UserCreated,
        EventType::UserUpdated,
        EventType::UserDeleted,
    ];

    /// The operational types: an endpoint receives them only when it lists them, and never
    /// one about itself.
    pub const OPERATIONAL_EVENTS: [EventType; 3] = [
        EventType::EndpointDisabled,
        EventType::EndpointEnabled,
        EventType::DeliveryFailed,
    ];

    /// Every type an endpoint can subscribe to, in the order filters list them.
    pub const SUBSCRIBABLE: [EventType; 6] = [
        EventType::UserCreated,
        EventType::UserUpdated,
        EventType::UserDeleted,
        EventType::EndpointDisabled,
        EventType::EndpointEnabled,
        EventType::DeliveryFailed,
    ];

    /// The name used on the wire, e.g. `user.created`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::UserCreated => "user.created",
            EventType::UserUpdated => "user.updated",
            EventType::UserDeleted => "user.deleted",
            EventType::EndpointDisabled => "endpoint.disabled",
            EventType::EndpointEnabled => "endpoint.enabled",
            EventType::DeliveryFailed => "delivery.failed",
            EventType::WebhookTest => "webhook.test",
        }
    }

    /// Parses a wire name; `None` for anything unknown.
    pub fn parse(s: &str) -> Option<EventType> {
        match s {
            "user.created" => Some(EventType::UserCreated),
            "user.updated" => Some(EventType::UserUpdated),
            "user.deleted" => Some(EventType::UserDeleted),
            "endpoint.disabled" => Some(EventType::EndpointDisabled),
            "endpoint.enabled" => Some(EventType::EndpointEnabled),
            "delivery.failed" => Some(EventType::DeliveryFailed),
            "webhook.test" => Some(EventType::WebhookTest),
            _ => None,
        }
    }

    /// A `user.*` type.
    pub fn is_user_event(self) -> bool {
        Self::USER_EVENTS.contains(&self)
    }

    /// An `endpoint.*` or `delivery.*` type.
    pub fn is_operational(self) -> bool {
        Self::OPERATIONAL_EVENTS.contains(&self)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event: the webhook body, and what `GET /v1/events/{id}` returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event<D> {
    /// `evt_…`; also the `webhook-id` header of every attempt. Deduplicate on it.
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When the change committed (RFC 3339, UTC, milliseconds).
    pub timestamp: String,
    pub data: D,
}

/// `data` of the `user.*` events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserEventData {
    /// The user after the change; for `user.deleted` the last state, with `deleted_at`.
    pub user: User,
    /// On `user.updated` only: the previous values of the top-level fields that changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_attributes: Option<Map<String, Value>>,
}

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// `usr_…`
    pub id: String,
    pub email: String,
    pub name: Option<String>,
    pub attributes: Map<String, Value>,
    /// Starts at 1 and grows by one with every change, deletion included. Drop events whose
    /// version is not above the last one you applied.
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    /// Present only on the user of a `user.deleted` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<String>,
}

/// `data` of the `endpoint.disabled` and `endpoint.enabled` events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointEventData {
    pub endpoint: EndpointState,
}

/// An endpoint's state after the change an `endpoint.*` event reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointState {
    /// `ep_…`
    pub id: String,
    pub url: String,
    /// `enabled` or `disabled`.
    pub status: String,
    /// Why it was disabled (`null` once enabled).
    pub disabled_reason: Option<String>,
}

/// `data` of a `delivery.failed` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryEventData {
    pub delivery: Delivery,
}

/// A delivery as `GET /v1/deliveries/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// `dlv_…`
    pub id: String,
    /// The event that was not delivered.
    pub event_id: String,
    pub event_type: String,
    /// The endpoint it was not delivered to.
    pub endpoint_id: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    pub attempt_count: u32,
    pub next_attempt_at: Option<String>,
    pub last_status_code: Option<u16>,
    pub created_at: String,
    pub updated_at: String,
}

/// `data` of a `webhook.test` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestEventData {
    pub endpoint_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_updated_event_round_trips_byte_for_byte() {
        let body = r#"{"id":"evt_01JDX","type":"user.updated","timestamp":"2026-11-27T01:02:03.456Z","data":{"user":{"id":"usr_1","email":"new@example.com","name":null,"attributes":{"plan":"pro"},"version":2,"created_at":"2026-11-27T01:00:00.000Z","updated_at":"2026-11-27T01:02:03.456Z"},"previous_attributes":{"email":"old@example.com"}}}"#;
        let event: Event<UserEventData> = serde_json::from_str(body).unwrap();
        assert_eq!(event.event_type, EventType::UserUpdated);
        assert_eq!(event.data.user.version, 2);
        assert_eq!(serde_json::to_string(&event).unwrap(), body);
    }

    #[test]
    fn event_types_parse_their_own_names() {
        for t in EventType::SUBSCRIBABLE
            .into_iter()
            .chain([EventType::WebhookTest])
        {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            let wire = serde_json::to_string(&t).unwrap();
            assert_eq!(wire, format!("\"{}\"", t.as_str()));
        }
        assert_eq!(EventType::parse("user.exploded"), None);
        assert!(EventType::USER_EVENTS.iter().all(|t| !t.is_operational()));
        assert!(
            EventType::OPERATIONAL_EVENTS
                .iter()
                .all(|t| !t.is_user_event())
        );
        assert!(
            !EventType::WebhookTest.is_user_event() && !EventType::WebhookTest.is_operational()
        );
    }

    #[test]
    fn operational_events_read_back_as_the_server_writes_them() {
        let body = r#"{"id":"evt_1","type":"endpoint.disabled","timestamp":"2026-11-27T01:02:03.456Z","data":{"endpoint":{"id":"ep_1","url":"https://a.example/h","status":"disabled","disabled_reason":"the endpoint answered 410 Gone"}}}"#;
        let event: Event<EndpointEventData> = serde_json::from_str(body).unwrap();
        assert_eq!(event.event_type, EventType::EndpointDisabled);
        assert_eq!(serde_json::to_string(&event).unwrap(), body);
        let body = r#"{"id":"evt_2","type":"delivery.failed","timestamp":"2026-11-27T01:02:03.456Z","data":{"delivery":{"id":"dlv_1","event_id":"evt_0","event_type":"user.created","endpoint_id":"ep_1","status":"failed","attempt_count":3,"next_attempt_at":null,"last_status_code":500,"created_at":"2026-11-27T01:00:00.000Z","updated_at":"2026-11-27T01:02:03.456Z"}}}"#;
        let event: Event<DeliveryEventData> = serde_json::from_str(body).unwrap();
        assert_eq!(event.data.delivery.attempt_count, 3);
        assert_eq!(serde_json::to_string(&event).unwrap(), body);
    }
}
