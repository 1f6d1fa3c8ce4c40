//! Organizations and their API keys.
//!
//! A key is `acm_` followed by 256 random bits in URL-safe base64. Only its SHA-256 hash is
//! stored, beside a short prefix that finds the row; the hash is then compared in constant time.
//! That prefix, shown as `acm_` + its characters, is also what tells a person which key is which
//! in the key list (it reveals 48 of the 256 bits).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const KEY_PREFIX: &str = "acm_";
/// Characters of the key (after `acm_`) kept in clear to look the key up.
const LOOKUP_LEN: usize = 8;

/// An organization name: 1–200 characters, not blank.
pub fn parse_org_name(name: &str) -> Result<String, &'static str> {
    parse_name(name)
}

/// An API key's name: the same rules as an organization name.
pub fn parse_key_name(name: &str) -> Result<String, &'static str> {
    parse_name(name)
}

/// The prefix a key is shown by: `acm_` and its lookup characters.
pub fn shown_prefix(lookup: &str) -> String {
    format!("{KEY_PREFIX}{lookup}")
}

/// 1–200 characters once surrounding whitespace is trimmed (the trimmed name is kept), no NUL.
fn parse_name(name: &str) -> Result<String, &'static str> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err("must not be blank");
    }
    if trimmed.chars().count() > 200 {
        return Err("must be at most 200 characters");
    }
    if trimmed.contains('\0') {
        return Err(super::NO_NUL);
    }
    Ok(trimmed.to_owned())
}

/// A freshly generated API key. The plain text exists only until it is shown once.
pub struct NewApiKey {
    pub plain: String,
    pub lookup: String,
    pub hash: [u8; 32],
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey")
            .field("lookup", &self.lookup)
            .finish_non_exhaustive()
    }
}

impl NewApiKey {
    pub fn generate() -> NewApiKey {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        let plain = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        let lookup = plain[KEY_PREFIX.len()..KEY_PREFIX.len() + LOOKUP_LEN].to_owned();
        let hash = hash_key(&plain);
        NewApiKey {
            plain,
            lookup,
            hash,
        }
    }
}

/// The lookup prefix of a presented key, or `None` when it cannot be one of ours.
pub fn key_lookup(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(KEY_PREFIX)?;
    if rest.len() != 43 || !rest.is_ascii() {
        return None;
    }
    Some(&rest[..LOOKUP_LEN])
}

pub fn hash_key(plain: &str) -> [u8; 32] {
    Sha256::digest(plain.as_bytes()).into()
}

/// Constant-time comparison of a presented key with a stored hash.
pub fn key_matches(presented: &str, stored_hash: &[u8]) -> bool {
    hash_key(presented).ct_eq(stored_hash).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_matches_its_hash_and_lookup() {
        let key = NewApiKey::generate();
        assert!(key.plain.starts_with("acm_"));
        assert_eq!(key_lookup(&key.plain), Some(key.lookup.as_str()));
        assert!(key_matches(&key.plain, &key.hash));
        let other = NewApiKey::generate();
        assert!(!key_matches(&other.plain, &key.hash));
        assert!(!format!("{key:?}").contains(&key.plain));
        assert!(key.plain.starts_with(&shown_prefix(&key.lookup)));
    }

    #[test]
    fn key_names_are_trimmed_and_bounded() {
        assert_eq!(parse_key_name("  ci deploy ").unwrap(), "ci deploy");
        assert!(parse_key_name(" \t").is_err());
        assert!(parse_key_name(&"k".repeat(201)).is_err());
        assert!(parse_key_name(&"k".repeat(200)).is_ok());
        assert!(parse_key_name("a\0b").is_err());
    }

    #[test]
    fn malformed_keys_have_no_lookup() {
        assert_eq!(key_lookup("acm_short"), None);
        assert_eq!(key_lookup("Bearer x"), None);
    }
}
