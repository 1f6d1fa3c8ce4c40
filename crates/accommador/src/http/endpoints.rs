//! `/v1/endpoints`: webhook endpoints, their event-type filters, status and signing secrets.
//! The secret appears only in the create and rotate responses and at `/secret`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::Value;

use super::error::ApiError;
use super::extract::{JsonObject, Org, QueryParams};
use super::openapi::{
    CreateEndpointRequest, EndpointCreated, EndpointList, EndpointSchema, Problem, SecretSchema,
    UpdateEndpointRequest,
};
use super::openapi::{RecoverRequest, RecoverResult, TestSent};
use super::{AppState, json_response, page_response, parse_page};
use crate::service::ServiceError;
use crate::store::StoreError;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/endpoints", get(list_endpoints).post(create_endpoint))
        .route(
            "/v1/endpoints/{id}",
            get(get_endpoint)
                .patch(update_endpoint)
                .delete(delete_endpoint),
        )
        .route("/v1/endpoints/{id}/secret", get(get_secret))
        .route("/v1/endpoints/{id}/secret/rotate", post(rotate_secret))
        .route("/v1/endpoints/{id}/recover", post(recover))
        .route("/v1/endpoints/{id}/test", post(send_test))
}

fn not_found_endpoint(e: ServiceError) -> ApiError {
    match e {
        ServiceError::Store(StoreError::NotFound) => ApiError::not_found("this endpoint"),
        other => other.into(),
    }
}

fn secret_body(secret: &str) -> String {
    serde_json::json!({ "secret": secret }).to_string()
}

/// Create an endpoint
///
/// Returns the endpoint with its signing secret (`whsec_…`). Without `event_types` it receives
/// every user event; the operational events (`endpoint.disabled`, `endpoint.enabled`,
/// `delivery.failed`) only when listed, and never one about itself.
#[utoipa::path(post, path = "/v1/endpoints", tag = "endpoints",
    request_body = CreateEndpointRequest,
    responses(
        (status = 201, description = "Created, with its secret", body = EndpointCreated),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid URL or event types", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn create_endpoint(
    State(state): State<AppState>,
    Org(org): Org,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let (endpoint, secret) = state.service.create_endpoint(&org, &body).await?;
    let mut json = endpoint.to_json(state.service.endpoint_concurrency());
    json["secret"] = Value::String(secret);
    Ok(json_response(StatusCode::CREATED, json.to_string()))
}

/// Get an endpoint
#[utoipa::path(get, path = "/v1/endpoints/{id}", tag = "endpoints",
    params(("id" = String, Path, description = "ep_…", pattern = "^ep_[0-9A-HJKMNP-TV-Z]{26}$")),
    responses(
        (status = 200, description = "The endpoint", body = EndpointSchema),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint in this organization", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn get_endpoint(
    State(state): State<AppState>,
    Org(org): Org,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let e = state
        .service
        .get_endpoint(&org, &id)
        .await
        .map_err(not_found_endpoint)?;
    Ok(json_response(
        StatusCode::OK,
        e.to_json(state.service.endpoint_concurrency()).to_string(),
    ))
}

/// List endpoints
///
/// Oldest first.
#[utoipa::path(get, path = "/v1/endpoints", tag = "endpoints",
    params(
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 500, description = "Page size, 1–500; default 50"),
        ("after" = Option<String>, Query, min_length = 1, pattern = "^ep_[0-9A-HJKMNP-TV-Z]{26}$", description = "`next_cursor` of the previous page (the ID of its last item); a value that names no item of this list is refused (422)"),
    ),
    responses(
        (status = 200, description = "A page of endpoints", body = EndpointList),
        (status = 400, description = "Malformed query string", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad limit or cursor", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn list_endpoints(
    State(state): State<AppState>,
    Org(org): Org,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let page = parse_page(&query, &[])?;
    let page = state.service.list_endpoints(&org, page).await?;
    let bound = state.service.endpoint_concurrency();
    Ok(page_response(
        page,
        |e| &e.id,
        |e| e.to_json(bound).to_string(),
    ))
}

/// Update an endpoint
///
/// Any of `url`, `event_types`, `description`, `status`. Setting `status` to `enabled` clears
/// `disabled_reason`.
#[utoipa::path(patch, path = "/v1/endpoints/{id}", tag = "endpoints",
    params(("id" = String, Path, description = "ep_…", pattern = "^ep_[0-9A-HJKMNP-TV-Z]{26}$")),
    request_body = UpdateEndpointRequest,
    responses(
        (status = 200, description = "The endpoint after the change", body = EndpointSchema),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint in this organization", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn update_endpoint(
    State(state): State<AppState>,
    Org(org): Org,
    Path(id): Path<String>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let e = state
        .service
        .update_endpoint(&org, &id, &body)
        .await
        .map_err(not_found_endpoint)?;
    Ok(json_response(
        StatusCode::OK,
        e.to_json(state.service.endpoint_concurrency()).to_string(),
    ))
}

/// Delete an endpoint
#[utoipa::path(delete, path = "/v1/endpoints/{id}", tag = "endpoints",
    params(("id" = String, Path, description = "ep_…", pattern = "^ep_[0-9A-HJKMNP-TV-Z]{26}$")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint in this organization", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn delete_endpoint(
    State(state): State<AppState>,
    Org(org): Org,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .service
        .delete_endpoint(&org, &id)
        .await
        .map_err(not_found_endpoint)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Get an endpoint's signing secret
#[utoipa::path(get, path = "/v1/endpoints/{id}/secret", tag = "endpoints",
    params(("id" = String, Path, description = "ep_…", pattern = "^ep_[0-9A-HJKMNP-TV-Z]{26}$")),
    responses(
        (status = 200, description = "The current secret", body = SecretSchema),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint in this organization", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn get_secret(
    State(state): State<AppState>,
    Org(org): Org,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let secret = state
        .service
        .endpoint_secret(&org, &id)
        .await
        .map_err(not_found_endpoint)?;
    Ok(json_response(StatusCode::OK, secret_body(&secret)))
}

/// Rotate an endpoint's signing secret
///
/// The previous secret keeps signing beside the new one for 24 h (webhooks carry both
/// signatures); rotating again ends the older one at once.
#[utoipa::path(post, path = "/v1/endpoints/{id}/secret/rotate", tag = "endpoints",
    params(("id" = String, Path, description = "ep_…", pattern = "^ep_[0-9A-HJKMNP-TV-Z]{26}$")),
    responses(
        (status = 200, description = "The new current secret", body = SecretSchema),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint in this organization", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    Org(org): Org,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let secret = state
        .service
        .rotate_endpoint_secret(&org, &id)
        .await
        .map_err(not_found_endpoint)?;
    Ok(json_response(StatusCode::OK, secret_body(&secret)))
}

/// Recover an endpoint's deliveries
///
/// Re-queues this endpoint's failed deliveries of events that occurred in `[since, until)`,
/// and creates the deliveries it never got for events of that window (for example while it
/// was disabled). The work is done in batches of at most 1,000 deliveries; the counts in the
/// answer are exact.
#[utoipa::path(post, path = "/v1/endpoints/{id}/recover", tag = "endpoints",
    params(("id" = String, Path, description = "ep_…", pattern = "^ep_[0-9A-HJKMNP-TV-Z]{26}$")),
    request_body = RecoverRequest,
    responses(
        (status = 202, description = "Queued", body = RecoverResult),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint in this organization", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The endpoint is disabled", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad since or until", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn recover(
    State(state): State<AppState>,
    Org(org): Org,
    Path(id): Path<String>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let (requeued, created) = state
        .service
        .recover(&org, &id, &body)
        .await
        .map_err(not_found_endpoint)?;
    let body = serde_json::json!({ "requeued": requeued, "created": created });
    Ok(json_response(StatusCode::ACCEPTED, body.to_string()))
}

/// Send a test event
///
/// Sends a `webhook.test` event (`data`: `{"endpoint_id"}`) to this endpoint only, ignoring its
/// filter. It is not listed in `/v1/events`.
#[utoipa::path(post, path = "/v1/endpoints/{id}/test", tag = "endpoints",
    params(("id" = String, Path, description = "ep_…", pattern = "^ep_[0-9A-HJKMNP-TV-Z]{26}$")),
    responses(
        (status = 202, description = "Queued", body = TestSent),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint in this organization", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The endpoint is disabled", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn send_test(
    State(state): State<AppState>,
    Org(org): Org,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (event_id, delivery_id) = state
        .service
        .send_test(&org, &id)
        .await
        .map_err(not_found_endpoint)?;
    let body = serde_json::json!({ "event_id": event_id, "delivery_id": delivery_id });
    Ok(json_response(StatusCode::ACCEPTED, body.to_string()))
}
