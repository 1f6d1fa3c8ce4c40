//! The embedded SQLite backend.
//!
//! - **Durability**: WAL with `synchronous=FULL`; a request is answered only after the commit
//!   that holds its change has reached the disk.
//! - **One writer, group commit**: every write is a job sent to one writer thread. The thread
//!   takes whatever jobs are waiting (up to [`MAX_BATCH`]), runs each inside its own savepoint
//!   of one transaction (a job that fails rolls back alone), commits once, and only then answers
//!   every job. Under load one fsync serves many requests.
//!   If SQLite rolls back the whole transaction (I/O error, full disk), every job of that batch
//!   is answered with an error and nothing of it is committed; the jobs it did not reach run in
//!   the next batch. A job that panics is rolled back alone like a failed one.
//! - **Idempotency-Key**: the key's record is written in the same savepoint as the change it
//!   answers. Because one writer runs every job, a duplicate that arrives while the first is
//!   running waits for its commit and gets the replay: SQLite never needs DESIGN's
//!   "409 while the first request is still running" (it is kept for backends with concurrent
//!   writers).
//! - **Reads** go through a small pool of connections on the blocking thread pool; WAL lets them
//!   run beside the writer.
//! - **Ownership**: a server takes an OS lock on `PATH.lock`; a second server on the same file
//!   refuses to start. The OS drops the lock when a process dies, so nothing stale is left.
//!   Tools (`migrate`, `orgs create`) write beside a server, waiting on SQLite's busy timeout.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use accommador_webhooks::EventType;
use anyhow::Context;
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{
    CreatedOrg, EventFilter, EventWalk, IDEMPOTENCY_TTL_MS, IdempotencyRequest, Idempotent,
    LIST_SCAN_ROWS, ListPage, Ownership, Page, RenderSaved, SavedResponse, StoreError, StoredEvent,
    Walk,
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

/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 512;
/// Jobs waiting for the writer before senders wait (back-pressure, bounded memory).
const QUEUE_DEPTH: usize = 4096;
const READERS: usize = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_endpoints.sql"),
    include_str!("../../migrations/sqlite/0003_deliveries.sql"),
    include_str!("../../migrations/sqlite/0004_cancel_pending.sql"),
    include_str!("../../migrations/sqlite/0005_fanout_partial.sql"),
    include_str!("../../migrations/sqlite/0006_user_filter.sql"),
    include_str!("../../migrations/sqlite/0007_retention_erasure.sql"),
    include_str!("../../migrations/sqlite/0008_api_key_names.sql"),
    include_str!("../../migrations/sqlite/0009_secret_encryption.sql"),
    include_str!("../../migrations/sqlite/0010_operational_events.sql"),
    include_str!("../../migrations/sqlite/0012_ui.sql"),
    include_str!("../../migrations/sqlite/0013_ordering.sql"),
    include_str!("../../migrations/sqlite/0014_rate_limit.sql"),
    include_str!("../../migrations/sqlite/0015_rollups.sql"),
    include_str!("../../migrations/sqlite/0016_tenants.sql"),
    include_str!("../../migrations/sqlite/0017_last_error.sql"),
];

pub mod backup;
mod deliveries;
mod keys;
mod lifetime;
#[cfg(test)]
mod list_plans;
mod pacing;
mod rollups;
mod secrets;
mod ui;

type Finish = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> (bool, Finish) + Send>;

#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
    /// The keys that seal and open endpoint secrets ([`crate::store::Store::with_secret_keys`]).
    pub(super) keys: Arc<SecretKeys>,
}

struct Inner {
    path: PathBuf,
    writer: mpsc::Sender<Job>,
    readers: Mutex<Vec<Connection>>,
    read_permits: Semaphore,
    _lock: Option<File>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::database(e)
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == ErrorCode::ConstraintViolation
            && f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

fn open_connection(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)
        .with_context(|| format!("opening SQLite database {}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Deleted and overwritten content is zeroed, so an erased value leaves no bytes behind in
    // the file (DESIGN §10, erasure).
    conn.pragma_update(None, "secure_delete", "ON")?;
    // Sorts and temporary indexes in memory: the benchmark saw the writer open a file in
    // /var/tmp on most commits.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

/// Applies the migrations the file has not seen, tracked in `PRAGMA user_version`.
fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let applied: usize = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if applied > MIGRATIONS.len() {
        anyhow::bail!(
            "the database was migrated by a newer accommador (schema {applied}, this build knows {})",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.execute_batch(sql)
            .with_context(|| format!("applying SQLite migration {}", i + 1))?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len())?;
    tx.commit()?;
    Ok(())
}

impl SqliteStore {
    pub fn open(path: &Path, ownership: Ownership) -> anyhow::Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating directory {}", dir.display()))?;
        }
        let lock = match ownership {
            Ownership::Server => Some(take_lock(path)?),
            Ownership::Tool => None,
        };
        let mut writer = open_connection(path)?;
        migrate(&mut writer)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let conn = open_connection(path)?;
            conn.pragma_update(None, "query_only", "ON")?;
            readers.push(conn);
        }
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(writer, rx))
            .context("starting the SQLite writer thread")?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: tx,
                readers: Mutex::new(readers),
                read_permits: Semaphore::new(READERS),
                _lock: lock,
            }),
            keys: Arc::default(),
        })
    }

    /// Runs `f` in the next group commit; answers after the commit, or with the job's error.
    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            let ok = result.is_ok();
            let finish: Finish = Box::new(move |committed| {
                let _ = tx.send(committed.and(result));
            });
            (ok, finish)
        });
        self.inner
            .writer
            .send(job)
            .await
            .map_err(|_| StoreError::database(WriteAborted))?;
        rx.await.map_err(|_| StoreError::database(WriteAborted))?
    }

    /// Runs `f` on a pooled read connection on the blocking thread pool.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let _permit = self
            .inner
            .read_permits
            .acquire()
            .await
            .map_err(StoreError::database)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = PooledReader::take(&inner);
            f(conn.0.as_ref().expect("taken until dropped"))
        })
        .await
        .map_err(StoreError::database)?
    }

    /// Whether the writer thread still takes work (it stops only if it died).
    pub fn writer_alive(&self) -> bool {
        !self.inner.writer.is_closed()
    }

    /// Ready when a read answers and the writer still takes work.
    pub async fn ping(&self) -> Result<(), StoreError> {
        if !self.writer_alive() {
            return Err(StoreError::database(WriteAborted));
        }
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(db_err))
            .await
    }

    pub async fn create_org(&self, name: String, key: NewApiKey) -> Result<CreatedOrg, StoreError> {
        self.write(move |c| {
            let now = Timestamp::now().millis();
            let id = ids::new_id(ids::ORG);
            c.prepare_cached("INSERT INTO organizations (id, name, created_at) VALUES (?1, ?2, ?3)")
                .and_then(|mut s| s.execute(params![id, name, now]))
                .map_err(db_err)?;
            c.prepare_cached(
                "INSERT INTO api_keys (id, org_id, lookup, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![ids::new_id(ids::API_KEY), id, key.lookup, key.hash, now])
            })
            .map_err(db_err)?;
            Ok(CreatedOrg {
                id,
                name,
                api_key: key.plain,
            })
        })
        .await
    }

    pub async fn create_user(
        &self,
        org: String,
        new: NewUser,
        idempotency: Option<IdempotencyRequest>,
        render: RenderSaved<UserRecord>,
    ) -> Result<Idempotent<UserRecord>, StoreError> {
        self.write(move |c| {
            let now = Timestamp::now();
            if let Some(req) = &idempotency
                && let Some(saved) = find_idempotent(c, &org, req, now)?
            {
                return Ok(Idempotent::Replay(saved));
            }
            let user = new.into_record(ids::new_id(ids::USER), now);
            let result = insert_user(c, &org, &user)
                .and_then(|()| {
                    insert_event(
                        c,
                        &org,
                        &NewEvent::for_user(EventType::UserCreated, &user, None),
                    )
                })
                .map(|()| user);
            let Some(req) = idempotency else {
                return result.map(Idempotent::Fresh);
            };
            match render(&result) {
                Some(saved) => {
                    let user_id = result.as_ref().ok().map(|u| u.id.as_str());
                    save_idempotent(c, &org, &req, &saved, user_id, now)?;
                    match result {
                        Ok(user) => Ok(Idempotent::Fresh(user)),
                        // Saved with the key: the failure is the response, and it commits.
                        Err(_) => Ok(Idempotent::Refused(saved)),
                    }
                }
                None => result.map(Idempotent::Fresh),
            }
        })
        .await
    }

    pub async fn get_user(&self, org: String, id: String) -> Result<UserRecord, StoreError> {
        self.read(move |c| live_user(c, &org, &id)?.ok_or(StoreError::NotFound))
            .await
    }

    pub async fn update_user(
        &self,
        org: String,
        id: String,
        patch: UserPatch,
    ) -> Result<UserRecord, StoreError> {
        self.write(move |c| {
            let user = live_user(c, &org, &id)?.ok_or(StoreError::NotFound)?;
            let Some((next, previous)) = patch.apply(&user, Timestamp::now()) else {
                return Ok(user);
            };
            let email_lower = next.email.to_lowercase();
            c.prepare_cached(
                "UPDATE users SET email = ?1, email_lower = ?2, name = ?3, attributes = ?4,
                    version = ?5, updated_at = ?6 WHERE id = ?7 AND org_id = ?8",
            )
            .and_then(|mut s| {
                s.execute(params![
                    next.email,
                    email_lower,
                    next.name,
                    serde_json::to_string(&next.attributes).expect("JSON map serialises"),
                    next.version,
                    next.updated_at.millis(),
                    next.id,
                    org
                ])
            })
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::EmailTaken
                } else {
                    db_err(e)
                }
            })?;
            insert_event(
                c,
                &org,
                &NewEvent::for_user(EventType::UserUpdated, &next, Some(previous)),
            )?;
            Ok(next)
        })
        .await
    }

    pub async fn delete_user(&self, org: String, id: String) -> Result<(), StoreError> {
        self.write(move |c| {
            let user = live_user(c, &org, &id)?.ok_or(StoreError::NotFound)?;
            let last = tombstone(&user, Timestamp::now());
            c.prepare_cached(
                "UPDATE users SET version = ?1, updated_at = ?2, deleted_at = ?2
                 WHERE id = ?3 AND org_id = ?4",
            )
            .and_then(|mut s| {
                s.execute(params![
                    last.version,
                    last.updated_at.millis(),
                    last.id,
                    org
                ])
            })
            .map_err(db_err)?;
            insert_event(
                c,
                &org,
                &NewEvent::for_user(EventType::UserDeleted, &last, None),
            )
        })
        .await
    }

    pub async fn list_users(
        &self,
        org: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<Page<UserRecord>, StoreError> {
        self.read(move |c| {
            let after_seq = cursor_seq(c, "users", &org, after.as_deref())?;
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {USER_COLUMNS} FROM users
                     WHERE org_id = ?1 AND deleted_at IS NULL AND seq > ?2
                     ORDER BY seq LIMIT ?3"
                ))
                .map_err(db_err)?;
            let items = stmt
                .query_map(params![org, after_seq, limit as i64 + 1], user_from_row)
                .map_err(db_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_err)?;
            Ok(Page::from_fetched(items, limit))
        })
        .await
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
        self.read(move |c| {
            if let Some(user) = &filter.user_id
                && !known_in_org(c, "users", &org, user)?
            {
                return Err(StoreError::NotFound);
            }
            let after_seq = match cursor_seq(c, "events", &org, after.as_deref()) {
                Err(StoreError::UnknownCursor) => {
                    purged_cursor_seq(c, &org, after.as_deref(), filter.purged_before)?
                }
                other => other?,
            };
            let mut stmt = c
                .prepare_cached(&event_walk_sql(filter.walk()))
                .map_err(db_err)?;
            let mut rows = stmt
                .query(params![
                    org,
                    after_seq,
                    filter.event_type.map(EventType::as_str),
                    filter.user_id
                ])
                .map_err(db_err)?;
            let mut walk = Walk::new(limit);
            while let Some(r) = rows.next().map_err(db_err)? {
                let id: String = r.get(0).map_err(db_err)?;
                // The payload is NULL on a row that fails a filter.
                let item = r
                    .get::<_, Option<String>>(1)
                    .map_err(db_err)?
                    .map(|payload| StoredEvent {
                        id: id.clone(),
                        payload,
                    });
                if !walk.push(id, item) {
                    break;
                }
            }
            Ok(walk.finish())
        })
        .await
    }

    pub async fn get_event(&self, org: String, id: String) -> Result<StoredEvent, StoreError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT id, payload FROM events
                 WHERE id = ?1 AND org_id = ?2 AND type <> 'webhook.test'",
            )
            .and_then(|mut s| {
                s.query_row(params![id, org], |r| {
                    Ok(StoredEvent {
                        id: r.get(0)?,
                        payload: r.get(1)?,
                    })
                })
                .optional()
            })
            .map_err(db_err)?
            .ok_or(StoreError::NotFound)
        })
        .await
    }

    pub async fn create_endpoint(
        &self,
        org: String,
        new: NewEndpoint,
        id: String,
        secret: Sealed,
    ) -> Result<EndpointRecord, StoreError> {
        self.write(move |c| {
            let now = Timestamp::now();
            let e = new.into_record(id, now);
            c.prepare_cached(
                "INSERT INTO endpoints (id, org_id, url, event_types, description, status,
                                        created_at, updated_at, after_event_seq, ordering, rate_limit)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7,
                         (SELECT COALESCE(MAX(seq), 0) FROM events), ?8, ?9)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    e.id,
                    org,
                    e.url,
                    event_types_json(&e.event_types),
                    e.description,
                    e.status.as_str(),
                    now.millis(),
                    e.ordering.as_str(),
                    e.rate_limit
                ])
            })
            .map_err(db_err)?;
            c.prepare_cached(
                "INSERT INTO endpoint_secrets (endpoint_id, secret, key_id, created_at)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![e.id, secret.value, secret.key_id, now.millis()]))
            .map_err(db_err)?;
            Ok(e)
        })
        .await
    }

    pub async fn get_endpoint(
        &self,
        org: String,
        id: String,
    ) -> Result<EndpointRecord, StoreError> {
        self.read(move |c| live_endpoint(c, &org, &id)?.ok_or(StoreError::NotFound))
            .await
    }

    pub async fn list_endpoints(
        &self,
        org: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<Page<EndpointRecord>, StoreError> {
        self.read(move |c| {
            let after_seq = cursor_seq(c, "endpoints", &org, after.as_deref())?;
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {ENDPOINT_COLUMNS} FROM endpoints
                     WHERE org_id = ?1 AND deleted_at IS NULL AND seq > ?2
                     ORDER BY seq LIMIT ?3"
                ))
                .map_err(db_err)?;
            let items = stmt
                .query_map(params![org, after_seq, limit as i64 + 1], endpoint_from_row)
                .map_err(db_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_err)?;
            Ok(Page::from_fetched(items, limit))
        })
        .await
    }

    /// Applies a patch; also says whether it wrote an event (`endpoint.disabled` or
    /// `endpoint.enabled`, in the same transaction as the change).
    pub async fn update_endpoint(
        &self,
        org: String,
        id: String,
        patch: EndpointPatch,
    ) -> Result<(EndpointRecord, bool), StoreError> {
        self.write(move |c| {
            let e = live_endpoint(c, &org, &id)?.ok_or(StoreError::NotFound)?;
            let Some(next) = patch.apply(&e, Timestamp::now()) else {
                return Ok((e, false));
            };
            c.prepare_cached(
                "UPDATE endpoints SET url = ?1, event_types = ?2, description = ?3, status = ?4,
                    disabled_reason = ?5,
                    failing_since = CASE WHEN ?4 = 'enabled' THEN NULL ELSE failing_since END,
                    cancel_pending = CASE WHEN ?4 = 'disabled' THEN 1 ELSE cancel_pending END,
                    cancel_through = CASE WHEN ?4 = 'disabled'
                        THEN (SELECT COALESCE(max(seq), 0) FROM deliveries)
                        ELSE cancel_through END,
                    updated_at = ?6, ordering = ?9, rate_limit = ?10
                 WHERE id = ?7 AND org_id = ?8",
            )
            .and_then(|mut s| {
                s.execute(params![
                    next.url,
                    event_types_json(&next.event_types),
                    next.description,
                    next.status.as_str(),
                    next.disabled_reason,
                    next.updated_at.millis(),
                    next.id,
                    org,
                    next.ordering.as_str(),
                    next.rate_limit
                ])
            })
            .map_err(db_err)?;
            // Disabled: its pending deliveries are failed in the background, in bounded
            // batches (`cancel_step`); none is handed out from now on. Enabled again before
            // that is over: those queued before the disable (up to the fence) still fail.
            let event = OperationalEvent::for_endpoint_change(&e, &next);
            if let Some(event) = &event {
                insert_operational_event(c, &org, event)?;
            }
            Ok((next, event.is_some()))
        })
        .await
    }

    pub async fn delete_endpoint(&self, org: String, id: String) -> Result<(), StoreError> {
        self.write(move |c| {
            let changed = c
                .prepare_cached(
                    "UPDATE endpoints SET deleted_at = ?1, updated_at = ?1, cancel_pending = 1,
                         cancel_through = (SELECT COALESCE(max(seq), 0) FROM deliveries)
                     WHERE id = ?2 AND org_id = ?3 AND deleted_at IS NULL",
                )
                .and_then(|mut s| s.execute(params![Timestamp::now().millis(), id, org]))
                .map_err(db_err)?;
            if changed == 0 {
                return Err(StoreError::NotFound);
            }
            c.prepare_cached("DELETE FROM endpoint_secrets WHERE endpoint_id = ?1")
                .and_then(|mut s| s.execute([id]))
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    /// The endpoint's current signing secret, as stored.
    pub async fn endpoint_secret(&self, org: String, id: String) -> Result<String, StoreError> {
        self.read(move |c| {
            live_endpoint(c, &org, &id)?.ok_or(StoreError::NotFound)?;
            current_secret(c, &id)
        })
        .await
    }

    /// Makes `secret` the current one; the previous keeps signing for 24 h, and any older one
    /// stops now.
    pub async fn rotate_endpoint_secret(
        &self,
        org: String,
        id: String,
        secret: Sealed,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            live_endpoint(c, &org, &id)?.ok_or(StoreError::NotFound)?;
            let now = Timestamp::now().millis();
            (|| {
                    c.prepare_cached(
                        "DELETE FROM endpoint_secrets WHERE endpoint_id = ?1 AND expires_at IS NOT NULL",
                    )?
                    .execute([&id])?;
                    c.prepare_cached(
                        "UPDATE endpoint_secrets SET expires_at = ?2
                         WHERE endpoint_id = ?1 AND expires_at IS NULL",
                    )?
                    .execute(params![id, now + SECRET_OVERLAP_MS])?;
                    c.prepare_cached(
                        "INSERT INTO endpoint_secrets (endpoint_id, secret, key_id, created_at)
                         VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![id, secret.value, secret.key_id, now])
                })()
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    /// Every secret that signs for the endpoint now, as stored: the current one first.
    pub async fn signing_secrets(
        &self,
        org: String,
        id: String,
    ) -> Result<Vec<String>, StoreError> {
        self.read(move |c| {
            live_endpoint(c, &org, &id)?.ok_or(StoreError::NotFound)?;
            c.prepare_cached(
                "SELECT secret FROM endpoint_secrets
                 WHERE endpoint_id = ?1 AND (expires_at IS NULL OR expires_at > ?2)
                 ORDER BY expires_at IS NOT NULL, created_at DESC",
            )
            .and_then(|mut s| {
                s.query_map(params![id, Timestamp::now().millis()], |r| r.get(0))?
                    .collect::<Result<Vec<String>, _>>()
            })
            .map_err(db_err)
        })
        .await
    }

    pub async fn purge_idempotency_keys(&self, now: Timestamp) -> Result<usize, StoreError> {
        self.write(move |c| {
            // Bounded, so one purge never holds the writer long; the next tick takes the rest.
            c.prepare_cached(
                "DELETE FROM idempotency_keys WHERE rowid IN (
                     SELECT rowid FROM idempotency_keys WHERE created_at < ?1 LIMIT 5000)",
            )
            .and_then(|mut s| s.execute([now.millis() - IDEMPOTENCY_TTL_MS]))
            .map_err(db_err)
        })
        .await
    }
}

/// A read connection borrowed from the pool; returned on drop, even when a reader panics.
struct PooledReader<'a>(Option<Connection>, &'a Inner);

impl<'a> PooledReader<'a> {
    fn take(inner: &'a Inner) -> PooledReader<'a> {
        let conn = inner
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
            .expect("a permit guarantees a connection");
        PooledReader(Some(conn), inner)
    }
}

impl Drop for PooledReader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            self.1
                .readers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(conn);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the write was not committed: the SQLite writer could not run it")]
struct WriteAborted;

/// Locks `REAL_PATH.lock`, where REAL_PATH is the database file with symbolic links resolved,
/// so a second server reaching the same file through another path is refused too.
fn take_lock(path: &Path) -> anyhow::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("creating SQLite database {}", path.display()))?;
    let real =
        std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
    let mut lock_path = real.into_os_string();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening lock file {}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another accommador server is already using {} (lock held on {}); \
             run one server per SQLite file, or use PostgreSQL for several instances",
            path.display(),
            lock_path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", lock_path.display()))
        }
    }
}

fn writer_loop(conn: Connection, mut jobs: mpsc::Receiver<Job>) {
    // Jobs not yet run; after a broken batch the ones it did not reach wait here.
    let mut pending: VecDeque<Job> = VecDeque::with_capacity(MAX_BATCH);
    let mut finishes: Vec<Finish> = Vec::with_capacity(MAX_BATCH);
    loop {
        if pending.is_empty() {
            match jobs.blocking_recv() {
                Some(job) => pending.push_back(job),
                None => return,
            }
        }
        while pending.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => pending.push_back(job),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "SQLite could not begin a write transaction");
            // Dropping the jobs answers each waiting request with `WriteAborted`.
            pending.clear();
            continue;
        }
        let mut broken = false;
        while let Some(job) = pending.pop_front() {
            match run_in_savepoint(&conn, job) {
                Step::Done(finish) => finishes.push(finish),
                Step::BatchBroken(finish) => {
                    finishes.push(finish);
                    broken = true;
                    break;
                }
            }
            if finishes.len() >= MAX_BATCH {
                break;
            }
        }
        // The transaction is gone (SQLite rolled it back: I/O error, full disk, a
        // RAISE(ROLLBACK)) or a savepoint could not be closed: nothing of this batch may
        // commit. Its jobs are answered with an error; those it did not reach run next.
        let committed = if broken {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            Err(None)
        } else {
            conn.execute_batch("COMMIT").map_err(Some)
        };
        match committed {
            Ok(()) => {
                for finish in finishes.drain(..) {
                    finish(Ok(()));
                }
            }
            Err(e) => {
                if let Some(e) = &e {
                    tracing::error!(error = %e, "SQLite commit failed; the batch is rolled back");
                    if !conn.is_autocommit() {
                        let _ = conn.execute_batch("ROLLBACK");
                    }
                }
                let e = Arc::new(e.unwrap_or(rusqlite::Error::ExecuteReturnedResults));
                for finish in finishes.drain(..) {
                    finish(Err(StoreError::database(SharedError(e.clone()))));
                }
            }
        }
    }
}

/// What running one job did to the batch.
enum Step {
    /// The job ran (and failed or succeeded) inside its savepoint; the batch goes on.
    Done(Finish),
    /// The batch transaction cannot be trusted any more and must not commit.
    BatchBroken(Finish),
}

/// Runs one job in its own savepoint, rolled back alone if the job fails or panics.
fn run_in_savepoint(conn: &Connection, job: Job) -> Step {
    let noop: Finish = Box::new(|_| {});
    if let Err(e) = conn.execute_batch("SAVEPOINT job") {
        tracing::error!(error = %e, "SQLite could not open a savepoint");
        // Dropping the job answers its request with `WriteAborted`.
        drop(job);
        return Step::BatchBroken(noop);
    }
    let (ok, finish) = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(conn))) {
        Ok(result) => result,
        Err(_) => {
            // The job's answer channel was dropped while unwinding: its request gets
            // `WriteAborted`. Its writes are undone below like any failed job's.
            tracing::error!("a write job panicked; its savepoint is rolled back");
            (false, noop)
        }
    };
    if conn.is_autocommit() {
        // SQLite rolled back the whole transaction while the job ran.
        return Step::BatchBroken(finish);
    }
    let end = if ok {
        conn.execute_batch("RELEASE job")
    } else {
        conn.execute_batch("ROLLBACK TO job; RELEASE job")
    };
    match end {
        Ok(()) => Step::Done(finish),
        Err(e) => {
            tracing::error!(error = %e, "SQLite could not close a savepoint");
            Step::BatchBroken(finish)
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct SharedError(Arc<rusqlite::Error>);

const USER_COLUMNS: &str =
    "id, email, name, attributes, version, created_at, updated_at, deleted_at";

fn user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRecord> {
    let attributes: String = r.get(3)?;
    Ok(UserRecord {
        id: r.get(0)?,
        email: r.get(1)?,
        name: r.get(2)?,
        attributes: serde_json::from_str(&attributes).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e))
        })?,
        version: r.get(4)?,
        created_at: Timestamp(r.get(5)?),
        updated_at: Timestamp(r.get(6)?),
        deleted_at: r.get::<_, Option<i64>>(7)?.map(Timestamp),
    })
}

const ENDPOINT_COLUMNS: &str = "id, url, event_types, description, status, disabled_reason, \
     created_at, updated_at, ordering, rate_limit, current_concurrency";

fn event_types_json(f: &EventTypeFilter) -> String {
    serde_json::to_string(&f.names()).expect("names serialise")
}

fn endpoint_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EndpointRecord> {
    let conversion = |i: usize, e: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    };
    let types: String = r.get(2)?;
    let names: Vec<String> =
        serde_json::from_str(&types).map_err(|e| conversion(2, e.to_string()))?;
    let event_types = EventTypeFilter::from_names(names.iter().map(String::as_str))
        .map_err(|e| conversion(2, e))?;
    let status: String = r.get(4)?;
    Ok(EndpointRecord {
        id: r.get(0)?,
        url: r.get(1)?,
        event_types,
        description: r.get(3)?,
        status: EndpointStatus::parse(&status)
            .ok_or_else(|| conversion(4, format!("unknown status {status:?}")))?,
        disabled_reason: r.get(5)?,
        ordering: {
            let ordering: String = r.get(8)?;
            DeliveryOrder::parse(&ordering)
                .ok_or_else(|| conversion(8, format!("unknown ordering {ordering:?}")))?
        },
        created_at: Timestamp(r.get(6)?),
        updated_at: Timestamp(r.get(7)?),
        rate_limit: r.get(9)?,
        concurrency: r.get(10)?,
    })
}

fn live_endpoint(
    c: &Connection,
    org: &str,
    id: &str,
) -> Result<Option<EndpointRecord>, StoreError> {
    c.prepare_cached(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE id = ?1 AND org_id = ?2 AND deleted_at IS NULL"
    ))
    .and_then(|mut s| s.query_row(params![id, org], endpoint_from_row).optional())
    .map_err(db_err)
}

fn current_secret(c: &Connection, endpoint_id: &str) -> Result<String, StoreError> {
    c.prepare_cached(
        "SELECT secret FROM endpoint_secrets WHERE endpoint_id = ?1 AND expires_at IS NULL",
    )
    .and_then(|mut s| s.query_row([endpoint_id], |r| r.get(0)))
    .map_err(db_err)
}

fn live_user(c: &Connection, org: &str, id: &str) -> Result<Option<UserRecord>, StoreError> {
    c.prepare_cached(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE id = ?1 AND org_id = ?2 AND deleted_at IS NULL"
    ))
    .and_then(|mut s| s.query_row(params![id, org], user_from_row).optional())
    .map_err(db_err)
}

fn insert_user(c: &Connection, org: &str, u: &UserRecord) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO users (id, org_id, email, email_lower, name, attributes, version,
                            created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .and_then(|mut s| {
        s.execute(params![
            u.id,
            org,
            u.email,
            u.email.to_lowercase(),
            u.name,
            serde_json::to_string(&u.attributes).expect("JSON map serialises"),
            u.version,
            u.created_at.millis(),
            u.updated_at.millis()
        ])
    })
    .map(|_| ())
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::EmailTaken
        } else {
            db_err(e)
        }
    })
}

fn insert_event(c: &Connection, org: &str, e: &NewEvent) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO events (id, org_id, type, user_id, user_version, occurred_at, payload)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            e.id,
            org,
            e.event_type.as_str(),
            e.user_id,
            e.user_version,
            e.occurred_at.millis(),
            e.payload
        ])
    })
    .map(|_| ())
    .map_err(db_err)
}

/// Writes an operational event; fan-out sends it to the endpoints that list its type, except
/// the one it is about.
pub(super) fn insert_operational_event(
    c: &Connection,
    org: &str,
    e: &OperationalEvent,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO events (id, org_id, type, about_endpoint, occurred_at, payload)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            e.id,
            org,
            e.event_type.as_str(),
            e.about_endpoint,
            e.occurred_at.millis(),
            e.payload
        ])
    })
    .map(|_| ())
    .map_err(db_err)
}

/// The `seq` of the row of `table` whose ID is the cursor `after` (0 without one); a cursor
/// that names no row of this organization is `UnknownCursor`. `table` is a constant of ours.
fn cursor_seq(
    c: &Connection,
    table: &'static str,
    org: &str,
    after: Option<&str>,
) -> Result<i64, StoreError> {
    let Some(id) = after else {
        return Ok(0);
    };
    c.prepare_cached(&format!(
        "SELECT seq FROM {table} WHERE id = ?1 AND org_id = ?2"
    ))
    .and_then(|mut s| s.query_row(params![id, org], |r| r.get(0)).optional())
    .map_err(db_err)?
    .ok_or(StoreError::UnknownCursor)
}

/// Where an events walk continues after a cursor that names an event no longer stored: when
/// the cursor is an event ID made before the purge horizon, just before the organization's
/// first event that occurred at or after the ID's time (its walk index from the start passes
/// only the few expired events kept for a pending delivery); otherwise `UnknownCursor`.
fn purged_cursor_seq(
    c: &Connection,
    org: &str,
    after: Option<&str>,
    purged_before: Option<Timestamp>,
) -> Result<i64, StoreError> {
    let made = after.and_then(|id| ids::time_of(id, ids::EVENT));
    let (Some(made), Some(horizon)) = (made, purged_before) else {
        return Err(StoreError::UnknownCursor);
    };
    if made >= horizon {
        return Err(StoreError::UnknownCursor);
    }
    c.prepare_cached(
        "SELECT COALESCE(
             (SELECT seq - 1 FROM events INDEXED BY events_org_seq
              WHERE org_id = ?1 AND occurred_at >= ?2 ORDER BY seq LIMIT 1),
             (SELECT MAX(seq) FROM events WHERE org_id = ?1),
             0)",
    )
    .and_then(|mut s| s.query_row(params![org, made.millis()], |r| r.get(0)))
    .map_err(db_err)
}

/// The statement of each events walk (`?1` the organization, `?2` the cursor's seq, `?3` the
/// type, `?4` the user): the index named leads with the walk's filter and then `seq`, so the
/// walk is one range read in commit order with no sort; the other filters are checked on each
/// row, whose payload is then NULL if it fails one. `INDEXED BY` makes a statement fail to
/// prepare rather than quietly walk something else if its index goes.
pub(super) fn event_walk_sql(walk: EventWalk) -> String {
    let (index, lead) = match walk {
        EventWalk::Org => ("events_org_seq", ""),
        EventWalk::Type => ("events_org_type_seq", "AND type = ?3 "),
        EventWalk::User => ("events_org_user_seq", "AND user_id = ?4 "),
    };
    format!(
        "SELECT id, CASE WHEN type <> 'webhook.test' AND (?3 IS NULL OR type = ?3)
                         AND (?4 IS NULL OR user_id = ?4) THEN payload END
         FROM events INDEXED BY {index}
         WHERE org_id = ?1 {lead}AND seq > ?2
         ORDER BY seq LIMIT {}",
        LIST_SCAN_ROWS + 1
    )
}

/// Whether `id` names a row of `table` (users, events or endpoints, deleted ones included)
/// in this organization. `table` is a constant of ours.
pub(super) fn known_in_org(
    c: &Connection,
    table: &'static str,
    org: &str,
    id: &str,
) -> Result<bool, StoreError> {
    c.prepare_cached(&known_in_org_sql(table))
        .and_then(|mut s| s.exists(params![id, org]))
        .map_err(db_err)
}

pub(super) fn known_in_org_sql(table: &str) -> String {
    format!("SELECT 1 FROM {table} WHERE id = ?1 AND org_id = ?2")
}

/// The saved response for this key, `Err(IdempotencyMismatch)` if the key was used with another
/// request, `None` if the key is new or expired.
fn find_idempotent(
    c: &Connection,
    org: &str,
    req: &IdempotencyRequest,
    now: Timestamp,
) -> Result<Option<SavedResponse>, StoreError> {
    let row = c
        .prepare_cached(
            "SELECT fingerprint, status, body FROM idempotency_keys
             WHERE org_id = ?1 AND key = ?2 AND created_at >= ?3",
        )
        .and_then(|mut s| {
            s.query_row(
                params![org, req.key, now.millis() - IDEMPOTENCY_TTL_MS],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, u16>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                },
            )
            .optional()
        })
        .map_err(db_err)?;
    match row {
        None => Ok(None),
        // An empty fingerprint: the response showed a user who has since been erased; the key
        // answers with the erased response, whatever the request.
        Some((fingerprint, _, _)) if !fingerprint.is_empty() && fingerprint != req.fingerprint => {
            Err(StoreError::IdempotencyMismatch)
        }
        Some((_, status, body)) => Ok(Some(SavedResponse { status, body })),
    }
}

fn save_idempotent(
    c: &Connection,
    org: &str,
    req: &IdempotencyRequest,
    saved: &SavedResponse,
    user_id: Option<&str>,
    now: Timestamp,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT OR REPLACE INTO idempotency_keys
             (org_id, key, fingerprint, status, body, created_at, user_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            org,
            req.key,
            req.fingerprint.as_slice(),
            saved.status,
            saved.body,
            now.millis(),
            user_id
        ])
    })
    .map(|_| ())
    .map_err(db_err)
}
