//! The delivery-log UI's use-cases (DESIGN §10): signing in with an API key, looking a session
//! up, signing out, and portal links (made through the API, used once to open a session).
//!
//! Sessions are checked against the database on every request (see [`crate::store::ui`]), so
//! a revoked key's sessions end at once on every instance.

use std::time::Duration;

use serde_json::Value;

use super::{Service, ServiceError};
use crate::domain::ui::{new_token, plausible_token, token_id};
use crate::domain::{FieldError, Timestamp};
use crate::store::keys::KeyOwner;
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
