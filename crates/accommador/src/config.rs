//! Configuration: one typed tree, validated at load.
//!
//! Layers, each overriding the one before: the commented defaults embedded from
//! `config/default.toml`, the `--config` TOML file, `ACCOMMADOR_*` environment variables, and
//! command-line flags. Secrets are redacted in `Debug` and never logged.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::domain::secret_box::SecretKeys;

pub const DEFAULTS: &str = include_str!("../config/default.toml");

const KEYS: &[&str] = &[
    "listen",
    "database_url",
    "admin_token",
    "secret_key",
    "retry_schedule",
    "delivery_timeout",
    "allow_private_targets",
    "disable_after",
    "log_format",
    "endpoint_concurrency",
    "org_concurrency",
    "delivery_concurrency",
    "database_pool_size",
    "org_rate_limit",
    "retention",
    "erase_deleted_after",
    "session_ttl",
    "public_url",
    "trust_proxy",
];

/// A value that must not be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated settings. `Debug` shows the database URL without its password.
#[derive(Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub database_url: String,
    pub admin_token: Option<Secret>,
    /// `ACCOMMADOR_SECRET_KEY` as given (validated at load; see [`Settings::secret_keys`]).
    pub secret_key: Option<Secret>,
    pub retry_schedule: Vec<Duration>,
    pub delivery_timeout: Duration,
    pub allow_private_targets: bool,
    pub disable_after: Duration,
    pub log_format: LogFormat,
    /// Attempts in flight to one endpoint at most.
    pub endpoint_concurrency: usize,
    /// Attempts in flight for one organization at most (all its endpoints; on PostgreSQL
    /// across all instances).
    pub org_concurrency: usize,
    /// Attempts in flight in this process at most.
    pub delivery_concurrency: usize,
    /// PostgreSQL connections per process for the API at most (the background pool adds 6).
    pub database_pool_size: usize,
    /// API requests per second one organization may make to this process (bursts of twice
    /// that); 0 = no limit.
    pub org_rate_limit: u32,
    /// Events older than this (by `occurred_at`) are purged with their deliveries and
    /// attempts, unless a delivery of theirs is still pending.
    pub retention: Duration,
    /// Deleted users' personal data is erased this long after the deletion.
    pub erase_deleted_after: Duration,
    /// How long a UI session lasts (it ends sooner when its key is revoked).
    pub session_ttl: Duration,
    /// The address people reach this server at (`https://…` makes UI cookies `Secure` and
    /// portal links absolute); `None`: unknown.
    pub public_url: Option<url::Url>,
    /// Believe `X-Forwarded-Proto` from a reverse proxy in front of this server.
    pub trust_proxy: bool,
}

/// Values given as flags; `None` leaves the lower layers' value. `Debug` shows the database URL
/// without its password.
#[derive(Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every field, so a new one cannot be forgotten (the destructuring stops compiling).
        let Settings {
            listen,
            database_url,
            admin_token,
            secret_key,
            retry_schedule,
            delivery_timeout,
            allow_private_targets,
            disable_after,
            log_format,
            endpoint_concurrency,
            org_concurrency,
            delivery_concurrency,
            database_pool_size,
            org_rate_limit,
            retention,
            erase_deleted_after,
            session_ttl,
            public_url,
            trust_proxy,
        } = self;
        f.debug_struct("Settings")
            .field("listen", listen)
            .field("database_url", &redact_database_url(database_url))
            .field("admin_token", admin_token)
            .field("secret_key", secret_key)
            .field("retry_schedule", retry_schedule)
            .field("delivery_timeout", delivery_timeout)
            .field("allow_private_targets", allow_private_targets)
            .field("disable_after", disable_after)
            .field("log_format", log_format)
            .field("endpoint_concurrency", endpoint_concurrency)
            .field("org_concurrency", org_concurrency)
            .field("delivery_concurrency", delivery_concurrency)
            .field("database_pool_size", database_pool_size)
            .field("org_rate_limit", org_rate_limit)
            .field("retention", retention)
            .field("erase_deleted_after", erase_deleted_after)
            .field("session_ttl", session_ttl)
            .field("public_url", &public_url.as_ref().map(url::Url::as_str))
            .field("trust_proxy", trust_proxy)
            .finish()
    }
}

impl std::fmt::Debug for Overrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Overrides {
            listen,
            database_url,
        } = self;
        f.debug_struct("Overrides")
            .field("listen", listen)
            .field(
                "database_url",
                &database_url.as_deref().map(redact_database_url),
            )
            .finish()
    }
}

/// A scalar as TOML or the environment may spell it (`ACCOMMADOR_ADMIN_TOKEN=123` is a number
/// to the environment parser, a string to us).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Scalar::Str(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(Scalar),
    Many(Vec<Scalar>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen: Scalar,
    database_url: Scalar,
    admin_token: Option<Scalar>,
    secret_key: Option<Scalar>,
    retry_schedule: StringOrList,
    delivery_timeout: Scalar,
    allow_private_targets: Scalar,
    disable_after: Scalar,
    log_format: Scalar,
    endpoint_concurrency: Scalar,
    org_concurrency: Scalar,
    delivery_concurrency: Scalar,
    database_pool_size: Scalar,
    org_rate_limit: Scalar,
    retention: Scalar,
    erase_deleted_after: Scalar,
    session_ttl: Scalar,
    public_url: Option<Scalar>,
    trust_proxy: Scalar,
}

impl Settings {
    /// Loads the layers in order: embedded defaults, `config_file`, `ACCOMMADOR_*` variables of
    /// the process environment, then `overrides` (flags).
    pub fn load(config_file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Settings> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(path) = config_file {
            if !path.exists() {
                bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Environment values are taken as the strings they are (figment's own Env provider
        // would read ACCOMMADOR_ADMIN_TOKEN=007 as the number 7); each setting parses its own.
        let env: std::collections::BTreeMap<&str, String> = KEYS
            .iter()
            .filter_map(|key| {
                std::env::var(format!("ACCOMMADOR_{}", key.to_ascii_uppercase()))
                    .ok()
                    .map(|v| (*key, v))
            })
            .collect();
        let figment = figment
            .merge(Serialized::globals(env))
            .merge(Serialized::globals(overrides));
        let raw: Raw = figment
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {}", config_error(&e)))?;
        Settings::from_raw(raw)
    }

    fn from_raw(raw: Raw) -> anyhow::Result<Settings> {
        let listen_s = raw.listen.into_string();
        let listen = listen_s.parse().with_context(|| {
            format!("listen: {listen_s:?} is not an address like 127.0.0.1:8080")
        })?;
        let retry_schedule = match raw.retry_schedule {
            StringOrList::One(s) => parse_schedule(&s.into_string()),
            StringOrList::Many(items) => items
                .into_iter()
                .map(|s| parse_duration(&s.into_string()))
                .collect(),
        }
        .context("retry_schedule")?;
        let flag = |name: &str, v: Scalar| -> anyhow::Result<bool> {
            match v.into_string().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" | "" => Ok(false),
                other => bail!("{name}: {other:?} is not true or false"),
            }
        };
        let allow_private_targets = flag("allow_private_targets", raw.allow_private_targets)?;
        let trust_proxy = flag("trust_proxy", raw.trust_proxy)?;
        let public_url = match raw.public_url.map(Scalar::into_string) {
            None => None,
            Some(s) if s.is_empty() => None,
            Some(s) => {
                let url = url::Url::parse(&s)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
                match url {
                    Some(u) => Some(u),
                    None => bail!("public_url: {s:?} is not an http(s) URL with a host"),
                }
            }
        };
        let log_format = match raw.log_format.into_string().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => bail!("log_format: {other:?} is not \"text\" or \"json\""),
        };
        let delivery_timeout =
            parse_duration(&raw.delivery_timeout.into_string()).context("delivery_timeout")?;
        if delivery_timeout.is_zero() {
            bail!("delivery_timeout: must be more than zero");
        }
        let lifetime = |name: &str, v: Scalar| -> anyhow::Result<Duration> {
            let d = parse_duration(&v.into_string()).context(name.to_owned())?;
            if d < Duration::from_secs(1) {
                bail!("{name}: must be at least 1s");
            }
            Ok(d)
        };
        let count = |name: &str, v: Scalar| -> anyhow::Result<usize> {
            let s = v.into_string();
            match s.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => bail!("{name}: {s:?} is not a whole number of at least 1"),
            }
        };
        Ok(Settings {
            endpoint_concurrency: count("endpoint_concurrency", raw.endpoint_concurrency)?,
            org_concurrency: count("org_concurrency", raw.org_concurrency)?,
            delivery_concurrency: count("delivery_concurrency", raw.delivery_concurrency)?,
            database_pool_size: count("database_pool_size", raw.database_pool_size)?,
            org_rate_limit: {
                let s = raw.org_rate_limit.into_string();
                match s.parse::<u32>() {
                    Ok(n) => n,
                    _ => {
                        bail!("org_rate_limit: {s:?} is not a whole number (0 turns the limit off)")
                    }
                }
            },
            listen,
            database_url: raw.database_url.into_string(),
            admin_token: raw
                .admin_token
                .map(Scalar::into_string)
                .filter(|t| !t.is_empty())
                .map(Secret),
            secret_key: match raw
                .secret_key
                .map(Scalar::into_string)
                .filter(|k| !k.trim().is_empty())
            {
                Some(list) => {
                    SecretKeys::parse(&list).map_err(|e| anyhow::anyhow!("secret_key: {e}"))?;
                    Some(Secret(list))
                }
                None => None,
            },
            retry_schedule,
            delivery_timeout,
            allow_private_targets,
            disable_after: parse_duration(&raw.disable_after.into_string())
                .context("disable_after")?,
            log_format,
            retention: lifetime("retention", raw.retention)?,
            erase_deleted_after: lifetime("erase_deleted_after", raw.erase_deleted_after)?,
            session_ttl: lifetime("session_ttl", raw.session_ttl)?,
            public_url,
            trust_proxy,
        })
    }
}

impl Settings {
    /// The keys of `ACCOMMADOR_SECRET_KEY` (none when it is not set).
    pub fn secret_keys(&self) -> anyhow::Result<SecretKeys> {
        match &self.secret_key {
            Some(list) => {
                SecretKeys::parse(list.expose()).map_err(|e| anyhow::anyhow!("secret_key: {e}"))
            }
            None => Ok(SecretKeys::none()),
        }
    }
}

/// A configuration error on one line. A TOML parse error quotes the offending line of the file
/// (`1 | database_url = "postgres://app:password@…`), which may hold a secret: those quoted lines
/// are left out (the error still gives the line and column), and any database URL left in
/// the message loses its password.
fn config_error(e: &figment::Error) -> String {
    e.to_string()
        .lines()
        .filter(|line| {
            // The snippet: `  |`, `1 | text`, `  |    ^`.
            let t = line.trim_start();
            !t.trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start()
                .starts_with('|')
        })
        .map(|line| {
            line.split(' ')
                .map(|word| {
                    if word.contains("://") {
                        redact_database_url(word)
                    } else {
                        word.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .map(|line| line.trim_end().to_owned())
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a hidden password is shown as.
const HIDDEN: &str = "***";

/// A database URL as it may be shown in a message, a log line or `Debug` output: the password
/// (of the user-info, and of a `password` query option) is replaced by `***`, everything else
/// is kept so operators can still tell which database was meant
/// (`postgres://user:***@host:5432/db?sslmode=require`). SQLite URLs are paths and come back
/// unchanged; `key=value` connection strings lose their `password=` values.
///
/// The password may hold any character, even unencoded ones that would end the user-info for
/// a URL parser (`@`, `/`, `?`, `#`), so once the text before the first `@` has a `:` (what
/// tokio-postgres reads as a password), everything up to the *last* `@` is hidden: a shown URL
/// may hide more than the password, never less.
pub fn redact_database_url(url: &str) -> String {
    if url.starts_with("sqlite:") {
        return url.to_owned();
    }
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return redact_key_values(url);
    };
    let (head, rest) = url.split_at(scheme_end);
    let mut shown = head.to_owned();
    let first_at = rest.find('@');
    let last_at = rest.rfind('@');
    let tail = match (first_at, last_at) {
        (Some(first), Some(last)) => match rest[..first].find(':') {
            Some(colon) if colon + 1 < last => {
                shown.push_str(&rest[..=colon]);
                shown.push_str(HIDDEN);
                &rest[last..]
            }
            _ => rest,
        },
        _ => rest,
    };
    match tail.split_once('?') {
        Some((before, query)) => {
            shown.push_str(before);
            shown.push('?');
            shown.push_str(&redact_query(query));
        }
        None => shown.push_str(tail),
    }
    shown
}

/// A URL query with the values of `password` options (however spelt) hidden.
fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            let (key, _) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = url::form_urlencoded::parse(key.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            if decoded.to_ascii_lowercase().ends_with("password") {
                format!("{key}={HIDDEN}")
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A `key=value` connection string with the values of `…password` keys hidden (quoted ones
/// included).
fn redact_key_values(s: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let mut shown = String::with_capacity(s.len());
    let mut from = 0;
    while let Some(found) = lower[from..].find("password") {
        let key_end = from + found + "password".len();
        let after_key = &s[key_end..];
        let spaces = after_key.len() - after_key.trim_start().len();
        if !after_key[spaces..].starts_with('=') {
            shown.push_str(&s[from..key_end]);
            from = key_end;
            continue;
        }
        let value_start = key_end + spaces + 1;
        let value = &s[value_start..];
        let value_start = value_start + (value.len() - value.trim_start().len());
        let value = &s[value_start..];
        let value_len = if let Some(quoted) = value.strip_prefix('\'') {
            // Up to the closing quote (a backslash escapes the next character).
            let mut escaped = false;
            quoted
                .char_indices()
                .find(|&(_, c)| {
                    let end = !escaped && c == '\'';
                    escaped = !escaped && c == '\\';
                    end
                })
                .map_or(value.len(), |(i, _)| i + 2)
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        shown.push_str(&s[from..value_start]);
        shown.push_str(HIDDEN);
        from = value_start + value_len;
    }
    shown.push_str(&s[from..]);
    shown
}

/// `500ms`, `5s`, `5m`, `2h`, `5d`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .with_context(|| format!("{s:?} has no unit (write 500ms, 5s, 5m, 2h or 5d)"))?;
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .with_context(|| format!("{s:?} does not start with a whole number"))?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => bail!("{s:?}: unknown unit {unit:?} (write 500ms, 5s, 5m, 2h or 5d)"),
    };
    n.checked_mul(unit_ms)
        .map(Duration::from_millis)
        .with_context(|| format!("{s:?} is too long"))
}

/// `5s,5m,30m`: comma-separated durations; empty means no retries.
pub fn parse_schedule(s: &str) -> anyhow::Result<Vec<Duration>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(parse_duration)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_the_documented_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("5d").unwrap(), Duration::from_secs(432_000));
        for bad in ["5", "s", "5 weeks", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_embedded_defaults_are_the_documented_ones() {
        let raw: Raw = Figment::from(Toml::string(DEFAULTS)).extract().unwrap();
        let s = Settings::from_raw(raw).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.database_url, "sqlite://accommador.db");
        assert_eq!(s.admin_token, None);
        assert_eq!(s.secret_key, None);
        assert_eq!(s.retry_schedule.len(), 9);
        assert_eq!(s.retry_schedule[0], Duration::from_secs(5));
        assert_eq!(s.retry_schedule[8], Duration::from_secs(86_400));
        assert_eq!(s.delivery_timeout, Duration::from_secs(15));
        assert!(!s.allow_private_targets);
        assert_eq!(s.disable_after, Duration::from_secs(5 * 86_400));
        assert_eq!(s.endpoint_concurrency, 16);
        assert_eq!(s.org_concurrency, 64);
        assert_eq!(s.delivery_concurrency, 256);
        assert_eq!(s.org_rate_limit, 0);
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn database_passwords_are_replaced_and_everything_else_kept() {
        for (url, shown) in [
            (
                "postgres://user:password@db.internal:5432/app",
                "postgres://user:***@db.internal:5432/app",
            ),
            (
                "postgresql://user:pw@db.internal/app?sslmode=require&application_name=x",
                "postgresql://user:***@db.internal/app?sslmode=require&application_name=x",
            ),
            // Percent-encoded: neither spelling of the password shows.
            (
                "postgres://us%40er:p%40ss%3Aw%2Fd@db.internal/app",
                "postgres://us%40er:***@db.internal/app",
            ),
            // Special characters left unencoded (tokio-postgres would misread them, and the
            // error must still not show any part of the password).
            (
                "postgres://user:p@ss:w/r?d#x@db.internal:5432/app?sslmode=require",
                "postgres://user:***@db.internal:5432/app?sslmode=require",
            ),
            (
                "postgres://user:pw@[::1]:5432/app",
                "postgres://user:***@[::1]:5432/app",
            ),
            (
                "postgres://user:pw@h1:5432,h2:5433/app",
                "postgres://user:***@h1:5432,h2:5433/app",
            ),
            // The password as a query option.
            (
                "postgres://user@db.internal/app?sslmode=require&password=pw&options=x",
                "postgres://user@db.internal/app?sslmode=require&password=***&options=x",
            ),
            // No password: nothing to hide.
            (
                "postgres://user@db.internal:5432/app?sslmode=verify-full",
                "postgres://user@db.internal:5432/app?sslmode=verify-full",
            ),
            ("postgres://db.internal/app", "postgres://db.internal/app"),
            (
                "postgres://user:@db.internal/app",
                "postgres://user:@db.internal/app",
            ),
            // SQLite URLs are paths: untouched, whatever characters they have.
            ("sqlite://accommador.db", "sqlite://accommador.db"),
            (
                "sqlite:///var/lib/a:b@c/accommador.db?mode=rwc",
                "sqlite:///var/lib/a:b@c/accommador.db?mode=rwc",
            ),
            // Other schemes (refused, but the error shows them) and key=value strings.
            (
                "mysql://root:pw@db.example:3306/app",
                "mysql://root:***@db.example:3306/app",
            ),
            (
                "host=db.internal user=u password=pw dbname=app",
                "host=db.internal user=u password=*** dbname=app",
            ),
            (
                "host=db.internal password = 'p w' dbname=app",
                "host=db.internal password = *** dbname=app",
            ),
        ] {
            assert_eq!(redact_database_url(url), shown, "{url}");
        }
    }

    #[test]
    fn settings_in_debug_show_the_database_but_not_its_password() {
        let raw: Raw = Figment::from(Toml::string(DEFAULTS)).extract().unwrap();
        let mut s = Settings::from_raw(raw).unwrap();
        s.database_url = "postgres://app:hunter2-pw@db.internal:5432/app".to_owned();
        s.admin_token = Some(Secret::new("admin-hunter2"));
        s.secret_key = Some(Secret::new("aHVudGVyMi1rZXktaHVudGVyMi1rZXktaHVudGVyMjA="));
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("aHVudGVy"), "{shown}");
        assert!(
            shown.contains("postgres://app:***@db.internal:5432/app"),
            "{shown}"
        );
        let overrides = Overrides {
            listen: None,
            database_url: Some(s.database_url.clone()),
        };
        let shown = format!("{overrides:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("db.internal"), "{shown}");
    }

    #[test]
    fn a_broken_config_file_is_reported_without_the_secrets_on_its_lines() {
        let dir = tempfile::tempdir().unwrap();
        for broken in [
            "database_url = \"postgres://app:hunter2-pw@db.internal/app\n",
            "database_url = \"postgres://app:hunter2-pw@db.internal/app\" x\n",
            "admin_token = \"hunter2-token\n",
        ] {
            let path = dir.path().join("broken.toml");
            std::fs::write(&path, broken).unwrap();
            let e = Settings::load(Some(&path), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.contains("line 1") && e.contains("broken.toml"), "{e}");
        }
    }

    #[test]
    fn database_urls_and_their_errors_do_not_show_the_password() {
        use crate::store::DatabaseUrl;
        let url = DatabaseUrl::parse("postgres://app:hunter2-pw@db.internal/app").unwrap();
        for shown in [format!("{url:?}"), url.to_string()] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(
                shown.contains("postgres://app:***@db.internal/app"),
                "{shown}"
            );
        }
        let refused = DatabaseUrl::parse("mysql://app:hunter2-pw@db.internal/app").unwrap_err();
        assert!(!refused.contains("hunter2"), "{refused}");
        assert!(refused.contains("db.internal"), "{refused}");
    }
}
