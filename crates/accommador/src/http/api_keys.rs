//! `/v1/api-keys`: an organization's own API keys. A key is shown once, when it is created;
//! the list shows names and prefixes only. A revoked key answers 401 on this instance as soon
//! as the revocation has answered (and within 5 s on the others); the last live key cannot be
//! revoked.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get};

use super::error::ApiError;
use super::extract::{JsonObject, Org, QueryParams};
use super::openapi::{ApiKeyCreated, ApiKeyList, CreateApiKeyRequest, Problem};
use super::{AppState, json_response, page_response, parse_page};
use crate::service::name_body;
use crate::store::keys::ApiKeyRecord;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/api-keys", get(list_api_keys).post(create_api_key))
        .route("/v1/api-keys/{id}", delete(revoke_api_key))
}

/// A created key's answer: the record and the key itself, shown this once.
pub fn created_key(record: &ApiKeyRecord, plain: &str) -> Response {
    let mut body = record.to_json();
    body["api_key"] = plain.into();
    json_response(StatusCode::CREATED, body.to_string())
}

/// Create an API key
///
/// The key (`api_key`) is shown only in this response; it is stored as a SHA-256 hash.
#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys",
    request_body = CreateApiKeyRequest,
    responses(
        (status = 201, description = "Created; `api_key` is shown only once", body = ApiKeyCreated),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid name or unknown fields", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn create_api_key(
    State(state): State<AppState>,
    Org(org): Org,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let name = name_body(&body)?;
    let (record, plain) = state.service.create_api_key(&org, name).await?;
    Ok(created_key(&record, &plain))
}

/// List API keys
///
/// The organization's live keys, oldest first: names and prefixes, never the keys.
#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys",
    params(
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 500, description = "Page size, 1–500; default 50"),
        ("after" = Option<String>, Query, min_length = 1, pattern = "^key_[0-9A-HJKMNP-TV-Z]{26}$", description = "`next_cursor` of the previous page (the ID of its last item); a value that names no key of this organization is refused (422)"),
    ),
    responses(
        (status = 200, description = "A page of keys", body = ApiKeyList),
        (status = 400, description = "Malformed query string", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad limit or cursor", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn list_api_keys(
    State(state): State<AppState>,
    Org(org): Org,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let page = parse_page(&query, &[])?;
    let page = state.service.list_api_keys(&org, page).await?;
    Ok(page_response(page, |k| &k.id, |k| k.to_json().to_string()))
}

/// Revoke an API key
///
/// From the answer on, the key answers 401 on this server, and within 5 s on every server
/// sharing the database. The organization's last live key cannot be revoked (409): create
/// another one first.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api-keys",
    params(("id" = String, Path, description = "key_…", pattern = "^key_[0-9A-HJKMNP-TV-Z]{26}$")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such live key in this organization", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The organization's last live key", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn revoke_api_key(
    State(state): State<AppState>,
    Org(org): Org,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let digest = state.service.revoke_api_key(&org, &id).await?;
    state.limits.auth().forget_key(&digest);
    Ok(StatusCode::NO_CONTENT)
}
