//! Standard Webhooks v1 signatures (<https://www.standardwebhooks.com/>): the endpoint secret,
//! signing on the server side, and verification on the receiver side.
//!
//! Every attempt carries three headers:
//!
//! - `webhook-id`: the message id (`evt_…`), the same on every attempt;
//! - `webhook-timestamp`: when the attempt was signed, in unix seconds;
//! - `webhook-signature`: a space-separated list of `v1,<base64>` entries, where `<base64>` is
//!   the HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` keyed with the endpoint
//!   secret's bytes. More than one entry appears while a secret is being rotated.
//!
//! A receiver accepts a request when the timestamp is within [`TOLERANCE_SECS`] of its own clock
//! (either way) and any `v1` entry matches one of its secrets; entries of other versions are
//! ignored. Comparison is constant-time.
//!
//! ```
//! use accommador_webhooks::{Secret, Verifier, WebhookHeaders};
//!
//! let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
//! let body = br#"{"test": 2432232314}"#;
//! let signature = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
//!
//! // On the receiver, from whatever header collection the HTTP stack hands over.
//! let pairs = [
//!     ("Webhook-Id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
//!     ("Webhook-Timestamp", "1614265330"),
//!     ("Webhook-Signature", signature.as_str()),
//! ];
//! let headers = WebhookHeaders::from_pairs(pairs).unwrap();
//! let verifier = Verifier::new(secret);
//! assert!(verifier.verify_at(1614265330, &headers, body).is_ok());
//! // Deduplicate on `headers.id`: it is the id the signature covered.
//! ```

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit as _, Mac as _};
use rand::TryRng as _;
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

/// Name of the header carrying the message id.
pub const HEADER_ID: &str = "webhook-id";
/// Name of the header carrying the signing time in unix seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Name of the header carrying the space-separated signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// Prefix of the string form of a [`Secret`].
pub const SECRET_PREFIX: &str = "whsec_";
/// Size in bytes of the secrets [`Secret::generate`] makes.
pub const GENERATED_SECRET_LEN: usize = 32;
/// Fewest secret bytes [`Secret::parse`] accepts.
pub const MIN_SECRET_LEN: usize = 24;
/// Most secret bytes [`Secret::parse`] accepts.
pub const MAX_SECRET_LEN: usize = 64;

/// How far, in seconds, `webhook-timestamp` may be from the receiver's clock, in either direction.
pub const TOLERANCE_SECS: i64 = 5 * 60;

type HmacSha256 = Hmac<Sha256>;

/// Length of the base64 of a SHA-256 MAC (32 bytes, padded).
const MAC_B64_LEN: usize = 44;
/// Signature scheme tag; entries look like `v1,<base64>`.
const VERSION: &str = "v1";

/// An endpoint's signing secret: 24–64 random bytes, written `whsec_<base64>`.
///
/// The key is never printed: `Debug` redacts it and there is no `Display`. Use
/// [`Secret::expose`] to get the string form, e.g. to show it once to the endpoint's owner.
#[derive(Clone)]
pub struct Secret {
    key: Box<[u8]>,
    /// HMAC state already keyed with `key`, cloned for each signature so the key schedule is
    /// computed once per secret rather than once per message.
    mac: HmacSha256,
}

impl Secret {
    /// Makes a new secret of [`GENERATED_SECRET_LEN`] bytes from the operating system's
    /// randomness.
    ///
    /// # Panics
    ///
    /// If the operating system's random source fails, which it does not on supported platforms.
    pub fn generate() -> Secret {
        let mut key = [0u8; GENERATED_SECRET_LEN];
        rand::rngs::SysRng
            .try_fill_bytes(&mut key)
            .expect("operating system random source failed");
        Secret::new(&key)
    }

    /// Parses `whsec_<base64>` (standard alphabet, padded). The `whsec_` prefix may be left off;
    /// whitespace around the value is ignored.
    pub fn parse(s: &str) -> Result<Secret, SecretError> {
        let s = s.trim();
        let b64 = s.strip_prefix(SECRET_PREFIX).unwrap_or(s);
        if b64.is_empty() {
            return Err(SecretError::Empty);
        }
        // The decode error is dropped on purpose: it can quote a byte of the secret.
        let key = BASE64.decode(b64).map_err(|_| SecretError::InvalidBase64)?;
        Secret::from_bytes(&key)
    }

    /// Makes a secret from raw key bytes; there must be 24–64 of them.
    pub fn from_bytes(key: &[u8]) -> Result<Secret, SecretError> {
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&key.len()) {
            return Err(SecretError::InvalidLength(key.len()));
        }
        Ok(Secret::new(key))
    }

    fn new(key: &[u8]) -> Secret {
        Secret {
            key: key.into(),
            mac: HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length"),
        }
    }

    /// The secret in its string form, `whsec_<base64>`. Handle with care: this is the key.
    pub fn expose(&self) -> String {
        let mut s = String::with_capacity(SECRET_PREFIX.len() + self.key.len().div_ceil(3) * 4);
        s.push_str(SECRET_PREFIX);
        BASE64.encode_string(&self.key, &mut s);
        s
    }

    /// Signs one message: returns the `v1,<base64>` entry for the `webhook-signature` header.
    ///
    /// The signed content is `{msg_id}.{timestamp}.{body}`; it is fed to the MAC in pieces, so
    /// the body is never copied, and the only allocation is the returned string.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut out = String::with_capacity(VERSION.len() + 1 + MAC_B64_LEN);
        out.push_str(VERSION);
        out.push(',');
        BASE64.encode_string(self.mac(msg_id, timestamp, body), &mut out);
        out
    }

    /// The base64 of the MAC of one message, written on the stack.
    fn mac_b64(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> [u8; MAC_B64_LEN] {
        let mut b64 = [0u8; MAC_B64_LEN];
        let written = BASE64
            .encode_slice(self.mac(msg_id, timestamp, body), &mut b64)
            .expect("a SHA-256 MAC is 44 base64 characters");
        debug_assert_eq!(written, MAC_B64_LEN);
        b64
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
        let mut digits = [0u8; 20];
        let mut mac = self.mac.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(format_i64(timestamp, &mut digits));
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(whsec_…redacted)")
    }
}

/// Signs one message with `secret`; the same as [`Secret::sign`].
pub fn sign(secret: &Secret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    secret.sign(msg_id, timestamp, body)
}

/// Writes `n` in decimal into the end of `buf` and returns the digits; no allocation.
fn format_i64(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// Why a string or byte slice is not a [`Secret`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretError {
    /// Nothing after the optional `whsec_` prefix.
    Empty,
    /// The part after `whsec_` is not padded, standard-alphabet base64.
    InvalidBase64,
    /// The key has this many bytes, outside 24–64.
    InvalidLength(usize),
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::Empty => f.write_str("webhook secret is empty"),
            SecretError::InvalidBase64 => {
                f.write_str("webhook secret is not valid base64 after the `whsec_` prefix")
            }
            SecretError::InvalidLength(n) => write!(
                f,
                "webhook secret is {n} bytes long; it must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN}"
            ),
        }
    }
}

impl std::error::Error for SecretError {}

/// The three signature headers of one request, borrowed from wherever the request's headers live.
///
/// Fill it in directly, or pick the headers out of name/value pairs with
/// [`WebhookHeaders::from_pairs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookHeaders<'a> {
    /// `webhook-id`: the message id. Once verified, deduplicate on it.
    pub id: &'a str,
    /// `webhook-timestamp`: unix seconds, as sent.
    pub timestamp: &'a str,
    /// `webhook-signature`: space-separated `version,signature` entries, as sent.
    pub signature: &'a str,
}

impl<'a> WebhookHeaders<'a> {
    /// Picks the three headers out of `(name, value)` pairs, matching names case-insensitively.
    ///
    /// Works with `[(&str, &str)]` arrays, `(&String, &String)` iterators of a map, or
    /// `http::HeaderMap` (by reference). Each header must appear exactly once: a missing one is
    /// [`VerifyError::MissingHeader`], a repeated one [`VerifyError::DuplicateHeader`] (which
    /// copy the signature covered would be ambiguous), and one that is not UTF-8
    /// [`VerifyError::InvalidHeader`].
    pub fn from_pairs<I, K, V>(pairs: I) -> Result<WebhookHeaders<'a>, VerifyError>
    where
        I: IntoIterator<Item = (K, &'a V)>,
        K: AsRef<str>,
        V: AsRef<[u8]> + ?Sized + 'a,
    {
        let mut found: [Option<&'a str>; 3] = [None; 3];
        for (name, value) in pairs {
            let name = name.as_ref();
            let Some(slot) = [HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE]
                .iter()
                .position(|h| h.eq_ignore_ascii_case(name))
            else {
                continue;
            };
            let header = [HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE][slot];
            if found[slot].is_some() {
                return Err(VerifyError::DuplicateHeader(header));
            }
            let value = std::str::from_utf8(value.as_ref())
                .map_err(|_| VerifyError::InvalidHeader(header))?;
            found[slot] = Some(value);
        }
        match found {
            [Some(id), Some(timestamp), Some(signature)] => Ok(WebhookHeaders {
                id,
                timestamp,
                signature,
            }),
            [None, ..] => Err(VerifyError::MissingHeader(HEADER_ID)),
            [_, None, _] => Err(VerifyError::MissingHeader(HEADER_TIMESTAMP)),
            [_, _, None] => Err(VerifyError::MissingHeader(HEADER_SIGNATURE)),
        }
    }
}

/// Checks incoming webhooks against one or more secrets.
///
/// Hold one per endpoint and reuse it. During a secret rotation, add the old secret next to the
/// new one with [`Verifier::with_secret`]; a request passes if it is signed with any of them.
#[derive(Debug, Clone)]
pub struct Verifier {
    secrets: Vec<Secret>,
}

impl Verifier {
    /// A verifier for a single secret.
    pub fn new(secret: Secret) -> Verifier {
        Verifier {
            secrets: vec![secret],
        }
    }

    /// Also accepts signatures made with `secret` (e.g. the previous one, during a rotation).
    pub fn with_secret(mut self, secret: Secret) -> Verifier {
        self.secrets.push(secret);
        self
    }

    /// Verifies a request against the system clock. `body` must be the raw bytes received,
    /// before any parsing.
    pub fn verify(&self, headers: &WebhookHeaders<'_>, body: &[u8]) -> Result<(), VerifyError> {
        self.verify_at(unix_now(), headers, body)
    }

    /// Verifies a request as if the time were `now` (unix seconds).
    ///
    /// The timestamp is checked first, then the signatures: a request is accepted when some
    /// `v1` entry of `webhook-signature` equals the signature of one of the secrets. Entries of
    /// any other version are skipped.
    pub fn verify_at(
        &self,
        now: i64,
        headers: &WebhookHeaders<'_>,
        body: &[u8],
    ) -> Result<(), VerifyError> {
        let timestamp: i64 = headers
            .timestamp
            .parse()
            .map_err(|_| VerifyError::InvalidTimestamp)?;
        if now.saturating_sub(timestamp) > TOLERANCE_SECS {
            return Err(VerifyError::TimestampTooOld);
        }
        if timestamp.saturating_sub(now) > TOLERANCE_SECS {
            return Err(VerifyError::TimestampTooNew);
        }

        let candidates = || {
            headers
                .signature
                .split_ascii_whitespace()
                .filter_map(|entry| match entry.split_once(',') {
                    Some((VERSION, sig)) => Some(sig.as_bytes()),
                    _ => None,
                })
        };
        if candidates().next().is_none() {
            return Err(VerifyError::NoSupportedSignature);
        }
        for secret in &self.secrets {
            let expected = secret.mac_b64(headers.id, timestamp, body);
            for candidate in candidates() {
                if bool::from(candidate.ct_eq(&expected)) {
                    return Ok(());
                }
            }
        }
        Err(VerifyError::NoMatchingSignature)
    }
}

impl From<Secret> for Verifier {
    fn from(secret: Secret) -> Verifier {
        Verifier::new(secret)
    }
}

fn unix_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // A clock before 1970 only makes every timestamp look too new.
        Err(_) => 0,
    }
}

/// Why a webhook was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// This header (lowercase name) is absent.
    MissingHeader(&'static str),
    /// This header appears more than once.
    DuplicateHeader(&'static str),
    /// This header's value is not UTF-8.
    InvalidHeader(&'static str),
    /// `webhook-timestamp` is not an integer number of seconds.
    InvalidTimestamp,
    /// `webhook-timestamp` is more than [`TOLERANCE_SECS`] in the past: a stale or replayed
    /// request, or a slow receiver clock.
    TimestampTooOld,
    /// `webhook-timestamp` is more than [`TOLERANCE_SECS`] in the future: the sender's or the
    /// receiver's clock is off.
    TimestampTooNew,
    /// `webhook-signature` has no `v1` entry (it is empty, or only carries other versions).
    NoSupportedSignature,
    /// No `v1` entry matches any of the secrets: wrong secret, or tampered id, timestamp or body.
    NoMatchingSignature,
    /// A secret could not be parsed. Not returned by verification itself; it lets a receiver
    /// parse its secret and verify with one error type.
    InvalidSecret(SecretError),
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::MissingHeader(name) => write!(f, "missing header `{name}`"),
            VerifyError::DuplicateHeader(name) => {
                write!(f, "header `{name}` appears more than once")
            }
            VerifyError::InvalidHeader(name) => write!(f, "header `{name}` is not valid UTF-8"),
            VerifyError::InvalidTimestamp => write!(
                f,
                "header `{HEADER_TIMESTAMP}` is not a unix timestamp in seconds"
            ),
            VerifyError::TimestampTooOld => write!(
                f,
                "header `{HEADER_TIMESTAMP}` is more than {TOLERANCE_SECS} seconds in the past"
            ),
            VerifyError::TimestampTooNew => write!(
                f,
                "header `{HEADER_TIMESTAMP}` is more than {TOLERANCE_SECS} seconds in the future"
            ),
            VerifyError::NoSupportedSignature => {
                write!(f, "header `{HEADER_SIGNATURE}` has no `v1` signature")
            }
            VerifyError::NoMatchingSignature => {
                f.write_str("no signature matches the webhook secret")
            }
            VerifyError::InvalidSecret(e) => write!(f, "invalid webhook secret: {e}"),
        }
    }
}

impl std::error::Error for VerifyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            VerifyError::InvalidSecret(e) => Some(e),
            _ => None,
        }
    }
}

impl From<SecretError> for VerifyError {
    fn from(e: SecretError) -> VerifyError {
        VerifyError::InvalidSecret(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const TS_STR: &str = "1614265330";
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn secret() -> Secret {
        Secret::parse(SECRET).unwrap()
    }

    fn headers(signature: &str) -> WebhookHeaders<'_> {
        WebhookHeaders {
            id: MSG_ID,
            timestamp: TS_STR,
            signature,
        }
    }

    fn verify(signature: &str) -> Result<(), VerifyError> {
        Verifier::new(secret()).verify_at(TS, &headers(signature), BODY)
    }

    #[test]
    fn the_published_vector_signs() {
        assert_eq!(secret().sign(MSG_ID, TS, BODY), EXPECTED);
        assert_eq!(sign(&secret(), MSG_ID, TS, BODY), EXPECTED);
    }

    #[test]
    fn the_published_vector_verifies() {
        assert_eq!(verify(EXPECTED), Ok(()));
    }

    #[test]
    fn a_secret_without_prefix_is_accepted() {
        let bare = Secret::parse(SECRET.strip_prefix("whsec_").unwrap()).unwrap();
        assert_eq!(bare.sign(MSG_ID, TS, BODY), EXPECTED);
        assert_eq!(bare.expose(), SECRET);
    }

    #[test]
    fn a_changed_character_is_rejected() {
        // Change a character in the middle, and the last one before the padding.
        for i in [10, EXPECTED.len() - 2] {
            let mut sig = EXPECTED.as_bytes().to_vec();
            sig[i] = if sig[i] == b'A' { b'B' } else { b'A' };
            let sig = String::from_utf8(sig).unwrap();
            assert_eq!(verify(&sig), Err(VerifyError::NoMatchingSignature), "{sig}");
        }
    }

    #[test]
    fn a_truncated_signature_is_rejected() {
        for len in [EXPECTED.len() - 1, EXPECTED.len() - 2, 10, 4] {
            assert_eq!(
                verify(&EXPECTED[..len]),
                Err(VerifyError::NoMatchingSignature),
                "{len}"
            );
        }
        let too_long = format!("{EXPECTED}AAAA");
        assert_eq!(verify(&too_long), Err(VerifyError::NoMatchingSignature));
    }

    #[test]
    fn an_empty_v1_entry_is_rejected() {
        assert_eq!(verify("v1,"), Err(VerifyError::NoMatchingSignature));
    }

    #[test]
    fn the_real_signature_among_decoys_is_accepted() {
        let decoys = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,abc v1a,xyz v1,";
        assert_eq!(verify(&format!("{decoys} {EXPECTED}")), Ok(()));
        assert_eq!(verify(&format!("{EXPECTED} {decoys}")), Ok(()));
        assert_eq!(verify(&format!("  {decoys}   {EXPECTED}  ")), Ok(()));
        assert_eq!(verify(decoys), Err(VerifyError::NoMatchingSignature));
    }

    #[test]
    fn only_unknown_versions_are_rejected() {
        let sig = EXPECTED.strip_prefix("v1,").unwrap();
        for header in [
            format!("v2,{sig}"),
            format!("v1a,{sig}"),
            format!("V1,{sig}"),
            format!("v1a,{sig} v2,{sig}"),
            sig.to_owned(),
            String::new(),
            "   ".to_owned(),
        ] {
            assert_eq!(
                verify(&header),
                Err(VerifyError::NoSupportedSignature),
                "{header:?}"
            );
        }
    }

    #[test]
    fn timestamps_are_checked_against_the_tolerance() {
        let v = Verifier::new(secret());
        let h = headers(EXPECTED);
        // The request's timestamp is fixed; move the receiver's clock around it.
        assert_eq!(v.verify_at(TS + TOLERANCE_SECS, &h, BODY), Ok(()));
        assert_eq!(v.verify_at(TS - TOLERANCE_SECS, &h, BODY), Ok(()));
        assert_eq!(v.verify_at(TS + 60, &h, BODY), Ok(()));
        assert_eq!(v.verify_at(TS - 60, &h, BODY), Ok(()));
        assert_eq!(
            v.verify_at(TS + TOLERANCE_SECS + 1, &h, BODY),
            Err(VerifyError::TimestampTooOld)
        );
        assert_eq!(
            v.verify_at(TS + 86_400, &h, BODY),
            Err(VerifyError::TimestampTooOld)
        );
        assert_eq!(
            v.verify_at(TS - TOLERANCE_SECS - 1, &h, BODY),
            Err(VerifyError::TimestampTooNew)
        );
        assert_eq!(v.verify_at(0, &h, BODY), Err(VerifyError::TimestampTooNew));
        // The system clock is far past 2021, when the published vector was signed.
        assert_eq!(v.verify(&h, BODY), Err(VerifyError::TimestampTooOld));
    }

    #[test]
    fn a_freshly_signed_request_verifies_against_the_system_clock() {
        let s = Secret::generate();
        let now = unix_now();
        let sig = s.sign(MSG_ID, now, BODY);
        let ts = now.to_string();
        let h = WebhookHeaders {
            id: MSG_ID,
            timestamp: &ts,
            signature: &sig,
        };
        assert_eq!(Verifier::new(s).verify(&h, BODY), Ok(()));
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        let v = Verifier::new(secret());
        for (ts, now, err) in [
            (i64::MIN, i64::MAX, VerifyError::TimestampTooOld),
            (i64::MAX, i64::MIN, VerifyError::TimestampTooNew),
        ] {
            let ts = ts.to_string();
            let h = WebhookHeaders {
                id: MSG_ID,
                timestamp: &ts,
                signature: EXPECTED,
            };
            assert_eq!(v.verify_at(now, &h, BODY), Err(err));
        }
    }

    #[test]
    fn a_malformed_timestamp_is_rejected() {
        let v = Verifier::new(secret());
        for ts in ["", "abc", "1614265330.5", "1e9", "99999999999999999999"] {
            let h = WebhookHeaders {
                id: MSG_ID,
                timestamp: ts,
                signature: EXPECTED,
            };
            assert_eq!(
                v.verify_at(TS, &h, BODY),
                Err(VerifyError::InvalidTimestamp),
                "{ts:?}"
            );
        }
    }

    #[test]
    fn a_tampered_body_is_rejected() {
        let v = Verifier::new(secret());
        let h = headers(EXPECTED);
        for body in [
            &br#"{"test": 2432232315}"#[..],
            br#"{"test":2432232314}"#,
            br#"{"test": 2432232314} "#,
            b"",
        ] {
            assert_eq!(
                v.verify_at(TS, &h, body),
                Err(VerifyError::NoMatchingSignature)
            );
        }
    }

    #[test]
    fn a_tampered_id_is_rejected() {
        let h = WebhookHeaders {
            id: "msg_p5jXN8AQM9LWM0D4loKWxJeK",
            ..headers(EXPECTED)
        };
        assert_eq!(
            Verifier::new(secret()).verify_at(TS, &h, BODY),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn a_signature_for_another_timestamp_is_rejected() {
        let ts = (TS + 1).to_string();
        let h = WebhookHeaders {
            timestamp: &ts,
            ..headers(EXPECTED)
        };
        assert_eq!(
            Verifier::new(secret()).verify_at(TS, &h, BODY),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn a_wrong_secret_is_rejected_and_rotation_accepts_either() {
        let other = Secret::generate();
        let h = headers(EXPECTED);
        assert_eq!(
            Verifier::new(other.clone()).verify_at(TS, &h, BODY),
            Err(VerifyError::NoMatchingSignature)
        );
        let rotating = Verifier::new(other.clone()).with_secret(secret());
        assert_eq!(rotating.verify_at(TS, &h, BODY), Ok(()));
        let by_new = other.sign(MSG_ID, TS, BODY);
        assert_eq!(rotating.verify_at(TS, &headers(&by_new), BODY), Ok(()));
        // A sender signing with both during rotation, receiver knowing only one.
        let both = format!("{by_new} {EXPECTED}");
        assert_eq!(
            Verifier::from(secret()).verify_at(TS, &headers(&both), BODY),
            Ok(())
        );
    }

    #[test]
    fn bad_secrets_are_rejected() {
        assert_eq!(Secret::parse("").unwrap_err(), SecretError::Empty);
        assert_eq!(Secret::parse("whsec_").unwrap_err(), SecretError::Empty);
        assert_eq!(Secret::parse("  ").unwrap_err(), SecretError::Empty);
        assert_eq!(Secret::from_bytes(&[]).unwrap_err(), SecretError::Empty);
        assert_eq!(
            Secret::parse("whsec_not base64!").unwrap_err(),
            SecretError::InvalidBase64
        );
        // Unpadded base64 of 32 bytes.
        let unpadded = BASE64.encode([7u8; 32]);
        let unpadded = unpadded.trim_end_matches('=');
        assert_eq!(
            Secret::parse(unpadded).unwrap_err(),
            SecretError::InvalidBase64
        );
        for len in [1, 16, 23, 65, 100] {
            let s = format!("whsec_{}", BASE64.encode(vec![7u8; len]));
            assert_eq!(
                Secret::parse(&s).unwrap_err(),
                SecretError::InvalidLength(len)
            );
        }
        for len in [24, 32, 64] {
            let s = format!("whsec_{}", BASE64.encode(vec![7u8; len]));
            assert_eq!(Secret::parse(&s).unwrap().expose(), s);
        }
        let e = VerifyError::from(SecretError::InvalidLength(3));
        assert_eq!(
            e.to_string(),
            "invalid webhook secret: webhook secret is 3 bytes long; it must be 24 to 64"
        );
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn debug_of_a_secret_does_not_show_the_key() {
        let s = secret();
        let key_b64 = SECRET.strip_prefix("whsec_").unwrap();
        for shown in [
            format!("{s:?}"),
            format!("{s:#?}"),
            format!("{:?}", Verifier::new(s.clone())),
        ] {
            assert!(!shown.contains(key_b64), "{shown}");
            assert!(!shown.contains(&key_b64[..8]), "{shown}");
            assert!(shown.contains("redacted"), "{shown}");
        }
    }

    #[test]
    fn generated_secrets_are_32_bytes_and_parse_back() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_eq!(a.key.len(), GENERATED_SECRET_LEN);
        let exposed = a.expose();
        assert!(exposed.starts_with("whsec_"));
        assert_eq!(BASE64.decode(&exposed["whsec_".len()..]).unwrap().len(), 32);
        let parsed = Secret::parse(&exposed).unwrap();
        assert_eq!(parsed.expose(), exposed);
        assert_eq!(parsed.sign(MSG_ID, TS, BODY), a.sign(MSG_ID, TS, BODY));
        assert_ne!(exposed, b.expose());
    }

    #[test]
    fn headers_are_picked_from_pairs_case_insensitively() {
        let pairs = [
            ("Content-Type", "application/json"),
            ("WEBHOOK-ID", MSG_ID),
            ("Webhook-Timestamp", TS_STR),
            ("webhook-signature", EXPECTED),
        ];
        let h = WebhookHeaders::from_pairs(pairs).unwrap();
        assert_eq!(h, headers(EXPECTED));

        // Owned strings from a map, and byte values.
        let map: std::collections::BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(WebhookHeaders::from_pairs(&map).unwrap(), h);
        let bytes: Vec<(&str, &[u8])> = pairs.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        assert_eq!(
            WebhookHeaders::from_pairs(bytes.iter().map(|(k, v)| (*k, *v))).unwrap(),
            h
        );
    }

    #[test]
    fn missing_duplicate_and_non_utf8_headers_are_rejected() {
        let full = [
            (HEADER_ID, MSG_ID),
            (HEADER_TIMESTAMP, TS_STR),
            (HEADER_SIGNATURE, EXPECTED),
        ];
        for (i, name) in [HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE]
            .into_iter()
            .enumerate()
        {
            let mut pairs = full.to_vec();
            pairs.remove(i);
            assert_eq!(
                WebhookHeaders::from_pairs(pairs),
                Err(VerifyError::MissingHeader(name))
            );
            let mut pairs = full.to_vec();
            pairs.push((name, "again"));
            assert_eq!(
                WebhookHeaders::from_pairs(pairs),
                Err(VerifyError::DuplicateHeader(name))
            );
        }
        let pairs: [(&str, &[u8]); 3] = [
            (HEADER_ID, b"msg_\xff"),
            (HEADER_TIMESTAMP, TS_STR.as_bytes()),
            (HEADER_SIGNATURE, EXPECTED.as_bytes()),
        ];
        assert_eq!(
            WebhookHeaders::from_pairs(pairs),
            Err(VerifyError::InvalidHeader(HEADER_ID))
        );
        assert_eq!(
            WebhookHeaders::from_pairs(Vec::<(&str, &str)>::new())
                .unwrap_err()
                .to_string(),
            "missing header `webhook-id`"
        );
    }

    #[test]
    fn timestamps_format_like_to_string() {
        let mut buf = [0u8; 20];
        for n in [0, 1, -1, 9, 10, -10, TS, i64::MAX, i64::MIN, i64::MIN + 1] {
            assert_eq!(format_i64(n, &mut buf), n.to_string().as_bytes());
        }
    }

    #[test]
    fn negative_and_zero_timestamps_sign_like_their_decimal_form() {
        let s = secret();
        for ts in [0, -5, i64::MIN] {
            let mut mac = HmacSha256::new_from_slice(&s.key).unwrap();
            mac.update(format!("{MSG_ID}.{ts}.").as_bytes());
            mac.update(BODY);
            let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
            assert_eq!(s.sign(MSG_ID, ts, BODY), expected);
        }
    }
}
