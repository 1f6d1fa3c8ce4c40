//! `/v1/organizations`: the operator's routes: create an organization and its first API key,
//! list organizations, delete one (its data is then removed in the background, see
//! [`crate::org_deletion`]) and issue a new key to a locked-out one. Guarded by
//! `ACCOMMADOR_ADMIN_TOKEN`; when no token is configured the routes answer 404, as if they did
//! not exist.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::{StatusCode, request::Parts};
use axum::response::Response;
use axum::routing::{delete, post};
use subtle::ConstantTimeEq;

use super::api_keys::created_key;
use super::error::ApiError;
use super::extract::{JsonObject, QueryParams, bearer};
use super::openapi::{
    ApiKeyCreated, CreateApiKeyRequest, CreateOrganizationRequest, OrganizationCreated,
    OrganizationList, Problem,
};
use super::{AppState, json_response, page_response, parse_page};
use crate::service::name_body;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route(
            "/v1/organizations",
            post(create_organization)
                .get(list_organizations)
                .fallback(other_method),
        )
        .route(
            "/v1/organizations/{id}",
            delete(delete_organization).fallback(other_method),
        )
        .route(
            "/v1/organizations/{id}/api-keys",
            post(create_organization_key).fallback(other_method),
        )
}

/// Another method on the operator route: 405 where the route exists, 404 where it is hidden.
async fn other_method(State(state): State<AppState>) -> ApiError {
    if state.admin_token.is_some() {
        ApiError::method_not_allowed()
    } else {
        ApiError::not_found("this route")
    }
}

/// Proof that the request carries the operator's admin token.
#[derive(Debug)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(expected) = &state.admin_token else {
            return Err(ApiError::not_found("this route"));
        };
        match bearer(parts) {
            Some(token) if bool::from(token.as_bytes().ct_eq(expected.expose().as_bytes())) => {
                Ok(Admin)
            }
            _ => Err(ApiError::unauthorized(
                "this operator route needs Authorization: Bearer <ACCOMMADOR_ADMIN_TOKEN>",
            )),
        }
    }
}

/// Create an organization
///
/// Operator route (admin token). Returns the organization and its first API key; the key is
/// shown only here.
#[utoipa::path(post, path = "/v1/organizations", tag = "organizations",
    request_body = CreateOrganizationRequest,
    responses(
        (status = 201, description = "Created; `api_key` is shown only once", body = OrganizationCreated),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No admin token is configured", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid name", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = [])))]
pub async fn create_organization(
    State(state): State<AppState>,
    _admin: Admin,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let name = name_body(&body)?;
    let org = state.service.create_org(name).await?;
    let body = serde_json::json!({"id": org.id, "name": org.name, "api_key": org.api_key});
    Ok(json_response(StatusCode::CREATED, body.to_string()))
}

/// List organizations
///
/// Operator route (admin token). Live organizations, oldest first; deleted ones are gone from
/// the list as soon as their deletion has answered.
#[utoipa::path(get, path = "/v1/organizations", tag = "organizations",
    params(
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 500, description = "Page size, 1–500; default 50"),
        ("after" = Option<String>, Query, min_length = 1, pattern = "^org_[0-9A-HJKMNP-TV-Z]{26}$", description = "`next_cursor` of the previous page (the ID of its last item); a value that names no organization is refused (422)"),
    ),
    responses(
        (status = 200, description = "A page of organizations", body = OrganizationList),
        (status = 400, description = "Malformed query string", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No admin token is configured", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad limit or cursor", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = [])))]
pub async fn list_organizations(
    State(state): State<AppState>,
    _admin: Admin,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let page = parse_page(&query, &[])?;
    let page = state.service.list_orgs(page).await?;
    Ok(page_response(page, |o| &o.id, |o| o.to_json().to_string()))
}

/// Delete an organization
///
/// Operator route (admin token). Answers 202 once the organization is marked deleted: from then
/// on its API keys answer 401, it is not listed, and its endpoints receive nothing more. All of
/// its data (users, events, endpoints and their secrets, deliveries, attempts, idempotency
/// keys, API keys) is then removed by a background job in batches of at most 1,000 rows, which
/// carries on after a restart.
#[utoipa::path(delete, path = "/v1/organizations/{id}", tag = "organizations",
    params(("id" = String, Path, description = "org_…", pattern = "^org_[0-9A-HJKMNP-TV-Z]{26}$")),
    responses(
        (status = 202, description = "Marked deleted; its data is being removed"),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organization (or it is already deleted), or no admin token is configured", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = [])))]
pub async fn delete_organization(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.service.delete_org(&id).await.map_err(not_found_org)?;
    state.limits.auth().forget_org(&id);
    Ok(StatusCode::ACCEPTED)
}

/// Issue an API key to an organization
///
/// Operator route (admin token), for an organization that has lost its keys. The key
/// (`api_key`) is shown only in this response.
#[utoipa::path(post, path = "/v1/organizations/{id}/api-keys", tag = "organizations",
    params(("id" = String, Path, description = "org_…", pattern = "^org_[0-9A-HJKMNP-TV-Z]{26}$")),
    request_body = CreateApiKeyRequest,
    responses(
        (status = 201, description = "Created; `api_key` is shown only once", body = ApiKeyCreated),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organization (or it is deleted), or no admin token is configured", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid name or unknown fields", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = [])))]
pub async fn create_organization_key(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let name = name_body(&body)?;
    let (record, plain) = state
        .service
        .create_api_key(&id, name)
        .await
        .map_err(not_found_org)?;
    Ok(created_key(&record, &plain))
}

fn not_found_org(e: crate::service::ServiceError) -> ApiError {
    match e {
        crate::service::ServiceError::Store(crate::store::StoreError::NotFound) => {
            ApiError::not_found("this organization")
        }
        e => e.into(),
    }
}
