//! `/v1/events`: the outbox, read in commit order; also a polling alternative to webhooks.
//! Bodies are the stored payload bytes, exactly as webhooks send them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;

use super::error::ApiError;
use super::extract::{Org, QueryParams};
use super::openapi::{EventList, EventSchema, EventType as EventTypeSchema, Problem};
use super::{AppState, json_response, list_body, parse_page};
use crate::domain::FieldError;
use crate::service::ServiceError;
use crate::store::{EventFilter, StoreError};
use accommador_webhooks::EventType;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/events", get(list_events))
        .route("/v1/events/{id}", get(get_event))
}

/// List events
///
/// Events in commit order. Following `after=` never skips an event: an event that commits
/// later always comes after every event already returned.
///
/// One request reads at most 1,000 events, through an index chosen by its filters
/// (`user_id`, else `type`); when the filters (or `webhook.test` events, which are never
/// listed) leave the page short by then, it comes back short, even empty, with a
/// `next_cursor` that continues from there. The list has ended only when `next_cursor` is
/// null.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(
        ("type" = Option<EventTypeSchema>, Query, description = "Only events of this type; empty: every type",
            extensions(("x-allow-empty-value" = json!(true)))),
        ("user_id" = Option<String>, Query, pattern = "^usr_[0-9A-HJKMNP-TV-Z]{26}$", description = "Only events about this user (`usr_…`; deleted users included); a value that names no user of this organization is refused (422); empty: every user",
            extensions(("x-allow-empty-value" = json!(true)))),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 500, description = "Page size, 1–500; default 50"),
        ("after" = Option<String>, Query, min_length = 1, pattern = "^evt_[0-9A-HJKMNP-TV-Z]{26}$", description = "`next_cursor` of the previous page, or any event ID of this organization; a value that names no event of this organization is refused (422), except an event ID made before the retention horizon (`ACCOMMADOR_RETENTION`): its event may have been purged, and the list continues with the first event kept that occurred at or after that ID's time"),
    ),
    responses(
        (status = 200, description = "A page of events", body = EventList),
        (status = 400, description = "Malformed query string", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad type, user_id, limit or cursor", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn list_events(
    State(state): State<AppState>,
    Org(org): Org,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let page = parse_page(&query, &["type", "user_id"])?;
    let mut errors = Vec::new();
    let event_type = match query.get("type", &mut errors) {
        None | Some("") => None,
        Some(t) => match EventType::parse(t).filter(|t| EventType::SUBSCRIBABLE.contains(t)) {
            Some(t) => Some(t),
            None => {
                errors.push(FieldError::new(
                    "type",
                    "must be user.created, user.updated, user.deleted, endpoint.disabled, \
                     endpoint.enabled or delivery.failed",
                ));
                None
            }
        },
    };
    let user_id = query
        .get("user_id", &mut errors)
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let filter = EventFilter {
        event_type,
        user_id,
        purged_before: None,
    };
    let page = state.service.list_events(&org, filter, page).await?;
    let items: Vec<String> = page.items.into_iter().map(|e| e.payload).collect();
    Ok(json_response(
        StatusCode::OK,
        list_body(&items, page.next_cursor.as_deref()),
    ))
}

/// Get an event
#[utoipa::path(get, path = "/v1/events/{id}", tag = "events",
    params(("id" = String, Path, description = "evt_…", pattern = "^evt_[0-9A-HJKMNP-TV-Z]{26}$")),
    responses(
        (status = 200, description = "The event, byte for byte the webhook body", body = EventSchema),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such event in this organization", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn get_event(
    State(state): State<AppState>,
    Org(org): Org,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.service.get_event(&org, &id).await {
        Ok(event) => Ok(json_response(StatusCode::OK, event.payload)),
        Err(ServiceError::Store(StoreError::NotFound)) => Err(ApiError::not_found("this event")),
        Err(e) => Err(e.into()),
    }
}
