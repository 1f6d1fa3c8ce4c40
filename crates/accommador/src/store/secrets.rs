//! Endpoint secrets at rest, the same for both backends: which keys the store seals and opens
//! with, the start-up check of those keys against what is stored, and one bounded step of
//! `accommador secrets reencrypt`. The backends only read and write the stored text
//! (`secret`, and `key_id`, NULL for plain text); sealing and opening happen here, in one place.

use std::sync::Arc;

use super::{Store, StoreError};
use crate::domain::secret_box::{OpenError, Sealed, SecretKeys};

/// Rows one `secrets reencrypt` step reads and rewrites at most, in one short transaction.
pub const RESEAL_BATCH: usize = 1000;

/// A stored secret as `secrets reencrypt` walks them, in `seq` (SQLite: rowid) order.
#[derive(Clone)]
pub struct StoredSecret {
    pub seq: i64,
    pub endpoint_id: String,
    pub stored: String,
    pub key_id: Option<String>,
}

impl std::fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSecret")
            .field("seq", &self.seq)
            .field("endpoint_id", &self.endpoint_id)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// One row to rewrite: only if it still holds `old` (a rotation may have removed it since).
#[derive(Debug, Clone)]
pub struct Reseal {
    pub seq: i64,
    pub old: String,
    pub new: Sealed,
}

/// What one [`Store::reencrypt_step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResealStep {
    /// Rows rewritten with the newest key.
    pub moved: usize,
    /// The last row read: the next step starts after it.
    pub last_seq: i64,
}

/// What start-up found stored, once the keys were found to open it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretsAtRest {
    /// No key is configured; every stored secret is plain text.
    Plain,
    /// Keys are configured and open every sealed secret; `plain_left`: some secrets from
    /// before the setting are still plain text (until `secrets reencrypt`).
    Sealed { plain_left: bool },
}

impl Store {
    /// The store, sealing new endpoint secrets with the newest of `keys` and opening stored ones
    /// with any of them. Without this (or with no keys) secrets are stored in plain text.
    pub fn with_secret_keys(self, keys: SecretKeys) -> Store {
        let keys = Arc::new(keys);
        match self {
            Store::Sqlite(mut s) => {
                s.keys = keys;
                Store::Sqlite(s)
            }
            Store::Postgres(mut s) => {
                s.keys = keys;
                Store::Postgres(s)
            }
        }
    }

    pub fn secret_keys(&self) -> &SecretKeys {
        match self {
            Store::Sqlite(s) => &s.keys,
            Store::Postgres(s) => &s.keys,
        }
    }

    /// One stored secret of `endpoint_id`, opened.
    pub fn open_secret(&self, endpoint_id: &str, stored: &str) -> Result<String, StoreError> {
        self.secret_keys()
            .open(endpoint_id, stored)
            .map_err(|reason| StoreError::SecretUnreadable {
                endpoint_id: endpoint_id.to_owned(),
                reason,
            })
    }

    /// Stored secrets of `endpoint_id`, opened, in their order.
    pub fn open_secrets(
        &self,
        endpoint_id: &str,
        stored: &[String],
    ) -> Result<Vec<String>, StoreError> {
        stored
            .iter()
            .map(|s| self.open_secret(endpoint_id, s))
            .collect()
    }

    /// Checks the configured keys against what is stored: every key id in use must be in the
    /// list and open a stored value of its own. The error says what is wrong, naming key ids
    /// and endpoint IDs, never a key or a secret.
    pub async fn check_secret_keys(&self) -> anyhow::Result<SecretsAtRest> {
        let samples = match self {
            Store::Sqlite(s) => s.secret_key_samples().await,
            Store::Postgres(s) => s.secret_key_samples().await,
        }?;
        let keys = self.secret_keys();
        let mut plain_left = false;
        for sample in samples {
            let Some(key_id) = &sample.key_id else {
                plain_left = true;
                continue;
            };
            if keys.is_empty() {
                anyhow::bail!(
                    "endpoint secrets in this database are encrypted (key id {key_id}) but \
                     ACCOMMADOR_SECRET_KEY is not set: set it to the key list they were sealed \
                     with; without it no webhook could be signed"
                );
            }
            if let Err(reason) = keys.open(&sample.endpoint_id, &sample.stored) {
                let hint = match reason {
                    OpenError::UnknownKey { .. } => {
                        "add that key to the list (after the newest) and, once \
                         `accommador secrets reencrypt` has run, it can be dropped"
                    }
                    _ => "the stored value was changed or copied from another endpoint",
                };
                anyhow::bail!(
                    "ACCOMMADOR_SECRET_KEY cannot decrypt the stored endpoint secrets: the \
                     secret of endpoint {} cannot be read: {reason}; {hint}",
                    sample.endpoint_id
                );
            }
        }
        Ok(if keys.is_empty() {
            SecretsAtRest::Plain
        } else {
            SecretsAtRest::Sealed { plain_left }
        })
    }

    /// Moves up to [`RESEAL_BATCH`] stored secrets after row `after` to the newest key
    /// (plain-text ones included): read, opened and sealed here, then written in one short
    /// transaction, each row only if it is unchanged. `None` when no rows follow `after`.
    pub async fn reencrypt_step(&self, after: i64) -> Result<Option<ResealStep>, StoreError> {
        let rows = match self {
            Store::Sqlite(s) => s.stored_secrets_after(after, RESEAL_BATCH).await,
            Store::Postgres(s) => s.stored_secrets_after(after, RESEAL_BATCH).await,
        }?;
        let Some(last_seq) = rows.last().map(|r| r.seq) else {
            return Ok(None);
        };
        let keys = self.secret_keys();
        let newest = keys.newest_id();
        let mut reseal = Vec::new();
        for row in rows {
            if newest.is_some() && row.key_id.as_deref() == newest {
                continue;
            }
            let plain = self.open_secret(&row.endpoint_id, &row.stored)?;
            reseal.push(Reseal {
                seq: row.seq,
                new: keys.seal(&row.endpoint_id, &plain),
                old: row.stored,
            });
        }
        let moved = if reseal.is_empty() {
            0
        } else {
            match self {
                Store::Sqlite(s) => s.reseal(reseal).await,
                Store::Postgres(s) => s.reseal(reseal).await,
            }?
        };
        Ok(Some(ResealStep { moved, last_seq }))
    }
}
