//! Events: the payload of a user change, or of an operational change (an endpoint disabled or
//! enabled, a delivery that ended failed), serialised once when the change commits. Those
//! bytes are what `GET /v1/events` returns and what every delivery attempt sends and signs.

use accommador_webhooks::{
    DeliveryEventData, EndpointEventData, EndpointState, Event, EventType, UserEventData,
};
use serde_json::{Map, Value};

use super::Timestamp;
use super::delivery::{DeliveryRecord, DeliveryStatus, Settled};
use super::endpoint::{EndpointRecord, EndpointStatus};
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

/// An operational event about to be written beside the change that caused it. It is about one
/// endpoint (`about_endpoint`), which fan-out and `recover` never send it to.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationalEvent {
    pub id: String,
    pub event_type: EventType,
    /// The endpoint the event describes (for `delivery.failed`, the failed delivery's).
    pub about_endpoint: String,
    pub occurred_at: Timestamp,
    /// The exact body, fixed now.
    pub payload: String,
}

impl OperationalEvent {
    /// `endpoint.disabled` or `endpoint.enabled`, as `endpoint` now is, changed at `now`.
    pub fn endpoint_status(endpoint: &EndpointRecord, now: Timestamp) -> OperationalEvent {
        let event_type = match endpoint.status {
            EndpointStatus::Enabled => EventType::EndpointEnabled,
            EndpointStatus::Disabled => EventType::EndpointDisabled,
        };
        let data = EndpointEventData {
            endpoint: EndpointState {
                id: endpoint.id.clone(),
                url: endpoint.url.clone(),
                status: endpoint.status.as_str().to_owned(),
                disabled_reason: endpoint.disabled_reason.clone(),
            },
        };
        OperationalEvent::new(event_type, &endpoint.id, now, data)
    }

    /// The `endpoint.*` event a change of status from `before` to `after` reports, if any.
    pub fn for_endpoint_change(
        before: &EndpointRecord,
        after: &EndpointRecord,
    ) -> Option<OperationalEvent> {
        (before.status != after.status)
            .then(|| OperationalEvent::endpoint_status(after, after.updated_at))
    }

    /// `delivery.failed` for `delivery` (as it is after the attempt that ended it).
    pub fn delivery_failed(delivery: &DeliveryRecord) -> OperationalEvent {
        let data = DeliveryEventData {
            delivery: delivery.to_wire(),
        };
        OperationalEvent::new(
            EventType::DeliveryFailed,
            &delivery.endpoint_id,
            delivery.updated_at,
            data,
        )
    }

    fn new(
        event_type: EventType,
        about_endpoint: &str,
        occurred_at: Timestamp,
        data: impl serde::Serialize,
    ) -> OperationalEvent {
        let id = super::ids::new_id(super::ids::EVENT);
        let payload = serde_json::to_string(&Event {
            id: id.clone(),
            event_type,
            timestamp: occurred_at.to_rfc3339(),
            data,
        })
        .expect("events serialise");
        OperationalEvent {
            id,
            event_type,
            about_endpoint: about_endpoint.to_owned(),
            occurred_at,
            payload,
        }
    }
}

/// The types fan-out delivers to the endpoints subscribed to them: user and operational events
/// (a test event is delivered by the `test` call itself, to its one endpoint).
pub fn fanned_out(t: EventType) -> bool {
    t.is_user_event() || t.is_operational()
}

/// Whether an attempt's outcome is reported as `delivery.failed`: the delivery of a user event
/// (never an operational or test one, so operational events cannot feed on themselves) used up
/// its retry schedule. Other endings are not: a `410 Gone` (reported as `endpoint.disabled`),
/// a failed manual retry, and the bulk endings that never pass through an attempt
/// (`endpoint_disabled`, `erased`).
pub fn reports_failure(event_type: &str, settled: &Settled) -> bool {
    settled.applies
        && settled.exhausted
        && settled.status == DeliveryStatus::Failed
        && EventType::parse(event_type).is_some_and(EventType::is_user_event)
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

    fn endpoint(status: EndpointStatus) -> EndpointRecord {
        EndpointRecord {
            id: "ep_1".into(),
            url: "https://a.example/h".into(),
            event_types: crate::domain::endpoint::EventTypeFilter::all(),
            description: "secret plans".into(),
            status,
            disabled_reason: (status == EndpointStatus::Disabled).then(|| "gone".into()),
            ordering: Default::default(),
            created_at: Timestamp(1),
            updated_at: Timestamp(1_795_741_323_456),
            rate_limit: None,
            concurrency: None,
        }
    }

    #[test]
    fn an_endpoint_event_carries_its_id_url_status_and_reason_only() {
        let before = endpoint(EndpointStatus::Enabled);
        let after = endpoint(EndpointStatus::Disabled);
        assert_eq!(
            OperationalEvent::for_endpoint_change(&before, &before),
            None
        );
        let event = OperationalEvent::for_endpoint_change(&before, &after).unwrap();
        assert_eq!(event.event_type, EventType::EndpointDisabled);
        assert_eq!(event.about_endpoint, "ep_1");
        let body: Value = serde_json::from_str(&event.payload).unwrap();
        assert_eq!(
            body,
            json!({
                "id": event.id, "type": "endpoint.disabled",
                "timestamp": "2026-11-27T01:02:03.456Z",
                "data": {"endpoint": {"id": "ep_1", "url": "https://a.example/h",
                                      "status": "disabled", "disabled_reason": "gone"}}
            })
        );
        let back = OperationalEvent::for_endpoint_change(&after, &before).unwrap();
        assert_eq!(back.event_type, EventType::EndpointEnabled);
    }

    #[test]
    fn only_an_exhausted_user_event_delivery_is_reported() {
        let ended = |exhausted| Settled {
            status: DeliveryStatus::Failed,
            next_attempt_at: None,
            spends_retry: false,
            applies: true,
            exhausted,
        };
        assert!(reports_failure("user.created", &ended(true)));
        assert!(!reports_failure("user.created", &ended(false)));
        for t in [
            "endpoint.disabled",
            "endpoint.enabled",
            "delivery.failed",
            "webhook.test",
        ] {
            assert!(!reports_failure(t, &ended(true)), "{t}");
        }
        let late = Settled {
            applies: false,
            ..ended(true)
        };
        assert!(!reports_failure("user.created", &late));
    }

    #[test]
    fn a_delivery_failed_event_is_the_delivery_object() {
        let d = DeliveryRecord {
            id: "dlv_1".into(),
            event_id: "evt_0".into(),
            event_type: "user.created".into(),
            endpoint_id: "ep_1".into(),
            status: DeliveryStatus::Failed,
            attempt_count: 3,
            next_attempt_at: None,
            last_status_code: Some(500),
            created_at: Timestamp(1_795_741_200_000),
            updated_at: Timestamp(1_795_741_323_456),
        };
        let event = OperationalEvent::delivery_failed(&d);
        assert_eq!(event.about_endpoint, "ep_1");
        let body: Value = serde_json::from_str(&event.payload).unwrap();
        assert_eq!(body["type"], "delivery.failed");
        assert_eq!(body["timestamp"], "2026-11-27T01:02:03.456Z");
        assert_eq!(body["data"]["delivery"], d.to_json());
    }
}
