//! The delivery-log UI's secrets: session and portal-link tokens (256 random bits, URL-safe
//! base64), the ID each is stored under (its SHA-256 in hex, so a database reader cannot use
//! one), and the CSRF token a session's forms carry, derived from the session token so that
//! only the holder of the cookie can know it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A fresh random token.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hex_sha256(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The stored ID of a session or portal-link token.
pub fn token_id(token: &str) -> String {
    hex_sha256(&[b"accommador-ui-token\0", token.as_bytes()])
}

/// The CSRF token of the session (or pre-session cookie) `token`.
pub fn csrf_token(token: &str) -> String {
    hex_sha256(&[b"accommador-ui-csrf\0", token.as_bytes()])
}

/// Whether `presented` is the CSRF token of `token`, compared in constant time.
pub fn csrf_matches(token: &str, presented: &str) -> bool {
    csrf_token(token)
        .as_bytes()
        .ct_eq(presented.as_bytes())
        .into()
}

/// A token as it may appear in a cookie or path: the shape [`new_token`] makes, nothing else
/// (so nothing unexpected reaches a query or a log).
pub fn plausible_token(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_stored_by_a_hash_that_differs_from_the_csrf_token() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(plausible_token(&a));
        assert!(!plausible_token("x<script>"));
        assert_ne!(token_id(&a), csrf_token(&a));
        assert_ne!(token_id(&a), token_id(&b));
        assert!(csrf_matches(&a, &csrf_token(&a)));
        assert!(!csrf_matches(&a, &csrf_token(&b)));
        assert!(!csrf_matches(&a, ""));
    }
}
