//! The UI's page and action handlers: each reads the session's organization, calls the
//! service, and renders [`super::views`]. Actions answer with a redirect to the page they
//! changed (a notice code in the query says what happened), except where a secret is shown
//! once.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde_json::{Map, Value};

use super::views::{self, EndpointForm, EndpointHealth, EndpointView, EventRow, Frame, Nav};
use super::{Form, Ui, UiError};
use crate::domain::delivery::DeliveryStatus;
use crate::domain::endpoint::EndpointStatus;
use crate::domain::{FieldError, Timestamp};
use crate::http::AppState;
use crate::http::deliveries::{FILTERS, delivery_filter};
use crate::http::extract::QueryParams;
use crate::service::Outcomes;
use crate::service::{PageRequest, ServiceError};
use crate::store::{DeliveryFilter, EventFilter};

/// Rows one list page shows.
const PAGE: usize = 50;
/// Deliveries the overview and an endpoint's page read at most.
const RECENT: usize = 500;

type Page = Result<Response, UiError>;

fn frame(ui: &Ui) -> Frame<'_> {
    Frame {
        session: &ui.session,
        csrf: &ui.csrf,
        now: Timestamp::now(),
    }
}

/// A list page of [`PAGE`] rows after the query's `after`.
fn list_page(query: &QueryParams) -> PageRequest {
    let mut ignored = Vec::new();
    page_of(query.get("after", &mut ignored), PAGE)
}

/// The cursor of the page after `list` (its last item), if more follow.
fn next_of<T>(list: &crate::store::Page<T>, id: impl Fn(&T) -> &str) -> Option<String> {
    list.has_more
        .then(|| list.items.last().map(|item| id(item).to_owned()))
        .flatten()
}

fn page_of(after: Option<&str>, limit: usize) -> PageRequest {
    PageRequest {
        limit,
        after: after.filter(|a| !a.is_empty()).map(str::to_owned),
    }
}

/// What a notice code in `?done=` says (fixed texts: nothing from the query is shown).
fn notice(query: &QueryParams) -> Option<&'static str> {
    let mut ignored = Vec::new();
    Some(match query.get("done", &mut ignored)? {
        "retry" => "Retry queued: one manual attempt will be made as soon as possible.",
        "saved" => "Saved.",
        "created" => "Endpoint created.",
        "enabled" => "Endpoint enabled: its pending deliveries are due again.",
        "disabled" => "Endpoint disabled: its pending deliveries end as failed.",
        "test" => "Test event sent to this endpoint.",
        "recovered" => "Recovery started: failed deliveries in that window are queued again.",
        _ => return None,
    })
}

/// The current list URL with `after` set to the next cursor.
fn next_href(
    path: &str,
    query: &QueryParams,
    keys: &[&str],
    cursor: Option<String>,
) -> Option<String> {
    let cursor = cursor?;
    let mut ignored = Vec::new();
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for key in keys {
        if let Some(v) = query.get(key, &mut ignored).filter(|v| !v.is_empty()) {
            q.append_pair(key, v);
        }
    }
    q.append_pair("after", &cursor);
    Some(format!("{path}?{}", q.finish()))
}

pub async fn overview(State(state): State<AppState>, ui: Ui) -> Page {
    let f = frame(&ui);
    let svc = &state.service;
    // Counts from the rollup counters: the page costs the same over a million deliveries.
    let o = svc.overview(ui.org(), f.now).await?;
    let failed = svc
        .list_deliveries(
            ui.org(),
            DeliveryFilter {
                status: Some(DeliveryStatus::Failed),
                since: Some(o.day_start),
                ..DeliveryFilter::default()
            },
            page_of(None, 10),
        )
        .await?;
    let endpoints = svc.list_endpoints(ui.org(), page_of(None, RECENT)).await?;
    // Disabled (with why), then enabled ones with failures in the last 24 hours, worst first.
    let mut troubled: Vec<_> = endpoints
        .items
        .iter()
        .filter(|e| {
            e.status == EndpointStatus::Disabled
                || o.by_endpoint.get(&e.id).is_some_and(|c| c.failed > 0)
        })
        .cloned()
        .collect();
    troubled.sort_by_key(|e| {
        let rate = o.by_endpoint.get(&e.id).and_then(|c| c.success_percent());
        (e.status != EndpointStatus::Disabled, rate.unwrap_or(0))
    });
    let disabled = troubled
        .iter()
        .filter(|e| e.status == EndpointStatus::Disabled)
        .count();
    let last_errors = svc.last_errors(ui.org(), &troubled).await?;
    let health = EndpointHealth {
        counts: &o.by_endpoint,
        last_errors: &last_errors,
        concurrency_bound: svc.endpoint_concurrency(),
    };
    let stat = |label: Markup, c: &Outcomes| {
        html! {
            div.stat {
                div.muted { (label) }
                div.n { (c.ended()) }
                div {
                    span.badge.s-succeeded { (c.succeeded) " succeeded" } " "
                    span.badge.s-failed { (c.failed) " failed" }
                }
                div.muted {
                    @match c.success_percent() {
                        Some(p) => { "Success rate " (p) " %" },
                        None => "No delivery ended",
                    }
                }
            }
        }
    };
    let yesterday = o.day_start.to_rfc3339().get(..10) != o.hour_start.to_rfc3339().get(..10);
    let body = html! {
        div.stats {
            (stat(html! { "Ended this hour (since " (views::clock(o.hour_start)) ")" }, &o.hour))
            (stat(html! { "Ended in the last 24 hours (since " (views::clock(o.day_start)) @if yesterday { " yesterday" } ")" }, &o.day))
            div.stat {
                div.muted { "Due now (backlog)" }
                div.n { (o.backlog.due) @if o.backlog.more { "+" } }
                div.muted {
                    "Oldest due: "
                    @match o.backlog.due_since { Some(t) => (views::when(t, f.now)), None => "none" }
                }
            }
            div.stat {
                div.muted { "Endpoints" }
                div.n { (endpoints.items.len()) @if endpoints.has_more { "+" } }
                div { span.badge.s-disabled { (disabled) " disabled" } " "
                      span.badge.s-failed { (troubled.len() - disabled) " failing" } }
            }
        }
        h2 { "Failing and disabled endpoints" }
        @if troubled.is_empty() { p.muted { "None: every endpoint is enabled and nothing failed in the last 24 hours." } }
        @else { (views::endpoints_table(&troubled, &health, f.now)) }
        h2 { "Latest failed deliveries" }
        (views::deliveries_table(&failed.items, f.now))
    };
    Ok(views::layout(&f, Nav::Overview, "Overview", body).into_response())
}

pub async fn deliveries(State(state): State<AppState>, ui: Ui, query: QueryParams) -> Page {
    let f = frame(&ui);
    let value = |k: &str| {
        let mut ignored = Vec::new();
        query.get(k, &mut ignored).unwrap_or_default().to_owned()
    };
    let (items, next, errors) = match delivery_filter(&query) {
        Ok(filter) => {
            match state
                .service
                .list_deliveries(ui.org(), filter, list_page(&query))
                .await
            {
                Ok(list) => (list.items, list.next_cursor, Vec::new()),
                Err(ServiceError::Invalid(errors)) => (Vec::new(), None, errors),
                Err(e) => return Err(e.into()),
            }
        }
        Err(errors) => (Vec::new(), None, errors),
    };
    let select = |name: &str, options: &[&str]| {
        let current = value(name);
        html! {
            select id=(name) name=(name) {
                option value="" { "any" }
                @for o in options { option value=(o) selected[current == *o] { (o) } }
            }
        }
    };
    let types: Vec<&str> = accommador_webhooks::EventType::USER_EVENTS
        .iter()
        .chain(accommador_webhooks::EventType::OPERATIONAL_EVENTS.iter())
        .map(|t| t.as_str())
        .chain(["webhook.test"])
        .collect();
    let body = html! {
        form.filters.panel method="get" action="/ui/deliveries" {
            div { label for="status" { "Status" } (select("status", &["pending", "succeeded", "failed"])) }
            div { label for="event_type" { "Event type" } (select("event_type", &types)) }
            div { label for="endpoint_id" { "Endpoint ID" } input #endpoint_id type="text" name="endpoint_id" value=(value("endpoint_id")) placeholder="ep_…"; }
            div { label for="user_id" { "User ID" } input #user_id type="text" name="user_id" value=(value("user_id")) placeholder="usr_…"; }
            div { label for="event_id" { "Event ID" } input #event_id type="text" name="event_id" value=(value("event_id")) placeholder="evt_…"; }
            div { label for="since" { "Since (RFC 3339)" } input #since type="text" name="since" value=(value("since")) placeholder="2026-12-01T00:00:00Z"; }
            div { label for="until" { "Until (RFC 3339)" } input #until type="text" name="until" value=(value("until")); }
            div { button.primary type="submit" { "Filter" } " " a href="/ui/deliveries" { "Clear" } }
        }
        (views::errors(&field_pairs(&errors)))
        (views::deliveries_table(&items, f.now))
        (views::pager(next_href("/ui/deliveries", &query, &FILTERS, next)))
    };
    Ok(views::layout(&f, Nav::Deliveries, "Deliveries", body).into_response())
}

fn field_pairs(errors: &[FieldError]) -> Vec<(String, String)> {
    errors
        .iter()
        .map(|e| (e.field.clone(), e.detail.clone()))
        .collect()
}

pub async fn delivery(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
    query: QueryParams,
) -> Page {
    let svc = &state.service;
    let d = svc.get_delivery(ui.org(), &id).await?;
    let payload = match svc.get_event(ui.org(), &d.event_id).await {
        Ok(e) => Some(e.payload),
        Err(ServiceError::Store(crate::store::StoreError::NotFound)) => None,
        Err(e) => return Err(e.into()),
    };
    let attempts = svc.list_attempts(ui.org(), &id).await?;
    let f = frame(&ui);
    let body = views::delivery_detail(&f, &d, payload.as_deref(), &attempts, notice(&query));
    Ok(views::layout(&f, Nav::Deliveries, &format!("Delivery {id}"), body).into_response())
}

pub async fn retry(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
    form: Form,
) -> Page {
    ui.check_action(&form)?;
    state.service.retry_delivery(ui.org(), &id).await?;
    Ok(Redirect::to(&format!("/ui/deliveries/{id}?done=retry")).into_response())
}

pub async fn endpoints(State(state): State<AppState>, ui: Ui, query: QueryParams) -> Page {
    let page = list_page(&query);
    let list = state.service.list_endpoints(ui.org(), page).await?;
    let f = frame(&ui);
    let counts = state.service.endpoint_outcomes(ui.org(), f.now).await?;
    let last_errors = state.service.last_errors(ui.org(), &list.items).await?;
    let health = EndpointHealth {
        counts: &counts,
        last_errors: &last_errors,
        concurrency_bound: state.service.endpoint_concurrency(),
    };
    let next = next_of(&list, |e| &e.id);
    let body = html! {
        @if f.can_act() { p { a.button href="/ui/endpoints/new" { "New endpoint" } } }
        (views::endpoints_table(&list.items, &health, f.now))
        (views::pager(next_href("/ui/endpoints", &query, &[], next)))
    };
    Ok(views::layout(&f, Nav::Endpoints, "Endpoints", body).into_response())
}

pub async fn endpoint_new(ui: Ui) -> Page {
    if ui.session.read_only {
        return Err(UiError::new(
            StatusCode::FORBIDDEN,
            "This session is read-only: it cannot change anything.",
        ));
    }
    let f = frame(&ui);
    let body = views::endpoint_form(&f, "/ui/endpoints", &EndpointForm::default(), "Create");
    Ok(views::layout(&f, Nav::Endpoints, "New endpoint", body).into_response())
}

/// The API body an endpoint form stands for: the same validation as the API then applies.
/// An empty rate limit is `null` (no limit); one that is not a JSON number goes as the text
/// typed, which the API refuses with its own message. A policy field the form did not send
/// is left out (an edit keeps the endpoint's value).
fn endpoint_body(form: &Form) -> (Map<String, Value>, EndpointForm) {
    let typed = EndpointForm {
        url: form.get("url").unwrap_or_default().trim().to_owned(),
        description: form.get("description").unwrap_or_default().to_owned(),
        event_types: form.all("event_types"),
        ordering: form.get("ordering").unwrap_or("none").trim().to_owned(),
        rate_limit: form.get("rate_limit").unwrap_or_default().trim().to_owned(),
    };
    let mut body = Map::new();
    body.insert("url".into(), typed.url.clone().into());
    body.insert("description".into(), typed.description.clone().into());
    if form.get("ordering").is_some() {
        body.insert("ordering".into(), typed.ordering.clone().into());
    }
    if form.get("rate_limit").is_some() {
        let rate_limit = match typed.rate_limit.as_str() {
            "" => Value::Null,
            typed => match serde_json::from_str::<Value>(typed) {
                Ok(n @ Value::Number(_)) => n,
                _ => typed.into(),
            },
        };
        body.insert("rate_limit".into(), rate_limit);
    }
    body.insert(
        "event_types".into(),
        if typed.event_types.is_empty() {
            Value::Null
        } else {
            typed.event_types.clone().into()
        },
    );
    (body, typed)
}

/// A form sent back with the API's validation messages.
fn invalid_form(
    ui: &Ui,
    (title, href, submit): (&str, &str, &str),
    typed: &EndpointForm,
    errors: &[FieldError],
) -> Response {
    let f = frame(ui);
    let body: Markup = html! {
        (views::errors(&field_pairs(errors)))
        (views::endpoint_form(&f, href, typed, submit))
    };
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        views::layout(&f, Nav::Endpoints, title, body),
    )
        .into_response()
}

pub async fn endpoint_create(State(state): State<AppState>, ui: Ui, form: Form) -> Page {
    ui.check_action(&form)?;
    let (mut body, typed) = endpoint_body(&form);
    if typed.event_types.is_empty() {
        body.remove("event_types");
    }
    match state.service.create_endpoint(ui.org(), &body).await {
        Ok((record, secret)) => {
            if ui.session.portal {
                return Ok(
                    Redirect::to(&format!("/ui/endpoints/{}?done=created", record.id))
                        .into_response(),
                );
            }
            endpoint_page(
                &state,
                &ui,
                &record.id,
                Some("Endpoint created."),
                Some(&secret),
            )
            .await
        }
        Err(ServiceError::Invalid(errors)) => Ok(invalid_form(
            &ui,
            ("New endpoint", "/ui/endpoints", "Create"),
            &typed,
            &errors,
        )),
        Err(e) => Err(e.into()),
    }
}

async fn endpoint_page(
    state: &AppState,
    ui: &Ui,
    id: &str,
    notice_text: Option<&str>,
    secret: Option<&str>,
) -> Page {
    let svc = &state.service;
    let e = svc.get_endpoint(ui.org(), id).await?;
    let recent = svc
        .list_deliveries(
            ui.org(),
            DeliveryFilter {
                endpoint_id: Some(id.to_owned()),
                ..DeliveryFilter::default()
            },
            page_of(None, 20),
        )
        .await?;
    let last_errors = svc.last_errors(ui.org(), std::slice::from_ref(&e)).await?;
    let f = frame(ui);
    let view = EndpointView {
        endpoint: &e,
        recent: &recent.items,
        last_error: last_errors.get(&e.id),
        concurrency_bound: svc.endpoint_concurrency(),
    };
    let body = views::endpoint_detail(&f, &view, notice_text, secret);
    Ok(views::layout(&f, Nav::Endpoints, &format!("Endpoint {id}"), body).into_response())
}

pub async fn endpoint(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
    query: QueryParams,
) -> Page {
    endpoint_page(&state, &ui, &id, notice(&query), None).await
}

pub async fn endpoint_update(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
    form: Form,
) -> Page {
    ui.check_action(&form)?;
    let (body, typed) = endpoint_body(&form);
    let mut body = body;
    if typed.event_types.is_empty() {
        // None ticked: every user event, as when the endpoint was made without a list.
        body.insert(
            "event_types".into(),
            accommador_webhooks::EventType::USER_EVENTS
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .into(),
        );
    }
    match state.service.update_endpoint(ui.org(), &id, &body).await {
        Ok(_) => Ok(Redirect::to(&format!("/ui/endpoints/{id}?done=saved")).into_response()),
        Err(ServiceError::Invalid(errors)) => Ok(invalid_form(
            &ui,
            (
                &format!("Endpoint {id}"),
                &format!("/ui/endpoints/{id}"),
                "Save",
            ),
            &typed,
            &errors,
        )),
        Err(e) => Err(e.into()),
    }
}

pub async fn endpoint_action(
    State(state): State<AppState>,
    ui: Ui,
    Path((id, action)): Path<(String, String)>,
    form: Form,
) -> Page {
    ui.check_action(&form)?;
    let svc = &state.service;
    let done = match action.as_str() {
        "enable" | "disable" => {
            let mut body = Map::new();
            let status = if action == "enable" {
                "enabled"
            } else {
                "disabled"
            };
            body.insert("status".into(), status.into());
            svc.update_endpoint(ui.org(), &id, &body).await?;
            if action == "enable" {
                "enabled"
            } else {
                "disabled"
            }
        }
        "test" => {
            svc.send_test(ui.org(), &id).await?;
            "test"
        }
        "recover" => {
            let mut body = Map::new();
            body.insert(
                "since".into(),
                form.get("since").unwrap_or_default().trim().into(),
            );
            svc.recover(ui.org(), &id, &body).await?;
            "recovered"
        }
        "rotate" => {
            if ui.session.portal {
                return Err(UiError::new(
                    StatusCode::FORBIDDEN,
                    "A portal session cannot see or change endpoint secrets.",
                ));
            }
            let secret = svc.rotate_endpoint_secret(ui.org(), &id).await?;
            return endpoint_page(
                &state,
                &ui,
                &id,
                Some("Secret rotated: the previous one keeps signing beside it for 24 hours."),
                Some(&secret),
            )
            .await;
        }
        _ => return Err(UiError::new(StatusCode::NOT_FOUND, "No such action.")),
    };
    Ok(Redirect::to(&format!("/ui/endpoints/{id}?done={done}")).into_response())
}

pub async fn events(State(state): State<AppState>, ui: Ui, query: QueryParams) -> Page {
    let mut ignored = Vec::new();
    let chosen = query
        .get("type", &mut ignored)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let event_type = chosen
        .as_deref()
        .and_then(accommador_webhooks::EventType::parse);
    if chosen.is_some() && event_type.is_none() {
        return Err(UiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "type: not an event type",
        ));
    }
    let filter = EventFilter {
        event_type,
        ..EventFilter::default()
    };
    let list = state
        .service
        .list_events(ui.org(), filter, list_page(&query))
        .await?;
    let rows: Vec<EventRow> = list
        .items
        .iter()
        .map(|e| EventRow::from_payload(&e.id, &e.payload))
        .collect();
    let f = frame(&ui);
    let current = chosen.unwrap_or_default();
    let body = html! {
        form.filters.panel method="get" action="/ui/events" {
            div {
                label for="type" { "Event type" }
                select #type name="type" {
                    option value="" { "any" }
                    @for t in accommador_webhooks::EventType::SUBSCRIBABLE {
                        option value=(t.as_str()) selected[current == t.as_str()] { (t.as_str()) }
                    }
                }
            }
            div { button.primary type="submit" { "Filter" } }
        }
        p.muted { "Events in commit order, oldest first." }
        (views::events_table(&rows, f.now, false))
        (views::pager(next_href("/ui/events", &query, &["type"], list.next_cursor)))
    };
    Ok(views::layout(&f, Nav::Events, "Events", body).into_response())
}

pub async fn users(State(state): State<AppState>, ui: Ui, query: QueryParams) -> Page {
    let page = list_page(&query);
    let list = state.service.list_users(ui.org(), page).await?;
    let f = frame(&ui);
    let next = next_of(&list, |u| &u.id);
    let body = html! {
        (views::users_table(&list.items, f.now))
        (views::pager(next_href("/ui/users", &query, &[], next)))
    };
    Ok(views::layout(&f, Nav::Users, "Users", body).into_response())
}

pub async fn user(
    State(state): State<AppState>,
    ui: Ui,
    Path(id): Path<String>,
    query: QueryParams,
) -> Page {
    let svc = &state.service;
    // The events about the user are its history; a deleted user keeps them (and its last
    // state is in its `user.deleted` event).
    let page = list_page(&query);
    let filter = EventFilter {
        user_id: Some(id.clone()),
        ..EventFilter::default()
    };
    let history = match svc.list_events(ui.org(), filter, page).await {
        Ok(list) => list,
        Err(ServiceError::Invalid(_)) => {
            return Err(UiError::new(
                StatusCode::NOT_FOUND,
                "Not found: nothing with this ID belongs to your organization.",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let current = match svc.get_user(ui.org(), &id).await {
        Ok(u) => Some(u),
        Err(ServiceError::Store(crate::store::StoreError::NotFound)) => None,
        Err(e) => return Err(e.into()),
    };
    let rows: Vec<EventRow> = history
        .items
        .iter()
        .map(|e| EventRow::from_payload(&e.id, &e.payload))
        .collect();
    let f = frame(&ui);
    let body = html! {
        div.panel {
            @match &current {
                Some(u) => dl.kv {
                    dt { "Email" } dd { (u.email) }
                    dt { "Name" } dd { (u.name.as_deref().unwrap_or("")) }
                    dt { "Version" } dd { (u.version) }
                    dt { "Attributes" } dd { pre { (serde_json::to_string_pretty(&u.attributes).unwrap_or_default()) } }
                    dt { "Updated" } dd { (views::when(u.updated_at, f.now)) }
                },
                None => p.muted { "This user has been deleted; its history stays until retention removes it." },
            }
            p { a href={ "/ui/deliveries?user_id=" (id) } { "Deliveries of this user's events" } }
        }
        h2 { "History (each version's event)" }
        (views::events_table(&rows, f.now, true))
        (views::pager(next_href(&format!("/ui/users/{id}"), &query, &[], history.next_cursor)))
    };
    Ok(views::layout(&f, Nav::Users, &format!("User {id}"), body).into_response())
}
