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

    /// Rewrites each row that still holds its old value, in one statement; returns how many
    /// were.
    pub(in crate::store) async fn reseal(&self, rows: Vec<Reseal>) -> Result<usize, StoreError> {
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let olds: Vec<&str> = rows.iter().map(|r| r.old.as_str()).collect();
        let news: Vec<&str> = rows.iter().map(|r| r.new.value.as_str()).collect();
        let kids: Vec<Option<&str>> = rows.iter().map(|r| r.new.key_id.as_deref()).collect();
        let client = self.client().await?;
        let moved = client
            .run(
                "UPDATE endpoint_secrets s SET secret = v.new, key_id = v.kid
                 FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
                      AS v(seq, old, new, kid)
                 WHERE s.seq = v.seq AND s.secret = v.old",
                &[&seqs, &olds, &news, &kids],
            )
            .await
            .map_err(pg_err)?;
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
