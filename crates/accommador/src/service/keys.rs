//! Authentication and the keys' and organizations' use-cases: the in-memory cache of keys that
//! authenticated, key creation, listing and revocation, and the operator's organization list,
//! deletion and key issuance.
//!
//! A revoked key, or a deleted organization's keys, must stop working within 1 s on the
//! instance that answered and within 5 s on every other one (DESIGN §10). Here: the cache
//! forgets them before the answer; other instances are told on PostgreSQL (`NOTIFY` on
//! [`KEYS_CHANNEL`], see [`listen_keys`]) and forget them too; and an
//! entry never lives longer than [`KEY_CACHE_TTL`] counted from before the database read that
//! made it, which bounds the rest (a missed notification, a listener reconnecting).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{PageRequest, Service, ServiceError};
use crate::domain::FieldError;
use crate::domain::org::{NewApiKey, hash_key, parse_key_name};
use crate::store::Page;
use crate::store::keys::{ApiKeyRecord, KeyOwner, OrgRecord, Revocation};

/// How long an API key that authenticated is trusted without asking the database again.
const KEY_CACHE_TTL: Duration = Duration::from_secs(5);
/// Most keys remembered at once.
const KEY_CACHE_ENTRIES: usize = 10_000;
/// The PostgreSQL notification channel for revoked keys (`key:<id>`) and deleted
/// organizations (`org:<id>`).
pub const KEYS_CHANNEL: &str = "accommador_keys";

/// What the key cache must forget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forget {
    /// One revoked key, by its ID.
    Key(String),
    /// Every key of a deleted organization.
    Org(String),
    /// Everything (another instance's notices may have been missed).
    All,
}

impl Forget {
    /// The notification payload that says this to other instances.
    pub fn payload(&self) -> String {
        match self {
            Forget::Key(id) => format!("key:{id}"),
            Forget::Org(id) => format!("org:{id}"),
            Forget::All => "*".to_owned(),
        }
    }

    /// A payload from [`Forget::payload`]; anything else forgets everything.
    pub fn from_payload(payload: &str) -> Forget {
        if let Some(id) = payload.strip_prefix("key:") {
            Forget::Key(id.to_owned())
        } else if let Some(id) = payload.strip_prefix("org:") {
            Forget::Org(id.to_owned())
        } else {
            Forget::All
        }
    }
}

#[derive(Debug)]
struct Cached {
    owner: KeyOwner,
    /// When the database read that found the key began.
    read_at: Instant,
}

/// Keys that authenticated recently, by the SHA-256 of the presented key (never the key
/// itself), with their organization: most requests then need no database round trip to
/// authenticate. Failures are never remembered.
#[derive(Debug, Default)]
pub(super) struct KeyCache {
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<[u8; 32], Cached>,
    /// Bumped by every [`KeyCache::forget`]: a read that began before a revocation does not
    /// put its (stale) answer back afterwards.
    generation: u64,
}

impl KeyCache {
    fn generation(&self) -> u64 {
        self.inner.lock().expect("key cache lock").generation
    }

    #[cfg(test)]
    fn get(&self, digest: &[u8; 32]) -> Option<String> {
        self.get_owner(digest).map(|owner| owner.org)
    }

    fn get_owner(&self, digest: &[u8; 32]) -> Option<KeyOwner> {
        let entries = self.inner.lock().expect("key cache lock");
        entries
            .map
            .get(digest)
            .filter(|c| c.read_at.elapsed() < KEY_CACHE_TTL)
            .map(|c| c.owner.clone())
    }

    /// Remembers what a read that began at `read_at`, in `generation`, found.
    fn put(&self, digest: [u8; 32], owner: KeyOwner, read_at: Instant, generation: u64) {
        let mut entries = self.inner.lock().expect("key cache lock");
        if entries.generation != generation {
            return;
        }
        if entries.map.len() >= KEY_CACHE_ENTRIES {
            entries
                .map
                .retain(|_, c| c.read_at.elapsed() < KEY_CACHE_TTL);
            if entries.map.len() >= KEY_CACHE_ENTRIES {
                entries.map.clear();
            }
        }
        entries.map.insert(digest, Cached { owner, read_at });
    }

    pub(super) fn forget(&self, what: &Forget) {
        let mut entries = self.inner.lock().expect("key cache lock");
        entries.generation += 1;
        match what {
            Forget::Key(id) => entries.map.retain(|_, c| &c.owner.key_id != id),
            Forget::Org(org) => entries.map.retain(|_, c| &c.owner.org != org),
            Forget::All => entries.map.clear(),
        }
    }
}

/// The `name` of a key: a string by the organization-name rules.
fn key_name(name: &str) -> Result<String, ServiceError> {
    parse_key_name(name).map_err(|d| ServiceError::Invalid(vec![FieldError::new("name", d)]))
}

impl Service {
    /// The organization of a presented key, if it is a live key of a live organization.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<String>, ServiceError> {
        Ok(self
            .authenticate_owner(presented)
            .await?
            .map(|owner| owner.org))
    }

    /// The organization and key ID of a presented key, as [`Service::authenticate`].
    pub async fn authenticate_owner(
        &self,
        presented: &str,
    ) -> Result<Option<KeyOwner>, ServiceError> {
        let digest = hash_key(presented);
        if let Some(owner) = self.keys.get_owner(&digest) {
            return Ok(Some(owner));
        }
        let (read_at, generation) = (Instant::now(), self.keys.generation());
        let owner = self.store.authenticate(presented.to_owned()).await?;
        Ok(owner.inspect(|owner| {
            self.keys.put(digest, owner.clone(), read_at, generation);
        }))
    }

    /// Forgets cached keys: after a revocation or deletion here, or another instance's notice.
    pub fn forget_keys(&self, what: &Forget) {
        self.keys.forget(what);
    }

    /// Forgets here at once, then tells the other instances (PostgreSQL).
    async fn forget_everywhere(&self, what: Forget) {
        self.keys.forget(&what);
        if let Err(e) = self.store.announce(KEYS_CHANNEL, what.payload()).await {
            // The cache's lifetime still bounds how long other instances accept it.
            tracing::warn!(error = %e, "announcing a revoked key failed");
        }
    }

    /// A new named key for `org` (an organization's own request, or the operator's for a
    /// locked-out organization; `NotFound` when it is unknown or deleted). The plain key is
    /// returned only here.
    pub async fn create_api_key(
        &self,
        org: &str,
        name: &str,
    ) -> Result<(ApiKeyRecord, String), ServiceError> {
        let name = key_name(name)?;
        let key = NewApiKey::generate();
        let plain = key.plain.clone();
        let record = self.store.create_api_key(org.to_owned(), name, key).await?;
        Ok((record, plain))
    }

    pub async fn list_api_keys(
        &self,
        org: &str,
        page: PageRequest,
    ) -> Result<Page<ApiKeyRecord>, ServiceError> {
        Ok(self
            .store
            .list_api_keys(org.to_owned(), page.after, page.limit)
            .await?)
    }

    /// Revokes a key; it answers 401 here from the return on. Returns the key's SHA-256 (what
    /// the HTTP layer's throttle knows it by). The last live key is refused.
    pub async fn revoke_api_key(&self, org: &str, id: &str) -> Result<[u8; 32], ServiceError> {
        match self
            .store
            .revoke_api_key(org.to_owned(), id.to_owned())
            .await?
        {
            Revocation::Revoked { hash } => {
                self.forget_everywhere(Forget::Key(id.to_owned())).await;
                Ok(hash)
            }
            Revocation::LastKey => Err(ServiceError::Conflict(
                "last-api-key",
                "this is the organization's last API key; create another one before revoking it"
                    .into(),
            )),
        }
    }

    /// Live organizations, oldest first (operator).
    pub async fn list_orgs(&self, page: PageRequest) -> Result<Page<OrgRecord>, ServiceError> {
        Ok(self.store.list_orgs(page.after, page.limit).await?)
    }

    /// Deletes an organization (operator): once this returns its keys answer 401, it is not
    /// listed and none of its deliveries is sent; its data is then removed in the background.
    pub async fn delete_org(&self, id: &str) -> Result<(), ServiceError> {
        self.store.mark_org_deleted(id.to_owned()).await?;
        // Sends read before now are checked again (their organization may be this one).
        self.delivery.all_endpoints_changed();
        self.forget_everywhere(Forget::Org(id.to_owned())).await;
        self.org_deletions.notify_one();
        Ok(())
    }

    /// What wakes the background removal of deleted organizations' data.
    pub fn org_deletions(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.org_deletions.clone()
    }
}

/// Listens for revoked keys and deleted organizations ([`KEYS_CHANNEL`]) until aborted and
/// hands each to `forget`; after every (re)connection everything is forgotten, since notices
/// sent meanwhile are lost.
pub async fn listen_keys(
    connect: crate::store::postgres::tls::PgConnect,
    forget: impl Fn(Forget) + Send + Sync + 'static,
) {
    let forget = std::sync::Arc::new(forget);
    let all = {
        let forget = forget.clone();
        move || forget(Forget::All)
    };
    crate::delivery::notify::listen_on(connect, &[KEYS_CHANNEL], all, move |_, payload| {
        forget(Forget::from_payload(payload));
    })
    .await;
}

/// The `name` of a `{"name"}` body: a string, no other field (422s name the field).
pub fn name_body(body: &serde_json::Map<String, Value>) -> Result<&str, ServiceError> {
    let mut errors = Vec::new();
    crate::domain::reject_unknown_fields(body, &["name"], &mut errors);
    let name = match body.get("name") {
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => {
            errors.push(FieldError::new("name", "must be a string"));
            None
        }
        None => {
            errors.push(FieldError::new("name", "is required"));
            None
        }
    };
    match name {
        Some(name) if errors.is_empty() => Ok(name),
        _ => Err(ServiceError::Invalid(errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(org: &str, key: &str) -> KeyOwner {
        KeyOwner {
            org: org.to_owned(),
            key_id: key.to_owned(),
        }
    }

    #[test]
    fn a_remembered_key_answers_only_for_its_own_digest_and_only_for_a_while() {
        let cache = KeyCache::default();
        let (a, b) = (hash_key("acm_a"), hash_key("acm_b"));
        cache.put(
            a,
            owner("org_1", "key_a"),
            Instant::now(),
            cache.generation(),
        );
        assert_eq!(cache.get(&a).as_deref(), Some("org_1"));
        assert_eq!(cache.get(&b), None);
        // Expired: its read began longer ago than the TTL.
        let long_ago = Instant::now() - KEY_CACHE_TTL - Duration::from_millis(1);
        cache.put(a, owner("org_1", "key_a"), long_ago, cache.generation());
        assert_eq!(cache.get(&a), None);
    }

    #[test]
    fn forgetting_a_key_or_an_organization_drops_exactly_those() {
        let cache = KeyCache::default();
        let (a, b, c) = (hash_key("acm_a"), hash_key("acm_b"), hash_key("acm_c"));
        let now = Instant::now();
        cache.put(a, owner("org_1", "key_a"), now, cache.generation());
        cache.put(b, owner("org_1", "key_b"), now, cache.generation());
        cache.put(c, owner("org_2", "key_c"), now, cache.generation());
        cache.forget(&Forget::from_payload(
            &Forget::Key("key_a".into()).payload(),
        ));
        assert_eq!(cache.get(&a), None);
        assert!(cache.get(&b).is_some());
        cache.forget(&Forget::from_payload(
            &Forget::Org("org_1".into()).payload(),
        ));
        assert_eq!(cache.get(&b), None);
        assert_eq!(cache.get(&c).as_deref(), Some("org_2"));
        cache.forget(&Forget::from_payload("garbled"));
        assert_eq!(cache.get(&c), None);
    }

    #[test]
    fn a_read_that_began_before_a_revocation_is_not_remembered() {
        let cache = KeyCache::default();
        let a = hash_key("acm_a");
        let generation = cache.generation();
        cache.forget(&Forget::Key("key_a".into()));
        cache.put(a, owner("org_1", "key_a"), Instant::now(), generation);
        assert_eq!(cache.get(&a), None);
    }
}
