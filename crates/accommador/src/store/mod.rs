//! The store: everything durable, behind one concrete enum over the backends.
//!
//! Each method owns its transaction, so a caller cannot split "user change + its event": a
//! method either commits both or neither. Methods speak domain types; rows are mapped to them
//! inside each backend.

pub mod keys;
pub mod lifetime;
pub mod pacing;
pub mod postgres;
pub mod rollups;
mod secrets;
pub mod sqlite;
pub mod ui;

use std::path::PathBuf;

use accommador_webhooks::EventType;

use crate::domain::delivery::{AttemptRecord, AttemptResult, DeliveryRecord, RetryPolicy};
use crate::domain::endpoint::{EndpointPatch, EndpointRecord, NewEndpoint};
use crate::domain::user::{NewUser, UserPatch, UserRecord};
use crate::domain::{Timestamp, org::NewApiKey};

pub use postgres::PgStore;
pub use secrets::{RESEAL_BATCH, ResealStep, SecretsAtRest};
pub use sqlite::SqliteStore;

/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 60 * 60 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("a live user in this organization already has this email")]
    EmailTaken,
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyMismatch,
    /// Another request with the same Idempotency-Key is still running (on another instance).
    #[error("a request with this Idempotency-Key is still being processed")]
    IdempotencyInProgress,
    #[error("unknown cursor")]
    UnknownCursor,
    #[error("the endpoint is disabled")]
    EndpointDisabled,
    #[error("an attempt of this delivery is in flight")]
    AttemptInFlight,
    /// A stored endpoint secret that the configured `ACCOMMADOR_SECRET_KEY` cannot open.
    #[error("the signing secret of endpoint {endpoint_id} cannot be read: {reason}")]
    SecretUnreadable {
        endpoint_id: String,
        reason: crate::domain::secret_box::OpenError,
    },
    /// The database's disk (or its size limit) is full: nothing of the write was committed,
    /// and writes work again once space is freed. The cause is in the message.
    #[error("the database is out of disk space: {0}")]
    StorageFull(Box<dyn std::error::Error + Send + Sync>),
    /// The cause is in the message (not a `source`), so every log line of it says why.
    #[error("database error: {0}")]
    Database(Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// A database error; one that says the disk is full becomes [`StoreError::StorageFull`].
    pub fn database(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        if disk_full(&e) {
            StoreError::StorageFull(Box::new(e))
        } else {
            StoreError::Database(Box::new(e))
        }
    }
}

/// Whether `e`, or an error in its chain, is SQLite's `SQLITE_FULL` or PostgreSQL's
/// `disk_full` (53100).
fn disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(rusqlite::Error::SqliteFailure(f, _)) = e.downcast_ref::<rusqlite::Error>()
            && f.code == rusqlite::ErrorCode::DiskFull
        {
            return true;
        }
        // What a wrapper forwarding `source()` past the `rusqlite::Error` shows.
        if let Some(f) = e.downcast_ref::<rusqlite::ffi::Error>()
            && f.code == rusqlite::ErrorCode::DiskFull
        {
            return true;
        }
        if let Some(pg) = e.downcast_ref::<tokio_postgres::Error>()
            && pg.code() == Some(&tokio_postgres::error::SqlState::DISK_FULL)
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// Where the database lives, parsed from `ACCOMMADOR_DATABASE_URL`. `Debug` and `Display` show
/// a PostgreSQL URL without its password ([`crate::config::redact_database_url`]); so do
/// `parse`'s errors.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<DatabaseUrl, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(format!("{url:?}: sqlite:// needs a file path"));
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_owned()));
        }
        Err(format!(
            "unsupported database URL {:?}: expected sqlite://PATH or postgres://…",
            crate::config::redact_database_url(url)
        ))
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            DatabaseUrl::Postgres(url) => f.write_str(&crate::config::redact_database_url(url)),
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseUrl::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            DatabaseUrl::Postgres(url) => f
                .debug_tuple("Postgres")
                .field(&crate::config::redact_database_url(url))
                .finish(),
        }
    }
}

/// Whether the opened store owns the database as the one server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// `serve`: take the file lock; refuse if another server has it.
    Server,
    /// `migrate`, `orgs create`: write beside a running server.
    Tool,
}

/// A response saved for an `Idempotency-Key`, replayed as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedResponse {
    pub status: u16,
    pub body: String,
}

/// An `Idempotency-Key` and the fingerprint of the request that carried it.
#[derive(Debug, Clone)]
pub struct IdempotencyRequest {
    pub key: String,
    pub fingerprint: [u8; 32],
}

/// Turns the result of a request into the response to save for its key; `None` saves nothing.
pub type RenderSaved<T> = fn(&Result<T, StoreError>) -> Option<SavedResponse>;

/// The result of an idempotent write: done now, or the response of the first request.
#[derive(Debug)]
pub enum Idempotent<T> {
    /// Done now.
    Fresh(T),
    /// Refused now (e.g. a conflict), with the response saved for the key's retries.
    Refused(SavedResponse),
    /// A retry: the first request's response.
    Replay(SavedResponse),
}

/// One page of a list in commit or creation order.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_more: bool,
}

impl<T> Page<T> {
    /// A page from `limit + 1` fetched rows: the extra row only says that more follow.
    pub fn from_fetched(mut items: Vec<T>, limit: usize) -> Page<T> {
        let has_more = items.len() > limit;
        items.truncate(limit);
        Page { items, has_more }
    }
}

/// An event as stored: its ID and its exact payload bytes.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub id: String,
    pub payload: String,
}

#[derive(Clone)]
pub struct CreatedOrg {
    pub id: String,
    pub name: String,
    /// Shown once to the caller; never logged.
    pub api_key: String,
}

impl std::fmt::Debug for CreatedOrg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedOrg")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The store, whichever backend the URL chose.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Store {
    /// Opens (and migrates) the database. `pool_size` sizes the PostgreSQL connection pool.
    pub async fn open(
        url: &DatabaseUrl,
        ownership: Ownership,
        pool_size: usize,
    ) -> anyhow::Result<Store> {
        match url {
            DatabaseUrl::Sqlite(path) => {
                let path = path.clone();
                let store =
                    tokio::task::spawn_blocking(move || SqliteStore::open(&path, ownership))
                        .await??;
                Ok(Store::Sqlite(store))
            }
            DatabaseUrl::Postgres(url) => Ok(Store::Postgres(PgStore::open(url, pool_size).await?)),
        }
    }

    /// Answers when the database can serve a query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.ping().await,
            Store::Postgres(s) => s.ping().await,
        }
    }

    pub async fn create_org(&self, name: String, key: NewApiKey) -> Result<CreatedOrg, StoreError> {
        match self {
            Store::Sqlite(s) => s.create_org(name, key).await,
            Store::Postgres(s) => s.create_org(name, key).await,
        }
    }

    pub async fn create_user(
        &self,
        org: String,
        user: NewUser,
        idempotency: Option<IdempotencyRequest>,
        render: RenderSaved<UserRecord>,
    ) -> Result<Idempotent<UserRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.create_user(org, user, idempotency, render).await,
            Store::Postgres(s) => s.create_user(org, user, idempotency, render).await,
        }
    }

    pub async fn get_user(&self, org: String, id: String) -> Result<UserRecord, StoreError> {
        match self {
            Store::Sqlite(s) => s.get_user(org, id).await,
            Store::Postgres(s) => s.get_user(org, id).await,
        }
    }

    /// Applies a patch; the record returned is the user after it (unchanged for a no-op patch).
    pub async fn update_user(
        &self,
        org: String,
        id: String,
        patch: UserPatch,
    ) -> Result<UserRecord, StoreError> {
        match self {
            Store::Sqlite(s) => s.update_user(org, id, patch).await,
            Store::Postgres(s) => s.update_user(org, id, patch).await,
        }
    }

    pub async fn delete_user(&self, org: String, id: String) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.delete_user(org, id).await,
            Store::Postgres(s) => s.delete_user(org, id).await,
        }
    }

    /// Live users, oldest first, after the user whose ID is `after`.
    pub async fn list_users(
        &self,
        org: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<Page<UserRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list_users(org, after, limit).await,
            Store::Postgres(s) => s.list_users(org, after, limit).await,
        }
    }

    /// Events in commit order, after the event whose ID is `after`, walked as [`EventFilter`]
    /// says. `NotFound` when `filter.user_id` names no user of this organization.
    pub async fn list_events(
        &self,
        org: String,
        filter: EventFilter,
        after: Option<String>,
        limit: usize,
    ) -> Result<ListPage<StoredEvent>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list_events(org, filter, after, limit).await,
            Store::Postgres(s) => s.list_events(org, filter, after, limit).await,
        }
    }

    pub async fn get_event(&self, org: String, id: String) -> Result<StoredEvent, StoreError> {
        match self {
            Store::Sqlite(s) => s.get_event(org, id).await,
            Store::Postgres(s) => s.get_event(org, id).await,
        }
    }

    /// Stores a new endpoint with `secret` as its current signing secret (sealed with the
    /// newest secret key, if any).
    pub async fn create_endpoint(
        &self,
        org: String,
        endpoint: NewEndpoint,
        secret: String,
    ) -> Result<EndpointRecord, StoreError> {
        let id = crate::domain::ids::new_id(crate::domain::ids::ENDPOINT);
        let sealed = self.secret_keys().seal(&id, &secret);
        match self {
            Store::Sqlite(s) => s.create_endpoint(org, endpoint, id, sealed).await,
            Store::Postgres(s) => s.create_endpoint(org, endpoint, id, sealed).await,
        }
    }

    pub async fn get_endpoint(
        &self,
        org: String,
        id: String,
    ) -> Result<EndpointRecord, StoreError> {
        match self {
            Store::Sqlite(s) => s.get_endpoint(org, id).await,
            Store::Postgres(s) => s.get_endpoint(org, id).await,
        }
    }

    /// Live endpoints, oldest first, after the endpoint whose ID is `after`.
    pub async fn list_endpoints(
        &self,
        org: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<Page<EndpointRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list_endpoints(org, after, limit).await,
            Store::Postgres(s) => s.list_endpoints(org, after, limit).await,
        }
    }

    /// Applies a patch; the flag says whether it wrote an event (`endpoint.disabled` or
    /// `endpoint.enabled`, committed with the change), so fan-out is woken.
    pub async fn update_endpoint(
        &self,
        org: String,
        id: String,
        patch: EndpointPatch,
    ) -> Result<(EndpointRecord, bool), StoreError> {
        match self {
            Store::Sqlite(s) => s.update_endpoint(org, id, patch).await,
            Store::Postgres(s) => s.update_endpoint(org, id, patch).await,
        }
    }

    pub async fn delete_endpoint(&self, org: String, id: String) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.delete_endpoint(org, id).await,
            Store::Postgres(s) => s.delete_endpoint(org, id).await,
        }
    }

    /// The endpoint's current signing secret (opened).
    pub async fn endpoint_secret(&self, org: String, id: String) -> Result<String, StoreError> {
        let stored = match self {
            Store::Sqlite(s) => s.endpoint_secret(org, id.clone()).await,
            Store::Postgres(s) => s.endpoint_secret(org, id.clone()).await,
        }?;
        self.open_secret(&id, &stored)
    }

    /// Makes `secret` the current one (sealed with the newest secret key, if any) and returns
    /// it; the previous keeps signing for 24 h, and any older one stops now.
    pub async fn rotate_endpoint_secret(
        &self,
        org: String,
        id: String,
        secret: String,
    ) -> Result<String, StoreError> {
        let sealed = self.secret_keys().seal(&id, &secret);
        match self {
            Store::Sqlite(s) => s.rotate_endpoint_secret(org, id, sealed).await,
            Store::Postgres(s) => s.rotate_endpoint_secret(org, id, sealed).await,
        }?;
        Ok(secret)
    }

    /// The secrets that sign for an endpoint now (opened), current first (two during a
    /// rotation).
    pub async fn signing_secrets(
        &self,
        org: String,
        id: String,
    ) -> Result<Vec<String>, StoreError> {
        let stored = match self {
            Store::Sqlite(s) => s.signing_secrets(org, id.clone()).await,
            Store::Postgres(s) => s.signing_secrets(org, id.clone()).await,
        }?;
        self.open_secrets(&id, &stored)
    }

    /// One fan-out step over the outbox, in commit order.
    pub async fn fan_out(&self) -> Result<FanOut, StoreError> {
        match self {
            Store::Sqlite(s) => s.fan_out().await,
            Store::Postgres(s) => s.fan_out().await,
        }
    }

    /// Endpoints with pending deliveries and their earliest due time.
    pub async fn pending_lanes(&self) -> Result<Vec<(String, Timestamp)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.pending_lanes().await,
            Store::Postgres(s) => s.pending_lanes().await,
        }
    }

    pub async fn lane_work(
        &self,
        requests: Vec<LaneRequest>,
        now: Timestamp,
    ) -> Result<Vec<LaneWork>, StoreError> {
        match self {
            Store::Sqlite(s) => s.lane_work(requests, now).await,
            Store::Postgres(s) => s.lane_work(requests, now).await,
        }
    }

    /// One bounded step of failing the pending deliveries of disabled or deleted endpoints
    /// (`endpoint_disabled`, at most [`Store::cancel_batch`] in one transaction): the first such
    /// endpoint after `after` (by ID) gets one batch. `None`: no such endpoint after `after`.
    pub async fn cancel_step(
        &self,
        after: Option<String>,
    ) -> Result<Option<CancelStep>, StoreError> {
        match self {
            Store::Sqlite(s) => s.cancel_step(after).await,
            Store::Postgres(s) => s.cancel_step(after).await,
        }
    }

    /// The organization of each of these endpoints (deleted ones included).
    pub async fn endpoint_orgs(
        &self,
        endpoint_ids: Vec<String>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.endpoint_orgs(endpoint_ids).await,
            Store::Postgres(s) => s.endpoint_orgs(endpoint_ids).await,
        }
    }

    /// Where and with which secrets an endpoint's deliveries go now; `None` when it is
    /// disabled or deleted (read again just before a send whose endpoint may have changed).
    pub async fn send_target(&self, endpoint_id: String) -> Result<Option<SendTarget>, StoreError> {
        match self {
            Store::Sqlite(s) => s.send_target(endpoint_id).await,
            Store::Postgres(s) => s.send_target(endpoint_id).await,
        }
    }

    /// Records attempts (delivery ID, lease token, result); under a lease only while the token
    /// still holds it. PostgreSQL commits a batch once; SQLite's writer groups them anyway.
    pub async fn record_attempts(
        &self,
        batch: Vec<(String, Option<String>, AttemptResult)>,
        policy: std::sync::Arc<RetryPolicy>,
    ) -> Vec<Result<Recorded, StoreError>> {
        match self {
            Store::Sqlite(s) => {
                let mut set = tokio::task::JoinSet::new();
                for (i, (id, token, result)) in batch.into_iter().enumerate() {
                    let (s, policy) = (s.clone(), policy.clone());
                    set.spawn(
                        async move { (i, s.record_attempt(id, token, result, policy).await) },
                    );
                }
                let mut out: Vec<Option<Result<Recorded, StoreError>>> =
                    (0..set.len()).map(|_| None).collect();
                while let Some(joined) = set.join_next().await {
                    match joined {
                        Ok((i, r)) => out[i] = Some(r),
                        Err(e) => tracing::error!(error = %e, "recording an attempt panicked"),
                    }
                }
                out.into_iter()
                    .map(|r| {
                        r.unwrap_or_else(|| {
                            Err(StoreError::database(std::io::Error::other(
                                "recording panicked",
                            )))
                        })
                    })
                    .collect()
            }
            Store::Postgres(s) => s.record_attempts(batch, policy).await,
        }
    }

    /// Gives back the leases of deliveries still in flight (graceful shutdown).
    pub async fn release_leases(&self, token: String, ids: Vec<String>) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(s) => s.release_leases(token, ids).await,
        }
    }

    /// Announces to other instances (PostgreSQL `NOTIFY`); nothing to do on SQLite.
    pub async fn announce(&self, channel: &str, payload: String) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(s) => s.announce(channel, payload).await,
        }
    }

    /// Numbers events committed without a number yet (PostgreSQL's commit order; SQLite
    /// numbers as it writes), so readers and fan-out see them.
    pub async fn number_written_events(&self) {
        if let Store::Postgres(s) = self {
            s.number_written_events().await;
        }
    }

    /// The PostgreSQL URL (`None` on SQLite).
    pub fn postgres_url(&self) -> Option<&str> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(s) => Some(s.url()),
        }
    }

    /// How to open a PostgreSQL connection of one's own (the LISTEN session), TLS included.
    pub fn postgres_connector(&self) -> Option<&postgres::tls::PgConnect> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(s) => Some(s.connector()),
        }
    }

    /// Deliveries newest first, after the delivery whose ID is `after`, walked as
    /// [`DeliveryFilter`] says. `NotFound` when `filter.user_id` names no user of this
    /// organization.
    pub async fn list_deliveries(
        &self,
        org: String,
        filter: DeliveryFilter,
        after: Option<String>,
        limit: usize,
    ) -> Result<ListPage<DeliveryRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list_deliveries(org, filter, after, limit).await,
            Store::Postgres(s) => s.list_deliveries(org, filter, after, limit).await,
        }
    }

    pub async fn get_delivery(
        &self,
        org: String,
        id: String,
    ) -> Result<DeliveryRecord, StoreError> {
        match self {
            Store::Sqlite(s) => s.get_delivery(org, id).await,
            Store::Postgres(s) => s.get_delivery(org, id).await,
        }
    }

    pub async fn list_attempts(
        &self,
        org: String,
        id: String,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list_attempts(org, id).await,
            Store::Postgres(s) => s.list_attempts(org, id).await,
        }
    }

    pub async fn request_retry(
        &self,
        org: String,
        id: String,
    ) -> Result<DeliveryRecord, StoreError> {
        match self {
            Store::Sqlite(s) => s.request_retry(org, id).await,
            Store::Postgres(s) => s.request_retry(org, id).await,
        }
    }

    pub async fn recover(
        &self,
        org: String,
        endpoint_id: String,
        since: Timestamp,
        until: Option<Timestamp>,
    ) -> Result<(usize, usize), StoreError> {
        match self {
            Store::Sqlite(s) => s.recover(org, endpoint_id, since, until).await,
            Store::Postgres(s) => s.recover(org, endpoint_id, since, until).await,
        }
    }

    pub async fn send_test(
        &self,
        org: String,
        endpoint_id: String,
    ) -> Result<(String, String), StoreError> {
        match self {
            Store::Sqlite(s) => s.send_test(org, endpoint_id).await,
            Store::Postgres(s) => s.send_test(org, endpoint_id).await,
        }
    }

    /// Most deliveries one [`Store::cancel_step`] fails on this backend.
    pub fn cancel_batch(&self) -> usize {
        match self {
            Store::Sqlite(_) => SQLITE_CANCEL_BATCH,
            Store::Postgres(_) => CANCEL_BATCH,
        }
    }

    /// After an endpoint's ordering went back to `none`: its deliveries that waited behind an
    /// earlier one are due now, released in batches of at most [`CANCEL_BATCH`] rows (each
    /// its own short write). Returns how many.
    pub async fn release_waiting(&self, endpoint_id: String) -> Result<usize, StoreError> {
        let mut released = 0;
        loop {
            let n = match self {
                Store::Sqlite(s) => s.release_waiting_batch(endpoint_id.clone()).await?,
                Store::Postgres(s) => s.release_waiting_batch(endpoint_id.clone()).await?,
            };
            released += n;
            if n < CANCEL_BATCH {
                return Ok(released);
            }
        }
    }

    pub async fn delivery_stats(&self, now: Timestamp) -> Result<DeliveryStats, StoreError> {
        match self {
            Store::Sqlite(s) => s.delivery_stats(now).await,
            Store::Postgres(s) => s.delivery_stats(now).await,
        }
    }

    /// Forgets idempotency keys older than their time to live; returns how many.
    pub async fn purge_idempotency_keys(&self, now: Timestamp) -> Result<usize, StoreError> {
        match self {
            Store::Sqlite(s) => s.purge_idempotency_keys(now).await,
            Store::Postgres(s) => s.purge_idempotency_keys(now).await,
        }
    }
}

/// What one fan-out step did.
#[derive(Debug, Clone, Default)]
pub struct FanOut {
    /// Events taken (0: caught up).
    pub events: usize,
    /// Endpoints that got new deliveries.
    pub woken: Vec<String>,
}

/// A delivery ready to be attempted, with everything the attempt needs.
#[derive(Clone)]
pub struct DueDelivery {
    pub id: String,
    /// The delivery's number: those at or below an endpoint's cancel fence
    /// ([`SendTarget::cancel_through`]) were queued before it was closed and are never sent.
    pub seq: i64,
    pub event_id: String,
    pub endpoint_id: String,
    pub url: String,
    /// The event's stored payload bytes, sent and signed as they are.
    pub payload: bytes::Bytes,
    /// Secrets signing now, as stored (sealed, or plain text from before
    /// `ACCOMMADOR_SECRET_KEY`; [`Store::open_secrets`] opens them just before the send): the
    /// current one first, a rotated-out one during its overlap.
    pub secrets: Vec<String>,
    pub trigger: crate::domain::delivery::Trigger,
    pub event_occurred_at: Timestamp,
    /// No attempt was made yet (for the commit-to-first-attempt latency).
    pub first_attempt: bool,
    /// The lease this attempt holds (PostgreSQL); results are written only under it.
    pub lease_token: Option<String>,
}

/// Most deliveries failed in one step when their endpoint was disabled or deleted: no tenant
/// action holds PostgreSQL's row locks for more than one such batch.
pub const CANCEL_BATCH: usize = 1000;

/// The same bound on SQLite, where every step holds the one writer that all tenants' writes
/// wait for: about 2 ms of it, so a fan-out or create queued behind a step waits no longer.
pub const SQLITE_CANCEL_BATCH: usize = 100;

/// What one [`Store::cancel_step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelStep {
    pub endpoint_id: String,
    /// Deliveries failed (fewer than [`Store::cancel_batch`]: that endpoint is done, unless some
    /// were locked by an attempt being recorded).
    pub failed: usize,
}

/// Whether the delivery row `{row}` (a table name or alias) is being brought back after a
/// later delivery of the same user to the same `per_user` endpoint was already attempted: its
/// attempts then carry `out_of_order` (DESIGN §10). Both backends set it with this expression
/// when a manual retry or `recover` re-queues a delivery; it walks the user's deliveries
/// (`deliveries_user_list`), which only these rare requests pay for.
fn overtaken_sql(row: &str) -> String {
    format!(
        "(EXISTS (SELECT 1 FROM endpoints oe
                  WHERE oe.id = {row}.endpoint_id AND oe.ordering = 'per_user')
          AND {row}.user_id IS NOT NULL
          AND EXISTS (SELECT 1 FROM deliveries ol
                      WHERE ol.org_id = {row}.org_id AND ol.user_id = {row}.user_id
                        AND ol.endpoint_id = {row}.endpoint_id
                        AND ol.event_seq > {row}.event_seq AND ol.attempt_count > 0))"
    )
}

/// Most deliveries waiting behind an earlier one that the metric counts (a bounded read of
/// the `next_attempt_at IS NULL` end of the due index).
pub const ORDERED_WAITING_COUNTED: i64 = 100_000;

/// Most due deliveries the `webhook_due_deliveries` gauge counts: its periodic read walks at
/// most this many entries of the due index, however large the backlog.
pub const DUE_COUNTED: i64 = 100_000;

/// Why the pending deliveries of a disabled or deleted endpoint are failed.
fn cancel_reason(disabled_reason: Option<String>, deleted: bool) -> String {
    if deleted {
        "the endpoint was deleted".to_owned()
    } else {
        disabled_reason.unwrap_or_else(|| "disabled".to_owned())
    }
}

/// An enabled endpoint's URL and the secrets signing for it now, as stored (the current one
/// first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendTarget {
    pub url: String,
    pub secrets: Vec<String>,
    /// Set while the deliveries queued before a disable or delete are being failed in the
    /// background after the endpoint was enabled again: those numbered up to it are not sent.
    pub cancel_through: Option<i64>,
}

impl SendTarget {
    /// Whether the delivery numbered `seq` was queued before the endpoint was last closed and
    /// is still being failed for it (so it must not be sent).
    pub fn fenced(&self, seq: i64) -> bool {
        self.cancel_through.is_some_and(|fence| seq <= fence)
    }
}

/// The statement both backends read a [`SendTarget`] with (`?1`/`$1` the endpoint, `?2`/`$2`
/// now): one row per signing secret, the current one first; none when the endpoint is
/// disabled or deleted.
const SEND_TARGET_SQL: &str = "SELECT ep.url, s.secret, ep.cancel_through FROM endpoints ep
     JOIN endpoint_secrets s ON s.endpoint_id = ep.id
         AND (s.expires_at IS NULL OR s.expires_at > $2)
     WHERE ep.id = $1 AND ep.status = 'enabled' AND ep.deleted_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM organizations o
                       WHERE o.id = ep.org_id AND o.deleted_at IS NOT NULL)
     ORDER BY s.expires_at IS NOT NULL, s.created_at DESC";

/// Rows of (url, secret, cancel fence) from [`SEND_TARGET_SQL`] as a target.
fn send_target_from(rows: Vec<(String, String, Option<i64>)>) -> Option<SendTarget> {
    let (url, _, cancel_through) = rows.first()?.clone();
    Some(SendTarget {
        url,
        secrets: rows.into_iter().map(|(_, s, _)| s).collect(),
        cancel_through,
    })
}

/// How a dispatcher leases work on a shared database (ignored by SQLite's single owner).
#[derive(Debug, Clone)]
pub struct Lease {
    /// This dispatcher's token: acknowledgements are fenced by it.
    pub token: String,
    /// How long a lease lasts, by the database clock; longer than the delivery timeout.
    pub millis: i64,
    /// Attempts in flight to one endpoint across every instance, at most.
    pub per_endpoint: usize,
    /// Unexpired leases of one organization across every instance, at most
    /// (`ACCOMMADOR_ORG_CONCURRENCY`), unless one instance is alone on it: see `org_ahead`.
    pub per_org: usize,
    /// How many more than `per_org` an instance may lease ahead for an organization on which
    /// no other instance holds a lease (it starts at most `per_org` at once; another instance
    /// counts these leases whole, so the attempts open across instances stay within
    /// `per_org`), as `LaneRequest::ahead` does for an endpoint.
    pub org_ahead: usize,
}

impl std::fmt::Debug for DueDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("DueDelivery")
            .field("id", &self.id)
            .field("event_id", &self.event_id)
            .field("endpoint_id", &self.endpoint_id)
            .field("trigger", &self.trigger)
            .finish_non_exhaustive()
    }
}

/// The due work of one endpoint, as the dispatcher asks for it.
#[derive(Debug, Clone)]
pub struct LaneRequest {
    pub endpoint_id: String,
    /// At most this many deliveries.
    pub limit: usize,
    /// Deliveries already being attempted (not to be handed out again).
    pub in_flight: Vec<String>,
    /// Of those, the ones whose request is open or that wait in this instance's queue: what
    /// counts against the per-endpoint bound (answered ones waiting to be recorded do not).
    pub active: usize,
    /// How many more than the per-endpoint bound may be leased ahead (queued here, started as
    /// slots free) while no other instance holds a lease on the endpoint.
    pub ahead: usize,
    /// This instance's attempts for the endpoint's organization, all its endpoints, whose
    /// request is open or that wait in its queue: what counts of this instance against the
    /// organization's bound (answered ones waiting to be recorded do not), as `active` does for
    /// the endpoint's.
    pub org_active: usize,
    /// Lease terms on a shared database.
    pub lease: Option<Lease>,
}

/// What a lane request found: due deliveries, and when the endpoint's next pending delivery
/// that is not in flight falls due (`None` if it has none).
#[derive(Debug, Clone)]
pub struct LaneWork {
    pub endpoint_id: String,
    pub due: Vec<DueDelivery>,
    pub next_due: Option<Timestamp>,
    /// Due work that other instances' leases hold back (the endpoint's bound or its
    /// organization's is reached across instances; PostgreSQL): the lane waits for a release
    /// to be announced, and looks again by itself at this moment at the latest (when the
    /// first of those leases runs out, should its holder have died).
    pub held_until: Option<Timestamp>,
}

/// What recording an attempt decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// When the delivery is due again, if it is still pending.
    pub next_due: Option<Timestamp>,
    /// The attempt disabled its endpoint (410, or failing for too long).
    pub endpoint_disabled: bool,
    /// Recording wrote operational events (`endpoint.disabled`, `delivery.failed`): they are
    /// to be numbered ([`Store::number_written_events`]) and fan-out has work.
    pub events: bool,
}

/// Most rows one list request reads from the index it walks. Filters that the index does not
/// lead with are checked on each row; a walk that reaches this bound before its page is full
/// answers a short page (even an empty one) whose `next_cursor` continues the walk, so no
/// filter, however rare its matches, holds a reader (a SQLite connection, a PostgreSQL
/// snapshot) for more than one bounded batch.
pub const LIST_SCAN_ROWS: usize = 1_000;

/// Filters of `GET /v1/events`.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub event_type: Option<EventType>,
    /// The user the events are about (deleted users included).
    pub user_id: Option<String>,
    /// Events that occurred before this may have been purged by retention: a cursor naming
    /// an event that is gone, made before this, continues with the next event kept (the first
    /// that occurred at or after the cursor's ID time) instead of being refused.
    pub purged_before: Option<Timestamp>,
}

/// The index an events list walks, in commit order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventWalk {
    /// The organization's events.
    Org,
    /// Its events of one type.
    Type,
    /// Its events about one user.
    User,
}

impl EventWalk {
    pub const ALL: [EventWalk; 3] = [EventWalk::Org, EventWalk::Type, EventWalk::User];
}

impl EventFilter {
    /// The index that leads with the most selective filter present: a user's events are a
    /// handful, a type's are a share of everything.
    pub fn walk(&self) -> EventWalk {
        match (&self.user_id, &self.event_type) {
            (Some(_), _) => EventWalk::User,
            (None, Some(_)) => EventWalk::Type,
            (None, None) => EventWalk::Org,
        }
    }
}

/// Filters of `GET /v1/deliveries`.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub endpoint_id: Option<String>,
    pub event_id: Option<String>,
    /// The user the delivered events are about (deleted users included).
    pub user_id: Option<String>,
    pub event_type: Option<String>,
    pub status: Option<crate::domain::delivery::DeliveryStatus>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

/// The index a deliveries list walks, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryWalk {
    /// The organization's deliveries.
    Org,
    /// One endpoint's.
    Endpoint,
    /// Those of one user's events.
    User,
    /// One event's.
    Event,
}

impl DeliveryWalk {
    pub const ALL: [DeliveryWalk; 4] = [
        DeliveryWalk::Org,
        DeliveryWalk::Endpoint,
        DeliveryWalk::User,
        DeliveryWalk::Event,
    ];
}

impl DeliveryFilter {
    /// The index that leads with the most selective filter present: one event has a delivery
    /// per endpoint at most; one user's events times the endpoints are next; an endpoint gets
    /// every event of its organization. The other filters are checked on each row walked.
    pub fn walk(&self) -> DeliveryWalk {
        if self.event_id.is_some() {
            DeliveryWalk::Event
        } else if self.user_id.is_some() {
            DeliveryWalk::User
        } else if self.endpoint_id.is_some() {
            DeliveryWalk::Endpoint
        } else {
            DeliveryWalk::Org
        }
    }
}

/// One page of a filtered list. `next_cursor` is the last item's ID when more matches follow,
/// or, when the walk reached [`LIST_SCAN_ROWS`] first, the ID of the last row it read (the
/// page is then short, possibly empty); `None` when the walk reached the end.
#[derive(Debug)]
pub struct ListPage<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> ListPage<T> {
    /// Nothing matches, and nothing will after it either.
    pub fn empty() -> ListPage<T> {
        ListPage {
            items: Vec::new(),
            next_cursor: None,
        }
    }
}

/// A page being collected from a walk over one index in list order. The walk reads at most
/// `LIST_SCAN_ROWS + 1` rows (`LIMIT`): the extra one only says that more follow.
#[derive(Debug)]
pub struct Walk<T> {
    limit: usize,
    items: Vec<T>,
    read: usize,
    last_read: Option<String>,
    last_item: Option<String>,
    next_cursor: Option<String>,
}

impl<T> Walk<T> {
    pub fn new(limit: usize) -> Walk<T> {
        Walk {
            limit,
            items: Vec::with_capacity(limit.min(64)),
            read: 0,
            last_read: None,
            last_item: None,
            next_cursor: None,
        }
    }

    /// Takes the next row of the walk: its ID and, if it passes every filter, the item.
    /// `false` once the page is decided: read no further.
    #[must_use]
    pub fn push(&mut self, id: String, item: Option<T>) -> bool {
        if self.read == LIST_SCAN_ROWS {
            self.next_cursor = self.last_read.take();
            return false;
        }
        if item.is_some() && self.items.len() == self.limit {
            self.next_cursor = self.last_item.take();
            return false;
        }
        self.read += 1;
        if let Some(item) = item {
            self.items.push(item);
            self.last_item = Some(id.clone());
        }
        self.last_read = Some(id);
        true
    }

    /// The page, once the walk stopped (or ran out of rows: then nothing follows).
    pub fn finish(self) -> ListPage<T> {
        ListPage {
            items: self.items,
            next_cursor: self.next_cursor,
        }
    }
}

#[cfg(test)]
mod walk_tests {
    use super::{LIST_SCAN_ROWS, ListPage, Walk};

    /// Feeds rows `r1, r2, …` (as many as a walk's `LIMIT` lets through), `matches(n)` saying
    /// which pass the filters, until the walk stops.
    fn walk(rows: usize, limit: usize, matches: impl Fn(usize) -> bool) -> ListPage<usize> {
        let mut walk = Walk::new(limit);
        for n in (1..=rows).take(LIST_SCAN_ROWS + 1) {
            if !walk.push(format!("r{n}"), matches(n).then_some(n)) {
                break;
            }
        }
        walk.finish()
    }

    #[test]
    fn a_full_page_ends_at_its_last_item_when_more_match() {
        let page = walk(10, 3, |_| true);
        assert_eq!(page.items, [1, 2, 3]);
        assert_eq!(page.next_cursor.as_deref(), Some("r3"));
        let page = walk(12, 3, |n| n % 3 == 0);
        assert_eq!(page.items, [3, 6, 9]);
        assert_eq!(page.next_cursor.as_deref(), Some("r9"));
    }

    #[test]
    fn the_end_of_the_rows_ends_the_list() {
        let page = walk(3, 3, |_| true);
        assert_eq!(page.items, [1, 2, 3]);
        assert_eq!(page.next_cursor, None);
        let page = walk(10, 3, |n| n == 4);
        assert_eq!(page.items, [4]);
        assert_eq!(page.next_cursor, None);
    }

    #[test]
    fn a_walk_that_reaches_the_bound_answers_short_with_where_it_stopped() {
        let page = walk(5_000, 50, |n| n == 7 || n == 4_000);
        assert_eq!(page.items, [7]);
        let stop = format!("r{LIST_SCAN_ROWS}");
        assert_eq!(page.next_cursor.as_deref(), Some(stop.as_str()));
        let page = walk(5_000, 50, |_| false);
        assert!(page.items.is_empty());
        assert_eq!(page.next_cursor.as_deref(), Some(stop.as_str()));
        // Exactly the bound, and nothing after it: the list has ended.
        let page = walk(LIST_SCAN_ROWS, 50, |_| false);
        assert_eq!(page.next_cursor, None);
    }
}

/// Gauges of the delivery queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeliveryStats {
    pub due: u64,
    pub oldest_due: Option<Timestamp>,
    pub disabled_endpoints: u64,
    /// Pending deliveries of `per_user` endpoints waiting behind an earlier one of their user
    /// (counted up to [`ORDERED_WAITING_COUNTED`]).
    pub ordered_waiting: u64,
}
