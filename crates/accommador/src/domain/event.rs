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

/// `data` of an erased user's events (DESIGN §10): the user's ID and nothing else.
#[derive(Debug, serde::Serialize)]
struct ErasedData<'a> {
    user: ErasedUser<'a>,
}

#[derive(Debug, serde::Serialize)]
struct ErasedUser<'a> {
    id: &'a str,
    erased: bool,
}

/// What a saved response that showed the user reads after erasure.
pub fn erased_user_body(user_id: &str) -> String {
    serde_json::to_string(&ErasedUser {
        id: user_id,
        erased: true,
    })
    .expect("serialises")
}

/// The erased form of a stored event of `user_id`: the same `id`, `type` and `timestamp`, and
/// `data` `{"user": {"id", "erased": true}}`. `None` if the stored payload is not an event.
pub fn erased_payload(payload: &str, user_id: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Head {
        id: String,
        #[serde(rename = "type")]
        event_type: String,
        timestamp: String,
    }
    #[derive(serde::Serialize)]
    struct Erased<'a> {
        id: &'a str,
        #[serde(rename = "type")]
        event_type: &'a str,
        timestamp: &'a str,
        data: ErasedData<'a>,
    }
    let head: Head = serde_json::from_str(payload).ok()?;
    Some(
        serde_json::to_string(&Erased {
            id: &head.id,
            event_type: &head.event_type,
            timestamp: &head.timestamp,
            data: ErasedData {
                user: ErasedUser {
                    id: user_id,
                    erased: true,
                },
            },
        })
        .expect("serialises"),
    )
}

impl NewEvent {
    /// The `user.deleted` event of a user deleted by erasure, already in erased form: `user`
    /// is the tombstone (its new version and `deleted_at`).
    pub fn erased_deletion(user: &UserRecord) -> NewEvent {
        let id = super::ids::new_id(super::ids::EVENT);
        let occurred_at = user.updated_at;
        let payload = serde_json::to_string(&Event {
            id: id.clone(),
            event_type: EventType::UserDeleted,
            timestamp: occurred_at.to_rfc3339(),
            data: ErasedData {
                user: ErasedUser {
                    id: &user.id,
                    erased: true,
                },
            },
        })
        .expect("events serialise");
        NewEvent {
            id,
            event_type: EventType::UserDeleted,
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

    #[test]
    fn an_erased_event_keeps_id_type_and_time_and_nothing_of_the_user() {
        let user = NewUser::from_json(
            json!({"email": "ada@example.com", "name": "Ada", "attributes": {"plan": "pro"}})
                .as_object()
                .unwrap(),
        )
        .unwrap()
        .into_record("usr_1".into(), Timestamp(1_795_741_323_456));
        let event = NewEvent::for_user(EventType::UserCreated, &user, None);
        let erased = erased_payload(&event.payload, "usr_1").unwrap();
        assert_eq!(
            erased,
            format!(
                r#"{{"id":"{}","type":"user.created","timestamp":"2026-11-27T01:02:03.456Z","data":{{"user":{{"id":"usr_1","erased":true}}}}}}"#,
                event.id
            )
        );
        assert!(!erased.contains("ada") && !erased.contains("pro"));
        // Erasing again changes nothing.
        assert_eq!(erased_payload(&erased, "usr_1").unwrap(), erased);
        let deletion = NewEvent::erased_deletion(&user);
        assert_eq!(
            erased_payload(&deletion.payload, "usr_1").unwrap(),
            deletion.payload
        );
        assert_eq!(erased_payload("not json", "usr_1"), None);
    }
}
