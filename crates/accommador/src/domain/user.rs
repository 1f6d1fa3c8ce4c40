//! Users: the parsed shapes of create and update requests, the stored record, and the rule that
//! turns a record plus a patch into the next version with its `previous_attributes`.

use accommador_webhooks::User as WireUser;
use serde_json::{Map, Value};

use super::{FieldError, Timestamp, reject_unknown_fields};

/// Largest `attributes` object, serialised as compact JSON.
pub const MAX_ATTRIBUTES_BYTES: usize = 16 * 1024;
pub const MAX_NAME_CHARS: usize = 256;
pub const MAX_EMAIL_BYTES: usize = 254;

/// An email address as given (case kept), checked for a plausible `local@domain.tld` shape.
/// Uniqueness compares [`Email::normalized`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Email, &'static str> {
        if raw.len() > MAX_EMAIL_BYTES {
            return Err("must be at most 254 characters");
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain spaces or control characters");
        }
        let Some((local, domain)) = raw.rsplit_once('@') else {
            return Err("must be an email address like name@example.com");
        };
        let domain_ok = !domain.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_alphanumeric() || c == '-')
            });
        if local.is_empty() || local.len() > 64 || local.contains('@') || !domain_ok {
            return Err("must be an email address like name@example.com");
        }
        Ok(Email(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form uniqueness is judged on: lower-cased.
    pub fn normalized(&self) -> String {
        self.0.to_lowercase()
    }
}

/// A user row as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub id: String,
    pub email: String,
    pub name: Option<String>,
    pub attributes: Map<String, Value>,
    pub version: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub deleted_at: Option<Timestamp>,
}

impl UserRecord {
    /// The API and wire shape of this user.
    pub fn to_wire(&self) -> WireUser {
        WireUser {
            id: self.id.clone(),
            email: self.email.clone(),
            name: self.name.clone(),
            attributes: self.attributes.clone(),
            version: self.version,
            created_at: self.created_at.to_rfc3339(),
            updated_at: self.updated_at.to_rfc3339(),
            deleted_at: self.deleted_at.map(Timestamp::to_rfc3339),
        }
    }
}

/// A validated `POST /v1/users` body.
#[derive(Debug, Clone, PartialEq)]
pub struct NewUser {
    pub email: Email,
    pub name: Option<String>,
    pub attributes: Map<String, Value>,
}

impl NewUser {
    pub fn from_json(body: &Map<String, Value>) -> Result<NewUser, Vec<FieldError>> {
        let mut errors = Vec::new();
        reject_unknown_fields(body, &["email", "name", "attributes"], &mut errors);
        let email = match body.get("email") {
            None => {
                errors.push(FieldError::new("email", "is required"));
                None
            }
            Some(v) => parse_email(v, &mut errors),
        };
        let name = match body.get("name") {
            None => Some(None),
            Some(v) => parse_name(v, &mut errors),
        };
        let attributes = match body.get("attributes") {
            None | Some(Value::Null) => Some(Map::new()),
            Some(v) => parse_attributes(v, &mut errors),
        };
        match (email, name, attributes) {
            (Some(email), Some(name), Some(attributes)) if errors.is_empty() => Ok(NewUser {
                email,
                name,
                attributes,
            }),
            _ => Err(errors),
        }
    }

    pub fn into_record(self, id: String, now: Timestamp) -> UserRecord {
        UserRecord {
            id,
            email: self.email.0,
            name: self.name,
            attributes: self.attributes,
            version: 1,
            created_at: now,
            updated_at: now,
            deleted_at: None,
        }
    }
}

/// A validated `PATCH /v1/users/{id}` body: each field is `None` when absent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UserPatch {
    pub email: Option<Email>,
    /// `Some(None)` sets the name to null.
    pub name: Option<Option<String>>,
    /// Replaces the attributes as a whole.
    pub attributes: Option<Map<String, Value>>,
}

impl UserPatch {
    pub fn from_json(body: &Map<String, Value>) -> Result<UserPatch, Vec<FieldError>> {
        let mut errors = Vec::new();
        reject_unknown_fields(body, &["email", "name", "attributes"], &mut errors);
        let mut patch = UserPatch::default();
        if let Some(v) = body.get("email") {
            patch.email = parse_email(v, &mut errors);
        }
        if let Some(v) = body.get("name") {
            patch.name = parse_name(v, &mut errors);
        }
        if let Some(v) = body.get("attributes") {
            patch.attributes = match v {
                Value::Null => Some(Map::new()),
                v => parse_attributes(v, &mut errors),
            };
        }
        if errors.is_empty() {
            Ok(patch)
        } else {
            Err(errors)
        }
    }

    /// The user after this patch and the previous values of the fields it changed, or `None`
    /// when it changes nothing (no new version, no event).
    pub fn apply(
        &self,
        user: &UserRecord,
        now: Timestamp,
    ) -> Option<(UserRecord, Map<String, Value>)> {
        let mut next = user.clone();
        let mut previous = Map::new();
        if let Some(email) = &self.email
            && email.as_str() != user.email
        {
            previous.insert("email".into(), Value::String(user.email.clone()));
            next.email = email.as_str().to_owned();
        }
        if let Some(name) = &self.name
            && *name != user.name
        {
            previous.insert(
                "name".into(),
                user.name.clone().map_or(Value::Null, Value::String),
            );
            next.name = name.clone();
        }
        if let Some(attributes) = &self.attributes
            && *attributes != user.attributes
        {
            previous.insert("attributes".into(), Value::Object(user.attributes.clone()));
            next.attributes = attributes.clone();
        }
        if previous.is_empty() {
            return None;
        }
        next.version += 1;
        next.updated_at = now;
        Some((next, previous))
    }
}

/// The last state of a user being deleted: version + 1, `deleted_at` set.
pub fn tombstone(user: &UserRecord, now: Timestamp) -> UserRecord {
    let mut last = user.clone();
    last.version += 1;
    last.updated_at = now;
    last.deleted_at = Some(now);
    last
}

fn parse_email(v: &Value, errors: &mut Vec<FieldError>) -> Option<Email> {
    match v {
        Value::String(s) => match Email::parse(s) {
            Ok(e) => Some(e),
            Err(detail) => {
                errors.push(FieldError::new("email", detail));
                None
            }
        },
        _ => {
            errors.push(FieldError::new("email", "must be a string"));
            None
        }
    }
}

fn parse_name(v: &Value, errors: &mut Vec<FieldError>) -> Option<Option<String>> {
    match v {
        Value::Null => Some(None),
        Value::String(s) if s.chars().count() > MAX_NAME_CHARS => {
            errors.push(FieldError::new("name", "must be at most 256 characters"));
            None
        }
        Value::String(s) if s.contains('\0') => {
            errors.push(FieldError::new("name", super::NO_NUL));
            None
        }
        Value::String(s) => Some(Some(s.clone())),
        _ => {
            errors.push(FieldError::new("name", "must be a string or null"));
            None
        }
    }
}

fn parse_attributes(v: &Value, errors: &mut Vec<FieldError>) -> Option<Map<String, Value>> {
    match v {
        Value::Object(map) => {
            let size = serde_json::to_vec(map).map_or(usize::MAX, |b| b.len());
            if size > MAX_ATTRIBUTES_BYTES {
                errors.push(FieldError::new(
                    "attributes",
                    format!("must be at most 16 KiB as JSON (is {size} bytes)"),
                ));
                None
            } else {
                Some(map.clone())
            }
        }
        _ => {
            errors.push(FieldError::new("attributes", "must be a JSON object"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn user() -> UserRecord {
        NewUser::from_json(&obj(json!({"email": "Ada@Example.com", "name": "Ada"})))
            .unwrap()
            .into_record("usr_1".into(), Timestamp(1_000))
    }

    #[test]
    fn emails_keep_their_case_and_compare_lowercased() {
        let e = Email::parse("Ada.Lovelace+x@Example.COM").unwrap();
        assert_eq!(e.as_str(), "Ada.Lovelace+x@Example.COM");
        assert_eq!(e.normalized(), "ada.lovelace+x@example.com");
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada@example",
            "ada @example.com",
            "ada@exa..mple.com",
            "ada@-example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn create_names_every_bad_field() {
        let errors = NewUser::from_json(&obj(
            json!({"email": 5, "name": [], "attributes": "x", "role": "admin"}),
        ))
        .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["role", "email", "name", "attributes"]);
        let missing = NewUser::from_json(&Map::new()).unwrap_err();
        assert_eq!(missing, vec![FieldError::new("email", "is required")]);
    }

    #[test]
    fn attributes_over_16_kib_are_rejected() {
        let big = "x".repeat(MAX_ATTRIBUTES_BYTES);
        let errors = NewUser::from_json(&obj(json!({"email": "a@b.co", "attributes": {"k": big}})))
            .unwrap_err();
        assert_eq!(errors[0].field, "attributes");
    }

    #[test]
    fn a_patch_reports_previous_values_of_changed_fields_only() {
        let patch = UserPatch::from_json(&obj(
            json!({"email": "ada@new.example", "name": "Ada", "attributes": {"plan": "pro"}}),
        ))
        .unwrap();
        let (next, previous) = patch.apply(&user(), Timestamp(2_000)).unwrap();
        assert_eq!(next.version, 2);
        assert_eq!(next.updated_at, Timestamp(2_000));
        assert_eq!(next.email, "ada@new.example");
        assert_eq!(
            Value::Object(previous),
            json!({"email": "Ada@Example.com", "attributes": {}})
        );
    }

    #[test]
    fn a_patch_that_changes_nothing_makes_no_version() {
        let patch =
            UserPatch::from_json(&obj(json!({"email": "Ada@Example.com", "name": "Ada"}))).unwrap();
        assert_eq!(patch.apply(&user(), Timestamp(2_000)), None);
        assert_eq!(UserPatch::default().apply(&user(), Timestamp(2_000)), None);
    }

    #[test]
    fn deleting_bumps_the_version_and_sets_deleted_at() {
        let last = tombstone(&user(), Timestamp(3_000));
        assert_eq!(last.version, 2);
        assert_eq!(last.deleted_at, Some(Timestamp(3_000)));
        assert!(last.to_wire().deleted_at.is_some());
    }
}
