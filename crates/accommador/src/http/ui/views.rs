//! The UI's markup (maud: every interpolated value is HTML-escaped unless wrapped in
//! `PreEscaped`, which this module never does with data). Functions here take plain values and
//! return markup; they read nothing and decide nothing about access beyond what they are told.

use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use crate::domain::Timestamp;
use crate::domain::delivery::{AttemptRecord, DeliveryRecord, ErrorClass, webhook_timestamp};
use crate::domain::user::UserRecord;
use crate::store::ui::SessionRecord;

mod endpoints;
pub use endpoints::{
    EndpointForm, EndpointHealth, EndpointView, endpoint_detail, endpoint_form, endpoints_table,
};

/// Which page the navigation marks as current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Deliveries,
    Endpoints,
    Events,
    Users,
}

/// What every signed-in page shows around its body.
#[derive(Debug)]
pub struct Frame<'a> {
    pub session: &'a SessionRecord,
    pub csrf: &'a str,
    pub now: Timestamp,
}

impl Frame<'_> {
    /// Actions (buttons, forms that change something) are shown only when allowed.
    pub fn can_act(&self) -> bool {
        !self.session.read_only
    }
}

pub fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Accommador" }
                link rel="stylesheet" href="/ui/assets/style.css";
            }
            body { (body) }
        }
    }
}

pub fn layout(frame: &Frame<'_>, nav: Nav, title: &str, body: Markup) -> Markup {
    let link = |target: Nav, href: &str, text: &str| {
        html! {
            a href=(href) aria-current=[(target == nav).then_some("page")] { (text) }
        }
    };
    page(
        title,
        html! {
            header.top {
                span.brand { "Accommador" }
                nav aria-label="Main" {
                    (link(Nav::Overview, "/ui/", "Overview"))
                    (link(Nav::Deliveries, "/ui/deliveries", "Deliveries"))
                    (link(Nav::Endpoints, "/ui/endpoints", "Endpoints"))
                    (link(Nav::Events, "/ui/events", "Events"))
                    (link(Nav::Users, "/ui/users", "Users"))
                }
                span.who {
                    (frame.session.org)
                    @if frame.session.portal { " · portal" }
                    @if frame.session.read_only { " · read-only" }
                }
                form method="post" action="/ui/sign-out" {
                    input type="hidden" name="csrf" value=(frame.csrf);
                    button type="submit" { "Sign out" }
                }
            }
            main {
                h1 { (title) }
                (body)
            }
        },
    )
}

/// A time shown relative to now, the absolute time on hover.
pub fn when(t: Timestamp, now: Timestamp) -> Markup {
    let secs = (now.0 - t.0) / 1000;
    let (n, unit, future) = {
        let a = secs.abs();
        let (n, unit) = match a {
            0..=59 => (a, "s"),
            60..=3599 => (a / 60, "min"),
            3600..=86_399 => (a / 3600, "h"),
            _ => (a / 86_400, "d"),
        };
        (n, unit, secs < 0)
    };
    let text = if secs.abs() < 5 {
        "just now".to_owned()
    } else if future {
        format!("in {n} {unit}")
    } else {
        format!("{n} {unit} ago")
    };
    html! { time datetime=(t.to_rfc3339()) title=(t.to_rfc3339()) { (text) } }
}

/// The hour and minute of `t` (UTC), for "since 05:00".
pub fn clock(t: Timestamp) -> Markup {
    let rfc = t.to_rfc3339();
    let hm = rfc.get(11..16).unwrap_or(&rfc).to_owned();
    html! { time datetime=(rfc) title=(rfc) { (hm) " UTC" } }
}

pub fn status_badge(status: &str) -> Markup {
    html! { span class={ "badge s-" (status) } { (status) } }
}

pub fn notice(text: Option<&str>) -> Markup {
    html! { @if let Some(text) = text { p.notice role="status" { (text) } } }
}

pub fn errors(list: &[(String, String)]) -> Markup {
    html! {
        @if !list.is_empty() {
            div.error role="alert" {
                p { strong { "Please correct the following:" } }
                ul { @for (field, detail) in list { li { code { (field) } " " (detail) } } }
            }
        }
    }
}

/// A POST button with the session's CSRF token.
pub fn action(frame: &Frame<'_>, href: &str, label: &str, class: &str) -> Markup {
    html! {
        form method="post" action=(href) {
            input type="hidden" name="csrf" value=(frame.csrf);
            button type="submit" class=(class) { (label) }
        }
    }
}

pub fn sign_in(csrf: &str, error: Option<&str>) -> Markup {
    page(
        "Sign in",
        html! {
            main.center {
                h1 { "Accommador" }
                div.panel {
                    @if let Some(e) = error { p.error role="alert" { (e) } }
                    form method="post" action="/ui/sign-in" {
                        input type="hidden" name="csrf" value=(csrf);
                        label for="api_key" { "Organization API key" }
                        input #api_key type="password" name="api_key" autocomplete="off" required
                            placeholder="acm_…";
                        p { button.primary type="submit" { "Sign in" } }
                    }
                    p.muted { "The key stays on the server: the browser only gets a session cookie." }
                }
            }
        },
    )
}

/// A page for someone without a session (portal links, errors before signing in).
pub fn bare(title: &str, body: Markup) -> Markup {
    page(
        title,
        html! { main.center { h1 { (title) } div.panel { (body) } } },
    )
}

pub fn portal_continue(token: &str, csrf: &str) -> Markup {
    bare(
        "Open the delivery log",
        html! {
            p { "This one-time link opens your organization's webhook delivery log." }
            form method="post" action={ "/ui/portal/" (token) } {
                input type="hidden" name="csrf" value=(csrf);
                button.primary type="submit" { "Continue" }
            }
        },
    )
}

pub fn portal_refused() -> Markup {
    bare(
        "This link cannot be used",
        html! {
            p { "The link has already been used, has expired, or was withdrawn. "
                "Ask for a new one." }
        },
    )
}

/// Plain words for an attempt's outcome.
pub fn explain(a: &AttemptRecord) -> String {
    explain_outcome(a.result.error_class, a.result.status_code)
}

/// Plain words for an attempt's error class and status code.
pub fn explain_outcome(error_class: Option<ErrorClass>, status_code: Option<u16>) -> String {
    match (error_class, status_code) {
        (None, Some(code)) if (200..300).contains(&code) => {
            format!("The endpoint answered {code}: delivered.")
        }
        (None, Some(code)) => format!("The endpoint answered {code}."),
        (Some(ErrorClass::HttpStatus), Some(410)) => {
            "The endpoint answered 410 Gone, which disables it.".into()
        }
        (Some(ErrorClass::HttpStatus), Some(429)) => {
            "The endpoint answered 429 Too Many Requests: it asked us to slow down.".into()
        }
        (Some(ErrorClass::HttpStatus), Some(code)) if (300..400).contains(&code) => format!(
            "The endpoint answered {code}, a redirect. Redirects are not followed: \
             point the endpoint at the final URL."
        ),
        (Some(ErrorClass::HttpStatus), Some(code)) if (400..500).contains(&code) => format!(
            "The endpoint answered {code}: it refused the request (check its signature \
             verification and what it accepts)."
        ),
        (Some(ErrorClass::HttpStatus), Some(code)) => {
            format!("The endpoint answered {code}: an error on the receiving server.")
        }
        (Some(ErrorClass::HttpStatus), None) => "The endpoint answered with a failure.".into(),
        (Some(ErrorClass::Timeout), _) => {
            "No complete answer came within the time limit: the endpoint is slow or hanging.".into()
        }
        (Some(ErrorClass::Connect), _) => {
            "Could not connect: nothing listened at that address, or the connection was \
             refused or cut."
                .into()
        }
        (Some(ErrorClass::Dns), _) => "The endpoint's host name could not be resolved.".into(),
        (Some(ErrorClass::Tls), _) => {
            "The TLS handshake failed: the certificate is invalid, expired or for another \
             name."
                .into()
        }
        (Some(ErrorClass::BlockedAddress), _) => {
            "The endpoint's address is private or otherwise blocked, so nothing was sent.".into()
        }
        (Some(ErrorClass::EndpointDisabled), _) => {
            "The endpoint was disabled, so this delivery was not sent.".into()
        }
        (Some(ErrorClass::Erased), _) => {
            "The user was erased, so this delivery was not sent.".into()
        }
        (None, None) => "No outcome recorded.".into(),
    }
}

/// A failed attempt's outcome in a few words, for a table cell: the status with its reason
/// phrase, or what went wrong before an answer.
pub fn failure_label(error_class: Option<ErrorClass>, status_code: Option<u16>) -> String {
    match (error_class, status_code) {
        (Some(ErrorClass::HttpStatus) | None, Some(code)) => {
            let reason = axum::http::StatusCode::from_u16(code)
                .ok()
                .and_then(|s| s.canonical_reason());
            match reason {
                Some(reason) => format!("HTTP {code} {reason}"),
                None => format!("HTTP {code}"),
            }
        }
        (Some(ErrorClass::HttpStatus), None) => "HTTP error".into(),
        (Some(ErrorClass::Timeout), _) => "Timed out".into(),
        (Some(ErrorClass::Connect), _) => "Could not connect".into(),
        (Some(ErrorClass::Dns), _) => "Host name not found".into(),
        (Some(ErrorClass::Tls), _) => "TLS handshake failed".into(),
        (Some(ErrorClass::BlockedAddress), _) => "Blocked address".into(),
        (Some(ErrorClass::EndpointDisabled), _) => "Not sent: endpoint disabled".into(),
        (Some(ErrorClass::Erased), _) => "Not sent: user erased".into(),
        (None, None) => "No answer".into(),
    }
}

pub fn deliveries_table(items: &[DeliveryRecord], now: Timestamp) -> Markup {
    html! {
        div.table-wrap { table {
            thead { tr {
                th { "Delivery" } th { "Status" } th { "Event type" }
                th.optional { "Endpoint" } th.optional { "Attempts" } th { "Created" }
            } }
            tbody {
                @if items.is_empty() { tr { td colspan="6" .muted { "No deliveries match." } } }
                @for d in items {
                    tr {
                        td { a.mono href={ "/ui/deliveries/" (d.id) } { (d.id) } }
                        td {
                            (status_badge(d.status.as_str()))
                            @if let Some(code) = d.last_status_code { " " span.muted { (code) } }
                        }
                        td { code { (d.event_type) } }
                        td.optional { a.mono href={ "/ui/endpoints/" (d.endpoint_id) } { (d.endpoint_id) } }
                        td.optional { (d.attempt_count) }
                        td { (when(d.created_at, now)) }
                    }
                }
            }
        } }
    }
}

pub fn delivery_detail(
    frame: &Frame<'_>,
    d: &DeliveryRecord,
    payload: Option<&str>,
    attempts: &[AttemptRecord],
    notice_text: Option<&str>,
) -> Markup {
    let now = frame.now;
    html! {
        (notice(notice_text))
        div.panel {
            dl.kv {
                dt { "Status" } dd { (status_badge(d.status.as_str())) }
                dt { "Event" } dd { code { (d.event_id) } " " code { (d.event_type) } }
                dt { "Endpoint" } dd { a.mono href={ "/ui/endpoints/" (d.endpoint_id) } { (d.endpoint_id) } }
                dt { "Attempts" } dd { (d.attempt_count) }
                dt { "Next attempt" } dd {
                    @match d.next_attempt_at { Some(t) => (when(t, now)), None => span.muted { "none" } }
                }
                dt { "Created" } dd { (when(d.created_at, now)) }
            }
            @if frame.can_act() {
                div.actions.spaced {
                    (action(frame, &format!("/ui/deliveries/{}/retry", d.id), "Retry now", "primary"))
                }
            }
        }
        h2 { "Payload" }
        @match payload {
            Some(p) => pre { (pretty(p)) },
            None => p.muted { "The event is no longer stored (retention)." },
        }
        h2 { "Attempts" }
        @if attempts.is_empty() { p.muted { "No attempt yet." } }
        @for a in attempts.iter().rev() {
            @let ok = a.result.succeeded();
            div.panel.attempt.ok[ok].bad[!ok] {
                p {
                    strong { "Attempt " (a.number) }
                    " · " (a.result.trigger.as_str())
                    " · " (when(a.result.started_at, now))
                    " · " (a.result.duration_ms) " ms"
                    " · "
                    @match a.result.status_code {
                        Some(code) => span class={ "badge " (if ok { "s-succeeded" } else { "s-failed" }) } { "HTTP " (code) },
                        None => span.badge.s-failed { (a.result.error_class.map(ErrorClass::as_str).unwrap_or("no answer")) },
                    }
                    @if a.out_of_order { " · " span.badge.s-warn { "out of order" } }
                }
                p { (explain(a)) }
                @if a.out_of_order {
                    p {
                        "Sent out of order: a later delivery of the same user had already been \
                         sent to this endpoint (a manual retry or recovery of a delivery it \
                         overtook). The receiver may see this version after a newer one."
                    }
                }
                @if let Some(e) = &a.result.error { p.muted { "Error: " (e) } }
                @if a.result.request_sent() {
                    details {
                        summary { "Request headers sent" }
                        pre {
                            "content-type: application/json\n"
                            "user-agent: " (crate::delivery::client::USER_AGENT) "\n"
                            "webhook-id: " (d.event_id) "\n"
                            "webhook-timestamp: " (webhook_timestamp(a.result.started_at)) "\n"
                            "webhook-signature: v1,… (not kept: the signature is made afresh for every attempt)"
                        }
                    }
                }
                details {
                    summary { "Response headers and body" }
                    pre { @for (k, v) in &a.result.response_headers { (k) ": " (header_value(v)) "\n" } }
                    pre { (a.result.response_body) }
                }
            }
        }
    }
}

fn header_value(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// Pretty-printed JSON, or the text as it is when it is not JSON.
pub fn pretty(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_owned())
}

pub fn users_table(items: &[UserRecord], now: Timestamp) -> Markup {
    html! {
        div.table-wrap { table {
            thead { tr { th { "User" } th { "Email" } th { "Name" } th.optional { "Version" } th.optional { "Updated" } } }
            tbody {
                @if items.is_empty() { tr { td colspan="5" .muted { "No users yet." } } }
                @for u in items {
                    tr {
                        td { a.mono href={ "/ui/users/" (u.id) } { (u.id) } }
                        td { (u.email) }
                        td { (u.name.as_deref().unwrap_or("")) }
                        td.optional { (u.version) }
                        td.optional { (when(u.updated_at, now)) }
                    }
                }
            }
        } }
    }
}

/// One stored event's payload, read for a list row.
#[derive(Debug)]
pub struct EventRow {
    pub id: String,
    pub event_type: String,
    pub timestamp: String,
    pub user_id: Option<String>,
    pub version: Option<u64>,
    pub payload: String,
}

impl EventRow {
    pub fn from_payload(id: &str, payload: &str) -> EventRow {
        let v: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
        let user = &v["data"]["user"];
        EventRow {
            id: id.to_owned(),
            event_type: v["type"].as_str().unwrap_or("").to_owned(),
            timestamp: v["timestamp"].as_str().unwrap_or("").to_owned(),
            user_id: user["id"].as_str().map(str::to_owned),
            version: user["version"].as_u64(),
            payload: payload.to_owned(),
        }
    }
}

pub fn events_table(rows: &[EventRow], now: Timestamp, with_payload: bool) -> Markup {
    html! {
        div.table-wrap { table {
            thead { tr { th { "Event" } th { "Type" } th { "User" } th.optional { "Version" } th { "Occurred" } th { "" } } }
            tbody {
                @if rows.is_empty() { tr { td colspan="6" .muted { "No events." } } }
                @for e in rows {
                    tr {
                        td.mono { (e.id) }
                        td { code { (e.event_type) } }
                        td { @if let Some(u) = &e.user_id { a.mono href={ "/ui/users/" (u) } { (u) } } }
                        td.optional { @if let Some(v) = e.version { (v) } }
                        td {
                            @match Timestamp::parse_rfc3339(&e.timestamp) {
                                Some(t) => (when(t, now)),
                                None => (e.timestamp),
                            }
                        }
                        td { a href={ "/ui/deliveries?event_id=" (e.id) } { "Deliveries" } }
                    }
                    @if with_payload {
                        tr { td colspan="6" { details { summary { "Payload" } pre { (pretty(&e.payload)) } } } }
                    }
                }
            }
        } }
    }
}

/// A "next page" link keeping the current filters.
pub fn pager(href: Option<String>) -> Markup {
    html! { @if let Some(h) = href { p.pager { a.button href=(h) { "Next page →" } } } }
}
