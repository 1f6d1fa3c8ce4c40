//! The use-cases, shared by the HTTP API and the CLI: they take parsed domain input, apply the
//! rules that span more than one store call, and return domain output.

use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::delivery::DeliveryHandle;
use crate::delivery::guard::AddressGuard;
use crate::domain::FieldError;
use crate::domain::Timestamp;
use crate::domain::delivery::{AttemptRecord, DeliveryRecord};
use crate::domain::endpoint::{EndpointPatch, EndpointRecord, NewEndpoint};
use crate::domain::org::{NewApiKey, parse_org_name};
use crate::domain::user::{NewUser, UserPatch, UserRecord};
use crate::store::{
    CreatedOrg, IdempotencyRequest, Idempotent, Page, RenderSaved, Store, StoreError, StoredEvent,
};
use crate::store::{DeliveryFilter, EventFilter, ListPage};

mod keys;
mod ui;

use keys::KeyCache;
pub use keys::{Forget, KEYS_CHANNEL, listen_keys, name_body};
pub use ui::{Outcomes, Overview, PortalLink, SignedIn};

/// Default and largest page sizes of list routes.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    #[error("{1}")]
    Conflict(&'static str, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Vec<FieldError>> for ServiceError {
    fn from(errors: Vec<FieldError>) -> ServiceError {
        ServiceError::Invalid(errors)
    }
}

#[derive(Debug, Clone)]
pub struct Service {
    store: Store,
    delivery: DeliveryHandle,
    guard: AddressGuard,
    keys: Arc<KeyCache>,
    /// Wakes the task that removes deleted organizations' data ([`Service::org_deletions`]).
    org_deletions: Arc<tokio::sync::Notify>,
    /// (organization, Idempotency-Key) of the requests running in this process: a duplicate
    /// that arrives meanwhile is answered 409 (DESIGN §6). Across PostgreSQL instances the
    /// store does the same with an advisory lock.
    running_keys: Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>,
    /// Retention and erasure (the purge horizon of event cursors, the erasure job's wake-up).
    lifetime: crate::lifetime::Lifetime,
    /// `ACCOMMADOR_ENDPOINT_CONCURRENCY`: what an endpoint's `current_concurrency` is when
    /// adaptive concurrency does not hold it lower.
    endpoint_concurrency: u32,
}

/// Holds an Idempotency-Key as running until dropped.
struct RunningKey {
    keys: Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>,
    key: (String, String),
}

impl Drop for RunningKey {
    fn drop(&mut self) {
        self.keys
            .lock()
            .expect("running keys lock")
            .remove(&self.key);
    }
}

impl Service {
    pub fn new(store: Store, delivery: DeliveryHandle, guard: AddressGuard) -> Service {
        Service {
            store,
            delivery,
            guard,
            keys: Arc::default(),
            running_keys: Arc::default(),
            lifetime: crate::lifetime::Lifetime::default(),
            org_deletions: Arc::default(),
            endpoint_concurrency: 16,
        }
    }

    /// The same service with this per-endpoint concurrency bound.
    pub fn with_endpoint_concurrency(mut self, bound: usize) -> Service {
        self.endpoint_concurrency = bound.clamp(1, u32::MAX as usize) as u32;
        self
    }

    /// The per-endpoint concurrency bound (`ACCOMMADOR_ENDPOINT_CONCURRENCY`).
    pub fn endpoint_concurrency(&self) -> u32 {
        self.endpoint_concurrency
    }

    /// The same service with these retention and erasure settings.
    pub fn with_lifetime(mut self, lifetime: crate::lifetime::Lifetime) -> Service {
        self.lifetime = lifetime;
        self
    }

    pub fn lifetime(&self) -> &crate::lifetime::Lifetime {
        &self.lifetime
    }

    /// Refuses an endpoint URL whose host is, or resolves to, a blocked address.
    async fn check_target(
        &self,
        url: &crate::domain::endpoint::EndpointUrl,
    ) -> Result<(), ServiceError> {
        self.guard
            .check_url(url.url())
            .await
            .map_err(|b| ServiceError::Invalid(vec![FieldError::new("url", b.to_string())]))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub async fn create_org(&self, name: &str) -> Result<CreatedOrg, ServiceError> {
        let name = parse_org_name(name).map_err(|d| vec![FieldError::new("name", d)])?;
        Ok(self.store.create_org(name, NewApiKey::generate()).await?)
    }

    /// Creates a user and its `user.created` event in one commit. With an `Idempotency-Key`,
    /// a repeat of the same request gets the first response back and changes nothing.
    pub async fn create_user(
        &self,
        org: &str,
        body: &serde_json::Map<String, Value>,
        idempotency_key: Option<&str>,
        render: RenderSaved<UserRecord>,
    ) -> Result<Idempotent<UserRecord>, ServiceError> {
        let idempotency = idempotency_key
            .map(|key| idempotency_request("POST /v1/users", key, body))
            .transpose()?;
        let user = NewUser::from_json(body)?;
        let _running = match &idempotency {
            Some(req) => {
                let key = (org.to_owned(), req.key.clone());
                if !self
                    .running_keys
                    .lock()
                    .expect("running keys lock")
                    .insert(key.clone())
                {
                    return Err(StoreError::IdempotencyInProgress.into());
                }
                Some(RunningKey {
                    keys: self.running_keys.clone(),
                    key,
                })
            }
            None => None,
        };
        let created = self
            .store
            .create_user(org.to_owned(), user, idempotency, render)
            .await?;
        self.delivery.events_committed();
        Ok(created)
    }

    pub async fn get_user(&self, org: &str, id: &str) -> Result<UserRecord, ServiceError> {
        Ok(self.store.get_user(org.to_owned(), id.to_owned()).await?)
    }

    pub async fn update_user(
        &self,
        org: &str,
        id: &str,
        body: &serde_json::Map<String, Value>,
    ) -> Result<UserRecord, ServiceError> {
        let patch = UserPatch::from_json(body)?;
        let user = self
            .store
            .update_user(org.to_owned(), id.to_owned(), patch)
            .await?;
        self.delivery.events_committed();
        Ok(user)
    }

    pub async fn delete_user(&self, org: &str, id: &str) -> Result<(), ServiceError> {
        self.store
            .delete_user(org.to_owned(), id.to_owned())
            .await?;
        self.delivery.events_committed();
        Ok(())
    }

    /// Erases a user (DESIGN §10): a live one is deleted first, with one `user.deleted` event
    /// already in erased form; the user's personal data then leaves every stored row in the
    /// background (the answer does not wait for it).
    pub async fn erase_user(&self, org: &str, id: &str) -> Result<(), ServiceError> {
        self.store.erase_user(org.to_owned(), id.to_owned()).await?;
        self.delivery.events_committed();
        self.lifetime.erasure_requested();
        Ok(())
    }

    pub async fn list_users(
        &self,
        org: &str,
        page: PageRequest,
    ) -> Result<Page<UserRecord>, ServiceError> {
        self.store
            .list_users(org.to_owned(), page.after, page.limit)
            .await
            .map_err(ServiceError::from)
    }

    /// Events in commit order; a `user_id` filter that names no user of this organization
    /// (deleted ones count) is refused.
    pub async fn list_events(
        &self,
        org: &str,
        filter: EventFilter,
        page: PageRequest,
    ) -> Result<ListPage<StoredEvent>, ServiceError> {
        let filter = EventFilter {
            purged_before: Some(self.lifetime.purge_horizon()),
            ..filter
        };
        self.store
            .list_events(org.to_owned(), filter, page.after, page.limit)
            .await
            .map_err(unknown_user_filter)
    }

    pub async fn get_event(&self, org: &str, id: &str) -> Result<StoredEvent, ServiceError> {
        Ok(self.store.get_event(org.to_owned(), id.to_owned()).await?)
    }
}

impl Service {
    /// Creates an endpoint with a fresh 32-byte `whsec_` secret; returns both.
    pub async fn create_endpoint(
        &self,
        org: &str,
        body: &serde_json::Map<String, Value>,
    ) -> Result<(EndpointRecord, String), ServiceError> {
        let endpoint = NewEndpoint::from_json(body)?;
        self.check_target(&endpoint.url).await?;
        let secret = accommador_webhooks::Secret::generate().expose();
        let record = self
            .store
            .create_endpoint(org.to_owned(), endpoint, secret.clone())
            .await?;
        Ok((record, secret))
    }

    pub async fn get_endpoint(&self, org: &str, id: &str) -> Result<EndpointRecord, ServiceError> {
        Ok(self
            .store
            .get_endpoint(org.to_owned(), id.to_owned())
            .await?)
    }

    pub async fn list_endpoints(
        &self,
        org: &str,
        page: PageRequest,
    ) -> Result<Page<EndpointRecord>, ServiceError> {
        self.store
            .list_endpoints(org.to_owned(), page.after, page.limit)
            .await
            .map_err(ServiceError::from)
    }

    pub async fn update_endpoint(
        &self,
        org: &str,
        id: &str,
        body: &serde_json::Map<String, Value>,
    ) -> Result<EndpointRecord, ServiceError> {
        let patch = EndpointPatch::from_json(body)?;
        if let Some(url) = &patch.url {
            self.check_target(url).await?;
        }
        let unordered = patch.ordering == Some(crate::domain::endpoint::DeliveryOrder::None);
        let (updated, events) = self
            .store
            .update_endpoint(org.to_owned(), id.to_owned(), patch)
            .await?;
        if unordered {
            // Back to `none`: what waited behind an earlier delivery of its user is due now
            // (in bounded batches), before the answer, so the wake-up below finds it.
            self.store.release_waiting(id.to_owned()).await?;
        }
        self.delivery.endpoint_changed(id);
        if events {
            // `endpoint.disabled` / `endpoint.enabled` committed with the change.
            self.delivery.events_committed();
        }
        if updated.status == crate::domain::endpoint::EndpointStatus::Enabled {
            // Enabled (again): what it still has pending is due. A backlog whose background
            // failing was not finished when it was re-enabled is delivered.
            self.delivery.endpoint_due(id);
        }
        Ok(updated)
    }

    pub async fn delete_endpoint(&self, org: &str, id: &str) -> Result<(), ServiceError> {
        self.store
            .delete_endpoint(org.to_owned(), id.to_owned())
            .await?;
        self.delivery.endpoint_changed(id);
        Ok(())
    }

    pub async fn endpoint_secret(&self, org: &str, id: &str) -> Result<String, ServiceError> {
        Ok(self
            .store
            .endpoint_secret(org.to_owned(), id.to_owned())
            .await?)
    }

    /// A new current secret; the previous one keeps signing beside it for 24 h.
    pub async fn rotate_endpoint_secret(
        &self,
        org: &str,
        id: &str,
    ) -> Result<String, ServiceError> {
        let secret = accommador_webhooks::Secret::generate().expose();
        let secret = self
            .store
            .rotate_endpoint_secret(org.to_owned(), id.to_owned(), secret)
            .await?;
        self.delivery.endpoint_changed(id);
        Ok(secret)
    }
}

impl Service {
    /// Deliveries newest first; a `user_id` filter that names no user of this organization
    /// (deleted ones count) is refused, an `endpoint_id` or `event_id` of none matches nothing.
    pub async fn list_deliveries(
        &self,
        org: &str,
        filter: DeliveryFilter,
        page: PageRequest,
    ) -> Result<ListPage<DeliveryRecord>, ServiceError> {
        self.store
            .list_deliveries(org.to_owned(), filter, page.after, page.limit)
            .await
            .map_err(unknown_user_filter)
    }

    pub async fn get_delivery(&self, org: &str, id: &str) -> Result<DeliveryRecord, ServiceError> {
        Ok(self
            .store
            .get_delivery(org.to_owned(), id.to_owned())
            .await?)
    }

    pub async fn list_attempts(
        &self,
        org: &str,
        id: &str,
    ) -> Result<Vec<AttemptRecord>, ServiceError> {
        Ok(self
            .store
            .list_attempts(org.to_owned(), id.to_owned())
            .await?)
    }

    /// Queues one manual attempt; refused while an attempt of it is in flight.
    pub async fn retry_delivery(
        &self,
        org: &str,
        id: &str,
    ) -> Result<DeliveryRecord, ServiceError> {
        if self.delivery.in_flight.contains(id) {
            // Only after checking it is the caller's: another organization's ID stays a 404.
            self.store
                .get_delivery(org.to_owned(), id.to_owned())
                .await?;
            return Err(ServiceError::Conflict(
                "attempt-in-flight",
                "an attempt of this delivery is in flight; retry when it has finished".into(),
            ));
        }
        let d = self
            .store
            .request_retry(org.to_owned(), id.to_owned())
            .await?;
        self.delivery.endpoint_due(&d.endpoint_id);
        Ok(d)
    }

    /// `{"since", "until"?}`: re-queues failed deliveries and creates missing ones.
    pub async fn recover(
        &self,
        org: &str,
        endpoint_id: &str,
        body: &serde_json::Map<String, Value>,
    ) -> Result<(usize, usize), ServiceError> {
        let mut errors = Vec::new();
        crate::domain::reject_unknown_fields(body, &["since", "until"], &mut errors);
        let mut time = |field: &str, required: bool| match body.get(field) {
            None | Some(Value::Null) if !required => None,
            None => {
                errors.push(FieldError::new(field, "is required"));
                None
            }
            Some(v) => {
                let parsed = v.as_str().and_then(Timestamp::parse_rfc3339);
                if parsed.is_none() {
                    errors.push(FieldError::new(field, "must be an RFC 3339 date-time"));
                }
                parsed
            }
        };
        let since = time("since", true);
        let until = time("until", false);
        if let (Some(s), Some(u)) = (since, until)
            && u <= s
        {
            errors.push(FieldError::new("until", "must be after since"));
        }
        let Some(since) = since.filter(|_| errors.is_empty()) else {
            return Err(ServiceError::Invalid(errors));
        };
        let counts = self
            .store
            .recover(org.to_owned(), endpoint_id.to_owned(), since, until)
            .await?;
        self.delivery.endpoint_due(endpoint_id);
        Ok(counts)
    }

    /// Sends a `webhook.test` event to this endpoint only: (event ID, delivery ID).
    pub async fn send_test(
        &self,
        org: &str,
        endpoint_id: &str,
    ) -> Result<(String, String), ServiceError> {
        let ids = self
            .store
            .send_test(org.to_owned(), endpoint_id.to_owned())
            .await?;
        self.delivery.endpoint_due(endpoint_id);
        Ok(ids)
    }
}

/// A parsed `?limit=&after=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: usize,
    pub after: Option<String>,
}

impl PageRequest {
    pub fn parse(
        limit: Option<&str>,
        after: Option<&str>,
        errors: &mut Vec<FieldError>,
    ) -> PageRequest {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    errors.push(FieldError::new(
                        "limit",
                        format!("must be a whole number from 1 to {MAX_LIMIT}"),
                    ));
                    DEFAULT_LIMIT
                }
            },
        };
        let after = match after {
            None => None,
            Some("") => {
                errors.push(FieldError::new("after", "must not be empty"));
                None
            }
            Some(s) => Some(s.to_owned()),
        };
        PageRequest { limit, after }
    }
}

/// A list's `NotFound`: its `user_id` filter names no user of this organization. Another
/// organization's user gets the same answer as an ID that was never issued.
fn unknown_user_filter(e: StoreError) -> ServiceError {
    match e {
        StoreError::NotFound => ServiceError::Invalid(vec![FieldError::new(
            "user_id",
            "is not the ID of a user of this organization",
        )]),
        e => e.into(),
    }
}

/// The key and a fingerprint of the request (route + JSON with sorted keys), so the same JSON
/// written in another key order counts as the same request.
fn idempotency_request(
    route: &str,
    key: &str,
    body: &serde_json::Map<String, Value>,
) -> Result<IdempotencyRequest, ServiceError> {
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ServiceError::Invalid(vec![FieldError::new(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters",
        )]));
    }
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update(b"\n");
    write_canonical(&mut hasher, &Value::Object(body.clone()));
    Ok(IdempotencyRequest {
        key: key.to_owned(),
        fingerprint: hasher.finalize().into(),
    })
}

fn write_canonical(hasher: &mut Sha256, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            hasher.update(b"{");
            for k in keys {
                hasher.update(
                    serde_json::to_string(k)
                        .expect("string serialises")
                        .as_bytes(),
                );
                hasher.update(b":");
                write_canonical(hasher, &map[k]);
                hasher.update(b",");
            }
            hasher.update(b"}");
        }
        Value::Array(items) => {
            hasher.update(b"[");
            for item in items {
                write_canonical(hasher, item);
                hasher.update(b",");
            }
            hasher.update(b"]");
        }
        scalar => hasher.update(scalar.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fp(v: Value) -> [u8; 32] {
        idempotency_request("POST /v1/users", "k", v.as_object().unwrap())
            .unwrap()
            .fingerprint
    }

    #[test]
    fn the_fingerprint_ignores_key_order_but_not_values() {
        let a = fp(json!({"email": "a@b.co", "attributes": {"x": 1, "y": [1, {"b": 2, "a": 1}]}}));
        let b = fp(json!({"attributes": {"y": [1, {"a": 1, "b": 2}], "x": 1}, "email": "a@b.co"}));
        assert_eq!(a, b);
        assert_ne!(a, fp(json!({"email": "a@b.co"})));
        assert_ne!(fp(json!({"n": "1"})), fp(json!({"n": 1})));
    }

    #[test]
    fn page_requests_check_their_bounds() {
        let mut errors = vec![];
        assert_eq!(
            PageRequest::parse(None, None, &mut errors),
            PageRequest {
                limit: 50,
                after: None
            }
        );
        PageRequest::parse(Some("0"), Some(""), &mut errors);
        PageRequest::parse(Some("501"), None, &mut errors);
        PageRequest::parse(Some("ten"), None, &mut errors);
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["limit", "after", "limit", "limit"]);
    }
}
