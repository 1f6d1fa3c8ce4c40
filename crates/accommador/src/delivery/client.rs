//! The signing HTTP client: one pooled keep-alive client for every attempt, no redirects, no
//! proxy from the environment, the per-attempt timeout, and the Standard Webhooks headers over
//! the stored payload bytes, with a fresh timestamp and signature on every attempt.
//!
//! Every connection is made here, through the address guard (DESIGN 2.5): names resolve only
//! to checked addresses, literal hosts are checked before any request.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use accommador_webhooks::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, Secret};
use anyhow::Context;
use serde_json::{Map, Value};

use super::guard::{AddressGuard, BlockedAddress, ResolveError};
use crate::domain::Timestamp;
use crate::domain::delivery::{
    AttemptResult, ErrorClass, MAX_LOGGED_BODY, logged_body, parse_retry_after,
};
use crate::store::DueDelivery;

pub const USER_AGENT: &str = concat!("Accommador-Webhooks/", env!("CARGO_PKG_VERSION"));
/// Response headers kept in the log, at most.
const MAX_LOGGED_HEADERS: usize = 64;

#[derive(Debug, Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    guard: AddressGuard,
}

impl WebhookClient {
    pub fn new(timeout: Duration, guard: AddressGuard) -> anyhow::Result<WebhookClient> {
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(guard.clone()))
            .user_agent(USER_AGENT)
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .build()
            .context("building the webhook HTTP client")?;
        Ok(WebhookClient { http, guard })
    }

    /// Resolves the host of `url` (a name, not an IP literal) ahead of the send; the
    /// connection made for it then uses this answer ([`AddressGuard::look_up`]). A failure is
    /// kept too, and reported by the attempt.
    pub async fn look_up(&self, url: &str) {
        if let Ok(u) = url::Url::parse(url)
            && let Some(url::Host::Domain(name)) = u.host()
        {
            self.guard.look_up(name).await;
        }
    }

    /// Signs (with each of `secrets`, opened by the last check before the send) and sends one
    /// attempt; never fails, every outcome is an [`AttemptResult`].
    pub async fn attempt(&self, d: &DueDelivery, secrets: &[Secret]) -> AttemptResult {
        let started_at = Timestamp::now();
        let clock = Instant::now();
        let timestamp = crate::domain::delivery::webhook_timestamp(started_at);
        let signature = secrets
            .iter()
            .map(|s| s.sign(&d.event_id, timestamp, &d.payload))
            .collect::<Vec<_>>()
            .join(" ");
        // reqwest resolves names through the guard, but never asks it about IP literals.
        let literal = url::Url::parse(&d.url).ok().and_then(|u| match u.host() {
            Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
            _ => None,
        });
        if let Some(Err(blocked)) = literal.map(|ip| self.guard.check_literal(ip)) {
            return AttemptResult {
                trigger: d.trigger,
                started_at,
                duration_ms: clock.elapsed().as_millis() as u64,
                status_code: None,
                error_class: Some(ErrorClass::BlockedAddress),
                error: Some(blocked.to_string()),
                response_headers: Map::new(),
                response_body: String::new(),
                retry_after: None,
            };
        }
        let response = self
            .http
            .post(&d.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(HEADER_ID, &d.event_id)
            .header(HEADER_TIMESTAMP, timestamp.to_string())
            .header(HEADER_SIGNATURE, signature)
            .body(d.payload.clone())
            .send()
            .await;
        let mut result = AttemptResult {
            trigger: d.trigger,
            started_at,
            duration_ms: 0,
            status_code: None,
            error_class: None,
            error: None,
            response_headers: Map::new(),
            response_body: String::new(),
            retry_after: None,
        };
        match response {
            Ok(mut response) => {
                let status = response.status().as_u16();
                result.status_code = Some(status);
                for (name, value) in response.headers().iter().take(MAX_LOGGED_HEADERS) {
                    let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                    result
                        .response_headers
                        .insert(name.as_str().to_owned(), Value::String(value));
                }
                if status == 429 || status == 503 {
                    result.retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, SystemTime::now()));
                }
                // The status line decides the outcome; of the body only the first 4 KiB are
                // read (one byte more tells whether the cut splits a character), then the
                // connection is dropped. A body cut short (reset, or still trickling at the
                // timeout) keeps what arrived.
                let mut body = Vec::new();
                while body.len() <= MAX_LOGGED_BODY {
                    match response.chunk().await {
                        Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                        _ => break,
                    }
                }
                result.response_body = logged_body(&body);
                if !(200..300).contains(&status) {
                    result.error_class = Some(ErrorClass::HttpStatus);
                    result.error = Some(if (300..400).contains(&status) {
                        "redirects are not followed".to_owned()
                    } else {
                        format!("the endpoint answered {status}")
                    });
                }
            }
            Err(e) => {
                let (class, message) = classify(&e);
                result.error_class = Some(class);
                result.error = Some(message);
            }
        }
        result.duration_ms = clock.elapsed().as_millis() as u64;
        result
    }
}

/// The error class and message (with its cause chain) of a failed request. The class comes
/// from the types in the chain, never from its words (the message quotes the URL, whose path
/// may say anything).
fn classify(e: &reqwest::Error) -> (ErrorClass, String) {
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    let (mut blocked, mut dns, mut tls, mut timed_out) = (false, false, false, e.is_timeout());
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        blocked |= s.downcast_ref::<BlockedAddress>().is_some();
        dns |= s.downcast_ref::<ResolveError>().is_some();
        tls |= s.downcast_ref::<rustls::Error>().is_some();
        source = match s.downcast_ref::<std::io::Error>() {
            // An I/O error hides what it wraps from `source()` (TLS errors come wrapped in
            // two of them): step into it instead.
            Some(io) => {
                timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
                io.get_ref()
                    .map(|inner| inner as &(dyn std::error::Error + 'static))
            }
            None => s.source(),
        };
    }
    let class = if blocked {
        ErrorClass::BlockedAddress
    } else if timed_out {
        ErrorClass::Timeout
    } else if dns {
        ErrorClass::Dns
    } else if tls {
        ErrorClass::Tls
    } else {
        ErrorClass::Connect
    };
    (class, chain)
}
