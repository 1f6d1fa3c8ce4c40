//! `POST /v1/portal-links`: a one-time, expiring link into the delivery-log UI for the
//! caller's organization (DESIGN §10). Its sessions end when the key that made it is revoked.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;

use super::error::ApiError;
use super::extract::{Caller, JsonObject, Org};
use super::openapi::{CreatePortalLinkRequest, PortalLinkCreated, Problem};
use super::{AppState, json_response};

pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/v1/portal-links", post(create_portal_link))
}

/// Create a portal link
///
/// A one-time link into the delivery-log UI for your organization, to hand to a customer or a
/// colleague without an API key. Opening it shows a "Continue" page; continuing uses the link
/// and signs in (a link scanner that only fetches it does not use it up). Portal sessions never
/// show endpoint secrets and cannot make keys or links; read-only ones change nothing.
#[utoipa::path(post, path = "/v1/portal-links", tag = "portal",
    request_body = CreatePortalLinkRequest,
    responses(
        (status = 201, description = "Created; the link works once", body = PortalLinkCreated),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid `read_only` or `expires_in`, or unknown fields", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn create_portal_link(
    State(state): State<AppState>,
    _org: Org,
    Extension(Caller(owner)): Extension<Caller>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let link = state.service.create_portal_link(&owner, &body).await?;
    let path = format!("/ui/portal/{}", link.token);
    let url = match &state.ui.public_url {
        Some(base) => format!("{}{path}", base.as_str().trim_end_matches('/')),
        None => path,
    };
    let body = serde_json::json!({
        "url": url,
        "expires_at": link.expires_at.to_rfc3339(),
        "read_only": link.read_only,
    });
    Ok(json_response(StatusCode::CREATED, body.to_string()))
}
