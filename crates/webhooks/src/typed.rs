//! One typed enum over every webhook body, and the call that verifies a request and returns it.
//!
//! [`WebhookEvent`] has a variant per known type (the user events, the operational events and
//! `webhook.test`) and keeps any other type as raw JSON in [`WebhookEvent::Unknown`], so a
//! receiver built today keeps working when the server learns new types. User events come in two
//! forms ([`UserData`]): the user as it was, or, once the user was erased, only its ID.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::payload::{
    DeliveryEventData, EndpointEventData, Event, EventType, TestEventData, UserEventData,
};
use crate::signing::{Verifier, VerifyError, WebhookHeaders};

/// A webhook body of any type, typed where the type is known.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum WebhookEvent {
    /// `user.created`
    UserCreated(Event<UserData>),
    /// `user.updated` (with `previous_attributes`)
    UserUpdated(Event<UserData>),
    /// `user.deleted` (the last state, with `deleted_at`)
    UserDeleted(Event<UserData>),
    /// `endpoint.disabled`
    EndpointDisabled(Event<EndpointEventData>),
    /// `endpoint.enabled`
    EndpointEnabled(Event<EndpointEventData>),
    /// `delivery.failed`
    DeliveryFailed(Event<DeliveryEventData>),
    /// `webhook.test`, sent by `POST /v1/endpoints/{id}/test`
    WebhookTest(Event<TestEventData>),
    /// A type this version of the crate does not know: kept as it came.
    Unknown(UnknownEvent),
}

/// `data` of a user event: the user, or only its ID once erased.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UserData {
    /// The user (and, on `user.updated`, the previous values of what changed).
    Present(UserEventData),
    /// The user's personal data was erased (`POST /v1/users/{id}/erase`, or automatically some
    /// time after deletion): remove what you hold about this user.
    Erased { user: ErasedUser },
}

/// What remains of an erased user in its events: `{"id": "usr_…", "erased": true}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasedUser {
    pub id: String,
    pub erased: bool,
}

impl UserData {
    /// The user's ID, in either form.
    pub fn user_id(&self) -> &str {
        match self {
            UserData::Present(d) => &d.user.id,
            UserData::Erased { user } => &user.id,
        }
    }

    /// The user's version; `None` once erased (an erasure applies whatever you hold).
    pub fn version(&self) -> Option<u64> {
        match self {
            UserData::Present(d) => Some(d.user.version),
            UserData::Erased { .. } => None,
        }
    }
}

/// An event of a type this crate does not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnknownEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub timestamp: String,
    pub data: Value,
}

/// The envelope every body shares, `data` left for the type to decide.
#[derive(Deserialize)]
struct Envelope {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    timestamp: String,
    data: Value,
}

impl WebhookEvent {
    /// Parses a body (the raw bytes received). An unknown `type` is not an error; a known type
    /// whose `data` does not have its shape is.
    pub fn from_slice(body: &[u8]) -> Result<WebhookEvent, serde_json::Error> {
        let e: Envelope = serde_json::from_slice(body)?;
        let Some(known) = EventType::parse(&e.event_type) else {
            return Ok(WebhookEvent::Unknown(UnknownEvent {
                id: e.id,
                event_type: e.event_type,
                timestamp: e.timestamp,
                data: e.data,
            }));
        };
        fn typed<D: serde::de::DeserializeOwned>(
            e: Envelope,
            t: EventType,
        ) -> Result<Event<D>, serde_json::Error> {
            Ok(Event {
                id: e.id,
                event_type: t,
                timestamp: e.timestamp,
                data: serde_json::from_value(e.data)?,
            })
        }
        Ok(match known {
            EventType::UserCreated => WebhookEvent::UserCreated(typed(e, known)?),
            EventType::UserUpdated => WebhookEvent::UserUpdated(typed(e, known)?),
            EventType::UserDeleted => WebhookEvent::UserDeleted(typed(e, known)?),
            EventType::EndpointDisabled => WebhookEvent::EndpointDisabled(typed(e, known)?),
            EventType::EndpointEnabled => WebhookEvent::EndpointEnabled(typed(e, known)?),
            EventType::DeliveryFailed => WebhookEvent::DeliveryFailed(typed(e, known)?),
            EventType::WebhookTest => WebhookEvent::WebhookTest(typed(e, known)?),
        })
    }

    /// `evt_…`: the same as the `webhook-id` header; deduplicate on it.
    pub fn id(&self) -> &str {
        match self {
            WebhookEvent::UserCreated(e)
            | WebhookEvent::UserUpdated(e)
            | WebhookEvent::UserDeleted(e) => &e.id,
            WebhookEvent::EndpointDisabled(e) | WebhookEvent::EndpointEnabled(e) => &e.id,
            WebhookEvent::DeliveryFailed(e) => &e.id,
            WebhookEvent::WebhookTest(e) => &e.id,
            WebhookEvent::Unknown(e) => &e.id,
        }
    }

    /// The wire name of the type, e.g. `user.created` (also for unknown types).
    pub fn event_type(&self) -> &str {
        match self {
            WebhookEvent::UserCreated(e)
            | WebhookEvent::UserUpdated(e)
            | WebhookEvent::UserDeleted(e) => e.event_type.as_str(),
            WebhookEvent::EndpointDisabled(e) | WebhookEvent::EndpointEnabled(e) => {
                e.event_type.as_str()
            }
            WebhookEvent::DeliveryFailed(e) => e.event_type.as_str(),
            WebhookEvent::WebhookTest(e) => e.event_type.as_str(),
            WebhookEvent::Unknown(e) => &e.event_type,
        }
    }

    /// The user data of a `user.*` event.
    pub fn user(&self) -> Option<&UserData> {
        match self {
            WebhookEvent::UserCreated(e)
            | WebhookEvent::UserUpdated(e)
            | WebhookEvent::UserDeleted(e) => Some(&e.data),
            _ => None,
        }
    }
}

/// Why [`Verifier::verify_event`] refused a request.
#[derive(Debug)]
#[non_exhaustive]
pub enum VerifyEventError {
    /// The signature headers are missing or wrong, or the timestamp is out of tolerance: the
    /// request is not from the server (answer 401).
    Signature(VerifyError),
    /// Signed, but the body is not a webhook event or its `id` is not the `webhook-id` (answer
    /// 400).
    Body(String),
}

impl fmt::Display for VerifyEventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyEventError::Signature(e) => write!(f, "signature rejected: {e}"),
            VerifyEventError::Body(e) => write!(f, "bad webhook body: {e}"),
        }
    }
}

impl std::error::Error for VerifyEventError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            VerifyEventError::Signature(e) => Some(e),
            VerifyEventError::Body(_) => None,
        }
    }
}

impl From<VerifyError> for VerifyEventError {
    fn from(e: VerifyError) -> Self {
        VerifyEventError::Signature(e)
    }
}

impl Verifier {
    /// Verifies a request (as [`Verifier::verify`]) and returns its typed body. The body is
    /// parsed only after the signature holds.
    pub fn verify_event(
        &self,
        headers: &WebhookHeaders<'_>,
        body: &[u8],
    ) -> Result<WebhookEvent, VerifyEventError> {
        self.verify(headers, body)?;
        parse_signed(headers, body)
    }

    /// [`Verifier::verify_event`] as if the time were `now` (unix seconds).
    pub fn verify_event_at(
        &self,
        now: i64,
        headers: &WebhookHeaders<'_>,
        body: &[u8],
    ) -> Result<WebhookEvent, VerifyEventError> {
        self.verify_at(now, headers, body)?;
        parse_signed(headers, body)
    }
}

fn parse_signed(
    headers: &WebhookHeaders<'_>,
    body: &[u8],
) -> Result<WebhookEvent, VerifyEventError> {
    let event =
        WebhookEvent::from_slice(body).map_err(|e| VerifyEventError::Body(e.to_string()))?;
    if event.id() != headers.id {
        return Err(VerifyEventError::Body(format!(
            "the body's id {:?} is not the webhook-id {:?}",
            event.id(),
            headers.id
        )));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Secret;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn signed(id: &str, body: &str) -> (String, String) {
        let sig = Secret::parse(SECRET)
            .unwrap()
            .sign(id, 1_764_201_600, body.as_bytes());
        (sig, "1764201600".to_owned())
    }

    fn verify(id: &str, body: &str) -> Result<WebhookEvent, VerifyEventError> {
        let (signature, timestamp) = signed(id, body);
        let headers = WebhookHeaders {
            id,
            timestamp: &timestamp,
            signature: &signature,
        };
        Verifier::new(Secret::parse(SECRET).unwrap()).verify_event_at(
            1_764_201_600,
            &headers,
            body.as_bytes(),
        )
    }

    #[test]
    fn every_known_type_comes_back_typed() {
        let user = r#"{"id":"evt_1","type":"user.updated","timestamp":"2026-11-27T01:02:03.456Z","data":{"user":{"id":"usr_1","email":"a@example.com","name":null,"attributes":{},"version":2,"created_at":"2026-11-27T01:00:00.000Z","updated_at":"2026-11-27T01:02:03.456Z"},"previous_attributes":{"email":"old@example.com"}}}"#;
        let WebhookEvent::UserUpdated(e) = verify("evt_1", user).unwrap() else {
            panic!("not user.updated")
        };
        assert_eq!(e.data.version(), Some(2));
        let UserData::Present(d) = &e.data else {
            panic!("erased?")
        };
        assert_eq!(
            d.previous_attributes.as_ref().unwrap()["email"],
            "old@example.com"
        );

        let test = r#"{"id":"evt_2","type":"webhook.test","timestamp":"2026-11-27T01:02:03.456Z","data":{"endpoint_id":"ep_1"}}"#;
        let WebhookEvent::WebhookTest(e) = verify("evt_2", test).unwrap() else {
            panic!("not webhook.test")
        };
        assert_eq!(e.data.endpoint_id, "ep_1");

        let disabled = r#"{"id":"evt_3","type":"endpoint.disabled","timestamp":"2026-11-27T01:02:03.456Z","data":{"endpoint":{"id":"ep_1","url":"https://a.example/h","status":"disabled","disabled_reason":"410"}}}"#;
        assert!(matches!(
            verify("evt_3", disabled).unwrap(),
            WebhookEvent::EndpointDisabled(_)
        ));
    }

    #[test]
    fn an_erased_user_event_reads_as_erased() {
        let body = r#"{"id":"evt_4","type":"user.deleted","timestamp":"2026-11-27T01:02:03.456Z","data":{"user":{"id":"usr_9","erased":true}}}"#;
        let event = verify("evt_4", body).unwrap();
        let data = event.user().unwrap();
        assert_eq!(data.user_id(), "usr_9");
        assert_eq!(data.version(), None);
        assert!(matches!(data, UserData::Erased { .. }));
    }

    #[test]
    fn an_unknown_type_is_kept_as_raw_json() {
        let body = r#"{"id":"evt_5","type":"organization.renamed","timestamp":"2026-11-27T01:02:03.456Z","data":{"name":"New"}}"#;
        let WebhookEvent::Unknown(e) = verify("evt_5", body).unwrap() else {
            panic!("an unknown type was not kept")
        };
        assert_eq!(e.event_type, "organization.renamed");
        assert_eq!(e.data["name"], "New");
    }

    #[test]
    fn bad_signatures_and_bad_bodies_are_told_apart() {
        let body = r#"{"id":"evt_6","type":"user.created","timestamp":"t","data":{}}"#;
        assert!(matches!(
            verify("evt_6", body),
            Err(VerifyEventError::Body(_))
        ));
        let ok =
            r#"{"id":"evt_7","type":"webhook.test","timestamp":"t","data":{"endpoint_id":"ep_1"}}"#;
        assert!(
            matches!(verify("evt_other", ok), Err(VerifyEventError::Body(m)) if m.contains("webhook-id"))
        );
        let (signature, timestamp) = signed("evt_7", ok);
        let headers = WebhookHeaders {
            id: "evt_7",
            timestamp: &timestamp,
            signature: &signature,
        };
        let tampered = ok.replace("ep_1", "ep_2");
        assert!(matches!(
            Verifier::new(Secret::parse(SECRET).unwrap()).verify_event_at(
                1_764_201_600,
                &headers,
                tampered.as_bytes()
            ),
            Err(VerifyEventError::Signature(
                VerifyError::NoMatchingSignature
            ))
        ));
    }
}
