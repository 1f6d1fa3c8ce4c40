//! Transactions whose `BEGIN` and `COMMIT` travel with their statements.
//!
//! `tokio_postgres` pipelines statements that are awaited together (`try_join!(biased; …)`,
//! which polls them in the order written: without `biased` it rotates the first one polled
//! on each wake-up): they are sent at once and run in order. Its `Transaction`, though, waits for `BEGIN` on its own and
//! takes `COMMIT` by value, so the two cost a round trip each. On the delivery path (fan-out,
//! leasing, recording: a chain of steps between an API answer and the send) those two round
//! trips were a third of every step. A [`Pipelined`] sends `BEGIN` with the first statements
//! and `COMMIT` with the last ones.
//!
//! A connection must never go back to the pool inside a transaction. A `Pipelined` that is
//! dropped before its `COMMIT` was answered (an error, a cancelled future) closes its
//! connection instead of returning it: PostgreSQL rolls the transaction back, unless the
//! `COMMIT` had already reached it (then, as with any answer lost on the way, the caller does
//! not know; every step on the delivery path may be done twice). The pool opens another
//! connection when it needs one.
//!
//! Two rules for callers:
//! - Every statement of the transaction is awaited before, or together with, the `COMMIT`.
//!   PostgreSQL answers `COMMIT` of a transaction that a failed statement aborted with a
//!   rollback, not an error, so the failure must be seen on the statement itself.
//! - The statements awaited together with the `COMMIT` are prepared ones (`query(&statement,
//!   …)` with a statement from `prepare_cached`) or simple queries (`batch_execute`). A
//!   statement given as text goes through `prepare_cached`, which on a connection that has not
//!   parsed it yet waits for the parse before sending it: it would then run after the
//!   `COMMIT`, outside the transaction.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_postgres::{ClientWrapper, Object};

/// One transaction on one pooled connection (see the module docs).
pub(super) struct Pipelined {
    client: Option<Object>,
    committed: AtomicBool,
}

impl Pipelined {
    pub(super) fn new(client: Object) -> Pipelined {
        Pipelined {
            client: Some(client),
            committed: AtomicBool::new(false),
        }
    }

    /// Starts the transaction, then runs `settings` in it (`SET LOCAL …;`, or empty). Await
    /// it together with the first statements.
    pub(super) async fn begin(&self, settings: &str) -> Result<(), tokio_postgres::Error> {
        self.batch_execute(&format!("BEGIN; {settings}")).await
    }

    /// Commits. Await it together with the last statements, prepared ones only (see the
    /// module docs). The connection goes back to the pool once this has
    /// been answered and the `Pipelined` is dropped.
    pub(super) async fn commit(&self) -> Result<(), tokio_postgres::Error> {
        self.batch_execute("COMMIT").await?;
        self.committed.store(true, Ordering::Release);
        Ok(())
    }
}

impl Deref for Pipelined {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        self.client.as_ref().expect("present until dropped")
    }
}

impl Drop for Pipelined {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && !self.committed.load(Ordering::Acquire)
        {
            // Taken out of the pool and dropped: the connection closes, and with it the
            // transaction (rolled back by PostgreSQL).
            drop(Object::take(client));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::test_db::{TestDatabase, connect};

    /// A database of the test's own with an empty `pipelined_probe` table, and a pool of one
    /// connection to it.
    async fn probe(name: &str) -> Option<(TestDatabase, deadpool_postgres::Pool)> {
        let db = TestDatabase::create(name).await?;
        connect(&db.url)
            .await
            .batch_execute("CREATE TABLE pipelined_probe (n int)")
            .await
            .unwrap();
        let manager =
            deadpool_postgres::Manager::new(db.url.parse().unwrap(), tokio_postgres::NoTls);
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(1)
            .build()
            .unwrap();
        Some((db, pool))
    }

    async fn count(db: &TestDatabase) -> i64 {
        let c = connect(&db.url).await;
        c.query_one("SELECT count(*) FROM pipelined_probe", &[])
            .await
            .unwrap()
            .get(0)
    }

    #[tokio::test]
    async fn a_committed_transaction_keeps_its_writes_and_its_connection() {
        let Some((db, pool)) = probe("pipelined_commit").await else {
            return;
        };
        let tx = Pipelined::new(pool.get().await.unwrap());
        tokio::try_join!(
            biased;
            tx.begin("SET LOCAL synchronous_commit TO off;"),
            tx.batch_execute("INSERT INTO pipelined_probe VALUES (1)"),
        )
        .unwrap();
        tokio::try_join!(
            biased;
            tx.batch_execute("INSERT INTO pipelined_probe VALUES (2)"),
            tx.commit()
        )
        .unwrap();
        let pid: i32 = tx
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        drop(tx);
        assert_eq!(count(&db).await, 2);
        // The same connection goes back to the pool, outside any transaction.
        let again = pool.get().await.unwrap();
        let again_pid: i32 = again
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(again_pid, pid);
        drop(again);
        let state: String = connect(&db.url)
            .await
            .query_one("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .await
            .unwrap()
            .get(0);
        assert_eq!(state, "idle");
    }

    #[tokio::test]
    async fn a_failed_statement_loses_the_transaction_and_the_connection_is_not_reused() {
        let Some((db, pool)) = probe("pipelined_failure").await else {
            return;
        };
        let tx = Pipelined::new(pool.get().await.unwrap());
        let failed = tokio::try_join!(
            biased;
            tx.begin(""),
            tx.batch_execute("INSERT INTO pipelined_probe VALUES (1)"),
            tx.batch_execute("INSERT INTO pipelined_probe VALUES (1 / 0)"),
            tx.commit(),
        );
        assert!(failed.is_err());
        drop(tx);
        assert_eq!(
            count(&db).await,
            0,
            "nothing of the failed transaction is kept"
        );

        // Dropped before its COMMIT (a cancelled step): rolled back, and the pool hands out a
        // fresh connection, never one left inside the transaction.
        let tx = Pipelined::new(pool.get().await.unwrap());
        tokio::try_join!(
            biased;
            tx.begin(""),
            tx.batch_execute("INSERT INTO pipelined_probe VALUES (3)"),
        )
        .unwrap();
        drop(tx);
        let fresh = pool.get().await.unwrap();
        fresh
            .batch_execute("BEGIN; INSERT INTO pipelined_probe VALUES (4); COMMIT")
            .await
            .unwrap();
        drop(fresh);
        let c = connect(&db.url).await;
        let kept: Vec<i32> = c
            .query("SELECT n FROM pipelined_probe ORDER BY n", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(kept, vec![4]);
    }
}
