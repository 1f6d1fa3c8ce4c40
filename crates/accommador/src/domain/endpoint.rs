//! Webhook endpoints: the parsed shapes of create and update requests, the stored record, the
//! event-type filter, the delivery ordering policy, and the URL rules (http or https with a
//! host, no credentials).

use accommador_webhooks::EventType;
use serde_json::{Map, Value};

use super::pacing::MAX_RATE_LIMIT;
use super::{FieldError, Timestamp, reject_unknown_fields};

pub const MAX_URL_BYTES: usize = 2048;
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
/// How long a rotated-out secret keeps signing beside the new one.
pub const SECRET_OVERLAP_MS: i64 = 24 * 60 * 60 * 1000;

/// An endpoint URL: absolute `http` or `https` with a host, without user info or fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl(url::Url);

impl EndpointUrl {
    pub fn parse(raw: &str) -> Result<EndpointUrl, &'static str> {
        if raw.len() > MAX_URL_BYTES {
            return Err("must be at most 2048 characters");
        }
        let url = url::Url::parse(raw).map_err(|_| "must be an absolute http(s) URL")?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must use http or https");
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("must have a host");
        }
        // A name is letters, digits, `-`, `_` and dots (IDNs arrive as punycode): the URL
        // parser lets through characters such as `*` that no resolver answers for.
        if let Some(url::Host::Domain(name)) = url.host()
            && !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err("must have a valid host name");
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not contain credentials");
        }
        if url.fragment().is_some() {
            return Err("must not contain a fragment");
        }
        Ok(EndpointUrl(url))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn url(&self) -> &url::Url {
        &self.0
    }
}

/// The event types an endpoint receives: a non-empty set, kept in a fixed order. The default
/// (and "all") is the user event types only; the operational types (`endpoint.*`,
/// `delivery.failed`) are received only by endpoints that list them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTypeFilter(Vec<EventType>);

impl EventTypeFilter {
    /// Every user event type (not the operational ones).
    pub fn all() -> EventTypeFilter {
        EventTypeFilter(EventType::USER_EVENTS.to_vec())
    }

    pub fn contains(&self, t: EventType) -> bool {
        self.0.contains(&t)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|t| t.as_str()).collect()
    }

    /// Parses stored or requested names; unknown names are an error naming them.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut wanted = Vec::new();
        for name in names {
            match EventType::parse(name).filter(|t| EventType::SUBSCRIBABLE.contains(t)) {
                Some(t) => wanted.push(t),
                None => {
                    return Err(format!(
                        "unknown event type {name:?} (use user.created, user.updated, \
                         user.deleted, endpoint.disabled, endpoint.enabled, delivery.failed)"
                    ));
                }
            }
        }
        if wanted.is_empty() {
            return Err("must list at least one event type (omit it for all user events)".into());
        }
        let ordered = EventType::SUBSCRIBABLE
            .into_iter()
            .filter(|t| wanted.contains(t))
            .collect();
        Ok(EventTypeFilter(ordered))
    }

    fn from_json(v: &Value, errors: &mut Vec<FieldError>) -> Option<EventTypeFilter> {
        let Value::Array(items) = v else {
            errors.push(FieldError::new(
                "event_types",
                "must be an array of strings",
            ));
            return None;
        };
        let names: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
        let Some(names) = names else {
            errors.push(FieldError::new(
                "event_types",
                "must be an array of strings",
            ));
            return None;
        };
        match EventTypeFilter::from_names(names) {
            Ok(f) => Some(f),
            Err(detail) => {
                errors.push(FieldError::new("event_types", detail));
                None
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointStatus {
    Enabled,
    Disabled,
}

impl EndpointStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointStatus::Enabled => "enabled",
            EndpointStatus::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Option<EndpointStatus> {
        match s {
            "enabled" => Some(EndpointStatus::Enabled),
            "disabled" => Some(EndpointStatus::Disabled),
            _ => None,
        }
    }
}

/// The order an endpoint receives one user's events in (`"ordering"`).
///
/// `PerUser`: a delivery waits while an earlier one (by the events' commit order) of the same
/// user to the same endpoint is pending, retries and attempts in flight included; other users'
/// deliveries are not held back. A delivery that ends (`succeeded` or `failed`) releases the
/// next one of its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryOrder {
    #[default]
    None,
    PerUser,
}

impl DeliveryOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOrder::None => "none",
            DeliveryOrder::PerUser => "per_user",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryOrder> {
        match s {
            "none" => Some(DeliveryOrder::None),
            "per_user" => Some(DeliveryOrder::PerUser),
            _ => None,
        }
    }

    fn from_json(v: &Value, errors: &mut Vec<FieldError>) -> Option<DeliveryOrder> {
        let parsed = v.as_str().and_then(DeliveryOrder::parse);
        if parsed.is_none() {
            errors.push(FieldError::new(
                "ordering",
                "must be \"none\" or \"per_user\"",
            ));
        }
        parsed
    }
}

/// Why an endpoint was disabled through the API.
pub const DISABLED_BY_API: &str = "disabled through the API";

/// An endpoint as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointRecord {
    pub id: String,
    pub url: String,
    pub event_types: EventTypeFilter,
    pub description: String,
    pub status: EndpointStatus,
    pub disabled_reason: Option<String>,
    pub ordering: DeliveryOrder,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Deliveries per second at most, across all instances (`None`: no limit).
    pub rate_limit: Option<u32>,
    /// The attempts in flight adaptive concurrency allows now, when it holds them below the
    /// configured bound (`None`: at the bound). Read-only.
    pub concurrency: Option<u32>,
}

impl EndpointRecord {
    /// The attempts it may have in flight now, under the configured per-endpoint `bound`.
    pub fn current_concurrency(&self, bound: u32) -> u32 {
        super::pacing::effective(self.concurrency, bound)
    }

    /// The API shape (without the secret); `bound` is `ACCOMMADOR_ENDPOINT_CONCURRENCY`.
    pub fn to_json(&self, bound: u32) -> Value {
        serde_json::json!({
            "id": self.id,
            "url": self.url,
            "event_types": self.event_types.names(),
            "description": self.description,
            "status": self.status.as_str(),
            "disabled_reason": self.disabled_reason,
            "ordering": self.ordering.as_str(),
            "created_at": self.created_at.to_rfc3339(),
            "updated_at": self.updated_at.to_rfc3339(),
            "rate_limit": self.rate_limit,
            "current_concurrency": self.current_concurrency(bound),
        })
    }
}

/// A validated `POST /v1/endpoints` body.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEndpoint {
    pub url: EndpointUrl,
    pub event_types: EventTypeFilter,
    pub description: String,
    pub ordering: DeliveryOrder,
    pub rate_limit: Option<u32>,
}

impl NewEndpoint {
    pub fn from_json(body: &Map<String, Value>) -> Result<NewEndpoint, Vec<FieldError>> {
        let mut errors = Vec::new();
        reject_unknown_fields(
            body,
            &[
                "url",
                "event_types",
                "description",
                "ordering",
                "rate_limit",
            ],
            &mut errors,
        );
        let url = match body.get("url") {
            None => {
                errors.push(FieldError::new("url", "is required"));
                None
            }
            Some(v) => parse_url(v, &mut errors),
        };
        let event_types = match body.get("event_types") {
            None | Some(Value::Null) => Some(EventTypeFilter::all()),
            Some(v) => EventTypeFilter::from_json(v, &mut errors),
        };
        let description = match body.get("description") {
            None | Some(Value::Null) => Some(String::new()),
            Some(v) => parse_description(v, &mut errors),
        };
        let ordering = match body.get("ordering") {
            None | Some(Value::Null) => Some(DeliveryOrder::None),
            Some(v) => DeliveryOrder::from_json(v, &mut errors),
        };
        let rate_limit = match body.get("rate_limit") {
            None => Some(None),
            Some(v) => parse_rate_limit(v, &mut errors),
        };
        match (url, event_types, description, ordering, rate_limit) {
            (Some(url), Some(event_types), Some(description), Some(ordering), Some(rate_limit))
                if errors.is_empty() =>
            {
                Ok(NewEndpoint {
                    url,
                    event_types,
                    description,
                    ordering,
                    rate_limit,
                })
            }
            _ => Err(errors),
        }
    }

    pub fn into_record(self, id: String, now: Timestamp) -> EndpointRecord {
        EndpointRecord {
            id,
            url: self.url.as_str().to_owned(),
            event_types: self.event_types,
            description: self.description,
            status: EndpointStatus::Enabled,
            disabled_reason: None,
            ordering: self.ordering,
            created_at: now,
            updated_at: now,
            rate_limit: self.rate_limit,
            concurrency: None,
        }
    }
}

/// A validated `PATCH /v1/endpoints/{id}` body.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EndpointPatch {
    pub url: Option<EndpointUrl>,
    pub event_types: Option<EventTypeFilter>,
    pub description: Option<String>,
    pub status: Option<EndpointStatus>,
    pub ordering: Option<DeliveryOrder>,
    /// `Some(None)` clears the limit.
    pub rate_limit: Option<Option<u32>>,
}

impl EndpointPatch {
    pub fn from_json(body: &Map<String, Value>) -> Result<EndpointPatch, Vec<FieldError>> {
        let mut errors = Vec::new();
        reject_unknown_fields(
            body,
            &[
                "url",
                "event_types",
                "description",
                "status",
                "ordering",
                "rate_limit",
            ],
            &mut errors,
        );
        let mut patch = EndpointPatch::default();
        if let Some(v) = body.get("url") {
            patch.url = parse_url(v, &mut errors);
        }
        if let Some(v) = body.get("event_types") {
            patch.event_types = match v {
                Value::Null => Some(EventTypeFilter::all()),
                v => EventTypeFilter::from_json(v, &mut errors),
            };
        }
        if let Some(v) = body.get("description") {
            patch.description = match v {
                Value::Null => Some(String::new()),
                v => parse_description(v, &mut errors),
            };
        }
        if let Some(v) = body.get("status") {
            match v.as_str().and_then(EndpointStatus::parse) {
                Some(s) => patch.status = Some(s),
                None => errors.push(FieldError::new(
                    "status",
                    "must be \"enabled\" or \"disabled\"",
                )),
            }
        }
        if let Some(v) = body.get("ordering") {
            patch.ordering = match v {
                Value::Null => Some(DeliveryOrder::None),
                v => DeliveryOrder::from_json(v, &mut errors),
            };
        }
        if let Some(v) = body.get("rate_limit") {
            patch.rate_limit = parse_rate_limit(v, &mut errors);
        }
        if errors.is_empty() {
            Ok(patch)
        } else {
            Err(errors)
        }
    }

    /// The endpoint after this patch, or `None` when nothing changes.
    pub fn apply(&self, e: &EndpointRecord, now: Timestamp) -> Option<EndpointRecord> {
        let mut next = e.clone();
        if let Some(url) = &self.url {
            next.url = url.as_str().to_owned();
        }
        if let Some(types) = &self.event_types {
            next.event_types = types.clone();
        }
        if let Some(d) = &self.description {
            next.description = d.clone();
        }
        if let Some(o) = self.ordering {
            next.ordering = o;
        }
        if let Some(limit) = self.rate_limit {
            next.rate_limit = limit;
        }
        match self.status {
            Some(EndpointStatus::Enabled) => {
                next.status = EndpointStatus::Enabled;
                next.disabled_reason = None;
            }
            Some(EndpointStatus::Disabled) if e.status == EndpointStatus::Enabled => {
                next.status = EndpointStatus::Disabled;
                next.disabled_reason = Some(DISABLED_BY_API.to_owned());
            }
            _ => {}
        }
        if next == *e {
            return None;
        }
        next.updated_at = now;
        Some(next)
    }
}

fn parse_url(v: &Value, errors: &mut Vec<FieldError>) -> Option<EndpointUrl> {
    match v.as_str().map(EndpointUrl::parse) {
        Some(Ok(u)) => Some(u),
        Some(Err(detail)) => {
            errors.push(FieldError::new("url", detail));
            None
        }
        None => {
            errors.push(FieldError::new("url", "must be a string"));
            None
        }
    }
}

/// `null` (no limit) or a whole number of deliveries per second, 1 to [`MAX_RATE_LIMIT`].
fn parse_rate_limit(v: &Value, errors: &mut Vec<FieldError>) -> Option<Option<u32>> {
    if v.is_null() {
        return Some(None);
    }
    // A whole number, also when written `20.0` (JSON Schema's `integer` admits it).
    let whole = v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && (1.0..=f64::from(MAX_RATE_LIMIT)).contains(f))
            .map(|f| f as u64)
    });
    match whole {
        Some(n @ 1..) if n <= u64::from(MAX_RATE_LIMIT) => Some(Some(n as u32)),
        _ => {
            errors.push(FieldError::new(
                "rate_limit",
                format!(
                    "must be null or a whole number of deliveries per second from 1 to {MAX_RATE_LIMIT}"
                ),
            ));
            None
        }
    }
}

fn parse_description(v: &Value, errors: &mut Vec<FieldError>) -> Option<String> {
    match v {
        Value::String(s) if s.contains('\0') => {
            errors.push(FieldError::new("description", super::NO_NUL));
            None
        }
        Value::String(s) if s.chars().count() <= MAX_DESCRIPTION_CHARS => Some(s.clone()),
        Value::String(_) => {
            errors.push(FieldError::new(
                "description",
                "must be at most 1024 characters",
            ));
            None
        }
        _ => {
            errors.push(FieldError::new("description", "must be a string"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn urls_must_be_http_with_a_host_and_no_credentials() {
        assert!(EndpointUrl::parse("https://hooks.example.com/in?x=1").is_ok());
        assert!(EndpointUrl::parse("http://127.0.0.1:9000/").is_ok());
        for bad in [
            "ftp://example.com/",
            "https://",
            "not a url",
            "/relative",
            "https://user:pw@example.com/",
            "https://example.com/#frag",
            "file:///etc/passwd",
        ] {
            assert!(EndpointUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_type_filters_are_ordered_deduplicated_and_checked() {
        let f =
            EventTypeFilter::from_names(["user.deleted", "user.created", "user.created"]).unwrap();
        assert_eq!(f.names(), ["user.created", "user.deleted"]);
        assert!(f.contains(EventType::UserDeleted));
        assert!(!f.contains(EventType::UserUpdated));
        assert!(EventTypeFilter::from_names(["user.exploded"]).is_err());
        assert!(EventTypeFilter::from_names(["webhook.test"]).is_err());
        assert!(EventTypeFilter::from_names([]).is_err());
        let f =
            EventTypeFilter::from_names(["delivery.failed", "user.created", "endpoint.disabled"])
                .unwrap();
        assert_eq!(
            f.names(),
            ["user.created", "endpoint.disabled", "delivery.failed"]
        );
    }

    #[test]
    fn the_default_subscription_is_the_user_events_only() {
        let all = EventTypeFilter::all();
        for t in EventType::OPERATIONAL_EVENTS {
            assert!(!all.contains(t), "{t}");
        }
        for t in EventType::USER_EVENTS {
            assert!(all.contains(t), "{t}");
        }
    }

    #[test]
    fn create_defaults_to_all_user_events() {
        let e = NewEndpoint::from_json(&obj(json!({"url": "https://a.example/h"}))).unwrap();
        assert_eq!(e.event_types, EventTypeFilter::all());
        assert_eq!(e.description, "");
        let errors =
            NewEndpoint::from_json(&obj(json!({"url": 1, "event_types": ["x"], "secret": "s"})))
                .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["secret", "url", "event_types"]);
    }

    #[test]
    fn rate_limits_are_whole_positive_numbers_and_null_clears_them() {
        let e = NewEndpoint::from_json(&obj(
            json!({"url": "https://a.example/h", "rate_limit": 20}),
        ))
        .unwrap()
        .into_record("ep_1".into(), Timestamp(1));
        assert_eq!(e.rate_limit, Some(20));
        for bad in [json!(0), json!(-1), json!(2.5), json!("20"), json!(10_001)] {
            let errors = NewEndpoint::from_json(&obj(
                json!({"url": "https://a.example/h", "rate_limit": bad}),
            ))
            .unwrap_err();
            assert_eq!(errors[0].field, "rate_limit", "{bad}");
        }
        let cleared = EndpointPatch::from_json(&obj(json!({"rate_limit": null})))
            .unwrap()
            .apply(&e, Timestamp(2))
            .unwrap();
        assert_eq!(cleared.rate_limit, None);
        let same = EndpointPatch::from_json(&obj(json!({"rate_limit": 20}))).unwrap();
        assert_eq!(same.apply(&e, Timestamp(3)), None);
        assert_eq!(e.to_json(16)["current_concurrency"], 16);
        assert_eq!(e.to_json(16)["rate_limit"], 20);
    }

    #[test]
    fn patching_status_records_the_reason_and_no_op_patches_change_nothing() {
        let e = NewEndpoint::from_json(&obj(json!({"url": "https://a.example/h"})))
            .unwrap()
            .into_record("ep_1".into(), Timestamp(1));
        let off = EndpointPatch::from_json(&obj(json!({"status": "disabled"})))
            .unwrap()
            .apply(&e, Timestamp(2))
            .unwrap();
        assert_eq!(off.disabled_reason.as_deref(), Some(DISABLED_BY_API));
        let on = EndpointPatch::from_json(&obj(json!({"status": "enabled"})))
            .unwrap()
            .apply(&off, Timestamp(3))
            .unwrap();
        assert_eq!(on.disabled_reason, None);
        let same = EndpointPatch::from_json(&obj(json!({"url": "https://a.example/h"}))).unwrap();
        assert_eq!(same.apply(&e, Timestamp(4)), None);
    }

    #[test]
    fn ordering_defaults_to_none_and_takes_per_user() {
        let e = NewEndpoint::from_json(&obj(json!({"url": "https://a.example/h"}))).unwrap();
        assert_eq!(e.ordering, DeliveryOrder::None);
        let e = NewEndpoint::from_json(&obj(
            json!({"url": "https://a.example/h", "ordering": "per_user"}),
        ))
        .unwrap();
        assert_eq!(e.ordering, DeliveryOrder::PerUser);
        let record = e.into_record("ep_1".into(), Timestamp(1));
        assert_eq!(record.to_json(16)["ordering"], "per_user");
        let back = EndpointPatch::from_json(&obj(json!({"ordering": "none"})))
            .unwrap()
            .apply(&record, Timestamp(2))
            .unwrap();
        assert_eq!(back.ordering, DeliveryOrder::None);
        for bad in [json!("fifo"), json!(1), json!(true)] {
            let errors = EndpointPatch::from_json(&obj(json!({"ordering": bad}))).unwrap_err();
            assert_eq!(errors[0].field, "ordering");
            let errors = NewEndpoint::from_json(&obj(
                json!({"url": "https://a.example/h", "ordering": bad}),
            ))
            .unwrap_err();
            assert_eq!(errors[0].field, "ordering");
        }
    }
}
