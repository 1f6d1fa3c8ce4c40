//! Pure types and rules: users and their changes, events and their payloads, organizations and
//! API keys, IDs and timestamps, and the sealing of endpoint secrets at rest. Nothing here does I/O; the store and the service build on it.

pub mod address;
pub mod delivery;
pub mod endpoint;
pub mod event;
pub mod ids;
pub mod org;
pub mod pacing;
pub mod secret_box;
pub mod time;
pub mod turns;
pub mod ui;
pub mod user;

pub use time::Timestamp;

/// Why a stored string with U+0000 is refused: PostgreSQL's text cannot hold it, so neither
/// backend takes it (inside `attributes` it is only an escape in the stored JSON, and fine).
pub const NO_NUL: &str = "must not contain the NUL character (U+0000)";

/// One invalid field of a request, as reported in a 422 problem's `errors`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub detail: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, detail: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            detail: detail.into(),
        }
    }
}

/// Reports every key of a JSON object that is not in `known` as an unknown field.
pub fn reject_unknown_fields(
    body: &serde_json::Map<String, serde_json::Value>,
    known: &[&str],
    errors: &mut Vec<FieldError>,
) {
    for key in body.keys() {
        if !known.contains(&key.as_str()) {
            errors.push(FieldError::new(key.as_str(), "unknown field"));
        }
    }
}
