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

pub const DEFAULTS: &str = include_str!("../config/default.toml");

const KEYS: &[&str] = &[
    "listen",
    "database_url",
    "admin_token",
    "retry_schedule",
    "delivery_timeout",
    "allow_private_targets",
    "disable_after",
    "log_format",
    "endpoint_concurrency",
    "org_concurrency",
    "delivery_concurrency",
    "database_pool_size",
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

/// The validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub database_url: String,
    pub admin_token: Option<Secret>,
    pub retry_schedule: Vec<Duration>,
    pub delivery_timeout: Duration,
    pub allow_private_targets: bool,
    pub disable_after: Duration,
    pub log_format: LogFormat,
    /// Attempts in flight to one endpoint at most.
    pub endpoint_concurrency: usize,
    /// Attempts in flight for one organization at most (all its endpoints).
    pub org_concurrency: usize,
    /// Attempts in flight in this process at most.
    pub delivery_concurrency: usize,
    /// PostgreSQL connections per process for the API at most (the background pool adds 6).
    pub database_pool_size: usize,
}

/// Values given as flags; `None` leaves the lower layers' value.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
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
    retry_schedule: StringOrList,
    delivery_timeout: Scalar,
    allow_private_targets: Scalar,
    disable_after: Scalar,
    log_format: Scalar,
    endpoint_concurrency: Scalar,
    org_concurrency: Scalar,
    delivery_concurrency: Scalar,
    database_pool_size: Scalar,
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
        let raw: Raw = figment.extract().map_err(|e| {
            anyhow::anyhow!(
                "invalid configuration: {}",
                e.to_string().replace('\n', "; ")
            )
        })?;
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
        let allow = raw.allow_private_targets.into_string();
        let allow_private_targets = match allow.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" | "" => false,
            other => bail!("allow_private_targets: {other:?} is not true or false"),
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
            listen,
            database_url: raw.database_url.into_string(),
            admin_token: raw
                .admin_token
                .map(Scalar::into_string)
                .filter(|t| !t.is_empty())
                .map(Secret),
            retry_schedule,
            delivery_timeout,
            allow_private_targets,
            disable_after: parse_duration(&raw.disable_after.into_string())
                .context("disable_after")?,
            log_format,
        })
    }
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
        assert_eq!(s.retry_schedule.len(), 9);
        assert_eq!(s.retry_schedule[0], Duration::from_secs(5));
        assert_eq!(s.retry_schedule[8], Duration::from_secs(86_400));
        assert_eq!(s.delivery_timeout, Duration::from_secs(15));
        assert!(!s.allow_private_targets);
        assert_eq!(s.disable_after, Duration::from_secs(5 * 86_400));
        assert_eq!(s.endpoint_concurrency, 16);
        assert_eq!(s.org_concurrency, 64);
        assert_eq!(s.delivery_concurrency, 256);
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
