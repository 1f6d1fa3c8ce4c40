//! Endpoint secrets at rest on SQLite: the samples start-up checks its keys against, and the
//! rows `secrets reencrypt` reads and rewrites (by rowid, in bounded batches).

use rusqlite::params;

use super::{SqliteStore, db_err};
use crate::store::StoreError;
use crate::store::secrets::{Reseal, StoredSecret};

impl SqliteStore {
    /// One stored secret per key id in use (`key_id` NULL: plain text).
    pub(in crate::store) async fn secret_key_samples(
        &self,
    ) -> Result<Vec<StoredSecret>, StoreError> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT rowid, endpoint_id, secret, key_id FROM endpoint_secrets
                 WHERE rowid IN (SELECT MIN(rowid) FROM endpoint_secrets GROUP BY key_id)",
            )
            .and_then(|mut s| s.query_map([], row)?.collect())
            .map_err(db_err)
        })
        .await
    }

    /// Up to `limit` stored secrets after row `after`, in row order.
    pub(in crate::store) async fn stored_secrets_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredSecret>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT rowid, endpoint_id, secret, key_id FROM endpoint_secrets
                 WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
            )
            .and_then(|mut s| s.query_map(params![after, limit as i64], row)?.collect())
            .map_err(db_err)
        })
        .await
    }

    /// Rewrites each row that still holds its old value; returns how many were.
    pub(in crate::store) async fn reseal(&self, rows: Vec<Reseal>) -> Result<usize, StoreError> {
        self.write(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "UPDATE endpoint_secrets SET secret = ?1, key_id = ?2
                     WHERE rowid = ?3 AND secret = ?4",
                )
                .map_err(db_err)?;
            let mut moved = 0;
            for r in rows {
                moved += stmt
                    .execute(params![r.new.value, r.new.key_id, r.seq, r.old])
                    .map_err(db_err)?;
            }
            Ok(moved)
        })
        .await
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredSecret> {
    Ok(StoredSecret {
        seq: r.get(0)?,
        endpoint_id: r.get(1)?,
        stored: r.get(2)?,
        key_id: r.get(3)?,
    })
}
