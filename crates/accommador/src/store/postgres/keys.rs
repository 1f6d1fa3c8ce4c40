//! API keys, the operator's organization list and organization deletion on PostgreSQL (see
//! [`crate::store::keys`]). Revoking a key locks its organization's row first, so two
//! revocations of an organization's last two keys run one after the other and the second sees
//! that only one is left; a deletion step locks the organization it works on (`SKIP LOCKED`),
//! so instances never work on the same organization at once.

use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::cached::Cached;
use super::{PgStore, pg_err};
use crate::domain::Timestamp;
use crate::domain::ids;
use crate::domain::org::{NewApiKey, key_lookup, key_matches, shown_prefix};
use crate::store::keys::{
    ApiKeyRecord, DeletionStep, KeyOwner, OrgRecord, PURGE_BATCH, PURGE_ORDER, PURGE_PARENTS,
    Purge, Revocation,
};
use crate::store::{Page, StoreError};

fn key_from_row(r: &Row) -> ApiKeyRecord {
    ApiKeyRecord {
        id: r.get(0),
        name: r.get(1),
        prefix: shown_prefix(r.get(2)),
        created_at: Timestamp(r.get(3)),
    }
}

/// Whether `after` names a row of `sql`'s table (`$1`: the ID, `$2`: the organization).
async fn known_cursor(
    tx: &Transaction<'_>,
    sql: &str,
    after: Option<&String>,
    org: Option<&String>,
) -> Result<(), StoreError> {
    let Some(after) = after else { return Ok(()) };
    let found = match org {
        Some(org) => tx.fetch_opt(sql, &[after, org]).await,
        None => tx.fetch_opt(sql, &[after]).await,
    };
    match found.map_err(pg_err)? {
        Some(_) => Ok(()),
        None => Err(StoreError::UnknownCursor),
    }
}

impl PgStore {
    pub async fn authenticate(&self, presented: String) -> Result<Option<KeyOwner>, StoreError> {
        let Some(lookup) = key_lookup(&presented) else {
            return Ok(None);
        };
        let client = self.client().await?;
        let rows = client
            .fetch(
                "SELECT k.org_id, k.hash, k.id FROM api_keys k
                 JOIN organizations o ON o.id = k.org_id
                 WHERE k.lookup = $1 AND k.revoked_at IS NULL AND o.deleted_at IS NULL",
                &[&lookup],
            )
            .await
            .map_err(pg_err)?;
        for row in rows {
            let hash: Vec<u8> = row.get(1);
            if key_matches(&presented, &hash) {
                return Ok(Some(KeyOwner {
                    org: row.get(0),
                    key_id: row.get(2),
                }));
            }
        }
        Ok(None)
    }

    pub async fn create_api_key(
        &self,
        org: String,
        name: String,
        key: NewApiKey,
    ) -> Result<ApiKeyRecord, StoreError> {
        let client = self.client().await?;
        let record = ApiKeyRecord {
            id: ids::new_id(ids::API_KEY),
            name,
            prefix: shown_prefix(&key.lookup),
            created_at: Timestamp::now(),
        };
        // Only for a live organization; a concurrent deletion either sees this key (and
        // removes it) or comes after the insert failed to find the organization live.
        let inserted = client
            .run(
                "INSERT INTO api_keys (id, org_id, lookup, hash, created_at, name)
                 SELECT $1, o.id, $3, $4, $5, $6 FROM organizations o
                 WHERE o.id = $2 AND o.deleted_at IS NULL",
                &[
                    &record.id,
                    &org,
                    &key.lookup,
                    &key.hash.as_slice(),
                    &record.created_at.millis(),
                    &record.name,
                ],
            )
            .await
            .map_err(pg_err)?;
        if inserted == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(record)
    }

    pub async fn list_api_keys(
        &self,
        org: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<Page<ApiKeyRecord>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        known_cursor(
            &tx,
            "SELECT 1 FROM api_keys WHERE id = $1 AND org_id = $2",
            after.as_ref(),
            Some(&org),
        )
        .await?;
        let rows = tx
            .fetch(
                "SELECT id, name, lookup, created_at FROM api_keys
                 WHERE org_id = $1 AND id > $2 AND revoked_at IS NULL
                 ORDER BY id LIMIT $3",
                &[&org, &after.unwrap_or_default(), &(limit as i64 + 1)],
            )
            .await
            .map_err(pg_err)?;
        Ok(Page::from_fetched(
            rows.iter().map(key_from_row).collect(),
            limit,
        ))
    }

    pub async fn revoke_api_key(&self, org: String, id: String) -> Result<Revocation, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        // Revocations of one organization's keys queue here, one at a time. (Not FOR UPDATE:
        // that would also hold back every insert that checks its foreign key to this row.)
        tx.fetch_opt(
            "SELECT 1 FROM organizations WHERE id = $1 FOR NO KEY UPDATE",
            &[&org],
        )
        .await
        .map_err(pg_err)?
        .ok_or(StoreError::NotFound)?;
        let hash: Vec<u8> = tx
            .fetch_opt(
                "SELECT hash FROM api_keys WHERE id = $1 AND org_id = $2 AND revoked_at IS NULL",
                &[&id, &org],
            )
            .await
            .map_err(pg_err)?
            .ok_or(StoreError::NotFound)?
            .get(0);
        let others = tx
            .fetch_opt(
                "SELECT 1 FROM api_keys
                 WHERE org_id = $1 AND id <> $2 AND revoked_at IS NULL LIMIT 1",
                &[&org, &id],
            )
            .await
            .map_err(pg_err)?;
        if others.is_none() {
            return Ok(Revocation::LastKey);
        }
        tx.run(
            "UPDATE api_keys SET revoked_at = $2 WHERE id = $1",
            &[&id, &Timestamp::now().millis()],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        let hash = <[u8; 32]>::try_from(hash.as_slice())
            .map_err(|_| StoreError::database(std::io::Error::other("a key hash of 32 bytes")))?;
        Ok(Revocation::Revoked { hash })
    }

    pub async fn list_orgs(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Page<OrgRecord>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        known_cursor(
            &tx,
            "SELECT 1 FROM organizations WHERE id = $1",
            after.as_ref(),
            None,
        )
        .await?;
        let rows = tx
            .fetch(
                "SELECT id, name, created_at FROM organizations
                 WHERE id > $1 AND deleted_at IS NULL ORDER BY id LIMIT $2",
                &[&after.unwrap_or_default(), &(limit as i64 + 1)],
            )
            .await
            .map_err(pg_err)?;
        let items = rows
            .iter()
            .map(|r| OrgRecord {
                id: r.get(0),
                name: r.get(1),
                created_at: Timestamp(r.get(2)),
            })
            .collect();
        Ok(Page::from_fetched(items, limit))
    }

    pub async fn mark_org_deleted(&self, id: String) -> Result<(), StoreError> {
        let client = self.client().await?;
        let marked = client
            .run(
                "UPDATE organizations SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL",
                &[&id, &Timestamp::now().millis()],
            )
            .await
            .map_err(pg_err)?;
        if marked == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn org_deletion_step(&self) -> Result<Option<DeletionStep>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let Some(row) = tx
            .fetch_opt(
                "SELECT id FROM organizations WHERE deleted_at IS NOT NULL
                 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
                &[],
            )
            .await
            .map_err(pg_err)?
        else {
            return Ok(None);
        };
        let org: String = row.get(0);
        for part in PURGE_ORDER {
            let rows = purge(&tx, &org, *part).await?;
            if rows > 0 {
                tx.commit().await.map_err(pg_err)?;
                return Ok(Some(DeletionStep {
                    org_id: org,
                    rows,
                    finished: false,
                }));
            }
        }
        tx.run("DELETE FROM organizations WHERE id = $1", &[&org])
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(Some(DeletionStep {
            org_id: org,
            rows: 1,
            finished: true,
        }))
    }
}

/// One bounded batch of `part` for `org`: the rows it removed (or endpoints it retired).
async fn purge(tx: &Transaction<'_>, org: &String, part: Purge) -> Result<usize, StoreError> {
    let removed = match part {
        Purge::Rows { table, key } => tx
            .run(
                &format!(
                    "DELETE FROM {table} WHERE org_id = $1 AND {key} IN
                       (SELECT {key} FROM {table} WHERE org_id = $1 LIMIT {PURGE_BATCH})"
                ),
                &[org],
            )
            .await
            .map_err(pg_err)?,
        Purge::RetireEndpoints => tx
            .run(
                &format!(
                    "UPDATE endpoints SET deleted_at = $2, updated_at = $2 WHERE seq IN
                       (SELECT seq FROM endpoints WHERE org_id = $1 AND deleted_at IS NULL
                        LIMIT {PURGE_BATCH})"
                ),
                &[org, &Timestamp::now().millis()],
            )
            .await
            .map_err(pg_err)?,
        Purge::FanoutCursor => {
            let partial = tx
                .fetch_one(
                    "SELECT partial_endpoint IS NOT NULL FROM fanout_cursor WHERE id = 1",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            if !partial.get::<_, bool>(0) {
                return Ok(0);
            }
            // Locked first (as a fan-out step does), then read: the event it points at is
            // the one its last step stopped in.
            tx.run("SELECT 1 FROM fanout_cursor WHERE id = 1 FOR UPDATE", &[])
                .await
                .map_err(pg_err)?;
            tx.run(
                "UPDATE fanout_cursor c SET partial_endpoint = NULL, last_commit_seq = e.commit_seq
                 FROM (SELECT commit_seq, org_id FROM events
                       WHERE commit_seq > (SELECT last_commit_seq FROM fanout_cursor WHERE id = 1)
                       ORDER BY commit_seq LIMIT 1) e
                 WHERE c.id = 1 AND c.partial_endpoint IS NOT NULL AND e.org_id = $1",
                &[org],
            )
            .await
            .map_err(pg_err)?
        }
        Purge::WithChildren {
            table,
            children,
            child_key,
        } => {
            // Locked, so no attempt is recorded for these deliveries meanwhile.
            let parents: Vec<String> = tx
                .fetch(
                    &format!(
                        "SELECT id FROM {table} WHERE org_id = $1 ORDER BY seq
                         LIMIT {PURGE_PARENTS} FOR UPDATE"
                    ),
                    &[org],
                )
                .await
                .map_err(pg_err)?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if parents.is_empty() {
                return Ok(0);
            }
            let child_batch = PURGE_BATCH - PURGE_PARENTS;
            let removed = tx
                .run(
                    &format!(
                        "DELETE FROM {children} WHERE ctid = ANY(ARRAY(
                           SELECT ctid FROM {children} WHERE {child_key} = ANY($1)
                           LIMIT {child_batch}))"
                    ),
                    &[&parents],
                )
                .await
                .map_err(pg_err)?;
            if removed as usize == child_batch {
                return Ok(child_batch);
            }
            let parents_removed = tx
                .run(
                    &format!("DELETE FROM {table} WHERE id = ANY($1)"),
                    &[&parents],
                )
                .await
                .map_err(pg_err)?;
            removed + parents_removed
        }
    };
    Ok(removed as usize)
}

#[cfg(test)]
mod tests {
    use super::super::MIGRATIONS;
    use super::super::test_db::{TestDatabase, connect};

    #[tokio::test]
    async fn keys_made_before_keys_had_names_are_called_default() {
        let Some(db) = TestDatabase::create("acc_key_names").await else {
            return;
        };
        let c = connect(&db.url).await;
        let names = MIGRATIONS
            .iter()
            .position(|m| m.contains("ALTER TABLE api_keys ADD COLUMN name"))
            .expect("the migration that names keys");
        for sql in &MIGRATIONS[..names] {
            c.batch_execute(sql).await.unwrap();
        }
        c.batch_execute(
            "INSERT INTO organizations (id, name, created_at) VALUES ('org_1', 'Old', 0);
             INSERT INTO api_keys (id, org_id, lookup, hash, created_at)
               VALUES ('key_1', 'org_1', 'abcdefgh', '\\x00', 0);",
        )
        .await
        .unwrap();
        for sql in &MIGRATIONS[names..] {
            c.batch_execute(sql).await.unwrap();
        }
        let row = c
            .query_one("SELECT name FROM api_keys WHERE id = 'key_1'", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "default");
    }
}
