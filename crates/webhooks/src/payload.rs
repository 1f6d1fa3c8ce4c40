//! Wire types of the webhook body.
//!
//! The server serialises an event once, when the change commits, and sends those bytes on every
//! attempt; field order here is the order on the wire. Timestamps are RFC 3339 UTC strings with
//! millisecond precision (`2026-11-27T01:02:03.456Z`), kept as strings so a receiver that
//! re-serialises an event reproduces the same bytes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The event types of the user lifecycle, plus the test event an operator can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "user.created")]
    UserCreated,
    #[serde(rename = "user.updated")]
    UserUpdated,
    #[serde(rename = "user.deleted")]
    UserDeleted,
    #[serde(rename = "webhook.test")]
    WebhookTest,
}

impl EventType {
    /// The user-lifecycle types an endpoint can subscribe to.
    pub const USER_EVENTS: [EventType; 3] = [
        EventType::UserCreated,
        EventType::UserUpdated,
        EventType::UserDeleted,
    ];

    /// The name used on the wire, e.g. `user.created`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::UserCreated => "user.created",
            EventType::UserUpdated => "user.updated",
            EventType::UserDeleted => "user.deleted",
            EventType::WebhookTest => "webhook.test",
        }
    }

    /// Parses a wire name; `None` for anything unknown.
    pub fn parse(s: &str) -> Option<EventType> {
        match s {
            "user.created" => Some(EventType::UserCreated),
            "user.updated" => Some(EventType::UserUpdated),
            "user.deleted" => Some(EventType::UserDeleted),
            "webhook.test" => Some(EventType::WebhookTest),
            _ => None,
        }
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
        for t in [
            EventType::UserCreated,
            EventType::UserUpdated,
            EventType::UserDeleted,
            EventType::WebhookTest,
        ] {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("user.exploded"), None);
    }
}
