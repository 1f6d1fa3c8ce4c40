//! Endpoint secrets at rest: the keys of `ACCOMMADOR_SECRET_KEY` and the sealed form of a
//! secret in the database.
//!
//! A key is 32 random bytes, written in base64; the setting is a comma-separated list, newest
//! first. New secrets are sealed with the newest key; any key of the list opens what it sealed,
//! so a rotation is: put the new key first, run `accommador secrets reencrypt`, drop the old key.
//!
//! A sealed secret is `sealed:v1:<key id>:<base64url(nonce ‖ ciphertext)>`: XChaCha20-Poly1305
//! with a random 192-bit nonce per value (random nonces this long never repeat in practice),
//! and the endpoint's ID (with the key id) as associated data, so a value copied to another
//! endpoint's row does not open. The key id is the first 8 hex digits of a SHA-256 of the key:
//! it names the key that can open a value without telling anything about the key. Secrets
//! stored before the setting existed are plain text (`whsec_…`) and still read as they are.
//!
//! Nothing here prints a key or a secret: `Debug` shows key ids only, errors name key ids and
//! endpoint IDs.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

const SEALED_PREFIX: &str = "sealed:v1:";
const NONCE_LEN: usize = 24;

/// One key of the list.
struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

/// The keys that seal and open endpoint secrets, newest first. Empty when
/// `ACCOMMADOR_SECRET_KEY` is not set: secrets are then stored in plain text.
#[derive(Default)]
pub struct SecretKeys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for SecretKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKeys")
            .field("ids", &self.ids())
            .finish_non_exhaustive()
    }
}

/// A secret as it is written to the database.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The stored text: sealed, or plain text when no key is set.
    pub value: String,
    /// The key that sealed it (`None`: plain text).
    pub key_id: Option<String>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Why a stored secret could not be read. Names key ids, never keys or secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error(
        "it is sealed with key id {key_id}, which is not in ACCOMMADOR_SECRET_KEY{}",
        known_ids(.known)
    )]
    UnknownKey { key_id: String, known: Vec<String> },
    #[error("it does not decrypt with key id {key_id} (a wrong key, or a damaged or moved value)")]
    Undecryptable { key_id: String },
    #[error("it is not a sealed secret this version can read")]
    Malformed,
}

fn known_ids(known: &[String]) -> String {
    if known.is_empty() {
        " (the setting is not set)".to_owned()
    } else {
        format!(" (it holds key ids {})", known.join(", "))
    }
}

impl SecretKeys {
    /// No keys: secrets are stored in plain text.
    pub fn none() -> SecretKeys {
        SecretKeys::default()
    }

    /// Parses `ACCOMMADOR_SECRET_KEY`: base64 of 32 bytes, comma-separated, newest first.
    /// Errors say which entry is wrong and how, never what it holds.
    pub fn parse(list: &str) -> Result<SecretKeys, String> {
        let mut keys: Vec<Key> = Vec::new();
        for (i, entry) in list.split(',').map(str::trim).enumerate() {
            let position = i + 1;
            if entry.is_empty() {
                return Err(format!("entry {position} of the list is empty"));
            }
            let bytes = STANDARD
                .decode(entry)
                .or_else(|_| URL_SAFE_NO_PAD.decode(entry.trim_end_matches('=')))
                .map_err(|_| format!("entry {position} is not base64"))?;
            let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
                format!(
                    "entry {position} is {} bytes long; a key is 32 random bytes in base64 \
                     (e.g. `openssl rand -base64 32`)",
                    b.len()
                )
            })?;
            let id = key_id(&bytes);
            if keys.iter().any(|k| k.id == id) {
                return Err(format!("entry {position} repeats key id {id}"));
            }
            keys.push(Key {
                id,
                cipher: XChaCha20Poly1305::new(&bytes.into()),
            });
        }
        Ok(SecretKeys { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key ids of the list, newest first.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    /// The id of the key new secrets are sealed with.
    pub fn newest_id(&self) -> Option<&str> {
        self.keys.first().map(|k| k.id.as_str())
    }

    /// `plain` as it is to be stored for endpoint `endpoint_id`: sealed with the newest key, or
    /// as it is when no key is set.
    pub fn seal(&self, endpoint_id: &str, plain: &str) -> Sealed {
        let Some(key) = self.keys.first() else {
            return Sealed {
                value: plain.to_owned(),
                key_id: None,
            };
        };
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce);
        let aad = associated_data(&key.id, endpoint_id);
        let ciphertext = key
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 seals any message shorter than 256 GiB");
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        Sealed {
            value: format!(
                "{SEALED_PREFIX}{}:{}",
                key.id,
                URL_SAFE_NO_PAD.encode(sealed)
            ),
            key_id: Some(key.id.clone()),
        }
    }

    /// The plain secret of a stored value of endpoint `endpoint_id` (plain-text values come
    /// back as they are).
    pub fn open(&self, endpoint_id: &str, stored: &str) -> Result<String, OpenError> {
        let Some(rest) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok(stored.to_owned());
        };
        let (key_id, body) = rest.split_once(':').ok_or(OpenError::Malformed)?;
        let key =
            self.keys
                .iter()
                .find(|k| k.id == key_id)
                .ok_or_else(|| OpenError::UnknownKey {
                    key_id: key_id.to_owned(),
                    known: self.ids(),
                })?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| OpenError::Malformed)?;
        if bytes.len() < NONCE_LEN {
            return Err(OpenError::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let aad = associated_data(key_id, endpoint_id);
        let plain = key
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| OpenError::Undecryptable {
                key_id: key_id.to_owned(),
            })?;
        String::from_utf8(plain).map_err(|_| OpenError::Malformed)
    }
}

/// The key id a stored value names (`None`: plain text).
pub fn sealed_key_id(stored: &str) -> Option<&str> {
    stored
        .strip_prefix(SEALED_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .map(|(id, _)| id)
}

/// The first 8 hex digits of SHA-256 over a label and the key.
fn key_id(key: &[u8; 32]) -> String {
    let digest = Sha256::new()
        .chain_update(b"accommador secret key id\0")
        .chain_update(key)
        .finalize();
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

fn associated_data(key_id: &str, endpoint_id: &str) -> Vec<u8> {
    format!("accommador endpoint secret v1\0{key_id}\0{endpoint_id}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        STANDARD.encode([byte; 32])
    }

    #[test]
    fn a_sealed_secret_opens_for_its_endpoint_only() {
        let keys = SecretKeys::parse(&key(1)).unwrap();
        let sealed = keys.seal("ep_1", "whsec_abc");
        assert!(!sealed.value.contains("whsec_abc"));
        assert_eq!(sealed.key_id.as_deref(), keys.newest_id());
        assert_eq!(sealed_key_id(&sealed.value), keys.newest_id());
        assert_eq!(keys.open("ep_1", &sealed.value).unwrap(), "whsec_abc");
        assert!(matches!(
            keys.open("ep_2", &sealed.value),
            Err(OpenError::Undecryptable { .. })
        ));
        // A fresh nonce every time.
        assert_ne!(keys.seal("ep_1", "whsec_abc").value, sealed.value);
    }

    #[test]
    fn an_older_key_later_in_the_list_still_opens_what_it_sealed() {
        let old = SecretKeys::parse(&key(1)).unwrap();
        let sealed = old.seal("ep_1", "whsec_abc");
        let rotated = SecretKeys::parse(&format!("{}, {}", key(2), key(1))).unwrap();
        assert_eq!(rotated.open("ep_1", &sealed.value).unwrap(), "whsec_abc");
        assert_ne!(rotated.newest_id(), old.newest_id());
        let dropped = SecretKeys::parse(&key(2)).unwrap();
        let e = dropped.open("ep_1", &sealed.value).unwrap_err();
        assert!(matches!(e, OpenError::UnknownKey { .. }), "{e}");
        assert!(e.to_string().contains(old.newest_id().unwrap()), "{e}");
    }

    #[test]
    fn plain_text_from_before_the_setting_reads_as_it_is() {
        let keys = SecretKeys::parse(&key(1)).unwrap();
        assert_eq!(keys.open("ep_1", "whsec_abc").unwrap(), "whsec_abc");
        let none = SecretKeys::none();
        assert_eq!(none.seal("ep_1", "whsec_abc").value, "whsec_abc");
        assert_eq!(none.seal("ep_1", "whsec_abc").key_id, None);
    }

    #[test]
    fn bad_key_lists_are_refused_without_showing_them() {
        for (list, says) in [
            ("", "entry 1 of the list is empty"),
            ("not base64!!", "entry 1 is not base64"),
            (&STANDARD.encode([7u8; 16]), "entry 1 is 16 bytes long"),
            (&format!("{},{}", key(1), key(1)), "entry 2 repeats key id"),
        ] {
            let e = SecretKeys::parse(list).unwrap_err();
            assert!(e.contains(says), "{list:?}: {e}");
            if !list.is_empty() {
                assert!(!e.contains(list), "{e}");
            }
        }
        let keys = SecretKeys::parse(&key(3)).unwrap();
        assert!(!format!("{keys:?}").contains(&key(3)));
    }
}
