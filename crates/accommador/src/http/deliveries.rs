//! `/v1/deliveries`: the delivery log (one delivery per event × endpoint, each with its
//! attempts) and manual retries.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};

use super::error::ApiError;
use super::extract::{Org, QueryParams};
use super::openapi::DeliveryStatus as DeliveryStatusSchema;
use super::openapi::{AttemptList, DeliveryEventType, DeliveryList, DeliverySchema, Problem};
use super::{AppState, json_response, list_body, parse_page};
use crate::domain::delivery::DeliveryStatus;
use crate::domain::{FieldError, Timestamp};
use crate::service::ServiceError;
use crate::store::{DeliveryFilter, StoreError};
use accommador_webhooks::EventType;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/deliveries", get(list_deliveries))
        .route("/v1/deliveries/{id}", get(get_delivery))
        .route("/v1/deliveries/{id}/attempts", get(list_attempts))
        .route("/v1/deliveries/{id}/retry", post(retry_delivery))
}

fn not_found_delivery(e: ServiceError) -> ApiError {
    match e {
        ServiceError::Store(StoreError::NotFound) => ApiError::not_found("this delivery"),
        other => other.into(),
    }
}

/// The filter parameters of a deliveries list.
pub(crate) const FILTERS: [&str; 7] = [
    "endpoint_id",
    "event_id",
    "user_id",
    "event_type",
    "status",
    "since",
    "until",
];

fn parse_filter(query: &QueryParams) -> Result<DeliveryFilter, ApiError> {
    delivery_filter(query).map_err(ApiError::validation)
}

/// The filters of a deliveries list (shared with the UI's list); empty values mean no filter.
pub(crate) fn delivery_filter(query: &QueryParams) -> Result<DeliveryFilter, Vec<FieldError>> {
    let mut errors = Vec::new();
    let text = |name: &str, errors: &mut Vec<FieldError>| {
        query
            .get(name, errors)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let mut filter = DeliveryFilter {
        endpoint_id: text("endpoint_id", &mut errors),
        event_id: text("event_id", &mut errors),
        user_id: text("user_id", &mut errors),
        event_type: text("event_type", &mut errors),
        ..DeliveryFilter::default()
    };
    if let Some(t) = &filter.event_type
        && EventType::parse(t).is_none()
    {
        errors.push(FieldError::new(
            "event_type",
            "must be user.created, user.updated, user.deleted, endpoint.disabled, \
             endpoint.enabled, delivery.failed or webhook.test",
        ));
    }
    if let Some(s) = text("status", &mut errors) {
        filter.status = DeliveryStatus::parse(&s);
        if filter.status.is_none() {
            errors.push(FieldError::new(
                "status",
                "must be pending, succeeded or failed",
            ));
        }
    }
    for (name, slot) in [("since", &mut filter.since), ("until", &mut filter.until)] {
        if let Some(v) = text(name, &mut errors) {
            *slot = Timestamp::parse_rfc3339(&v);
            if slot.is_none() {
                errors.push(FieldError::new(name, "must be an RFC 3339 date-time"));
            }
        }
    }
    if errors.is_empty() {
        Ok(filter)
    } else {
        Err(errors)
    }
}

/// List deliveries
///
/// Newest first. Filters combine; `since`/`until` bound the delivery's creation time.
///
/// One request reads at most 1,000 deliveries, through an index chosen by its filters
/// (`event_id`, else `user_id`, else `endpoint_id`); when the other filters leave the page
/// short by then, it comes back short, even empty, with a `next_cursor` that continues from
/// there. The list has ended only when `next_cursor` is null.
#[utoipa::path(get, path = "/v1/deliveries", tag = "deliveries",
    params(
        ("endpoint_id" = Option<String>, Query, pattern = "^[^\\u0000]*$", description = "Only this endpoint's deliveries (`ep_…`; any other value matches none); empty: every endpoint",
            extensions(("x-allow-empty-value" = json!(true)))),
        ("event_id" = Option<String>, Query, pattern = "^[^\\u0000]*$", description = "Only this event's deliveries (`evt_…`; any other value matches none); empty: every event",
            extensions(("x-allow-empty-value" = json!(true)))),
        ("user_id" = Option<String>, Query, pattern = "^usr_[0-9A-HJKMNP-TV-Z]{26}$", description = "Only deliveries of events about this user (`usr_…`; deleted users included); a value that names no user of this organization is refused (422); empty: every user",
            extensions(("x-allow-empty-value" = json!(true)))),
        ("event_type" = Option<DeliveryEventType>, Query, description = "Only deliveries of this event type; empty: every type",
            extensions(("x-allow-empty-value" = json!(true)))),
        ("status" = Option<DeliveryStatusSchema>, Query, description = "Only deliveries in this state; empty: every state",
            extensions(("x-allow-empty-value" = json!(true)))),
        ("since" = Option<String>, Query, format = DateTime, description = "RFC 3339 date-time (any offset; any one ASCII character is accepted in place of `T`): created at or after; empty: no bound",
            extensions(("x-allow-empty-value" = json!(true)))),
        ("until" = Option<String>, Query, format = DateTime, description = "RFC 3339 date-time (any offset; any one ASCII character is accepted in place of `T`): created before; empty: no bound",
            extensions(("x-allow-empty-value" = json!(true)))),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 500, description = "Page size, 1–500; default 50"),
        ("after" = Option<String>, Query, min_length = 1, pattern = "^dlv_[0-9A-HJKMNP-TV-Z]{26}$", description = "`next_cursor` of the previous page (the ID of its last item, or of the last delivery a short page read); a value that names no delivery of this organization is refused (422)"),
    ),
    responses(
        (status = 200, description = "A page of deliveries", body = DeliveryList),
        (status = 400, description = "Malformed query string", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad filter, limit or cursor", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    Org(org): Org,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let page = parse_page(&query, &FILTERS)?;
    let filter = parse_filter(&query)?;
    let page = state.service.list_deliveries(&org, filter, page).await?;
    let items: Vec<String> = page.items.iter().map(|d| d.to_json().to_string()).collect();
    Ok(json_response(
        StatusCode::OK,
        list_body(&items, page.next_cursor.as_deref()),
    ))
}

/// Get a delivery
#[utoipa::path(get, path = "/v1/deliveries/{id}", tag = "deliveries",
    params(("id" = String, Path, description = "dlv_…", pattern = "^dlv_[0-9A-HJKMNP-TV-Z]{26}$")),
    responses(
        (status = 200, description = "The delivery", body = DeliverySchema),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such delivery in this organization", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn get_delivery(
    State(state): State<AppState>,
    Org(org): Org,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let d = state
        .service
        .get_delivery(&org, &id)
        .await
        .map_err(not_found_delivery)?;
    Ok(json_response(StatusCode::OK, d.to_json().to_string()))
}

/// List a delivery's attempts
///
/// The delivery log, oldest attempt first: status code or error class, timings, response
/// headers and the first 4 KiB of the response body.
#[utoipa::path(get, path = "/v1/deliveries/{id}/attempts", tag = "deliveries",
    params(("id" = String, Path, description = "dlv_…", pattern = "^dlv_[0-9A-HJKMNP-TV-Z]{26}$")),
    responses(
        (status = 200, description = "Every attempt of the delivery", body = AttemptList),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such delivery in this organization", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn list_attempts(
    State(state): State<AppState>,
    Org(org): Org,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let attempts = state
        .service
        .list_attempts(&org, &id)
        .await
        .map_err(not_found_delivery)?;
    let items: Vec<String> = attempts.iter().map(|a| a.to_json().to_string()).collect();
    Ok(json_response(StatusCode::OK, list_body(&items, None)))
}

/// Retry a delivery
///
/// One manual attempt as soon as possible, through the same queue. A failed manual attempt is
/// not retried (a schedule it interrupted resumes).
#[utoipa::path(post, path = "/v1/deliveries/{id}/retry", tag = "deliveries",
    params(("id" = String, Path, description = "dlv_…", pattern = "^dlv_[0-9A-HJKMNP-TV-Z]{26}$")),
    responses(
        (status = 202, description = "Queued; the delivery as it is now", body = DeliverySchema),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such delivery in this organization", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An attempt is in flight, or the endpoint is disabled", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn retry_delivery(
    State(state): State<AppState>,
    Org(org): Org,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let d = state
        .service
        .retry_delivery(&org, &id)
        .await
        .map_err(not_found_delivery)?;
    Ok(json_response(StatusCode::ACCEPTED, d.to_json().to_string()))
}
