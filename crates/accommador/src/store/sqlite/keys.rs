//! API keys, the operator's organization list and organization deletion on SQLite (see
//! [`crate::store::keys`]). The one writer runs each step alone, so "the last live key" is
//! counted and revoked without a race.

use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, db_err};
use crate::domain::Timestamp;
use crate::domain::ids;
use crate::domain::org::{NewApiKey, key_lookup, key_matches, shown_prefix};
use crate::store::keys::{
    ApiKeyRecord, DeletionStep, KeyOwner, OrgRecord, PURGE_BATCH, PURGE_ORDER, PURGE_PARENTS,
    Purge, Revocation,
};
use crate::store::{Page, StoreError};

fn key_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        prefix: shown_prefix(&r.get::<_, String>(2)?),
        created_at: Timestamp(r.get(3)?),
    })
}

fn live_org(c: &Connection, org: &str) -> Result<bool, StoreError> {
    c.prepare_cached("SELECT 1 FROM organizations WHERE id = ?1 AND deleted_at IS NULL")
        .and_then(|mut s| s.exists([org]))
        .map_err(db_err)
}

impl SqliteStore {
    pub async fn authenticate(&self, presented: String) -> Result<Option<KeyOwner>, StoreError> {
        let Some(lookup) = key_lookup(&presented).map(str::to_owned) else {
            return Ok(None);
        };
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT k.org_id, k.hash, k.id FROM api_keys k
                     JOIN organizations o ON o.id = k.org_id
                     WHERE k.lookup = ?1 AND k.revoked_at IS NULL AND o.deleted_at IS NULL",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map([lookup], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(db_err)?;
            for row in rows {
                let (org, hash, key_id) = row.map_err(db_err)?;
                if key_matches(&presented, &hash) {
                    return Ok(Some(KeyOwner { org, key_id }));
                }
            }
            Ok(None)
        })
        .await
    }

    pub async fn create_api_key(
        &self,
        org: String,
        name: String,
        key: NewApiKey,
    ) -> Result<ApiKeyRecord, StoreError> {
        self.write(move |c| {
            if !live_org(c, &org)? {
                return Err(StoreError::NotFound);
            }
            let record = ApiKeyRecord {
                id: ids::new_id(ids::API_KEY),
                name,
                prefix: shown_prefix(&key.lookup),
                created_at: Timestamp::now(),
            };
            c.prepare_cached(
                "INSERT INTO api_keys (id, org_id, lookup, hash, created_at, name)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    record.id,
                    org,
                    key.lookup,
                    key.hash,
                    record.created_at.millis(),
                    record.name
                ])
            })
            .map_err(db_err)?;
            Ok(record)
        })
        .await
    }

    pub async fn list_api_keys(
        &self,
        org: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<Page<ApiKeyRecord>, StoreError> {
        self.read(move |c| {
            if let Some(after) = &after {
                let known = c
                    .prepare_cached("SELECT 1 FROM api_keys WHERE id = ?1 AND org_id = ?2")
                    .and_then(|mut s| s.exists(params![after, org]))
                    .map_err(db_err)?;
                if !known {
                    return Err(StoreError::UnknownCursor);
                }
            }
            let items = c
                .prepare_cached(
                    "SELECT id, name, lookup, created_at FROM api_keys
                     WHERE org_id = ?1 AND id > ?2 AND revoked_at IS NULL
                     ORDER BY id LIMIT ?3",
                )
                .and_then(|mut s| {
                    s.query_map(
                        params![org, after.unwrap_or_default(), limit as i64 + 1],
                        key_from_row,
                    )?
                    .collect::<Result<Vec<_>, _>>()
                })
                .map_err(db_err)?;
            Ok(Page::from_fetched(items, limit))
        })
        .await
    }

    pub async fn revoke_api_key(&self, org: String, id: String) -> Result<Revocation, StoreError> {
        self.write(move |c| {
            let hash: Vec<u8> = c
                .prepare_cached(
                    "SELECT hash FROM api_keys
                     WHERE id = ?1 AND org_id = ?2 AND revoked_at IS NULL",
                )
                .and_then(|mut s| s.query_row(params![id, org], |r| r.get(0)).optional())
                .map_err(db_err)?
                .ok_or(StoreError::NotFound)?;
            let others: bool = c
                .prepare_cached(
                    "SELECT 1 FROM api_keys
                     WHERE org_id = ?1 AND id <> ?2 AND revoked_at IS NULL LIMIT 1",
                )
                .and_then(|mut s| s.exists(params![org, id]))
                .map_err(db_err)?;
            if !others {
                return Ok(Revocation::LastKey);
            }
            c.prepare_cached("UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id, Timestamp::now().millis()]))
                .map_err(db_err)?;
            let hash = <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| {
                StoreError::database(std::io::Error::other("a key hash of 32 bytes"))
            })?;
            Ok(Revocation::Revoked { hash })
        })
        .await
    }

    pub async fn list_orgs(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Page<OrgRecord>, StoreError> {
        self.read(move |c| {
            if let Some(after) = &after {
                let known = c
                    .prepare_cached("SELECT 1 FROM organizations WHERE id = ?1")
                    .and_then(|mut s| s.exists([after]))
                    .map_err(db_err)?;
                if !known {
                    return Err(StoreError::UnknownCursor);
                }
            }
            let items = c
                .prepare_cached(
                    "SELECT id, name, created_at FROM organizations
                     WHERE id > ?1 AND deleted_at IS NULL ORDER BY id LIMIT ?2",
                )
                .and_then(|mut s| {
                    s.query_map(params![after.unwrap_or_default(), limit as i64 + 1], |r| {
                        Ok(OrgRecord {
                            id: r.get(0)?,
                            name: r.get(1)?,
                            created_at: Timestamp(r.get(2)?),
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()
                })
                .map_err(db_err)?;
            Ok(Page::from_fetched(items, limit))
        })
        .await
    }

    pub async fn mark_org_deleted(&self, id: String) -> Result<(), StoreError> {
        self.write(move |c| {
            let marked = c
                .prepare_cached(
                    "UPDATE organizations SET deleted_at = ?2 WHERE id = ?1 AND deleted_at IS NULL",
                )
                .and_then(|mut s| s.execute(params![id, Timestamp::now().millis()]))
                .map_err(db_err)?;
            if marked == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
        .await
    }

    pub async fn org_deletion_step(&self) -> Result<Option<DeletionStep>, StoreError> {
        self.write(move |c| {
            let org: Option<String> = c
                .prepare_cached(
                    "SELECT id FROM organizations WHERE deleted_at IS NOT NULL ORDER BY id LIMIT 1",
                )
                .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
                .map_err(db_err)?;
            let Some(org) = org else {
                return Ok(None);
            };
            for part in PURGE_ORDER {
                let rows = purge(c, &org, *part)?;
                if rows > 0 {
                    return Ok(Some(DeletionStep {
                        org_id: org,
                        rows,
                        finished: false,
                    }));
                }
            }
            c.prepare_cached("DELETE FROM organizations WHERE id = ?1")
                .and_then(|mut s| s.execute([&org]))
                .map_err(db_err)?;
            Ok(Some(DeletionStep {
                org_id: org,
                rows: 1,
                finished: true,
            }))
        })
        .await
    }
}

/// One bounded batch of `part` for `org`: the rows it removed (or endpoints it retired).
fn purge(c: &Connection, org: &str, part: Purge) -> Result<usize, StoreError> {
    let run = |sql: &str, p: &[&dyn rusqlite::ToSql]| {
        c.prepare_cached(sql)
            .and_then(|mut s| s.execute(p))
            .map_err(db_err)
    };
    match part {
        Purge::Rows { table, key } => run(
            &format!(
                "DELETE FROM {table} WHERE org_id = ?1 AND {key} IN
                   (SELECT {key} FROM {table} WHERE org_id = ?1 LIMIT {PURGE_BATCH})"
            ),
            &[&org],
        ),
        Purge::RetireEndpoints => run(
            &format!(
                "UPDATE endpoints SET deleted_at = ?2, updated_at = ?2 WHERE seq IN
                   (SELECT seq FROM endpoints WHERE org_id = ?1 AND deleted_at IS NULL
                    LIMIT {PURGE_BATCH})"
            ),
            &[&org, &Timestamp::now().millis()],
        ),
        Purge::FanoutCursor => run(
            "UPDATE fanout_cursor SET partial_endpoint = NULL,
                 last_seq = (SELECT seq FROM events WHERE seq > fanout_cursor.last_seq
                             ORDER BY seq LIMIT 1)
             WHERE id = 1 AND partial_endpoint IS NOT NULL
               AND (SELECT org_id FROM events WHERE seq > fanout_cursor.last_seq
                    ORDER BY seq LIMIT 1) = ?1",
            &[&org],
        ),
        Purge::WithChildren {
            table,
            children,
            child_key,
        } => {
            let parents: Vec<String> = c
                .prepare_cached(&format!(
                    "SELECT id FROM {table} WHERE org_id = ?1 ORDER BY seq LIMIT {PURGE_PARENTS}"
                ))
                .and_then(|mut s| {
                    s.query_map([org], |r| r.get(0))?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(db_err)?;
            if parents.is_empty() {
                return Ok(0);
            }
            let list = serde_json::to_string(&parents).expect("IDs serialise");
            let child_batch = PURGE_BATCH - PURGE_PARENTS;
            let removed = run(
                &format!(
                    "DELETE FROM {children} WHERE rowid IN
                       (SELECT rowid FROM {children}
                        WHERE {child_key} IN (SELECT value FROM json_each(?1))
                        LIMIT {child_batch})"
                ),
                &[&list],
            )?;
            if removed == child_batch {
                // Maybe more children: the parents go in a later step.
                return Ok(removed);
            }
            let parents_removed = run(
                &format!("DELETE FROM {table} WHERE id IN (SELECT value FROM json_each(?1))"),
                &[&list],
            )?;
            Ok(removed + parents_removed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::MIGRATIONS;
    use super::*;

    #[test]
    fn keys_made_before_keys_had_names_are_called_default() {
        let c = Connection::open_in_memory().unwrap();
        let names = MIGRATIONS
            .iter()
            .position(|m| m.contains("ALTER TABLE api_keys ADD COLUMN name"))
            .expect("the migration that names keys");
        for sql in &MIGRATIONS[..names] {
            c.execute_batch(sql).unwrap();
        }
        c.execute_batch(
            "INSERT INTO organizations (id, name, created_at) VALUES ('org_1', 'Old', 0);
             INSERT INTO api_keys (id, org_id, lookup, hash, created_at)
               VALUES ('key_1', 'org_1', 'abcdefgh', x'00', 0);",
        )
        .unwrap();
        for sql in &MIGRATIONS[names..] {
            c.execute_batch(sql).unwrap();
        }
        let name: String = c
            .query_row("SELECT name FROM api_keys WHERE id = 'key_1'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(name, "default");
    }
}
