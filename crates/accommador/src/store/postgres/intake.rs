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

/// Takes creations as they come and writes whatever has queued up as one batch.
pub(super) async fn run(store: PgStore, mut requests: mpsc::UnboundedReceiver<Creation>) {
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
