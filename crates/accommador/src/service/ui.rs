//! The delivery-log UI's use-cases (DESIGN §10): signing in with an API key, looking a session
//! up, signing out, and portal links (made through the API, used once to open a session); the
//! overview's counts and each endpoint's last error.
//!
//! Sessions are checked against the database on every request (see [`crate::store::ui`]), so
//! a revoked key's sessions end at once on every instance.

use std::time::Duration;

use serde_json::Value;

use super::{Service, ServiceError};
use crate::domain::ui::{new_token, plausible_token, token_id};
use crate::domain::{FieldError, Timestamp};
use crate::store::keys::KeyOwner;
use crate::store::rollups::LastError;
use crate::store::ui::{NewGrant, SessionRecord};

/// Shortest and longest life of a portal link.
const LINK_MIN: Duration = Duration::from_secs(60);
const LINK_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// `expires_in` when the request leaves it out.
const LINK_DEFAULT: &str = "15m";

/// A session just opened: the token goes into the cookie and nowhere else.
pub struct SignedIn {
    pub token: String,
    pub session: SessionRecord,
}

impl std::fmt::Debug for SignedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedIn")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// A portal link just made: the token is in the URL, shown to the caller once.
pub struct PortalLink {
    pub token: String,
    pub read_only: bool,
    pub expires_at: Timestamp,
}

impl std::fmt::Debug for PortalLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalLink")
            .field("read_only", &self.read_only)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

fn after(now: Timestamp, d: Duration) -> Timestamp {
    Timestamp(
        now.0
            .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
    )
}

impl Service {
    /// Opens a session for a live API key; `None` when the key is not one.
    pub async fn sign_in(
        &self,
        api_key: &str,
        ttl: Duration,
    ) -> Result<Option<SignedIn>, ServiceError> {
        let Some(owner) = self.authenticate_owner(api_key.trim()).await? else {
            return Ok(None);
        };
        let token = new_token();
        let now = Timestamp::now();
        let expires_at = after(now, ttl);
        self.store
            .create_session(NewGrant {
                id: token_id(&token),
                org: owner.org.clone(),
                key_id: owner.key_id.clone(),
                read_only: false,
                created_at: now,
                expires_at,
            })
            .await?;
        Ok(Some(SignedIn {
            token,
            session: SessionRecord {
                org: owner.org,
                key_id: owner.key_id,
                read_only: false,
                portal: false,
                expires_at,
            },
        }))
    }

    /// The live session a cookie's token names.
    pub async fn session(&self, token: &str) -> Result<Option<SessionRecord>, ServiceError> {
        if !plausible_token(token) {
            return Ok(None);
        }
        Ok(self
            .store
            .find_session(token_id(token), Timestamp::now())
            .await?)
    }

    pub async fn sign_out(&self, token: &str) -> Result<(), ServiceError> {
        if plausible_token(token) {
            self.store.delete_session(token_id(token)).await?;
        }
        Ok(())
    }

    /// `POST /v1/portal-links` `{"read_only"?: bool (default true), "expires_in"?: "15m"}`:
    /// a one-time link for `owner`'s organization; its sessions end with `owner`'s key.
    pub async fn create_portal_link(
        &self,
        owner: &KeyOwner,
        body: &serde_json::Map<String, Value>,
    ) -> Result<PortalLink, ServiceError> {
        let mut errors = Vec::new();
        crate::domain::reject_unknown_fields(body, &["read_only", "expires_in"], &mut errors);
        let read_only = match body.get("read_only") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                errors.push(FieldError::new("read_only", "must be true or false"));
                true
            }
        };
        let ttl = match body.get("expires_in") {
            None | Some(Value::Null) => crate::config::parse_duration(LINK_DEFAULT).ok(),
            Some(Value::String(s)) => crate::config::parse_duration(s)
                .ok()
                .filter(|d| (LINK_MIN..=LINK_MAX).contains(d)),
            Some(_) => None,
        };
        let Some(ttl) = ttl else {
            errors.push(FieldError::new(
                "expires_in",
                "must be a duration from 1m to 7d, such as \"15m\", \"2h\" or \"1d\"",
            ));
            return Err(ServiceError::Invalid(errors));
        };
        if !errors.is_empty() {
            return Err(ServiceError::Invalid(errors));
        }
        let token = new_token();
        let now = Timestamp::now();
        let expires_at = after(now, ttl);
        self.store
            .create_portal_link(NewGrant {
                id: token_id(&token),
                org: owner.org.clone(),
                key_id: owner.key_id.clone(),
                read_only,
                created_at: now,
                expires_at,
            })
            .await?;
        Ok(PortalLink {
            token,
            read_only,
            expires_at,
        })
    }

    /// Whether a portal link can still be used (shown before anyone presses "Continue").
    pub async fn portal_link_usable(&self, token: &str) -> Result<bool, ServiceError> {
        if !plausible_token(token) {
            return Ok(false);
        }
        Ok(self
            .store
            .portal_link_usable(token_id(token), Timestamp::now())
            .await?)
    }

    /// Uses a portal link: the first use opens a portal session, every later one gets `None`.
    pub async fn use_portal_link(
        &self,
        token: &str,
        ttl: Duration,
    ) -> Result<Option<SignedIn>, ServiceError> {
        if !plausible_token(token) {
            return Ok(None);
        }
        let session_token = new_token();
        let now = Timestamp::now();
        let session = self
            .store
            .consume_portal_link(
                token_id(token),
                now,
                token_id(&session_token),
                after(now, ttl),
            )
            .await?;
        Ok(session.map(|session| SignedIn {
            token: session_token,
            session,
        }))
    }
}

/// How many due deliveries the overview counts before it shows "N+".
pub const BACKLOG_CAP: usize = 10_000;

/// Deliveries that ended, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    pub succeeded: u64,
    pub failed: u64,
}

impl Outcomes {
    pub fn ended(&self) -> u64 {
        self.succeeded + self.failed
    }

    /// Whole percent of ended deliveries that succeeded; `None` when none ended.
    pub fn success_percent(&self) -> Option<u64> {
        (self.ended() > 0).then(|| self.succeeded * 100 / self.ended())
    }

    fn add(&mut self, succeeded: u64, failed: u64) {
        self.succeeded += succeeded;
        self.failed += failed;
    }
}

/// The overview page's numbers, from the rollup counters ([`crate::store::rollups`]): reads of
/// at most 25 counter rows per endpoint and one bounded walk of the due index, never a count
/// over the deliveries, however many there are.
#[derive(Debug, Clone)]
pub struct Overview {
    /// The start of the current hour: "this hour" counts from here.
    pub hour_start: Timestamp,
    pub hour: Outcomes,
    /// The start of the hour 23 hours before the current one: "the last 24 hours".
    pub day_start: Timestamp,
    pub day: Outcomes,
    /// Per endpoint, over the last 24 hours.
    pub by_endpoint: std::collections::HashMap<String, Outcomes>,
    pub backlog: crate::store::rollups::DueBacklog,
}

impl Service {
    /// Each endpoint's deliveries ended in the last 24 hours (as [`Overview::by_endpoint`]).
    pub async fn endpoint_outcomes(
        &self,
        org: &str,
        now: Timestamp,
    ) -> Result<std::collections::HashMap<String, Outcomes>, ServiceError> {
        let (_, day_start) = overview_windows(now);
        let mut by_endpoint = std::collections::HashMap::<String, Outcomes>::new();
        for h in self.store.delivery_hours(org.to_owned(), day_start).await? {
            by_endpoint
                .entry(h.endpoint_id)
                .or_default()
                .add(h.succeeded, h.failed);
        }
        Ok(by_endpoint)
    }

    /// The last error ([`LastError`]) of each of these endpoints of the organization that has
    /// one, by endpoint ID: one bounded index walk per endpoint.
    pub async fn last_errors(
        &self,
        org: &str,
        endpoints: &[crate::domain::endpoint::EndpointRecord],
    ) -> Result<std::collections::HashMap<String, LastError>, ServiceError> {
        let ids = endpoints.iter().map(|e| e.id.clone()).collect();
        Ok(self
            .store
            .last_errors(org.to_owned(), ids)
            .await?
            .into_iter()
            .map(|e| (e.endpoint_id.clone(), e))
            .collect())
    }

    /// The overview's counts for an organization at `now`.
    pub async fn overview(&self, org: &str, now: Timestamp) -> Result<Overview, ServiceError> {
        let (hour_start, day_start) = overview_windows(now);
        let hours = self.store.delivery_hours(org.to_owned(), day_start).await?;
        let backlog = self
            .store
            .due_backlog(org.to_owned(), now, BACKLOG_CAP)
            .await?;
        let mut overview = Overview {
            hour_start,
            hour: Outcomes::default(),
            day_start,
            day: Outcomes::default(),
            by_endpoint: Default::default(),
            backlog,
        };
        for h in hours {
            overview.day.add(h.succeeded, h.failed);
            if h.hour >= hour_start {
                overview.hour.add(h.succeeded, h.failed);
            }
            overview
                .by_endpoint
                .entry(h.endpoint_id)
                .or_default()
                .add(h.succeeded, h.failed);
        }
        Ok(overview)
    }
}

/// The starts of "this hour" and of "the last 24 hours" (the 23 hours before this one and it).
fn overview_windows(now: Timestamp) -> (Timestamp, Timestamp) {
    use crate::store::rollups::{HOUR_MS, hour_of};
    let hour_start = Timestamp(hour_of(now));
    (hour_start, Timestamp(hour_start.millis() - 23 * HOUR_MS))
}
