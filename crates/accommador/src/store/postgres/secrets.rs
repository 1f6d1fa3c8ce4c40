//! Endpoint secrets at rest on PostgreSQL: the samples start-up checks its keys against, and
//! the rows `secrets reencrypt` reads and rewrites (by `seq`, in bounded batches).

use super::cached::Cached;
use super::{PgStore, pg_err};
use crate::store::StoreError;
use crate::store::secrets::{Reseal, StoredSecret};

impl PgStore {
    /// One stored secret per key id in use (`key_id` NULL: plain text).
    pub(in crate::store) async fn secret_key_samples(
        &self,
    ) -> Result<Vec<StoredSecret>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .fetch(
                "SELECT DISTINCT ON (key_id) seq, endpoint_id, secret, key_id
                 FROM endpoint_secrets ORDER BY key_id, seq",
                &[],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(row).collect())
    }

    /// Up to `limit` stored secrets after row `after`, in row order.
    pub(in crate::store) async fn stored_secrets_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredSecret>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .fetch(
                "SELECT seq, endpoint_id, secret, key_id FROM endpoint_secrets
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after, &(limit as i64)],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(row).collect())
    }

    /// Rewrites each row that still holds its old value, in one transaction; returns how many
    /// were.
    pub(in crate::store) async fn reseal(&self, rows: Vec<Reseal>) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let mut moved = 0;
        for r in &rows {
            moved += tx
                .run(
                    "UPDATE endpoint_secrets SET secret = $1, key_id = $2
                     WHERE seq = $3 AND secret = $4",
                    &[&r.new.value, &r.new.key_id, &r.seq, &r.old],
                )
                .await
                .map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(moved as usize)
    }
}

fn row(r: &tokio_postgres::Row) -> StoredSecret {
    StoredSecret {
        seq: r.get(0),
        endpoint_id: r.get(1),
        stored: r.get(2),
        key_id: r.get(3),
    }
}
