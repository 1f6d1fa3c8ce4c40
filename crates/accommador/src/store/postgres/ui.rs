//! UI sessions and portal links on PostgreSQL (see [`crate::store::ui`]). A link is used by
//! one `UPDATE … WHERE used_at IS NULL`: a concurrent second use waits for the row lock, then
//! finds it used.

use tokio_postgres::Row;

use super::cached::Cached;
use super::{PgStore, pg_err};
use crate::domain::Timestamp;
use crate::store::StoreError;
use crate::store::rollups::ROLLUP_KEEP_MS;
use crate::store::ui::{NewGrant, SessionRecord, UI_PURGE_BATCH};

/// The key and organization of a grant are live.
const LIVE_KEY: &str = "EXISTS (SELECT 1 FROM api_keys k JOIN organizations o ON o.id = k.org_id
     WHERE k.id = key_id AND k.revoked_at IS NULL AND o.deleted_at IS NULL)";

const INSERT_SESSION: &str = "INSERT INTO ui_sessions
     (id, org_id, key_id, read_only, portal, created_at, expires_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

fn session_from_row(r: &Row) -> SessionRecord {
    SessionRecord {
        org: r.get(0),
        key_id: r.get(1),
        read_only: r.get(2),
        portal: r.get(3),
        expires_at: Timestamp(r.get(4)),
    }
}

impl PgStore {
    pub async fn create_session(&self, s: NewGrant) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .run(
                INSERT_SESSION,
                &[
                    &s.id,
                    &s.org,
                    &s.key_id,
                    &s.read_only,
                    &false,
                    &s.created_at.millis(),
                    &s.expires_at.millis(),
                ],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    pub async fn find_session(
        &self,
        id: String,
        now: Timestamp,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let client = self.client().await?;
        let row = client
            .fetch_opt(
                &format!(
                    "SELECT org_id, key_id, read_only, portal, expires_at FROM ui_sessions
                     WHERE id = $1 AND expires_at > $2 AND {LIVE_KEY}"
                ),
                &[&id, &now.millis()],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.as_ref().map(session_from_row))
    }

    pub async fn delete_session(&self, id: String) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .run("DELETE FROM ui_sessions WHERE id = $1", &[&id])
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    pub async fn create_portal_link(&self, link: NewGrant) -> Result<(), StoreError> {
        let client = self.client().await?;
        let n = client
            .run(
                "INSERT INTO portal_links (id, org_id, key_id, read_only, created_at, expires_at)
                 SELECT $1, o.id, $3, $4, $5, $6 FROM organizations o
                 WHERE o.id = $2 AND o.deleted_at IS NULL",
                &[
                    &link.id,
                    &link.org,
                    &link.key_id,
                    &link.read_only,
                    &link.created_at.millis(),
                    &link.expires_at.millis(),
                ],
            )
            .await
            .map_err(pg_err)?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn portal_link_usable(&self, id: String, now: Timestamp) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .fetch_opt(
                &format!(
                    "SELECT 1 FROM portal_links
                     WHERE id = $1 AND used_at IS NULL AND expires_at > $2 AND {LIVE_KEY}"
                ),
                &[&id, &now.millis()],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.is_some())
    }

    pub async fn consume_portal_link(
        &self,
        id: String,
        now: Timestamp,
        session_id: String,
        session_expires: Timestamp,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let used = tx
            .fetch_opt(
                &format!(
                    "UPDATE portal_links SET used_at = $2
                     WHERE id = $1 AND used_at IS NULL AND expires_at > $2 AND {LIVE_KEY}
                     RETURNING org_id, key_id, read_only"
                ),
                &[&id, &now.millis()],
            )
            .await
            .map_err(pg_err)?;
        let Some(row) = used else {
            return Ok(None);
        };
        let session = SessionRecord {
            org: row.get(0),
            key_id: row.get(1),
            read_only: row.get(2),
            portal: true,
            expires_at: session_expires,
        };
        tx.run(
            INSERT_SESSION,
            &[
                &session_id,
                &session.org,
                &session.key_id,
                &session.read_only,
                &true,
                &now.millis(),
                &session_expires.millis(),
            ],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(Some(session))
    }

    pub async fn purge_ui(&self, now: Timestamp) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let mut removed = 0;
        for sql in [
            "DELETE FROM ui_sessions WHERE id IN
               (SELECT id FROM ui_sessions WHERE expires_at <= $1 LIMIT $2)",
            "DELETE FROM portal_links WHERE id IN
               (SELECT id FROM portal_links WHERE expires_at <= $1 LIMIT $2)",
        ] {
            removed += client
                .run(sql, &[&now.millis(), &(UI_PURGE_BATCH as i64)])
                .await
                .map_err(pg_err)?;
        }
        // Rollup counters past what the overview shows.
        removed += client
            .run(
                "DELETE FROM delivery_rollups WHERE seq IN
                   (SELECT seq FROM delivery_rollups WHERE hour < $1 LIMIT $2)",
                &[&(now.millis() - ROLLUP_KEEP_MS), &(UI_PURGE_BATCH as i64)],
            )
            .await
            .map_err(pg_err)?;
        Ok(removed as usize)
    }
}
