//! `/v1/users`: create (with `Idempotency-Key`), read, list, patch, delete.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};

use super::error::ApiError;
use super::extract::{JsonObject, Org, QueryParams};
use super::openapi::{
    CreateUserRequest, ErasureAccepted, Problem, UpdateUserRequest, UserList, UserSchema,
};
use super::{AppState, json_response, page_response, parse_page};
use crate::domain::user::UserRecord;
use crate::store::{Idempotent, SavedResponse, StoreError};

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/users", get(list_users).post(create_user))
        .route(
            "/v1/users/{id}",
            get(get_user).patch(update_user).delete(delete_user),
        )
        .route("/v1/users/{id}/erase", post(erase_user))
}

fn user_json(user: &UserRecord) -> String {
    serde_json::to_string(&user.to_wire()).expect("users serialise")
}

/// What an `Idempotency-Key` keeps of a create: the 201 with its user, or a conflict.
fn saved_create(result: &Result<UserRecord, StoreError>) -> Option<SavedResponse> {
    match result {
        Ok(user) => Some(SavedResponse {
            status: 201,
            body: user_json(user),
        }),
        Err(StoreError::EmailTaken) => {
            let problem = ApiError::from(StoreError::EmailTaken);
            Some(SavedResponse {
                status: problem.status().as_u16(),
                body: problem.body(),
            })
        }
        Err(_) => None,
    }
}

/// Create a user
///
/// Writes the user and its `user.created` event in one commit. With an `Idempotency-Key`, a
/// retry with the same JSON within 24 h returns the first response and changes nothing.
#[utoipa::path(post, path = "/v1/users", tag = "users",
    request_body = CreateUserRequest,
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, pattern = "^[!-~]{1,255}$",
        description = "Makes a retry safe: same key + same JSON → the first response. 1–255 visible ASCII characters; the same key with other JSON within 24 h is refused (422)")),
    responses(
        (status = 201, description = "Created (or, for a retried Idempotency-Key, the first response with header `idempotent-replayed: true`; if that user has been erased since, the saved response is erased too: `{\"id\", \"erased\": true}`)", body = super::openapi::CreatedUser,
            headers(("idempotent-replayed" = String, description = "`true` when this is the saved response of an earlier request with the same Idempotency-Key and JSON"))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Email already used by a live user", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, or Idempotency-Key reused with other JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn create_user(
    State(state): State<AppState>,
    Org(org): Org,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::validation(vec![crate::domain::FieldError::new(
                "Idempotency-Key",
                "must be visible ASCII",
            )])
        })?),
    };
    match state
        .service
        .create_user(&org, &body, key, saved_create)
        .await?
    {
        Idempotent::Fresh(user) => Ok(json_response(StatusCode::CREATED, user_json(&user))),
        Idempotent::Refused(saved) => saved_response(saved),
        Idempotent::Replay(saved) => {
            let mut response = saved_response(saved)?;
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(response)
        }
    }
}

fn saved_response(saved: SavedResponse) -> Result<Response, ApiError> {
    let status = StatusCode::from_u16(saved.status).map_err(ApiError::internal)?;
    Ok(json_response(status, saved.body))
}

/// Get a user
#[utoipa::path(get, path = "/v1/users/{id}", tag = "users",
    params(("id" = String, Path, description = "usr_…", pattern = "^usr_[0-9A-HJKMNP-TV-Z]{26}$")),
    responses(
        (status = 200, description = "The user", body = UserSchema),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such live user in this organization", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn get_user(
    State(state): State<AppState>,
    Org(org): Org,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let user = state
        .service
        .get_user(&org, &id)
        .await
        .map_err(not_found_user)?;
    Ok(json_response(StatusCode::OK, user_json(&user)))
}

/// List users
///
/// Live users, oldest first.
#[utoipa::path(get, path = "/v1/users", tag = "users",
    params(
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 500, description = "Page size, 1–500; default 50"),
        ("after" = Option<String>, Query, min_length = 1, pattern = "^usr_[0-9A-HJKMNP-TV-Z]{26}$", description = "`next_cursor` of the previous page (the ID of its last item); a value that names no item of this list is refused (422)"),
    ),
    responses(
        (status = 200, description = "A page of users", body = UserList),
        (status = 400, description = "Malformed query string", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad limit or cursor", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn list_users(
    State(state): State<AppState>,
    Org(org): Org,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let page = parse_page(&query, &[])?;
    let page = state.service.list_users(&org, page).await?;
    Ok(page_response(page, |u| &u.id, |u| user_json(&u)))
}

/// Update a user
///
/// Changes any of `email`, `name`, `attributes` (replaced as a whole). A change makes a new
/// version and one `user.updated` event; a PATCH that changes nothing makes neither.
#[utoipa::path(patch, path = "/v1/users/{id}", tag = "users",
    params(("id" = String, Path, description = "usr_…", pattern = "^usr_[0-9A-HJKMNP-TV-Z]{26}$")),
    request_body = UpdateUserRequest,
    responses(
        (status = 200, description = "The user after the change", body = UserSchema),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such live user in this organization", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Email already used by a live user", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn update_user(
    State(state): State<AppState>,
    Org(org): Org,
    Path(id): Path<String>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let user = state
        .service
        .update_user(&org, &id, &body)
        .await
        .map_err(not_found_user)?;
    Ok(json_response(StatusCode::OK, user_json(&user)))
}

/// Delete a user
///
/// Tombstones the user and writes one `user.deleted` event carrying its last state with
/// `version` + 1 and `deleted_at`. The user then answers 404.
#[utoipa::path(delete, path = "/v1/users/{id}", tag = "users",
    params(("id" = String, Path, description = "usr_…", pattern = "^usr_[0-9A-HJKMNP-TV-Z]{26}$")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such live user in this organization", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn delete_user(
    State(state): State<AppState>,
    Org(org): Org,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .service
        .delete_user(&org, &id)
        .await
        .map_err(not_found_user)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Erase a user
///
/// Removes the user's personal data for good (DESIGN §10). A live user is first deleted as
/// usual, with one `user.deleted` event that is already in erased form. Then the email, name
/// and attributes leave the user's row (which keeps its ID, version and times), every stored
/// event of the user (`data` becomes `{"user": {"id": "usr_…", "erased": true}}`), saved
/// `Idempotency-Key` responses and the response logs of the attempts; pending deliveries of
/// those events end `failed` with `error_class` `erased`. That work runs in the background in
/// small batches: the answer does not wait for it. Erasing an erased user changes nothing.
/// Deleted users are erased automatically `ACCOMMADOR_ERASE_DELETED_AFTER` after deletion.
#[utoipa::path(post, path = "/v1/users/{id}/erase", tag = "users",
    params(("id" = String, Path, description = "usr_… (deleted users too)", pattern = "^usr_[0-9A-HJKMNP-TV-Z]{26}$")),
    responses(
        (status = 202, description = "Erasure accepted; it completes in the background", body = ErasureAccepted),
        (status = 401, description = "Missing or invalid API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user (live or deleted) in this organization", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn erase_user(
    State(state): State<AppState>,
    Org(org): Org,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state
        .service
        .erase_user(&org, &id)
        .await
        .map_err(|e| match e {
            crate::service::ServiceError::Store(StoreError::NotFound) => {
                ApiError::not_found("this user")
            }
            other => other.into(),
        })?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        crate::domain::event::erased_user_body(&id),
    ))
}

fn not_found_user(e: crate::service::ServiceError) -> ApiError {
    match e {
        crate::service::ServiceError::Store(StoreError::NotFound) => {
            ApiError::not_found("this user")
        }
        other => other.into(),
    }
}
