//! User creations without an Idempotency-Key, group-committed: concurrent requests are written
//! together, one transaction and one durable commit for many users, as the SQLite writer does.
//!
//! A batch takes the event sequencer's row lock first and numbers its events itself
//! (`commit_seq` from the same sequence, in request order). Every other numbering waits for
//! that lock, so the batch's numbers are below everything numbered after it commits: commit
//! order holds, and the requests are answered without a separate numbering step.
//!
//! Emails already taken (or taken twice within one batch) are skipped by `ON CONFLICT DO
//! NOTHING` and answered as such; any other failure of a batch retries its requests one by one,
//! so one request's problem is never another's.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{Cached, PgStore, pg_err};
use crate::domain::event::NewEvent;
use crate::domain::user::UserRecord;
use crate::store::StoreError;

/// Most creations written by one batch.
const BATCH: usize = 256;
/// Batches in progress at once: one commits while the next is being written.
const CONCURRENT_BATCHES: usize = 2;

/// One creation waiting to be written.
pub(super) struct Creation {
    pub org: String,
    pub user: UserRecord,
    pub event: NewEvent,
    pub reply: oneshot::Sender<Result<(), StoreError>>,
}

/// Takes creations as they come and writes whatever has queued up as one batch. The queue is
/// bounded: while both batches are in progress nothing is taken from it, so once it is full
/// the requests wait for room (`PgStore::create_user_at_once`).
pub(super) async fn run(store: PgStore, mut requests: mpsc::Receiver<Creation>) {
    let slots = Arc::new(Semaphore::new(CONCURRENT_BATCHES));
    while let Some(first) = requests.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Collected after a slot is free, so a batch holds everything that queued meanwhile.
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match requests.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            write(&store, batch).await;
            drop(slot);
        });
    }
}

async fn write(store: &PgStore, batch: Vec<Creation>) {
    match write_batch(store, &batch).await {
        Ok(created) => {
            for (c, ok) in batch.into_iter().zip(created) {
                let _ = c.reply.send(if ok {
                    Ok(())
                } else {
                    Err(StoreError::EmailTaken)
                });
            }
        }
        // The COMMIT itself failed: whether it took effect is unknown, so retrying would
        // answer "email taken" for users that may have been created. Every request gets the
        // error (a 500, which the client may retry with an Idempotency-Key).
        Err(Failed::AtCommit(e)) => {
            tracing::error!(error = %e, size = batch.len(), "committing a batch of users failed; outcome unknown");
            for c in batch {
                let _ = c
                    .reply
                    .send(Err(StoreError::database(std::io::Error::other(format!(
                        "the commit's outcome is unknown: {e}"
                    )))));
            }
        }
        Err(Failed::Before(e)) if batch.len() == 1 => {
            if let Some(c) = batch.into_iter().next() {
                let _ = c.reply.send(Err(e));
            }
        }
        Err(Failed::Before(e)) => {
            tracing::warn!(error = %e, size = batch.len(), "writing a batch of users failed; one at a time");
            for c in batch {
                let result = match write_batch(store, std::slice::from_ref(&c)).await {
                    Ok(created) if created[0] => Ok(()),
                    Ok(_) => Err(StoreError::EmailTaken),
                    Err(Failed::Before(e) | Failed::AtCommit(e)) => Err(e),
                };
                let _ = c.reply.send(result);
            }
        }
    }
}

/// How a batch failed: before its COMMIT (nothing was written), or at it (unknown).
enum Failed {
    Before(StoreError),
    AtCommit(StoreError),
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Failed {
        Failed::Before(e)
    }
}

/// Writes the batch in one transaction; which of its users were created (the others' emails
/// were taken).
async fn write_batch(store: &PgStore, batch: &[Creation]) -> Result<Vec<bool>, Failed> {
    let mut columns = Columns::default();
    for c in batch {
        columns.push(c);
    }
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 13] = [
        &columns.user_id,
        &columns.org_id,
        &columns.email,
        &columns.email_lower,
        &columns.name,
        &columns.attributes,
        &columns.version,
        &columns.created_at,
        &columns.updated_at,
        &columns.event_id,
        &columns.event_type,
        &columns.occurred_at,
        &columns.payload,
    ];
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(pg_err)?;
    // The lock before any number is drawn (its own round trip: never pipelined with them).
    tx.run("SELECT 1 FROM event_sequencer WHERE id = 1 FOR UPDATE", &[])
        .await
        .map_err(pg_err)?;
    let rows = tx
        .fetch(
            "WITH input AS (
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                      $6::text[], $7::int8[], $8::int8[], $9::int8[],
                                      $10::text[], $11::text[], $12::int8[], $13::text[])
                     WITH ORDINALITY
                     AS u(user_id, org_id, email, email_lower, name, attributes, version,
                          created_at, updated_at, event_id, type, occurred_at, payload, ord)),
             created AS (
                 INSERT INTO users (id, org_id, email, email_lower, name, attributes, version,
                                    created_at, updated_at)
                 SELECT user_id, org_id, email, email_lower, name, attributes, version,
                        created_at, updated_at
                 FROM input ORDER BY ord
                 ON CONFLICT (org_id, email_lower) WHERE deleted_at IS NULL DO NOTHING
                 RETURNING id)
             INSERT INTO events (id, org_id, type, user_id, user_version, occurred_at, payload,
                                 commit_seq)
             SELECT event_id, org_id, type, user_id, version, occurred_at, payload,
                    nextval('events_commit_seq')
             FROM (SELECT i.* FROM input i JOIN created c ON c.id = i.user_id
                   ORDER BY i.ord) ordered
             RETURNING user_id",
            &params,
        )
        .await
        .map_err(pg_err)?;
    tx.commit().await.map_err(|e| Failed::AtCommit(pg_err(e)))?;
    let created: std::collections::HashSet<String> =
        rows.iter().map(|r| r.get::<_, String>(0)).collect();
    Ok(batch.iter().map(|c| created.contains(&c.user.id)).collect())
}

/// A batch, column by column, for `UNNEST`.
#[derive(Default)]
struct Columns {
    user_id: Vec<String>,
    org_id: Vec<String>,
    email: Vec<String>,
    email_lower: Vec<String>,
    name: Vec<Option<String>>,
    attributes: Vec<String>,
    version: Vec<i64>,
    created_at: Vec<i64>,
    updated_at: Vec<i64>,
    event_id: Vec<String>,
    event_type: Vec<&'static str>,
    occurred_at: Vec<i64>,
    payload: Vec<String>,
}

impl Columns {
    fn push(&mut self, c: &Creation) {
        let u = &c.user;
        self.user_id.push(u.id.clone());
        self.org_id.push(c.org.clone());
        self.email.push(u.email.clone());
        self.email_lower.push(u.email.to_lowercase());
        self.name.push(u.name.clone());
        self.attributes
            .push(serde_json::to_string(&u.attributes).expect("JSON map serialises"));
        self.version.push(u.version as i64);
        self.created_at.push(u.created_at.millis());
        self.updated_at.push(u.updated_at.millis());
        self.event_id.push(c.event.id.clone());
        self.event_type.push(c.event.event_type.as_str());
        self.occurred_at.push(c.event.occurred_at.millis());
        self.payload.push(c.event.payload.clone());
    }
}

#[cfg(test)]
mod tests {
    //! The queues in front of the batch writers are bounded: with their writer stuck (the
    //! sequencer's row lock held from outside), a full queue makes further requests wait for
    //! room, neither failing nor piling up, and every one of them is served once it moves.
    //! Needs `ACCOMMADOR_TEST_POSTGRES_URL` (skipped with a note without it, unless `CI` is set).

    use std::time::Duration;

    use serde_json::json;

    use super::super::test_db::{TestDatabase, connect};
    use super::super::{PgStore, QUEUE_CAPACITY};
    use crate::domain::org::NewApiKey;
    use crate::domain::user::NewUser;
    use crate::store::Idempotent;

    const WAIT: Duration = Duration::from_secs(20);

    /// Holds the event sequencer's row lock (which every batch of creations and every
    /// numbering step takes first) until `release`.
    async fn hold_sequencer_lock(url: &str) -> tokio_postgres::Client {
        let blocker = connect(url).await;
        blocker
            .batch_execute("BEGIN; SELECT 1 FROM event_sequencer WHERE id = 1 FOR UPDATE")
            .await
            .unwrap();
        blocker
    }

    async fn release(blocker: &tokio_postgres::Client) {
        blocker.batch_execute("COMMIT").await.unwrap();
    }

    /// Waits until `n` sessions of the test database wait for a lock.
    async fn lock_waiters(db: &TestDatabase, observer: &tokio_postgres::Client, n: i64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let waiting: i64 = observer
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = $1 AND wait_event_type = 'Lock'",
                    &[&db.name],
                )
                .await
                .unwrap()
                .get(0);
            if waiting == n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{waiting} sessions wait for the lock, not {n}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the queue behind `sender` has no room left.
    async fn full<T>(sender: &tokio::sync::mpsc::Sender<T>) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while sender.capacity() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the queue never filled up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn new_user(i: usize) -> NewUser {
        let body = json!({ "email": format!("u{i}@example.com") });
        NewUser::from_json(body.as_object().unwrap()).unwrap()
    }

    async fn users(db: &TestDatabase) -> i64 {
        connect(&db.url)
            .await
            .query_one("SELECT count(*) FROM users", &[])
            .await
            .unwrap()
            .get(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_intake_queue_makes_creations_wait_for_room() {
        let Some(db) = TestDatabase::create("acc_queue").await else {
            return;
        };
        const CAPACITY: usize = 2;
        let store = PgStore::open_with_queues(&db.url, 4, CAPACITY)
            .await
            .unwrap();
        assert_eq!(store.intake.max_capacity(), CAPACITY);
        let org = store
            .create_org("Acme".into(), NewApiKey::generate())
            .await
            .unwrap()
            .id;
        let observer = connect(&db.url).await;
        let blocker = hold_sequencer_lock(&db.url).await;
        let create = |i: usize| {
            let (store, org) = (store.clone(), org.clone());
            tokio::spawn(async move { store.create_user_at_once(org, new_user(i)).await })
        };

        // Both batch slots taken, each by one creation stuck on the lock.
        let mut first = vec![create(0)];
        lock_waiters(&db, &observer, 1).await;
        first.push(create(1));
        lock_waiters(&db, &observer, 2).await;
        // Many more: the writer holds one while it waits for a slot, the queue CAPACITY; the
        // rest wait for room.
        let waiting: Vec<_> = (2..42).map(create).collect();
        full(&store.intake).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(store.intake.capacity(), 0, "the queue stays full");
        assert!(
            first.iter().chain(&waiting).all(|t| !t.is_finished()),
            "a creation ended while the writer was stuck"
        );
        // Requests given up while they waited for room were never queued: only what the
        // batches, the writer and the queue held is written.
        for t in &waiting {
            t.abort();
        }
        release(&blocker).await;
        for t in first {
            assert!(matches!(t.await.unwrap(), Ok(Idempotent::Fresh(_))));
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut written = users(&db).await;
        while written < (2 + 1 + CAPACITY) as i64 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            written = users(&db).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            users(&db).await,
            (2 + 1 + CAPACITY) as i64,
            "the queue held more than its capacity"
        );

        // Waiting is all a full queue does: with the writer stuck again, 100 creations through
        // a queue of 2 all succeed once it moves.
        let blocker = hold_sequencer_lock(&db.url).await;
        let tasks: Vec<_> = (100..200).map(create).collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(tasks.iter().all(|t| !t.is_finished()));
        release(&blocker).await;
        for t in tasks {
            let created = tokio::time::timeout(WAIT, t)
                .await
                .expect("served")
                .unwrap();
            assert!(matches!(created, Ok(Idempotent::Fresh(_))), "{created:?}");
        }
        assert_eq!(users(&db).await, (2 + 1 + CAPACITY + 100) as i64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_sequencer_queue_makes_numbering_requests_wait_for_room() {
        let Some(db) = TestDatabase::create("acc_queue").await else {
            return;
        };
        // Both queues of a store opened as the server opens it have the documented bound.
        let default = PgStore::open(&db.url, 2).await.unwrap();
        assert_eq!(default.sequencer.max_capacity(), QUEUE_CAPACITY);
        assert_eq!(default.intake.max_capacity(), QUEUE_CAPACITY);
        drop(default);

        const CAPACITY: usize = 2;
        let store = PgStore::open_with_queues(&db.url, 4, CAPACITY)
            .await
            .unwrap();
        assert_eq!(store.sequencer.max_capacity(), CAPACITY);
        let observer = connect(&db.url).await;
        let blocker = hold_sequencer_lock(&db.url).await;
        let number = || {
            let store = store.clone();
            tokio::spawn(async move { store.sequence_after_commit().await })
        };
        // The sequencer's step stuck on the lock, then many more requests than the queue holds.
        let first = number();
        lock_waiters(&db, &observer, 1).await;
        let waiting: Vec<_> = (0..40).map(|_| number()).collect();
        full(&store.sequencer).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(store.sequencer.capacity(), 0, "the queue stays full");
        assert!(
            std::iter::once(&first)
                .chain(&waiting)
                .all(|t| !t.is_finished()),
            "a request ended while the sequencer was stuck"
        );
        // Once it moves, every waiting request is answered.
        release(&blocker).await;
        for t in std::iter::once(first).chain(waiting) {
            tokio::time::timeout(WAIT, t)
                .await
                .expect("answered")
                .unwrap();
        }
        assert_eq!(store.sequencer.capacity(), CAPACITY);
    }
}
