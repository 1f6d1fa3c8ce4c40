//! UI sessions and portal links on SQLite (see [`crate::store::ui`]).

use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, db_err};
use crate::domain::Timestamp;
use crate::store::StoreError;
use crate::store::rollups::ROLLUP_KEEP_MS;
use crate::store::ui::{NewGrant, SessionRecord, UI_PURGE_BATCH};

/// The key and organization of a grant are live (`?` is the grant's key ID).
const LIVE_KEY: &str = "EXISTS (SELECT 1 FROM api_keys k JOIN organizations o ON o.id = k.org_id
     WHERE k.id = key_id AND k.revoked_at IS NULL AND o.deleted_at IS NULL)";

fn insert_session(c: &rusqlite::Connection, s: &NewGrant, portal: bool) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO ui_sessions (id, org_id, key_id, read_only, portal, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut st| {
        st.execute(params![
            s.id,
            s.org,
            s.key_id,
            s.read_only,
            portal,
            s.created_at.millis(),
            s.expires_at.millis()
        ])
    })
    .map_err(db_err)?;
    Ok(())
}

impl SqliteStore {
    pub async fn create_session(&self, session: NewGrant) -> Result<(), StoreError> {
        self.write(move |c| insert_session(c, &session, false))
            .await
    }

    pub async fn find_session(
        &self,
        id: String,
        now: Timestamp,
    ) -> Result<Option<SessionRecord>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT org_id, key_id, read_only, portal, expires_at FROM ui_sessions
                 WHERE id = ?1 AND expires_at > ?2 AND {LIVE_KEY}"
            ))
            .and_then(|mut st| {
                st.query_row(params![id, now.millis()], |r| {
                    Ok(SessionRecord {
                        org: r.get(0)?,
                        key_id: r.get(1)?,
                        read_only: r.get(2)?,
                        portal: r.get(3)?,
                        expires_at: Timestamp(r.get(4)?),
                    })
                })
                .optional()
            })
            .map_err(db_err)
        })
        .await
    }

    pub async fn delete_session(&self, id: String) -> Result<(), StoreError> {
        self.write(move |c| {
            c.prepare_cached("DELETE FROM ui_sessions WHERE id = ?1")
                .and_then(|mut st| st.execute([id]))
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    pub async fn create_portal_link(&self, link: NewGrant) -> Result<(), StoreError> {
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "INSERT INTO portal_links (id, org_id, key_id, read_only, created_at, expires_at)
                     SELECT ?1, o.id, ?3, ?4, ?5, ?6 FROM organizations o
                     WHERE o.id = ?2 AND o.deleted_at IS NULL",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        link.id,
                        link.org,
                        link.key_id,
                        link.read_only,
                        link.created_at.millis(),
                        link.expires_at.millis()
                    ])
                })
                .map_err(db_err)?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
        .await
    }

    pub async fn portal_link_usable(&self, id: String, now: Timestamp) -> Result<bool, StoreError> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT 1 FROM portal_links
                 WHERE id = ?1 AND used_at IS NULL AND expires_at > ?2 AND {LIVE_KEY}"
            ))
            .and_then(|mut st| st.exists(params![id, now.millis()]))
            .map_err(db_err)
        })
        .await
    }

    pub async fn consume_portal_link(
        &self,
        id: String,
        now: Timestamp,
        session_id: String,
        session_expires: Timestamp,
    ) -> Result<Option<SessionRecord>, StoreError> {
        // The one writer runs this alone: the UPDATE's conditions decide exactly one use.
        self.write(move |c| {
            let used = c
                .prepare_cached(&format!(
                    "UPDATE portal_links SET used_at = ?2
                     WHERE id = ?1 AND used_at IS NULL AND expires_at > ?2 AND {LIVE_KEY}
                     RETURNING org_id, key_id, read_only"
                ))
                .and_then(|mut st| {
                    st.query_row(params![id, now.millis()], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
                    })
                    .optional()
                })
                .map_err(db_err)?;
            let Some((org, key_id, read_only)) = used else {
                return Ok(None);
            };
            let grant = NewGrant {
                id: session_id,
                org,
                key_id,
                read_only,
                created_at: now,
                expires_at: session_expires,
            };
            insert_session(c, &grant, true)?;
            Ok(Some(SessionRecord {
                org: grant.org,
                key_id: grant.key_id,
                read_only,
                portal: true,
                expires_at: session_expires,
            }))
        })
        .await
    }

    pub async fn purge_ui(&self, now: Timestamp) -> Result<usize, StoreError> {
        self.write(move |c| {
            let mut removed = 0;
            for sql in [
                "DELETE FROM ui_sessions WHERE id IN
                   (SELECT id FROM ui_sessions WHERE expires_at <= ?1 LIMIT ?2)",
                "DELETE FROM portal_links WHERE id IN
                   (SELECT id FROM portal_links WHERE expires_at <= ?1 LIMIT ?2)",
            ] {
                removed += c
                    .prepare_cached(sql)
                    .and_then(|mut st| st.execute(params![now.millis(), UI_PURGE_BATCH as i64]))
                    .map_err(db_err)?;
            }
            // Rollup counters past what the overview shows.
            removed += c
                .prepare_cached(
                    "DELETE FROM delivery_rollups WHERE seq IN
                       (SELECT seq FROM delivery_rollups WHERE hour < ?1 LIMIT ?2)",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        now.millis() - ROLLUP_KEEP_MS,
                        UI_PURGE_BATCH as i64
                    ])
                })
                .map_err(db_err)?;
            Ok(removed)
        })
        .await
    }
}
