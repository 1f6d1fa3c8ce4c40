//! The PostgreSQL backend: the same store as SQLite for any number of instances sharing one
//! database.
//!
//! - Every method runs in its own transaction; concurrent changes to one user are serialised
//!   with `SELECT … FOR UPDATE`, email uniqueness and idempotency keys are database constraints.
//!   Creations without an Idempotency-Key are group-committed (`intake`).
//! - **Events cursor**: `seq` is taken before commit, so it is not commit order. After each
//!   commit that wrote events, a sequencer step (one at a time, under a row lock) numbers the
//!   committed events that have no `commit_seq` yet; readers follow `commit_seq`, so an event
//!   that commits late is numbered after everything already readable and `after=` never skips
//!   it. The API answers only after its events are numbered (read-your-writes). A batch of
//!   creations numbers its own events while holding the sequencer's lock, which gives the same
//!   order without the extra step.
//! - **Idempotency-Key**: the key's row is inserted first in the request's transaction; a
//!   concurrent duplicate blocks on the unique index until the first commits, then replays its
//!   response (as on SQLite, the duplicate waits rather than getting a 409).
//! - Timestamps are bigint milliseconds, like SQLite, so both render identically.

mod cached;
mod deliveries;
mod intake;
#[cfg(test)]
mod keyed_plans;
mod keys;
mod leasing;
mod lifetime;
#[cfg(test)]
mod list_plans;
mod pacing;
mod pipelined;
mod rollups;
mod secrets;
#[cfg(test)]
mod test_db;
pub mod tls;
mod ui;

use cached::Cached;

use std::sync::Arc;

use accommador_webhooks::EventType;
use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Transaction};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use super::{
    CreatedOrg, EventFilter, EventWalk, IDEMPOTENCY_TTL_MS, IdempotencyRequest, Idempotent,
    LIST_SCAN_ROWS, ListPage, Page, RenderSaved, SavedResponse, StoreError, StoredEvent, Walk,
};
use crate::domain::Timestamp;
use crate::domain::endpoint::{
    DeliveryOrder, EndpointPatch, EndpointRecord, EndpointStatus, EventTypeFilter, NewEndpoint,
    SECRET_OVERLAP_MS,
};
use crate::domain::event::{NewEvent, OperationalEvent};
use crate::domain::ids;
use crate::domain::org::NewApiKey;
use crate::domain::secret_box::{Sealed, SecretKeys};
use crate::domain::user::{NewUser, UserPatch, UserRecord, tombstone};

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_leases.sql"),
    include_str!("../../migrations/postgres/0003_commit_order.sql"),
    include_str!("../../migrations/postgres/0004_leased_index.sql"),
    include_str!("../../migrations/postgres/0005_lighter_writes.sql"),
    include_str!("../../migrations/postgres/0006_cancel_pending.sql"),
    include_str!("../../migrations/postgres/0007_fanout_partial.sql"),
    include_str!("../../migrations/postgres/0008_user_filter.sql"),
    include_str!("../../migrations/postgres/0009_retention_erasure.sql"),
    include_str!("../../migrations/postgres/0010_api_key_names.sql"),
    include_str!("../../migrations/postgres/0011_secret_encryption.sql"),
    include_str!("../../migrations/postgres/0012_operational_events.sql"),
    include_str!("../../migrations/postgres/0013_leasing.sql"),
    include_str!("../../migrations/postgres/0014_ui.sql"),
    include_str!("../../migrations/postgres/0015_ordering.sql"),
    include_str!("../../migrations/postgres/0016_rate_limit.sql"),
    include_str!("../../migrations/postgres/0017_rollups.sql"),
    include_str!("../../migrations/postgres/0018_tenants.sql"),
    include_str!("../../migrations/postgres/0019_last_error.sql"),
    include_str!("../../migrations/postgres/0020_ordered_recheck.sql"),
];
/// Most events numbered by one sequencer step.
const SEQUENCE_STEP: i64 = 1000;
/// Requests waiting in each of the intake and sequencer queues at most. A full queue makes
/// further requests wait for room (back-pressure on the API), never fail or pile up; a few
/// thousand keep group commit effective (the intake writes batches of 256).
const QUEUE_CAPACITY: usize = 4096;
/// Serialises migrations of instances starting together.
const MIGRATION_LOCK: i64 = 0x00ac_c0d0_2026;

/// Connections of the background pool: the event sequencer, fan-out, leasing, recording
/// attempts and wake-up notices each hold at most one at a time.
const BACKGROUND_POOL: usize = 6;

#[derive(Clone)]
pub struct PgStore {
    /// The API's connections (`database_pool_size`).
    pool: Pool,
    /// The delivery side's and the sequencer's own connections, so a burst of API requests
    /// never starves fan-out, leasing or acknowledgements (nor the reverse).
    background: Pool,
    url: String,
    /// How connections are made (TLS as the URL's `sslmode` says); the LISTEN session's too.
    connect: Arc<tls::PgConnect>,
    /// The keys that seal and open endpoint secrets ([`crate::store::Store::with_secret_keys`]).
    pub(super) keys: Arc<SecretKeys>,
    /// Requests to number committed events, served in batches (see `sequence_after_commit`);
    /// bounded ([`QUEUE_CAPACITY`]).
    sequencer: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
    /// User creations without an Idempotency-Key, written in batches (see `intake`); bounded
    /// ([`QUEUE_CAPACITY`]).
    intake: tokio::sync::mpsc::Sender<intake::Creation>,
    /// When this instance last took up left-over recheck notes and swept waiting deliveries
    /// (`deliveries::recheck_ordered`, `deliveries::sweep_waiting`).
    upkept_at: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// Where this instance's sweep of waiting deliveries goes on from
    /// (`deliveries::sweep_waiting`).
    swept_through: Arc<std::sync::atomic::AtomicI64>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    StoreError::database(e)
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::database(e)
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

fn conversion(what: impl Into<String>) -> StoreError {
    StoreError::database(std::io::Error::other(what.into()))
}

/// Session settings of the background pool's connections (see [`PgStore::open`]).
const BACKGROUND_OPTIONS: &str = "-c plan_cache_mode=force_custom_plan -c jit=off";

impl PgStore {
    /// Connects (`pool_size` connections for the API, a few more for the delivery side, both
    /// opened on demand) and applies the migrations this database has not seen.
    pub async fn open(url: &str, pool_size: usize) -> anyhow::Result<PgStore> {
        PgStore::open_with_queues(url, pool_size, QUEUE_CAPACITY).await
    }

    /// As [`PgStore::open`], with `queue_capacity` for the intake and sequencer queues (tests
    /// use tiny ones).
    async fn open_with_queues(
        url: &str,
        pool_size: usize,
        queue_capacity: usize,
    ) -> anyhow::Result<PgStore> {
        // Errors name the database, never its password.
        let connect = tls::PgConnect::parse(url)?;
        let config = connect.config.clone();
        // The background statements run on every step for the life of the process: a plan
        // cached while the tables were small (a seq scan where an index lookup is right) would
        // stay, so they are planned for the current table sizes each time (parsing is still
        // cached).
        let mut background_config = config.clone();
        // No JIT either: a bounded step's estimate can be far above its cost (no statistics
        // yet, say), and compiling its expressions then took longer than running them.
        // Added to any options the URL sets (a search_path, say), not in their place.
        let options = match config.get_options() {
            Some(given) => format!("{given} {BACKGROUND_OPTIONS}"),
            None => BACKGROUND_OPTIONS.to_owned(),
        };
        background_config.options(&options);
        let pool = |config: &tokio_postgres::Config, size: usize| {
            let manager = Manager::from_config(
                config.clone(),
                connect.tls.clone(),
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Pool::builder(manager)
                .max_size(size)
                .wait_timeout(Some(std::time::Duration::from_secs(10)))
                .create_timeout(Some(std::time::Duration::from_secs(5)))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .context("building the PostgreSQL pool")
        };
        let (sequencer, requests) = tokio::sync::mpsc::channel(queue_capacity);
        let (intake, creations) = tokio::sync::mpsc::channel(queue_capacity);
        let store = PgStore {
            pool: pool(&config, pool_size.max(2))?,
            background: pool(&background_config, BACKGROUND_POOL)?,
            url: url.to_owned(),
            connect: Arc::new(connect),
            sequencer,
            intake,
            keys: Arc::default(),
            upkept_at: Arc::default(),
            swept_through: Arc::default(),
        };
        store.migrate().await?;
        tokio::spawn(run_sequencer(store.clone(), requests));
        tokio::spawn(intake::run(store.clone(), creations));
        // Events a crashed process committed but did not number yet.
        store.sequence_events().await?;
        Ok(store)
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        let mut client = self.pool.get().await.with_context(|| {
            format!(
                "connecting to PostgreSQL at {}",
                crate::config::redact_database_url(&self.url)
            )
        })?;
        let tx = client.transaction().await?;
        tx.run("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS accommador_migrations (
                 version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
        let applied: i32 = tx
            .fetch_one(
                "SELECT COALESCE(MAX(version), 0) FROM accommador_migrations",
                &[],
            )
            .await?
            .get(0);
        let applied = applied as usize;
        if applied > MIGRATIONS.len() {
            anyhow::bail!(
                "the database was migrated by a newer accommador (schema {applied}, this build knows {})",
                MIGRATIONS.len()
            );
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
            tx.batch_execute(sql)
                .await
                .with_context(|| format!("applying PostgreSQL migration {}", i + 1))?;
            tx.run(
                "INSERT INTO accommador_migrations (version) VALUES ($1)",
                &[&((i + 1) as i32)],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// How to open a connection of one's own (the LISTEN session).
    pub fn connector(&self) -> &tls::PgConnect {
        &self.connect
    }

    /// A pooled connection for an API request.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }

    /// A connection of the background pool (sequencer, fan-out, leasing, recording).
    async fn background_client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.background.get().await.map_err(pool_err)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(pg_err)?;
        Ok(())
    }

    pub async fn create_org(&self, name: String, key: NewApiKey) -> Result<CreatedOrg, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let now = Timestamp::now().millis();
        let id = ids::new_id(ids::ORG);
        tx.run(
            "INSERT INTO organizations (id, name, created_at) VALUES ($1, $2, $3)",
            &[&id, &name, &now],
        )
        .await
        .map_err(pg_err)?;
        tx.run(
            "INSERT INTO api_keys (id, org_id, lookup, hash, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[&ids::new_id(ids::API_KEY), &id, &key.lookup, &key.hash.as_slice(), &now],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(CreatedOrg {
            id,
            name,
            api_key: key.plain,
        })
    }

    pub async fn create_user(
        &self,
        org: String,
        new: NewUser,
        idempotency: Option<IdempotencyRequest>,
        render: RenderSaved<UserRecord>,
    ) -> Result<Idempotent<UserRecord>, StoreError> {
        if idempotency.is_none() {
            return self.create_user_at_once(org, new).await;
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let now = Timestamp::now();
        if let Some(req) = &idempotency {
            // A request with this key still running on any instance holds this lock until it
            // commits: the duplicate is answered 409 at once instead of waiting for it.
            let free: bool = tx
                .fetch_one(
                    "SELECT pg_try_advisory_xact_lock(hashtextextended($1 || ':' || $2, 11))",
                    &[&org, &req.key],
                )
                .await
                .map_err(pg_err)?
                .get(0);
            if !free {
                return Err(StoreError::IdempotencyInProgress);
            }
            // Drop an expired record, then claim the key (a finished request's key is taken:
            // we replay its response).
            tx.run(
                "DELETE FROM idempotency_keys WHERE org_id = $1 AND key = $2 AND created_at < $3",
                &[&org, &req.key, &(now.millis() - IDEMPOTENCY_TTL_MS)],
            )
            .await
            .map_err(pg_err)?;
            let claimed = tx
                .run(
                    "INSERT INTO idempotency_keys (org_id, key, fingerprint, status, body, created_at)
                     VALUES ($1, $2, $3, 0, '', $4) ON CONFLICT DO NOTHING",
                    &[&org, &req.key, &req.fingerprint.as_slice(), &now.millis()],
                )
                .await
                .map_err(pg_err)?;
            if claimed == 0 {
                let row = tx
                    .fetch_one(
                        "SELECT fingerprint, status, body FROM idempotency_keys
                         WHERE org_id = $1 AND key = $2",
                        &[&org, &req.key],
                    )
                    .await
                    .map_err(pg_err)?;
                let fingerprint: Vec<u8> = row.get(0);
                // Empty: the response showed a user since erased; replayed whatever the request.
                if !fingerprint.is_empty() && fingerprint != req.fingerprint {
                    return Err(StoreError::IdempotencyMismatch);
                }
                let status: i32 = row.get(1);
                return Ok(Idempotent::Replay(SavedResponse {
                    status: status as u16,
                    body: row.get(2),
                }));
            }
        }
        let user = new.into_record(ids::new_id(ids::USER), now);
        tx.run("SAVEPOINT change", &[]).await.map_err(pg_err)?;
        let result = match insert_user(&tx, &org, &user).await {
            Ok(()) => insert_event(
                &tx,
                &org,
                &NewEvent::for_user(EventType::UserCreated, &user, None),
            )
            .await
            .map(|()| user),
            Err(e) => Err(e),
        };
        if result.is_err() {
            tx.run("ROLLBACK TO SAVEPOINT change", &[])
                .await
                .map_err(pg_err)?;
        }
        let outcome = match (&idempotency, render(&result)) {
            (Some(req), Some(saved)) => {
                let user_id = result.as_ref().ok().map(|u| u.id.as_str());
                tx.run(
                    "UPDATE idempotency_keys SET status = $3, body = $4, user_id = $5
                     WHERE org_id = $1 AND key = $2",
                    &[
                        &org,
                        &req.key,
                        &(saved.status as i32),
                        &saved.body,
                        &user_id,
                    ],
                )
                .await
                .map_err(pg_err)?;
                match result {
                    Ok(user) => Idempotent::Fresh(user),
                    Err(_) => Idempotent::Refused(saved),
                }
            }
            // Not saved (a server error): the key's claim rolls back with the rest.
            _ => Idempotent::Fresh(result?),
        };
        tx.commit().await.map_err(pg_err)?;
        // The connection goes back first: sequencing takes one of its own.
        drop(client);
        if matches!(outcome, Idempotent::Fresh(_)) {
            self.sequence_after_commit().await;
        }
        Ok(outcome)
    }

    /// A creation without an Idempotency-Key: written with whatever other creations are
    /// waiting, in one transaction that also numbers their events (see `intake`).
    async fn create_user_at_once(
        &self,
        org: String,
        new: NewUser,
    ) -> Result<Idempotent<UserRecord>, StoreError> {
        let user = new.into_record(ids::new_id(ids::USER), Timestamp::now());
        let event = NewEvent::for_user(EventType::UserCreated, &user, None);
        let (reply, written) = tokio::sync::oneshot::channel();
        // Waits for room while the queue is full.
        self.intake
            .send(intake::Creation {
                org,
                user: user.clone(),
                event,
                reply,
            })
            .await
            .map_err(|_| StoreError::database(std::io::Error::other("the user writer stopped")))?;
        written.await.map_err(|_| {
            StoreError::database(std::io::Error::other("the user writer stopped"))
        })??;
        Ok(Idempotent::Fresh(user))
    }

    /// After a commit that wrote events: number them now, so the caller reads its own write.
    /// The change is durable already; if numbering fails here, the next write or fan-out
    /// step numbers it, so the request still succeeds.
    ///
    /// Requests are served in batches, like a group commit: one sequencer step numbers every
    /// event committed before it started, so all requests that arrived while the previous
    /// step ran are answered by the next one (one lock, one commit for many writers).
    pub(super) async fn sequence_after_commit(&self) {
        let (done, numbered) = tokio::sync::oneshot::channel();
        // Waits for room while the queue is full.
        if self.sequencer.send(done).await.is_err() || numbered.await.is_err() {
            tracing::warn!("the event sequencer stopped; an idle fan-out step numbers events");
        }
    }

    /// Numbers committed events in commit order (see the module docs). Runs after the commit
    /// of every change that wrote events (creations number their own), and by an idle fan-out
    /// step (events a crashed process left).
    pub async fn sequence_events(&self) -> Result<u64, StoreError> {
        let mut client = self.background_client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        // One round trip: the lock, then the numbering. Bitmap scans and sorts are off so
        // that the unnumbered events are read in order from their partial index
        // (events_unsequenced), whose entries of numbered events a plain index scan marks dead
        // as it passes them. Left to itself, without statistics, the planner read
        // events_commit_order's NULL entries by bitmap instead: every event numbered since the
        // last vacuum, each step (3 ms a step after 35,000 events, in every write's latency).
        tx.batch_execute(&format!(
            "{SEQUENCE_SETTINGS}; SELECT 1 FROM event_sequencer WHERE id = 1 FOR UPDATE"
        ))
        .await
        .map_err(pg_err)?;
        let n = tx
            .run(SEQUENCE_EVENTS, &[&SEQUENCE_STEP])
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(n)
    }

    pub async fn get_user(&self, org: String, id: String) -> Result<UserRecord, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        live_user(&tx, &org, &id, false)
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn update_user(
        &self,
        org: String,
        id: String,
        patch: UserPatch,
    ) -> Result<UserRecord, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let user = live_user(&tx, &org, &id, true)
            .await?
            .ok_or(StoreError::NotFound)?;
        let Some((next, previous)) = patch.apply(&user, Timestamp::now()) else {
            return Ok(user);
        };
        tx.run(
            "UPDATE users SET email = $1, email_lower = $2, name = $3, attributes = $4,
                 version = $5, updated_at = $6 WHERE id = $7 AND org_id = $8",
            &[
                &next.email,
                &next.email.to_lowercase(),
                &next.name,
                &serde_json::to_string(&next.attributes).expect("JSON map serialises"),
                &(next.version as i64),
                &next.updated_at.millis(),
                &next.id,
                &org,
            ],
        )
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::EmailTaken
            } else {
                pg_err(e)
            }
        })?;
        insert_event(
            &tx,
            &org,
            &NewEvent::for_user(EventType::UserUpdated, &next, Some(previous)),
        )
        .await?;
        tx.commit().await.map_err(pg_err)?;
        // The connection goes back first: sequencing takes one of its own.
        drop(client);
        self.sequence_after_commit().await;
        Ok(next)
    }

    pub async fn delete_user(&self, org: String, id: String) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let user = live_user(&tx, &org, &id, true)
            .await?
            .ok_or(StoreError::NotFound)?;
        let last = tombstone(&user, Timestamp::now());
        tx.run(
            "UPDATE users SET version = $1, updated_at = $2, deleted_at = $2
             WHERE id = $3 AND org_id = $4",
            &[
                &(last.version as i64),
                &last.updated_at.millis(),
                &last.id,
                &org,
            ],
        )
        .await
        .map_err(pg_err)?;
        insert_event(
            &tx,
            &org,
            &NewEvent::for_user(EventType::UserDeleted, &last, None),
        )
        .await?;
        tx.commit().await.map_err(pg_err)?;
        drop(client);
        self.sequence_after_commit().await;
        Ok(())
    }

    pub async fn list_users(
        &self,
        org: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<Page<UserRecord>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let after_seq = cursor_seq(&tx, "users", &org, after.as_deref()).await?;
        let rows = tx
            .fetch(
                &format!(
                    "SELECT {USER_COLUMNS} FROM users
                     WHERE org_id = $1 AND deleted_at IS NULL AND seq > $2
                     ORDER BY seq LIMIT $3"
                ),
                &[&org, &after_seq, &(limit as i64 + 1)],
            )
            .await
            .map_err(pg_err)?;
        let items = rows.iter().map(user_from_row).collect::<Result<_, _>>()?;
        Ok(Page::from_fetched(items, limit))
    }

    /// Events in commit order, walking the index [`EventFilter::walk`] picks (statements in
    /// [`event_walk_sql`]); at most [`LIST_SCAN_ROWS`] rows a request.
    pub async fn list_events(
        &self,
        org: String,
        filter: EventFilter,
        after: Option<String>,
        limit: usize,
    ) -> Result<ListPage<StoredEvent>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        // One round trip checks the user filter and finds the cursor (an event of this
        // organization; one not numbered yet starts from the beginning).
        let facts = tx
            .fetch_one(
                "SELECT $2::text IS NULL
                        OR EXISTS (SELECT 1 FROM users WHERE id = $2 AND org_id = $1),
                        (SELECT COALESCE(commit_seq, 0) FROM events
                         WHERE id = $3::text AND org_id = $1)",
                &[&org, &filter.user_id, &after],
            )
            .await
            .map_err(pg_err)?;
        if !facts.get::<_, bool>(0) {
            return Err(StoreError::NotFound);
        }
        let after_seq: i64 = match (&after, facts.get::<_, Option<i64>>(1)) {
            (None, _) => 0,
            (Some(_), Some(seq)) => seq,
            (Some(cursor), None) => purged_cursor_seq(&tx, &org, cursor, filter.purged_before)
                .await?
                .ok_or(StoreError::UnknownCursor)?,
        };
        let event_type = filter.event_type.map(EventType::as_str);
        walk_rows(
            &tx,
            &event_walk_sql(filter.walk()),
            &[&org, &after_seq, &event_type, &filter.user_id],
            limit,
            true,
            |r| {
                let id: String = r.get(0);
                // The payload is NULL on a row that fails a filter.
                let item = r.get::<_, Option<String>>(1).map(|payload| StoredEvent {
                    id: id.clone(),
                    payload,
                });
                Ok((id, item))
            },
        )
        .await
    }

    pub async fn get_event(&self, org: String, id: String) -> Result<StoredEvent, StoreError> {
        let client = self.client().await?;
        client
            .fetch_opt(
                "SELECT id, payload FROM events
                 WHERE id = $1 AND org_id = $2 AND type <> 'webhook.test'",
                &[&id, &org],
            )
            .await
            .map_err(pg_err)?
            .map(|r| StoredEvent {
                id: r.get(0),
                payload: r.get(1),
            })
            .ok_or(StoreError::NotFound)
    }

    pub async fn purge_idempotency_keys(&self, now: Timestamp) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let n = client
            .run(
                "DELETE FROM idempotency_keys WHERE ctid IN (
                     SELECT ctid FROM idempotency_keys WHERE created_at < $1 LIMIT 5000)",
                &[&(now.millis() - IDEMPOTENCY_TTL_MS)],
            )
            .await
            .map_err(pg_err)?;
        Ok(n as usize)
    }

    pub async fn create_endpoint(
        &self,
        org: String,
        new: NewEndpoint,
        id: String,
        secret: Sealed,
    ) -> Result<EndpointRecord, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let now = Timestamp::now();
        let e = new.into_record(id, now);
        tx.run(
            "INSERT INTO endpoints (id, org_id, url, event_types, description, status,
                                    created_at, updated_at, ordering, rate_limit)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9)",
            &[
                &e.id,
                &org,
                &e.url,
                &event_types_json(&e.event_types),
                &e.description,
                &e.status.as_str(),
                &now.millis(),
                &e.ordering.as_str(),
                &e.rate_limit.map(|n| n as i32),
            ],
        )
        .await
        .map_err(pg_err)?;
        tx.run(
            "INSERT INTO endpoint_secrets (endpoint_id, secret, key_id, created_at)
             VALUES ($1, $2, $3, $4)",
            &[&e.id, &secret.value, &secret.key_id, &now.millis()],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(e)
    }

    pub async fn get_endpoint(
        &self,
        org: String,
        id: String,
    ) -> Result<EndpointRecord, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        live_endpoint(&tx, &org, &id, false)
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn list_endpoints(
        &self,
        org: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<Page<EndpointRecord>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let after_seq = cursor_seq(&tx, "endpoints", &org, after.as_deref()).await?;
        let rows = tx
            .fetch(
                &format!(
                    "SELECT {ENDPOINT_COLUMNS} FROM endpoints
                     WHERE org_id = $1 AND deleted_at IS NULL AND seq > $2
                     ORDER BY seq LIMIT $3"
                ),
                &[&org, &after_seq, &(limit as i64 + 1)],
            )
            .await
            .map_err(pg_err)?;
        let items = rows
            .iter()
            .map(endpoint_from_row)
            .collect::<Result<_, _>>()?;
        Ok(Page::from_fetched(items, limit))
    }

    /// Applies a patch; also says whether it wrote an event (`endpoint.disabled` or
    /// `endpoint.enabled`, in the same transaction as the change, numbered before this answers).
    pub async fn update_endpoint(
        &self,
        org: String,
        id: String,
        patch: EndpointPatch,
    ) -> Result<(EndpointRecord, bool), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let e = live_endpoint(&tx, &org, &id, true)
            .await?
            .ok_or(StoreError::NotFound)?;
        let Some(next) = patch.apply(&e, Timestamp::now()) else {
            return Ok((e, false));
        };
        tx.run(
            "UPDATE endpoints SET url = $1, event_types = $2, description = $3, status = $4,
                 disabled_reason = $5,
                 failing_since = CASE WHEN $4 = 'enabled' THEN NULL ELSE failing_since END,
                 cancel_pending = ($4 = 'disabled' OR cancel_pending),
                 cancel_through = CASE WHEN $4 = 'disabled'
                     THEN (SELECT COALESCE(max(seq), 0) FROM deliveries)
                     ELSE cancel_through END,
                 updated_at = $6, ordering = $9, rate_limit = $10
             WHERE id = $7 AND org_id = $8",
            &[
                &next.url,
                &event_types_json(&next.event_types),
                &next.description,
                &next.status.as_str(),
                &next.disabled_reason,
                &next.updated_at.millis(),
                &next.id,
                &org,
                &next.ordering.as_str(),
                &next.rate_limit.map(|n| n as i32),
            ],
        )
        .await
        .map_err(pg_err)?;
        // Disabled: its pending deliveries are failed in the background, in bounded batches
        // (`cancel_step`); none is leased from now on. Enabled again before that is over:
        // those queued before the disable (up to the fence) still fail. The row was locked
        // above, so the fence's statement sees every delivery a fan-out made for it.
        let event = OperationalEvent::for_endpoint_change(&e, &next);
        if let Some(event) = &event {
            insert_operational_event(&tx, &org, event).await?;
        }
        tx.commit().await.map_err(pg_err)?;
        if event.is_some() {
            // The connection goes back first: sequencing takes one of its own.
            drop(client);
            self.sequence_after_commit().await;
        }
        Ok((next, event.is_some()))
    }

    pub async fn delete_endpoint(&self, org: String, id: String) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let now = Timestamp::now();
        // Locked first, so the next statement's fence sees every delivery a fan-out that
        // held the row made for it.
        live_endpoint(&tx, &org, &id, true)
            .await?
            .ok_or(StoreError::NotFound)?;
        let changed = tx
            .run(
                "UPDATE endpoints SET deleted_at = $1, updated_at = $1, cancel_pending = true,
                     cancel_through = (SELECT COALESCE(max(seq), 0) FROM deliveries)
                 WHERE id = $2 AND org_id = $3 AND deleted_at IS NULL",
                &[&now.millis(), &id, &org],
            )
            .await
            .map_err(pg_err)?;
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        tx.run(
            "DELETE FROM endpoint_secrets WHERE endpoint_id = $1",
            &[&id],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)
    }

    pub async fn endpoint_secret(&self, org: String, id: String) -> Result<String, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        live_endpoint(&tx, &org, &id, false)
            .await?
            .ok_or(StoreError::NotFound)?;
        tx.fetch_one(
            "SELECT secret FROM endpoint_secrets WHERE endpoint_id = $1 AND expires_at IS NULL",
            &[&id],
        )
        .await
        .map(|r| r.get(0))
        .map_err(pg_err)
    }

    pub async fn rotate_endpoint_secret(
        &self,
        org: String,
        id: String,
        secret: Sealed,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        live_endpoint(&tx, &org, &id, true)
            .await?
            .ok_or(StoreError::NotFound)?;
        let now = Timestamp::now().millis();
        tx.run(
            "DELETE FROM endpoint_secrets WHERE endpoint_id = $1 AND expires_at IS NOT NULL",
            &[&id],
        )
        .await
        .map_err(pg_err)?;
        tx.run(
            "UPDATE endpoint_secrets SET expires_at = $2 WHERE endpoint_id = $1 AND expires_at IS NULL",
            &[&id, &(now + SECRET_OVERLAP_MS)],
        )
        .await
        .map_err(pg_err)?;
        tx.run(
            "INSERT INTO endpoint_secrets (endpoint_id, secret, key_id, created_at)
             VALUES ($1, $2, $3, $4)",
            &[&id, &secret.value, &secret.key_id, &now],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)
    }

    pub async fn signing_secrets(
        &self,
        org: String,
        id: String,
    ) -> Result<Vec<String>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        live_endpoint(&tx, &org, &id, false)
            .await?
            .ok_or(StoreError::NotFound)?;
        deliveries::signing_secrets(&tx, &id, Timestamp::now()).await
    }
}

/// The numbering step's settings (see [`PgStore::sequence_events`]; a plan test holds them to
/// it: `keyed_plans`).
const SEQUENCE_SETTINGS: &str = "SET LOCAL enable_bitmapscan TO off; SET LOCAL enable_sort TO off";

/// One numbering step: numbers are drawn in seq order (the innermost ORDER BY feeds nextval),
/// and the partial index on unnumbered events (events_unsequenced) keeps this off the whole
/// table. The limit is a parameter so the statement is planned for the table's current size
/// (see `open`), not once while it was empty.
const SEQUENCE_EVENTS: &str = "UPDATE events e SET commit_seq = n.cs
     FROM (SELECT q.seq, nextval('events_commit_seq') AS cs
           FROM (SELECT seq FROM events WHERE commit_seq IS NULL
                 ORDER BY seq LIMIT $1) q) n
     WHERE e.seq = n.seq";

/// Serves `sequence_after_commit` requests in batches until every sender is gone.
async fn run_sequencer(
    store: PgStore,
    mut requests: tokio::sync::mpsc::Receiver<tokio::sync::oneshot::Sender<()>>,
) {
    let mut waiting = Vec::new();
    while let Some(first) = requests.recv().await {
        waiting.push(first);
        while let Ok(more) = requests.try_recv() {
            waiting.push(more);
        }
        // Up to 1,000 events a step: keep stepping while a step was full.
        loop {
            match store.sequence_events().await {
                Ok(n) if n >= SEQUENCE_STEP as u64 => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "numbering committed events failed; the next step will");
                    break;
                }
            }
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

/// The statement of each events walk (`$1` the organization, `$2` the cursor's `commit_seq`,
/// `$3` the type, `$4` the user): the index that leads with the walk's filter and then
/// `commit_seq` (`events_org_commit_order`, `events_org_type_commit_order`,
/// `events_org_user_commit_order`) reads the range in commit order with no sort; the other
/// filters are checked on each row, whose payload is then NULL if it fails one.
pub(super) fn event_walk_sql(walk: EventWalk) -> String {
    let lead = match walk {
        EventWalk::Org => "",
        EventWalk::Type => "AND type = $3 ",
        EventWalk::User => "AND user_id = $4 ",
    };
    format!(
        "SELECT id, CASE WHEN type <> 'webhook.test' AND ($3::text IS NULL OR type = $3)
                         AND ($4::text IS NULL OR user_id = $4) THEN payload END
         FROM events
         WHERE org_id = $1 {lead}AND commit_seq > $2
         ORDER BY commit_seq LIMIT {}",
        LIST_SCAN_ROWS + 1
    )
}

/// For the rest of a list's transaction: no plan that sorts (see [`walk_rows`]). A walk sorts
/// by one key, so an incremental sort cannot arise.
pub(super) const IN_ORDER: &str = "SET LOCAL enable_sort = off";

/// Runs a list walk (a statement limited to `LIST_SCAN_ROWS + 1` rows) through a portal, in
/// batches: the first the size of a page, larger ones while filters reject rows, until `row`
/// (a row as its ID and, if it passes every filter, its item) has decided the page or the rows
/// run out. A page of rows that all match costs one batch, not the whole bound.
///
/// The statement is prepared afresh, so PostgreSQL plans it for these values: a cached
/// generic plan could walk another index for an organization whose share of the table is
/// far from the average. When an index yields the walk's order (`in_order`), plans that sort
/// are ruled out ([`IN_ORDER`]): for a value its statistics call rare, the planner would
/// otherwise read all of its rows by bitmap and sort them, a cost bounded only by how
/// current those statistics are.
pub(super) async fn walk_rows<T>(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    limit: usize,
    in_order: bool,
    row: impl Fn(&Row) -> Result<(String, Option<T>), StoreError>,
) -> Result<ListPage<T>, StoreError> {
    let statement = if in_order {
        // One round trip: the settings are in place before `bind` plans the statement.
        tokio::try_join!(tx.batch_execute(IN_ORDER), tx.prepare(sql))
            .map_err(pg_err)?
            .1
    } else {
        tx.prepare(sql).await.map_err(pg_err)?
    };
    let portal = tx.bind(&statement, params).await.map_err(pg_err)?;
    let mut walk = Walk::new(limit);
    let mut batch = limit + 1;
    loop {
        let rows = tx
            .query_portal(&portal, batch as i32)
            .await
            .map_err(pg_err)?;
        let exhausted = rows.len() < batch;
        for r in &rows {
            let (id, item) = row(r)?;
            if !walk.push(id, item) {
                return Ok(walk.finish());
            }
        }
        if exhausted {
            return Ok(walk.finish());
        }
        batch = (batch * 4).min(LIST_SCAN_ROWS + 1);
    }
}

/// Where an events walk continues after a cursor that names an event no longer stored: when
/// the cursor is an event ID made before the purge horizon, just before the organization's
/// first event (in commit order) that occurred at or after the ID's time; `None` otherwise.
async fn purged_cursor_seq(
    tx: &Transaction<'_>,
    org: &str,
    cursor: &str,
    purged_before: Option<Timestamp>,
) -> Result<Option<i64>, StoreError> {
    let made = ids::time_of(cursor, ids::EVENT);
    let (Some(made), Some(horizon)) = (made, purged_before) else {
        return Ok(None);
    };
    if made >= horizon {
        return Ok(None);
    }
    let row = tx
        .fetch_one(
            "SELECT COALESCE(
                 (SELECT commit_seq - 1 FROM events
                  WHERE org_id = $1 AND commit_seq IS NOT NULL AND occurred_at >= $2
                  ORDER BY commit_seq LIMIT 1),
                 (SELECT MAX(commit_seq) FROM events WHERE org_id = $1),
                 0)",
            &[&org, &made.millis()],
        )
        .await
        .map_err(pg_err)?;
    Ok(Some(row.get(0)))
}

/// The `seq` of the row of `table` whose ID is the cursor (0 without one).
async fn cursor_seq(
    tx: &Transaction<'_>,
    table: &'static str,
    org: &str,
    after: Option<&str>,
) -> Result<i64, StoreError> {
    let Some(id) = after else {
        return Ok(0);
    };
    tx.fetch_opt(
        &format!("SELECT seq FROM {table} WHERE id = $1 AND org_id = $2"),
        &[&id, &org],
    )
    .await
    .map_err(pg_err)?
    .map(|r| r.get(0))
    .ok_or(StoreError::UnknownCursor)
}

const USER_COLUMNS: &str =
    "id, email, name, attributes, version, created_at, updated_at, deleted_at";

fn user_from_row(r: &Row) -> Result<UserRecord, StoreError> {
    let attributes: String = r.get(3);
    let version: i64 = r.get(4);
    Ok(UserRecord {
        id: r.get(0),
        email: r.get(1),
        name: r.get(2),
        attributes: serde_json::from_str(&attributes).map_err(StoreError::database)?,
        version: version as u64,
        created_at: Timestamp(r.get(5)),
        updated_at: Timestamp(r.get(6)),
        deleted_at: r.get::<_, Option<i64>>(7).map(Timestamp),
    })
}

async fn live_user(
    tx: &Transaction<'_>,
    org: &str,
    id: &str,
    for_update: bool,
) -> Result<Option<UserRecord>, StoreError> {
    tx.fetch_opt(&live_user_sql(for_update), &[&id, &org])
        .await
        .map_err(pg_err)?
        .map(|r| user_from_row(&r))
        .transpose()
}

/// A live user by ID (`$1`) in its organization (`$2`), by the ID's unique index: `org_id = $2`
/// is kept from being an index condition (without table statistics the planner would walk the
/// organization's live list, every user of it, for each lookup; `keyed_plans` tests it).
fn live_user_sql(for_update: bool) -> String {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    format!(
        "SELECT {USER_COLUMNS} FROM users
         WHERE id = $1 AND (org_id = $2) IS TRUE AND deleted_at IS NULL{lock}"
    )
}

async fn insert_user(tx: &Transaction<'_>, org: &str, u: &UserRecord) -> Result<(), StoreError> {
    tx.run(
        "INSERT INTO users (id, org_id, email, email_lower, name, attributes, version,
                            created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &u.id,
            &org,
            &u.email,
            &u.email.to_lowercase(),
            &u.name,
            &serde_json::to_string(&u.attributes).expect("JSON map serialises"),
            &(u.version as i64),
            &u.created_at.millis(),
            &u.updated_at.millis(),
        ],
    )
    .await
    .map(|_| ())
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::EmailTaken
        } else {
            pg_err(e)
        }
    })
}

async fn insert_event(tx: &Transaction<'_>, org: &str, e: &NewEvent) -> Result<(), StoreError> {
    tx.run(
        "INSERT INTO events (id, org_id, type, user_id, user_version, occurred_at, payload)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &e.id,
            &org,
            &e.event_type.as_str(),
            &e.user_id,
            &(e.user_version as i64),
            &e.occurred_at.millis(),
            &e.payload,
        ],
    )
    .await
    .map(|_| ())
    .map_err(pg_err)
}

/// Writes an operational event; fan-out sends it to the endpoints that list its type, except
/// the one it is about. Numbered by the sequencer after the commit, like every event.
pub(super) async fn insert_operational_event(
    tx: &impl Cached,
    org: &str,
    e: &OperationalEvent,
) -> Result<(), StoreError> {
    tx.run(
        "INSERT INTO events (id, org_id, type, about_endpoint, occurred_at, payload)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &e.id,
            &org,
            &e.event_type.as_str(),
            &e.about_endpoint,
            &e.occurred_at.millis(),
            &e.payload,
        ],
    )
    .await
    .map(|_| ())
    .map_err(pg_err)
}

pub(super) const ENDPOINT_COLUMNS: &str = "id, url, event_types, description, status, \
     disabled_reason, created_at, updated_at, ordering, rate_limit, current_concurrency";

fn event_types_json(f: &EventTypeFilter) -> String {
    serde_json::to_string(&f.names()).expect("names serialise")
}

pub(super) fn endpoint_from_row(r: &Row) -> Result<EndpointRecord, StoreError> {
    let types: String = r.get(2);
    let names: Vec<String> = serde_json::from_str(&types).map_err(StoreError::database)?;
    let status: String = r.get(4);
    Ok(EndpointRecord {
        id: r.get(0),
        url: r.get(1),
        event_types: EventTypeFilter::from_names(names.iter().map(String::as_str))
            .map_err(conversion)?,
        description: r.get(3),
        status: EndpointStatus::parse(&status)
            .ok_or_else(|| conversion(format!("unknown endpoint status {status:?}")))?,
        disabled_reason: r.get(5),
        ordering: {
            let ordering: &str = r.get(8);
            DeliveryOrder::parse(ordering)
                .ok_or_else(|| conversion(format!("unknown ordering {ordering:?}")))?
        },
        created_at: Timestamp(r.get(6)),
        updated_at: Timestamp(r.get(7)),
        rate_limit: r.get::<_, Option<i32>>(9).map(|n| n.max(1) as u32),
        concurrency: r.get::<_, Option<i32>>(10).map(|n| n.max(1) as u32),
    })
}

/// A live endpoint by ID (`$1`) in its organization (`$2`), by the ID's unique index, as
/// [`live_user_sql`] reads a user.
fn live_endpoint_sql(for_update: bool) -> String {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    format!(
        "SELECT {ENDPOINT_COLUMNS} FROM endpoints
         WHERE id = $1 AND (org_id = $2) IS TRUE AND deleted_at IS NULL{lock}"
    )
}

async fn live_endpoint(
    tx: &Transaction<'_>,
    org: &str,
    id: &str,
    for_update: bool,
) -> Result<Option<EndpointRecord>, StoreError> {
    tx.fetch_opt(&live_endpoint_sql(for_update), &[&id, &org])
        .await
        .map_err(pg_err)?
        .map(|r| endpoint_from_row(&r))
        .transpose()
}
