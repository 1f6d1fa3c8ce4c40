//! Events: the payload of a user change, serialised once when the change commits. Those bytes
//! are what `GET /v1/events` returns and what every delivery attempt sends and signs.

use accommador_webhooks::{Event, EventType, UserEventData};
use serde_json::{Map, Value};

use super::Timestamp;
use super::user::UserRecord;

/// An event about to be written beside the change that caused it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub id: String,
    pub event_type: EventType,
    pub user_id: String,
    pub user_version: u64,
    pub occurred_at: Timestamp,
    /// The exact body, fixed now.
    pub payload: String,
}

impl NewEvent {
    /// The event for `user` (already in its new state) changed at `user.updated_at`.
    pub fn for_user(
        event_type: EventType,
        user: &UserRecord,
        previous_attributes: Option<Map<String, Value>>,
    ) -> NewEvent {
        let id = super::ids::new_id(super::ids::EVENT);
        let occurred_at = user.updated_at;
        let event = Event {
            id: id.clone(),
            event_type,
            timestamp: occurred_at.to_rfc3339(),
            data: UserEventData {
                user: user.to_wire(),
                previous_attributes,
            },
        };
        let payload = serde_json::to_string(&event).expect("events serialise");
        NewEvent {
            id,
            event_type,
            user_id: user.id.clone(),
            user_version: user.version,
            occurred_at,
            payload,
        }
    }
}

/// A `webhook.test` event for one endpoint: its ID and its payload bytes.
pub fn test_event(endpoint_id: &str, now: Timestamp) -> (String, String) {
    let id = super::ids::new_id(super::ids::EVENT);
    let payload = serde_json::to_string(&Event {
        id: id.clone(),
        event_type: EventType::WebhookTest,
        timestamp: now.to_rfc3339(),
        data: accommador_webhooks::payload::TestEventData {
            endpoint_id: endpoint_id.to_owned(),
        },
    })
    .expect("events serialise");
    (id, payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::user::NewUser;
    use serde_json::json;

    #[test]
    fn a_created_event_is_the_webhook_body() {
        let user = NewUser::from_json(json!({"email": "a@b.co"}).as_object().unwrap())
            .unwrap()
            .into_record("usr_1".into(), Timestamp(1_795_741_323_456));
        let event = NewEvent::for_user(EventType::UserCreated, &user, None);
        let body: Value = serde_json::from_str(&event.payload).unwrap();
        assert_eq!(
            body,
            json!({
                "id": event.id,
                "type": "user.created",
                "timestamp": "2026-11-27T01:02:03.456Z",
                "data": {"user": {
                    "id": "usr_1", "email": "a@b.co", "name": null, "attributes": {},
                    "version": 1,
                    "created_at": "2026-11-27T01:02:03.456Z",
                    "updated_at": "2026-11-27T01:02:03.456Z"
                }}
            })
        );
        assert!(event.payload.starts_with(r#"{"id":"evt_"#));
    }
}
