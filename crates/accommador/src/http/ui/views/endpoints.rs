//! The endpoint pages' markup: the endpoints table with each endpoint's health (24-hour
//! outcomes, last error, delivery policies), the create/edit form and an endpoint's page. Like
//! the rest of [`super`], plain values in, escaped markup out.

use std::collections::HashMap;

use maud::{Markup, html};

use super::{
    Frame, action, deliveries_table, explain_outcome, failure_label, notice, status_badge, when,
};
use crate::domain::Timestamp;
use crate::domain::delivery::DeliveryRecord;
use crate::domain::endpoint::{DeliveryOrder, EndpointRecord, EndpointStatus};
use crate::domain::pacing::MAX_RATE_LIMIT;
use crate::service::Outcomes;
use crate::store::rollups::LastError;

/// An endpoint's last error in a table cell: what failed (explained on hover), when, and a
/// link to that delivery.
fn last_error_cell(last: Option<&LastError>, now: Timestamp) -> Markup {
    html! {
        @match last {
            Some(e) => {
                a href={ "/ui/deliveries/" (e.delivery_id) }
                    title=(explain_outcome(e.error_class, e.status_code)) {
                    (failure_label(e.error_class, e.status_code))
                }
                br;
                span.muted { (when(e.started_at, now)) }
            },
            None => span.muted { "none" },
        }
    }
}

/// An endpoint's delivery policies in a few words (ordering, rate limit, and the concurrency
/// when adaptive concurrency holds it below `bound`).
fn policies_cell(e: &EndpointRecord, bound: u32) -> Markup {
    let current = e.current_concurrency(bound);
    let reduced = current < bound;
    html! {
        @if e.ordering == DeliveryOrder::PerUser { "in order per user" br; }
        @if let Some(n) = e.rate_limit { "at most " (n) " per second" br; }
        @if reduced {
            span.badge.s-warn title="The endpoint answered 429 or 503 without Retry-After: \
                fewer attempts are sent at once until it answers well again." {
                "slowed: " (current) " of " (bound) " at once"
            }
        }
        @if e.ordering == DeliveryOrder::None && e.rate_limit.is_none() && !reduced {
            span.muted { "defaults" }
        }
    }
}

/// What the endpoints table shows beside each endpoint: its last 24 hours' outcomes (from
/// the rollup counters), its last error and the concurrency bound its policies are shown
/// against.
#[derive(Debug)]
pub struct EndpointHealth<'a> {
    pub counts: &'a HashMap<String, Outcomes>,
    pub last_errors: &'a HashMap<String, LastError>,
    /// `ACCOMMADOR_ENDPOINT_CONCURRENCY`.
    pub concurrency_bound: u32,
}

/// Endpoints with their health ([`EndpointHealth`]).
pub fn endpoints_table(
    items: &[EndpointRecord],
    health: &EndpointHealth<'_>,
    now: Timestamp,
) -> Markup {
    html! {
        div.table-wrap { table {
            thead { tr {
                th { "Endpoint" } th { "URL" } th { "Status" } th { "Success, 24 h" }
                th { "Last error" } th.optional { "Policies" } th.optional { "Event types" }
            } }
            tbody {
                @if items.is_empty() { tr { td colspan="7" .muted { "No endpoints yet." } } }
                @for e in items {
                    tr {
                        td { a.mono href={ "/ui/endpoints/" (e.id) } { (e.id) } }
                        td { (e.url) @if !e.description.is_empty() { br; span.muted { (e.description) } } }
                        td {
                            (status_badge(e.status.as_str()))
                            @if let Some(r) = &e.disabled_reason { br; span.muted { (r) } }
                        }
                        td {
                            @match health.counts.get(&e.id).copied().unwrap_or_default() {
                                c if c.ended() == 0 => span.muted { "none ended" },
                                c => {
                                    (c.success_percent().unwrap_or(0)) " %"
                                    br;
                                    span.muted { (c.failed) " of " (c.ended()) " failed" }
                                },
                            }
                        }
                        td { (last_error_cell(health.last_errors.get(&e.id), now)) }
                        td.optional { (policies_cell(e, health.concurrency_bound)) }
                        td.optional { (e.event_types.names().join(", ")) }
                    }
                }
            }
        } }
    }
}

/// The fields of an endpoint form, as typed (kept when validation fails).
#[derive(Debug, Default)]
pub struct EndpointForm {
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    /// `none` or `per_user` (empty: `none`).
    pub ordering: String,
    /// Deliveries per second, as typed (empty: no limit).
    pub rate_limit: String,
}

impl EndpointForm {
    /// The form filled with an endpoint's current values.
    pub fn of(e: &EndpointRecord) -> EndpointForm {
        EndpointForm {
            url: e.url.clone(),
            description: e.description.clone(),
            event_types: e
                .event_types
                .names()
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            ordering: e.ordering.as_str().to_owned(),
            rate_limit: e.rate_limit.map(|n| n.to_string()).unwrap_or_default(),
        }
    }
}

pub fn endpoint_form(
    frame: &Frame<'_>,
    action_href: &str,
    form: &EndpointForm,
    submit: &str,
) -> Markup {
    let all = accommador_webhooks::EventType::USER_EVENTS
        .iter()
        .chain(accommador_webhooks::EventType::OPERATIONAL_EVENTS.iter());
    html! {
        form.panel method="post" action=(action_href) {
            input type="hidden" name="csrf" value=(frame.csrf);
            p { label for="url" { "URL" } input #url type="url" name="url" required value=(form.url); }
            p { label for="description" { "Description" } input #description type="text" name="description" value=(form.description); }
            fieldset.checks {
                legend { "Event types (none ticked: every user event)" }
                @for t in all {
                    label {
                        input type="checkbox" name="event_types" value=(t.as_str())
                            checked[form.event_types.iter().any(|s| s == t.as_str())];
                        " " (t.as_str())
                    }
                }
            }
            p {
                label for="ordering" { "Ordering" }
                select #ordering name="ordering" aria-describedby="ordering-hint" {
                    option value="none" selected[form.ordering != "per_user"] { "none: send each delivery when it is due" }
                    option value="per_user" selected[form.ordering == "per_user"] { "per_user: one user's events in commit order" }
                }
                span.hint #ordering-hint {
                    "With per_user, a user's next event waits while an earlier one to this endpoint \
                     is pending (retries included); other users are not held back."
                }
            }
            p {
                label for="rate_limit" { "Rate limit (deliveries per second, empty: no limit)" }
                input #rate_limit type="number" name="rate_limit" min="1" max=(MAX_RATE_LIMIT) step="1"
                    inputmode="numeric" value=(form.rate_limit);
            }
            p { button.primary type="submit" { (submit) } }
        }
    }
}

/// What an endpoint's page shows beside the endpoint itself.
#[derive(Debug)]
pub struct EndpointView<'a> {
    pub endpoint: &'a EndpointRecord,
    pub recent: &'a [DeliveryRecord],
    pub last_error: Option<&'a LastError>,
    /// `ACCOMMADOR_ENDPOINT_CONCURRENCY`.
    pub concurrency_bound: u32,
}

pub fn endpoint_detail(
    frame: &Frame<'_>,
    view: &EndpointView<'_>,
    notice_text: Option<&str>,
    secret: Option<&str>,
) -> Markup {
    let now = frame.now;
    let (e, recent, bound) = (view.endpoint, view.recent, view.concurrency_bound);
    let current = e.current_concurrency(bound);
    let base = format!("/ui/endpoints/{}", e.id);
    let succeeded = recent
        .iter()
        .filter(|d| d.status.as_str() == "succeeded")
        .count();
    let finished = recent
        .iter()
        .filter(|d| d.status.as_str() != "pending")
        .count();
    html! {
        (notice(notice_text))
        @if let Some(s) = secret {
            div.secret role="status" {
                p { strong { "The signing secret, shown this once:" } }
                code #secret { (s) }
            }
        }
        div.panel {
            dl.kv {
                dt { "URL" } dd { (e.url) }
                dt { "Description" } dd { (e.description) }
                dt { "Status" } dd {
                    (status_badge(e.status.as_str()))
                    @if let Some(r) = &e.disabled_reason { " " (r) }
                }
                dt { "Event types" } dd { (e.event_types.names().join(", ")) }
                dt { "Last error" } dd {
                    @match view.last_error {
                        Some(l) => {
                            a href={ "/ui/deliveries/" (l.delivery_id) } { (failure_label(l.error_class, l.status_code)) }
                            " · attempt " (l.number) " · " (when(l.started_at, now))
                            br;
                            span.muted { (explain_outcome(l.error_class, l.status_code)) }
                        },
                        None => span.muted { "none: no delivery is failing" },
                    }
                }
                dt { "Ordering" } dd {
                    @if e.ordering == DeliveryOrder::PerUser {
                        "per user: one user's events arrive in commit order; a later one waits \
                         while an earlier one is pending"
                    } @else { "none: each delivery is sent when it is due" }
                }
                dt { "Rate limit" } dd {
                    @if let Some(n) = e.rate_limit { "at most " (n) " deliveries per second" }
                    @else { span.muted { "none" } }
                }
                dt { "Concurrency" } dd {
                    @if current < bound {
                        span.badge.s-warn { "reduced" } " "
                        (current) " of " (bound) " attempts at once: the endpoint answered 429 or \
                         503 without Retry-After; each success raises it by one"
                    } @else { (current) " attempts at once " span.muted { "(the configured bound)" } }
                }
                dt { "Success rate" } dd {
                    @if finished == 0 { span.muted { "no finished delivery among the latest " (recent.len()) } }
                    @else { (succeeded * 100 / finished) " % of the latest " (finished) " finished deliveries" }
                }
                dt { "Created" } dd { (when(e.created_at, now)) }
            }
        }
        @if frame.can_act() {
            h2 { "Actions" }
            div.actions.panel {
                @if e.status == EndpointStatus::Enabled {
                    (action(frame, &format!("{base}/disable"), "Disable", "danger"))
                } @else {
                    (action(frame, &format!("{base}/enable"), "Enable", "primary"))
                }
                (action(frame, &format!("{base}/test"), "Send test event", ""))
                @if !frame.session.portal {
                    (action(frame, &format!("{base}/rotate"), "Rotate secret", "danger"))
                }
                form method="post" action={ (base) "/recover" } {
                    input type="hidden" name="csrf" value=(frame.csrf);
                    label for="since" { "Recover failed deliveries since (RFC 3339)" }
                    input #since type="text" name="since" required placeholder="2026-12-01T00:00:00Z";
                    button type="submit" { "Recover" }
                }
            }
            h2 { "Edit" }
            (endpoint_form(frame, &base, &EndpointForm::of(e), "Save"))
        }
        h2 { "Latest deliveries" }
        (deliveries_table(recent, now))
        p.pager { a href={ "/ui/deliveries?endpoint_id=" (e.id) } { "All deliveries of this endpoint" } }
    }
}
