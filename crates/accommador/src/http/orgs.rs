//! `/v1/organizations`: the operator route that creates an organization and its first API key.
//! Guarded by `ACCOMMADOR_ADMIN_TOKEN`; when no token is configured the route answers 404, as
//! if it did not exist.

use axum::extract::{FromRequestParts, State};
use axum::http::{StatusCode, request::Parts};
use axum::response::Response;
use axum::routing::post;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::extract::{JsonObject, bearer};
use super::openapi::{CreateOrganizationRequest, OrganizationCreated, Problem};
use super::{AppState, json_response};
use crate::domain::{FieldError, reject_unknown_fields};

pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route(
        "/v1/organizations",
        post(create_organization).fallback(other_method),
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
    let mut errors = Vec::new();
    reject_unknown_fields(&body, &["name"], &mut errors);
    let name = match body.get("name") {
        Some(serde_json::Value::String(s)) => Some(s.as_str()),
        Some(_) => {
            errors.push(FieldError::new("name", "must be a string"));
            None
        }
        None => {
            errors.push(FieldError::new("name", "is required"));
            None
        }
    };
    let (Some(name), true) = (name, errors.is_empty()) else {
        return Err(ApiError::validation(errors));
    };
    let org = state.service.create_org(name).await?;
    let body = serde_json::json!({"id": org.id, "name": org.name, "api_key": org.api_key});
    Ok(json_response(StatusCode::CREATED, body.to_string()))
}
