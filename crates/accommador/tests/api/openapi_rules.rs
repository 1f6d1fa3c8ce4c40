//! The OpenAPI document states the server's validation rules, and the server keeps exactly
//! those: every request here is built from `/openapi.json` itself. For each operation the
//! document lists, each rule it states on a parameter or a request-body field is probed at its
//! edges: values the rule admits must be accepted (the operation's 2xx), values it excludes
//! refused with a 422 naming that parameter or field (404 for a path ID). A new route, parameter
//! or field that states a rule is covered without touching this file; a rule of a kind this file
//! cannot probe yet (an unknown `pattern` or `format`) fails the test until samples are added.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::HeaderValue;
use serde_json::{Map, Value, json};

use crate::helpers::{ADMIN_TOKEN, Tenant, TestApp, error_fields, spawn_app};

/// How a schema restricts a value, read from the document (`$ref`s and `oneOf [X, null]`
/// resolved).
#[derive(Debug, Clone, Default)]
struct Rules {
    types: Vec<String>,
    nullable: bool,
    members: Option<Vec<Value>>,
    minimum: Option<i64>,
    maximum: Option<i64>,
    min_length: Option<usize>,
    max_length: Option<usize>,
    pattern: Option<String>,
    format: Option<String>,
    min_items: Option<usize>,
    items: Option<Box<Rules>>,
}

impl Rules {
    fn read(doc: &Value, schema: &Value) -> Rules {
        let schema = resolve(doc, schema);
        if let Some(variants) = schema["oneOf"].as_array().or(schema["anyOf"].as_array()) {
            let (nulls, others): (Vec<&Value>, Vec<&Value>) =
                variants.iter().partition(|v| v["type"] == "null");
            assert_eq!(others.len(), 1, "cannot probe the union {schema}");
            let mut rules = Rules::read(doc, others[0]);
            rules.nullable |= !nulls.is_empty();
            return rules;
        }
        let mut types: Vec<String> = match &schema["type"] {
            Value::String(t) => vec![t.clone()],
            Value::Array(ts) => ts
                .iter()
                .filter_map(|t| t.as_str().map(Into::into))
                .collect(),
            _ => Vec::new(),
        };
        let nullable = types.iter().any(|t| t == "null");
        types.retain(|t| t != "null");
        let int = |k: &str| schema[k].as_i64();
        let len = |k: &str| schema[k].as_u64().map(|n| n as usize);
        Rules {
            types,
            nullable,
            members: schema["enum"].as_array().cloned(),
            minimum: int("minimum"),
            maximum: int("maximum"),
            min_length: len("minLength"),
            max_length: len("maxLength"),
            pattern: schema["pattern"].as_str().map(Into::into),
            format: schema["format"].as_str().map(Into::into),
            min_items: len("minItems"),
            items: schema
                .get("items")
                .map(|items| Box::new(Rules::read(doc, items))),
        }
    }

    fn is(&self, t: &str) -> bool {
        self.types.iter().any(|x| x == t)
    }

    /// Whether the document excludes an empty string.
    fn excludes_empty(&self) -> bool {
        self.is("integer")
            || self.members.is_some()
            || self.format.is_some()
            || self.pattern.is_some()
            || self.min_length.is_some_and(|n| n > 0)
    }
}

/// A schema with its `$ref` followed; the referring object's own keys win.
fn resolve(doc: &Value, schema: &Value) -> Value {
    let Some(reference) = schema["$ref"].as_str() else {
        return schema.clone();
    };
    let pointer = reference.strip_prefix('#').expect("a local $ref");
    let target = doc
        .pointer(pointer)
        .unwrap_or_else(|| panic!("{reference} names nothing"));
    let mut target = resolve(doc, target);
    if let (Some(target), Some(own)) = (target.as_object_mut(), schema.as_object()) {
        for (k, v) in own {
            if k != "$ref" {
                target.insert(k.clone(), v.clone());
            }
        }
    }
    target
}

/// Values for a `pattern` the document states: conforming ones (with `n` making them unique
/// where the server needs that, e.g. emails) and violating ones.
struct PatternSamples {
    /// A conforming value of exactly this many characters, if one can be built.
    at_length: fn(usize, u32) -> Option<String>,
    good: fn(u32) -> Vec<String>,
    bad: fn() -> Vec<String>,
}

const ULID: &str = "[0-9A-HJKMNP-TV-Z]{26}$";

/// The `xxx_` of an ID pattern `^xxx_<ULID>$`.
fn id_prefix(pattern: &str) -> Option<&str> {
    pattern.strip_prefix('^')?.strip_suffix(ULID)
}

fn id_bad_samples(prefix: &str) -> Vec<String> {
    vec![
        "nope".into(),
        format!("{prefix}nope"),
        format!("{prefix}{}", "0".repeat(25)),
        format!("{prefix}{}", "0".repeat(27)),
        format!("{prefix}{}", "u".repeat(26)),
        format!("{prefix}{}", "U".repeat(26)),
        format!("zzz_{}", "0".repeat(26)),
    ]
}

fn pattern_samples(pattern: &str) -> PatternSamples {
    let email = r"^[!-?A-~]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$";
    let url = r"^[Hh][Tt][Tt][Pp][Ss]?://(?:[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*\.)*[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*(?::(?:[0-9]{1,4}|[0-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?(?:[/?](?:[A-Za-z0-9._~!$&'()*+,;=:@/?-]|%[0-9A-Fa-f]{2})*)?$";
    let space = r"[\t-\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]";
    let solid = r"[^\u0000\t-\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]";
    let org_name = format!(r"^{space}*{solid}(?:[^\u0000]{{0,198}}{solid})?{space}*$");
    let no_nul = r"^[^\u0000]*$";
    let idempotency_key = "^[!-~]{1,255}$";
    if pattern == email {
        PatternSamples {
            at_length: |len, n| {
                let local = format!("u{n}");
                let domain = len.checked_sub(local.len() + 1 + 3)?;
                (domain > 0).then(|| format!("{local}@{}.co", "a".repeat(domain)))
            },
            good: |n| {
                vec![
                    format!("Ada.Lovelace+{n}@Example.COM"),
                    format!("{n}!#$%&'*/=?^_`{{|}}~-.@x-y.example"),
                    format!(
                        "{}@a.b",
                        "x".repeat(64 - n.to_string().len()) + &n.to_string()
                    ),
                ]
            },
            bad: || {
                vec![
                    "not-an-email".into(),
                    "ada@example".into(),
                    "ada @example.com".into(),
                    "ada@exa..mple.com".into(),
                    "ada@-example.com".into(),
                    "ada@example-.com".into(),
                    "ada@.example.com".into(),
                    "@example.com".into(),
                    "ada@".into(),
                    "a@b@example.com".into(),
                    format!("{}@example.com", "x".repeat(65)),
                ]
            },
        }
    } else if pattern == url {
        PatternSamples {
            at_length: |len, _| {
                let base = "https://hooks.example.com/";
                Some(format!(
                    "{base}{}",
                    "a".repeat(len.checked_sub(base.len())?)
                ))
            },
            good: |_| {
                vec![
                    "https://hooks.example.com/in?x=1".into(),
                    "HTTP://Example.COM:8080/a/b;c?d=e&f=%20".into(),
                    "https://a-b.c-d.example:65535".into(),
                    "http://x".into(),
                ]
            },
            bad: || {
                vec![
                    "ftp://example.com/".into(),
                    "file:///etc/passwd".into(),
                    "https://".into(),
                    "not a url".into(),
                    "/relative".into(),
                    "example.com".into(),
                    "https://user:pw@example.com/".into(),
                    "https://example.com/#fragment".into(),
                    "https://example.com:65536/".into(),
                    "https://example.com:port/".into(),
                ]
            },
        }
    } else if pattern == org_name {
        PatternSamples {
            at_length: |len, _| (len > 0).then(|| "x".repeat(len)),
            good: |n| {
                vec![
                    format!("Acme {n}"),
                    format!("  Acme {n}\t\n"),
                    "x".repeat(200),
                    format!("\u{3000}{}\u{85}", "x".repeat(200)),
                    "\u{feff}".into(),
                ]
            },
            bad: || {
                vec![
                    "".into(),
                    "   ".into(),
                    "\t\u{85}\u{a0}\u{2028}\u{3000}".into(),
                    "x".repeat(201),
                    format!(" {} ", "x".repeat(201)),
                    "a\u{0}b".into(),
                    "\u{0}".into(),
                ]
            },
        }
    } else if pattern == no_nul {
        PatternSamples {
            at_length: |len, _| Some("é".repeat(len)),
            good: |n| vec![format!("Ada {n}"), "\u{1}\u{7f}\u{ffff}".into()],
            bad: || vec!["a\u{0}b".into(), "\u{0}".into()],
        }
    } else if pattern == idempotency_key {
        PatternSamples {
            at_length: |len, n| {
                let key = format!("key-{n}-");
                match len {
                    0 => None,
                    len if len < key.len() => {
                        let chars: Vec<char> = ('!'..='~').collect();
                        let start = n as usize * len;
                        Some((0..len).map(|i| chars[(start + i) % chars.len()]).collect())
                    }
                    len => Some(format!("{key}{}", "~".repeat(len - key.len()))),
                }
            },
            good: |n| vec![format!("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{{|}}~{n}")],
            bad: || vec!["has space".into(), "tab\there".into(), "ünïcode".into()],
        }
    } else if pattern.starts_with("^(?:[1-7]d|") {
        // A portal link's `expires_in`: 1m to 7d in any unit.
        PatternSamples {
            at_length: |_, _| None,
            good: |_| {
                [
                    "1m", "15m", "7d", "168h", "10080m", "60s", "604800s", "60000ms", "1d",
                ]
                .map(String::from)
                .to_vec()
            },
            bad: || {
                [
                    "", "0m", "59s", "8d", "169h", "10081m", "604801s", "59999ms", "1w", "15 m",
                    "-1m", "m",
                ]
                .map(String::from)
                .to_vec()
            },
        }
    } else if let Some(prefix) = id_prefix(pattern) {
        assert!(
            prefix.len() > 1 && prefix.ends_with('_') && !prefix.contains(['[', '(', '\\']),
            "unexpected ID pattern {pattern}"
        );
        // Conforming IDs exist only once the server hands them out: the probes fetch them.
        PatternSamples {
            at_length: |_, _| None,
            good: |_| Vec::new(),
            bad: Vec::new,
        }
    } else {
        panic!(
            "the document states a pattern this test has no samples for: {pattern}\n\
             add conforming and violating values to `pattern_samples`"
        )
    }
}

/// The format the document states, as a value the server must accept for a required field, a
/// few more it must accept, and some it must refuse.
fn format_samples(format: &str) -> (String, Vec<String>, Vec<String>) {
    match format {
        // The base value is early so that a later bound (e.g. `until`) stays after it.
        "date-time" => (
            "2000-01-01T00:00:00Z".into(),
            vec![
                "2026-01-02T03:04:05Z".into(),
                "2026-01-02T03:04:05.123456+01:00".into(),
                "2026-01-02T03:04:05-00:30".into(),
                "2026-01-02t03:04:05z".into(),
            ],
            vec![
                "yesterday".into(),
                "2026-01-02".into(),
                "2026-01-02T03:04:05".into(),
                "2026-13-02T03:04:05Z".into(),
                "2026-01-02T25:04:05Z".into(),
                "2026-01-02T03:04Z".into(),
                "2026-01-02T03:04:05+0100".into(),
                "1767322800".into(),
            ],
        ),
        other => panic!(
            "the document states a format this test has no samples for: {other}\n\
             add values to `format_samples`"
        ),
    }
}

/// What one probe expects.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// The operation's documented success.
    Accepted,
    /// 422 naming the field or parameter.
    Refused,
    /// A path ID that names nothing: 404.
    NotFound,
}

/// Where a probe puts its value.
#[derive(Debug, Clone)]
enum Place {
    Query(String),
    Header(String),
    Path,
    Body(String),
    /// The whole body replaced.
    WholeBody,
}

struct Probe {
    place: Place,
    /// `None`: leave the field out (only for `Place::Body`).
    value: Option<Value>,
    expect: Expect,
    why: String,
}

impl Probe {
    fn new(place: &Place, value: Option<Value>, expect: Expect, why: impl Into<String>) -> Probe {
        Probe {
            place: place.clone(),
            value,
            expect,
            why: why.into(),
        }
    }
}

struct Op {
    method: String,
    path: String,
    spec: Value,
}

impl Op {
    fn label(&self) -> String {
        format!("{} {}", self.method.to_uppercase(), self.path)
    }

    fn success(&self) -> StatusCode {
        let code = self.spec["responses"]
            .as_object()
            .unwrap()
            .keys()
            .find(|k| k.starts_with('2'))
            .unwrap_or_else(|| panic!("{} documents no success", self.label()));
        StatusCode::from_u16(code.parse().unwrap()).unwrap()
    }

    fn body_schema(&self) -> Option<&Value> {
        self.spec["requestBody"]["content"]["application/json"].get("schema")
    }

    fn admin(&self) -> bool {
        self.spec["security"]
            .as_array()
            .is_some_and(|s| s.iter().any(|r| r.get("admin_token").is_some()))
    }
}

struct Ctx<'a> {
    app: &'a TestApp,
    tenant: Tenant,
    doc: Value,
    unique: u32,
    failures: Vec<String>,
    probes: usize,
}

impl Ctx<'_> {
    fn next(&mut self) -> u32 {
        self.unique += 1;
        self.unique
    }

    /// A value the schema admits (for a field the probe does not target); `None` if this test
    /// cannot build one.
    fn conforming(&mut self, rules: &Rules) -> Option<Value> {
        let n = self.next();
        if let Some(members) = &rules.members {
            return members.first().cloned();
        }
        if let Some(pattern) = &rules.pattern {
            let samples = pattern_samples(pattern);
            let len = rules.min_length.unwrap_or(0).max(40);
            return (samples.good)(n)
                .into_iter()
                .next()
                .or_else(|| (samples.at_length)(len, n))
                .map(Value::String);
        }
        if let Some(format) = &rules.format {
            return Some(Value::String(format_samples(format).0));
        }
        if rules.is("integer") {
            return Some(json!(rules.minimum.unwrap_or(1)));
        }
        if rules.is("array") {
            let item = self.conforming(rules.items.as_deref()?)?;
            return Some(Value::Array(vec![
                item;
                rules.min_items.unwrap_or(1).max(1)
            ]));
        }
        if rules.is("object") {
            return Some(json!({}));
        }
        if rules.is("string") {
            return Some(Value::String(
                "x".repeat(rules.min_length.unwrap_or(1).max(1)),
            ));
        }
        None
    }

    /// A string of exactly `len` characters that keeps every other rule of `rules`.
    fn of_length(&mut self, rules: &Rules, len: usize) -> Option<String> {
        let n = self.next();
        match (&rules.pattern, &rules.format) {
            (Some(p), _) => (pattern_samples(p).at_length)(len, n),
            (None, Some(_)) => None,
            // Multi-byte characters: the limits count characters, not bytes.
            (None, None) => Some("é".repeat(len)),
        }
    }

    /// The probes of one value's rules, at `place`.
    fn probes_for(&mut self, rules: &Rules, place: &Place, required: bool) -> Vec<Probe> {
        use Expect::{Accepted, NotFound, Refused};
        let in_path = matches!(place, Place::Path);
        let refused = if in_path { NotFound } else { Refused };
        let mut out = Vec::new();
        let s = |v: &str| Some(Value::String(v.to_owned()));
        // In a query string or header every value is text.
        let text = |v: Value| match (place, v) {
            (Place::Query(_) | Place::Header(_) | Place::Path, Value::String(s)) => {
                Some(Value::String(s))
            }
            (Place::Query(_) | Place::Header(_) | Place::Path, v) => {
                Some(Value::String(v.to_string()))
            }
            (_, v) => Some(v),
        };
        if let Some(members) = &rules.members {
            for m in members {
                out.push(Probe::new(
                    place,
                    text(m.clone()),
                    Accepted,
                    format!("enum member {m}"),
                ));
            }
            out.push(Probe::new(
                place,
                s("not-a-member"),
                refused,
                "a non-member",
            ));
            if let Some(first) = members.first().and_then(Value::as_str) {
                let upper = first.to_uppercase();
                if upper != first {
                    out.push(Probe::new(
                        place,
                        s(&upper),
                        refused,
                        "a member in other case",
                    ));
                }
            }
        }
        if rules.is("integer") {
            if let Some(min) = rules.minimum {
                out.push(Probe::new(place, text(json!(min)), Accepted, "minimum"));
                out.push(Probe::new(
                    place,
                    text(json!(min - 1)),
                    refused,
                    "minimum - 1",
                ));
            }
            if let Some(max) = rules.maximum {
                out.push(Probe::new(place, text(json!(max)), Accepted, "maximum"));
                out.push(Probe::new(
                    place,
                    text(json!(max + 1)),
                    refused,
                    "maximum + 1",
                ));
            }
            out.push(Probe::new(place, s("1.5"), refused, "not an integer"));
        }
        if let Some(min) = rules.min_length {
            if let Some(v) = self.of_length(rules, min) {
                out.push(Probe::new(
                    place,
                    s(&v),
                    Accepted,
                    format!("minLength {min}"),
                ));
            }
            if min > 0 {
                let v = self
                    .of_length(rules, min - 1)
                    .unwrap_or_else(|| "a".repeat(min - 1));
                out.push(Probe::new(
                    place,
                    s(&v),
                    refused,
                    format!("minLength {min} - 1"),
                ));
            }
        }
        if let Some(max) = rules.max_length {
            let at = self
                .of_length(rules, max)
                .unwrap_or_else(|| panic!("no value of length {max} for {rules:?}"));
            out.push(Probe::new(
                place,
                s(&at),
                Accepted,
                format!("maxLength {max}"),
            ));
            let over = self
                .of_length(rules, max + 1)
                .unwrap_or_else(|| "a".repeat(max + 1));
            out.push(Probe::new(
                place,
                s(&over),
                refused,
                format!("maxLength {max} + 1"),
            ));
        }
        if let Some(pattern) = &rules.pattern {
            let samples = pattern_samples(pattern);
            let mut bad = (samples.bad)();
            if let Some(prefix) = id_prefix(pattern) {
                bad = id_bad_samples(prefix);
                // Well-formed but naming nothing (made now: an event ID from before the
                // retention horizon is a purged cursor, which lists go on from).
                bad.push(accommador::domain::ids::new_id(prefix));
            }
            let n = self.next();
            for v in (samples.good)(n) {
                out.push(Probe::new(
                    place,
                    s(&v),
                    Accepted,
                    format!("pattern admits {v:?}"),
                ));
            }
            for v in bad {
                out.push(Probe::new(
                    place,
                    s(&v),
                    refused,
                    format!("pattern excludes {v:?}"),
                ));
            }
        }
        if let Some(format) = &rules.format {
            let (_, good, bad) = format_samples(format);
            for v in good {
                out.push(Probe::new(
                    place,
                    s(&v),
                    Accepted,
                    format!("{format} {v:?}"),
                ));
            }
            for v in bad {
                out.push(Probe::new(
                    place,
                    s(&v),
                    refused,
                    format!("not {format}: {v:?}"),
                ));
            }
        }
        if rules.is("array") {
            let items = rules.items.as_deref().expect("an array states its items");
            if let Some(members) = &items.members {
                for m in members {
                    out.push(Probe::new(
                        place,
                        Some(json!([m])),
                        Accepted,
                        format!("item {m}"),
                    ));
                }
                out.push(Probe::new(
                    place,
                    Some(json!(["not-a-member"])),
                    refused,
                    "a non-member item",
                ));
            }
            if let Some(min) = rules.min_items {
                let item = self.conforming(items).expect("a conforming item");
                out.push(Probe::new(
                    place,
                    Some(Value::Array(vec![item.clone(); min])),
                    Accepted,
                    format!("minItems {min}"),
                ));
                out.push(Probe::new(
                    place,
                    Some(Value::Array(vec![item; min.saturating_sub(1)])),
                    refused,
                    format!("minItems {min} - 1"),
                ));
            }
        }
        if let Place::Body(_) = place {
            let expect = if rules.nullable { Accepted } else { refused };
            out.push(Probe::new(place, Some(Value::Null), expect, "null"));
            if required {
                out.push(Probe::new(place, None, refused, "left out though required"));
            }
        }
        out
    }

    /// A body that satisfies every rule of the operation's request schema.
    fn base_body(&mut self, op: &Op) -> Option<Value> {
        let schema = resolve(&self.doc, op.body_schema()?);
        let mut body = Map::new();
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap();
            let rules = Rules::read(&self.doc, &schema["properties"][name]);
            let value = self
                .conforming(&rules)
                .unwrap_or_else(|| panic!("{}: cannot build a value for {name}", op.label()));
            body.insert(name.to_owned(), value);
        }
        Some(Value::Object(body))
    }

    /// The ID of an object of the collection a path names (`/v1/users/{id}` → a user): a
    /// fresh one when the document says how to create one, otherwise the newest listed.
    async fn fixture_id(&mut self, ops: &[Op], path: &str) -> String {
        let collection: String = path.split("/{").next().unwrap().to_owned();
        if let Some(create) = ops
            .iter()
            .find(|o| o.path == collection && o.method == "post")
        {
            let body = self.base_body(create).unwrap();
            let r = self.send(create, None, &[], None, Some(&body)).await;
            assert_eq!(
                r.status(),
                create.success(),
                "creating a fixture with {body}"
            );
            let created: Value = r.json().await.unwrap();
            return created["id"].as_str().unwrap().to_owned();
        }
        self.first_listed(&collection, false).await
    }

    /// The first item of a list, read with the admin token for an operator route.
    async fn first_listed(&self, list_path: &str, admin: bool) -> String {
        let token = if admin {
            ADMIN_TOKEN
        } else {
            self.tenant.key.as_str()
        };
        let r = self
            .app
            .client
            .get(self.app.url(&format!("{list_path}?limit=1")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "listing {list_path}");
        let page: Value = r.json().await.unwrap();
        page["data"][0]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{list_path} lists nothing to probe with"))
            .to_owned()
    }

    async fn send(
        &self,
        op: &Op,
        path_id: Option<&str>,
        query: &[(String, String)],
        header: Option<(&str, HeaderValue)>,
        body: Option<&Value>,
    ) -> reqwest::Response {
        let mut path = op.path.clone();
        if let (Some(start), Some(end)) = (path.find('{'), path.find('}')) {
            let id = path_id.expect("a path parameter needs a value");
            path.replace_range(start..=end, &encode(id));
        }
        if !query.is_empty() {
            let pairs: Vec<String> = query
                .iter()
                .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                .collect();
            path = format!("{path}?{}", pairs.join("&"));
        }
        let method = reqwest::Method::from_bytes(op.method.to_uppercase().as_bytes()).unwrap();
        let token = if op.admin() {
            ADMIN_TOKEN
        } else {
            self.tenant.key.as_str()
        };
        let mut req = self
            .app
            .client
            .request(method, self.app.url(&path))
            .bearer_auth(token);
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        req.send().await.unwrap()
    }

    /// Sends one probe and records a failure if the server disagrees with the document.
    async fn run(&mut self, op: &Op, path_id: Option<&str>, probe: Probe) {
        self.probes += 1;
        let mut query = Vec::new();
        let mut header = None;
        let mut body = self.base_body(op);
        let mut id = path_id.map(str::to_owned);
        let (field, shown) = match &probe.place {
            Place::Query(name) => {
                let v = probe.value.as_ref().unwrap().as_str().unwrap().to_owned();
                query.push((name.clone(), v.clone()));
                (name.clone(), format!("?{name}={v}"))
            }
            Place::Header(name) => {
                let v = probe.value.as_ref().unwrap().as_str().unwrap();
                header = Some((
                    name.as_str(),
                    HeaderValue::from_bytes(v.as_bytes()).unwrap(),
                ));
                (name.clone(), format!("{name}: {v}"))
            }
            Place::Path => {
                let v = probe.value.as_ref().unwrap().as_str().unwrap().to_owned();
                id = Some(v.clone());
                ("id".to_owned(), format!("path {v}"))
            }
            Place::Body(name) => {
                let b = body.as_mut().unwrap().as_object_mut().unwrap();
                match &probe.value {
                    Some(v) => b.insert(name.clone(), v.clone()),
                    None => b.remove(name),
                };
                (name.clone(), format!("body {}", body.as_ref().unwrap()))
            }
            Place::WholeBody => {
                body = probe.value.clone();
                (
                    "body".to_owned(),
                    format!("body {}", body.as_ref().unwrap()),
                )
            }
        };
        let r = self
            .send(op, id.as_deref(), &query, header, body.as_ref())
            .await;
        let status = r.status();
        let text = r.text().await.unwrap();
        let ok = match probe.expect {
            Expect::Accepted => status == op.success(),
            Expect::NotFound => status == StatusCode::NOT_FOUND,
            Expect::Refused => {
                status == StatusCode::UNPROCESSABLE_ENTITY
                    && serde_json::from_str::<Value>(&text)
                        .is_ok_and(|p| error_fields(&p).contains(&field))
            }
        };
        if !ok {
            let shown: String = shown.chars().take(300).collect();
            let text: String = text.chars().take(300).collect();
            self.failures.push(format!(
                "{} ({}) {shown}: expected {:?}, got {status} {text}",
                op.label(),
                probe.why,
                probe.expect,
            ));
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn operations(doc: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, spec) in item.as_object().unwrap() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                ops.push(Op {
                    method: method.clone(),
                    path: path.clone(),
                    spec: spec.clone(),
                });
            }
        }
    }
    ops
}

/// Waits until the list at `path` has an item (fan-out is asynchronous).
async fn wait_for_item(app: &TestApp, t: &Tenant, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page: Value = app.get(t, path).await.json().await.unwrap();
        if page["data"].as_array().is_some_and(|d| !d.is_empty()) {
            return;
        }
        assert!(Instant::now() < deadline, "{path} stayed empty");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_rule_the_document_states_is_the_rule_the_server_enforces() {
    let app = spawn_app().await;
    let doc = app.openapi().await;
    let tenant = app.create_org("Rules").await;
    let ops = operations(&doc);
    let mut ctx = Ctx {
        app: &app,
        tenant,
        doc: doc.clone(),
        unique: 0,
        failures: Vec::new(),
        probes: 0,
    };

    // Something to list, page through and point at: an endpoint, then a user whose event fans
    // out to it (an event and a delivery).
    for collection in ["/v1/endpoints", "/v1/users"] {
        ctx.fixture_id(&ops, &format!("{collection}/{{id}}")).await;
    }
    for list in ["/v1/events", "/v1/deliveries"] {
        wait_for_item(&app, &ctx.tenant, list).await;
    }

    for op in &ops {
        let params: Vec<Value> = op.spec["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let body_schema = op.body_schema().map(|s| resolve(&doc, s));
        let stated = |rules: &Rules| {
            rules.members.is_some()
                || rules.minimum.is_some()
                || rules.maximum.is_some()
                || rules.min_length.is_some()
                || rules.max_length.is_some()
                || rules.pattern.is_some()
                || rules.format.is_some()
                || rules.min_items.is_some()
        };
        let has_path_param = params.iter().any(|p| p["in"] == "path");
        // A fresh object for each operation, so that one operation's probes (e.g. disabling an
        // endpoint) do not decide another's answer.
        let id = if has_path_param {
            Some(ctx.fixture_id(&ops, &op.path).await)
        } else {
            None
        };

        for p in &params {
            let name = p["name"].as_str().unwrap().to_owned();
            let rules = Rules::read(&doc, &p["schema"]);
            let place = match p["in"].as_str().unwrap() {
                "query" => Place::Query(name.clone()),
                "header" => Place::Header(name.clone()),
                "path" => Place::Path,
                other => panic!("{}: parameter in {other}", op.label()),
            };
            let mut probes = Vec::new();
            if let Place::Path = place {
                // Accepted values are the fixture IDs every other probe of this operation uses.
                probes.extend(
                    ctx.probes_for(&rules, &place, true)
                        .into_iter()
                        .filter(|p| !matches!(p.expect, Expect::Accepted)),
                );
            } else {
                if stated(&rules) {
                    probes.extend(ctx.probes_for(&rules, &place, false));
                }
                if let Place::Query(_) = place {
                    if p["allowEmptyValue"] == true {
                        probes.push(Probe::new(
                            &place,
                            Some(json!("")),
                            Expect::Accepted,
                            "allowEmptyValue",
                        ));
                    } else if rules.excludes_empty() {
                        probes.push(Probe::new(
                            &place,
                            Some(json!("")),
                            Expect::Refused,
                            "an empty value without allowEmptyValue",
                        ));
                    }
                }
                // A cursor pattern admits the IDs the list itself hands out.
                if name == "after"
                    && let Some(pattern) = &rules.pattern
                    && id_prefix(pattern).is_some()
                {
                    let cursor = ctx.first_listed(&op.path, op.admin()).await;
                    probes.push(Probe::new(
                        &place,
                        Some(json!(cursor)),
                        Expect::Accepted,
                        "an ID the list handed out",
                    ));
                }
            }
            for probe in probes {
                ctx.run(op, id.as_deref(), probe).await;
            }
        }

        if let Some(schema) = &body_schema {
            assert_eq!(
                schema["type"],
                "object",
                "{}: a JSON object body",
                op.label()
            );
            let mut probes = vec![Probe::new(
                &Place::WholeBody,
                Some(json!([])),
                Expect::Refused,
                "a body that is not an object",
            )];
            if schema["additionalProperties"] == false {
                probes.push(Probe::new(
                    &Place::Body("unexpected_field".into()),
                    Some(json!(1)),
                    Expect::Refused,
                    "additionalProperties: false",
                ));
            }
            let required: Vec<&str> = schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            for (name, field) in schema["properties"].as_object().unwrap() {
                let rules = Rules::read(&doc, field);
                let place = Place::Body(name.clone());
                probes.extend(ctx.probes_for(&rules, &place, required.contains(&name.as_str())));
            }
            for probe in probes {
                ctx.run(op, id.as_deref(), probe).await;
            }
        }
    }

    assert!(
        ctx.probes > 200,
        "only {} probes: is the document still read?",
        ctx.probes
    );
    assert!(
        ctx.failures.is_empty(),
        "{} of {} probes found the server and /openapi.json disagreeing:\n{}",
        ctx.failures.len(),
        ctx.probes,
        ctx.failures.join("\n")
    );
}

/// Lists that return a single page by design, not through `limit`/`after`.
const SINGLE_PAGE_LISTS: [&str; 1] = ["/v1/deliveries/{id}/attempts"];

#[tokio::test]
async fn every_list_states_its_paging_rules() {
    let app = spawn_app().await;
    let doc = app.openapi().await;
    let mut lists = BTreeMap::new();
    for op in operations(&doc) {
        let params: BTreeMap<&str, &Value> = op.spec["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| (p["name"].as_str().unwrap(), p))
            .collect();
        let page = resolve(
            &doc,
            &op.spec["responses"]["200"]["content"]["application/json"]["schema"],
        );
        let is_list = page["properties"].get("next_cursor").is_some();
        let paged = params.contains_key("limit") || params.contains_key("after");
        if !(is_list || paged) || SINGLE_PAGE_LISTS.contains(&op.path.as_str()) {
            continue;
        }
        let label = op.label();
        let rules = |name: &str| {
            let p = params
                .get(name)
                .unwrap_or_else(|| panic!("{label} is a list without `{name}`"));
            assert_eq!(p["in"], "query", "{label}: `{name}` in the query");
            assert_ne!(
                p["allowEmptyValue"], true,
                "{label}: an empty `{name}` is refused"
            );
            Rules::read(&doc, &p["schema"])
        };
        let limit = rules("limit");
        assert!(limit.is("integer"), "{label}: `limit` is an integer");
        assert_eq!(
            limit.minimum,
            Some(1),
            "{label}: `limit` states its minimum"
        );
        assert_eq!(
            limit.maximum,
            Some(500),
            "{label}: `limit` states its maximum"
        );
        let after = rules("after");
        assert_eq!(after.min_length, Some(1), "{label}: `after` is never empty");
        let pattern = after
            .pattern
            .unwrap_or_else(|| panic!("{label}: `after` states the cursor's shape"));
        let prefix = id_prefix(&pattern)
            .unwrap_or_else(|| panic!("{label}: `after` is an ID of the list, not {pattern}"));
        // The cursor is the ID of the list's items: the same shape as the items' `id`.
        let item = resolve(&doc, &page["properties"]["data"]["items"]);
        assert_eq!(
            item["properties"]["id"]["pattern"].as_str(),
            Some(pattern.as_str()),
            "{label}: `after` and the items' `id` state the same shape"
        );
        lists.insert(label, prefix.to_owned());
    }
    let listed: Vec<&str> = lists.keys().map(String::as_str).collect();
    assert_eq!(
        listed,
        [
            "GET /v1/api-keys",
            "GET /v1/deliveries",
            "GET /v1/endpoints",
            "GET /v1/events",
            "GET /v1/organizations",
            "GET /v1/users"
        ],
        "the paged lists"
    );
}
