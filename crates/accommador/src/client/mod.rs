//! The resource CLI (DESIGN 10): `accommador users|endpoints|deliveries|events|api-keys …`, a
//! client of a running server over its HTTP API.
//!
//! Its settings are the client's own (`--server` / `ACCOMMADOR_SERVER`, `--api-key` /
//! `ACCOMMADOR_API_KEY`) and never part of the server's configuration: nothing here reads
//! [`crate::config`]. This module owns the HTTP client and the turning of a problem+json answer
//! into a one-line error; [`commands`] owns the subcommands, [`output`] tables, JSON and progress
//! bars, [`tail`] the following of new events.

pub mod commands;
pub mod output;
pub mod tail;

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Where the server is and how to authenticate: client-side settings of every resource command.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The server's base URL.
    #[arg(
        long,
        global = true,
        env = "ACCOMMADOR_SERVER",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub server: String,
    /// An API key of your organization (acm_…).
    #[arg(
        long,
        global = true,
        env = "ACCOMMADOR_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,
    /// Print the server's JSON instead of a table (one event per line for `events tail`).
    #[arg(long, global = true)]
    pub json: bool,
}

/// A failure to get an answer at all (connection refused, timeout, a 5xx): worth retrying.
/// Anything else the server says is final.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach the server at {server}: {source}")]
    Unreachable {
        server: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{0}")]
    Refused(String),
    #[error("the server failed ({status}): {detail}")]
    ServerError { status: StatusCode, detail: String },
}

impl CallError {
    /// The server was not there or failed; the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CallError::Unreachable { .. } | CallError::ServerError { .. }
        )
    }
}

/// The API, with one organization's key.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: String,
}

/// A successful answer: its status and its body as the server wrote it (empty for 204).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: String,
}

impl Answer {
    /// The body as JSON (`Null` when empty).
    pub fn json(&self) -> anyhow::Result<Value> {
        if self.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&self.body).context("the server answered with something not JSON")
    }
}

impl Client {
    pub fn new(conn: &Connection) -> anyhow::Result<Client> {
        let Some(api_key) = conn.api_key.clone().filter(|k| !k.is_empty()) else {
            bail!("no API key: pass --api-key or set ACCOMMADOR_API_KEY")
        };
        let base = conn.server.trim_end_matches('/').to_owned();
        let parsed =
            url::Url::parse(&base).with_context(|| format!("--server {base:?} is not a URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            bail!("--server {base:?} must be an http:// or https:// URL with a host");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("accommador-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            http,
            base,
            api_key,
        })
    }

    pub fn server(&self) -> &str {
        &self.base
    }

    /// Sends one request; a problem+json answer becomes [`CallError::Refused`] with its detail
    /// and the fields it names.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, CallError> {
        self.call_with(method, path, body, None).await
    }

    async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        header: Option<(&str, &str)>,
    ) -> Result<Answer, CallError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.api_key);
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let unreachable = |source| CallError::Unreachable {
            server: self.base.clone(),
            source,
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let body = resp.text().await.map_err(unreachable)?;
        if status.is_success() {
            return Ok(Answer { status, body });
        }
        let detail = problem_detail(&body);
        if status.is_server_error() {
            return Err(CallError::ServerError { status, detail });
        }
        Err(CallError::Refused(format!(
            "{} {}: {detail}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        Ok(self.call(Method::GET, path, None).await?)
    }

    pub async fn post(&self, path: &str, body: Option<&Value>) -> anyhow::Result<Answer> {
        Ok(self.call(Method::POST, path, body).await?)
    }

    /// POST with an `Idempotency-Key`.
    pub async fn post_idempotent(
        &self,
        path: &str,
        body: &Value,
        key: &str,
    ) -> anyhow::Result<Answer> {
        Ok(self
            .call_with(
                Method::POST,
                path,
                Some(body),
                Some(("idempotency-key", key)),
            )
            .await?)
    }

    pub async fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Answer> {
        Ok(self.call(Method::PATCH, path, Some(body)).await?)
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Answer> {
        Ok(self.call(Method::DELETE, path, None).await?)
    }
}

/// `detail (field: detail; …)` of a problem+json body, or the body itself (shortened) when it
/// is not one.
fn problem_detail(body: &str) -> String {
    let Ok(problem) = serde_json::from_str::<Value>(body) else {
        let text: String = body.chars().take(200).collect();
        return if text.trim().is_empty() {
            "no detail".to_owned()
        } else {
            text.trim().to_owned()
        };
    };
    let mut out = problem["detail"]
        .as_str()
        .or(problem["title"].as_str())
        .unwrap_or("no detail")
        .to_owned();
    let fields: Vec<String> = problem["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{}: {}",
                e["field"].as_str().unwrap_or("?"),
                e["detail"].as_str().unwrap_or("invalid")
            )
        })
        .collect();
    if !fields.is_empty() {
        out.push_str(" (");
        out.push_str(&fields.join("; "));
        out.push(')');
    }
    out
}

/// `?a=b&c=d` of the pairs whose value is set, percent-encoded; empty when none is.
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (name, value) in pairs {
        if let Some(v) = value {
            ser.append_pair(name, v);
            any = true;
        }
    }
    if any {
        format!("?{}", ser.finish())
    } else {
        String::new()
    }
}

/// A path segment from user input (an ID), percent-encoded so it cannot change the route.
pub fn segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_names_its_detail_and_every_field() {
        let body = r#"{"type":"about:blank","title":"Unprocessable Entity","status":422,"detail":"the request is invalid","errors":[{"field":"email","detail":"must be an email address"},{"field":"name","detail":"too long"}]}"#;
        assert_eq!(
            problem_detail(body),
            "the request is invalid (email: must be an email address; name: too long)"
        );
        assert_eq!(problem_detail(""), "no detail");
        assert_eq!(problem_detail("Bad Gateway"), "Bad Gateway");
    }

    #[test]
    fn queries_leave_out_unset_values_and_encode_the_rest() {
        assert_eq!(query(&[("a", None)]), "");
        assert_eq!(
            query(&[
                ("type", Some("user.created".into())),
                ("x", None),
                ("q", Some("a b&c".into()))
            ]),
            "?type=user.created&q=a+b%26c"
        );
        assert_eq!(segment("usr_1/../x"), "usr_1%2F..%2Fx");
    }
}
