//! The one error type of the HTTP API and the one place it becomes a response: RFC 9457
//! `application/problem+json` with `type`, `title`, `status`, `detail` and, for validation
//! failures, `errors: [{field, detail}]`. Server errors are logged once with their cause chain
//! and answered opaquely.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::limits::{Limited, Refusal};
use crate::domain::FieldError;
use crate::service::ServiceError;
use crate::store::StoreError;

pub const PROBLEM_JSON: &str = "application/problem+json";
/// The `Retry-After` of a 503 for a full disk: soon enough to notice space coming back.
const STORAGE_FULL_RETRY_SECS: u64 = 5;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
    errors: Vec<FieldError>,
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// Sent as `Retry-After` (whole seconds).
    retry_after_secs: Option<u64>,
}

/// The JSON body of a problem response.
#[derive(Debug, Serialize)]
pub struct Problem<'a> {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'a str,
    pub status: u16,
    pub detail: &'a str,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    pub errors: &'a [FieldError],
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, title: &'static str, detail: String) -> Self {
        ApiError {
            status,
            kind,
            title,
            detail,
            errors: Vec::new(),
            cause: None,
            retry_after_secs: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("{what} does not exist"),
        )
    }

    pub fn unauthorized(detail: &str) -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail.to_owned(),
        )
    }

    pub fn malformed_json(detail: String) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            detail,
        )
    }

    pub fn bad_request(detail: String) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    pub fn unsupported_media_type() -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "the request body must be JSON, sent with content-type: application/json".into(),
        )
    }

    pub fn payload_too_large() -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            "the request body must be at most 1 MiB".into(),
        )
    }

    /// The client did not send its whole body in time (see [`super::serve`]).
    pub fn request_timeout(detail: String) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request timeout",
            detail,
        )
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "this route does not take that method".into(),
        )
    }

    pub fn validation(errors: Vec<FieldError>) -> ApiError {
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        let mut e = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "Validation failed",
            format!("invalid fields: {}", fields.join(", ")),
        );
        e.errors = errors;
        e
    }

    pub fn conflict(kind: &'static str, detail: String) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, kind, "Conflict", detail)
    }

    /// A 429 from one of the [limits](super::limits), with `Retry-After`.
    pub fn too_many_requests(limited: Limited) -> ApiError {
        let mut e = match limited.refusal {
            Refusal::OrgRate => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                format!(
                    "this organization is over its API rate limit; retry in {} s",
                    limited.retry_after_secs
                ),
            ),
            Refusal::AuthFailures => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "authentication-throttled",
                "Too many failed authentications",
                format!(
                    "too many requests from this address had an invalid API key; retry in {} s",
                    limited.retry_after_secs
                ),
            ),
        };
        e.retry_after_secs = Some(limited.retry_after_secs);
        e
    }

    pub fn unavailable(detail: &str) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail.to_owned(),
        )
    }

    /// The database's disk is full: a 503 the client may retry (nothing was saved), logged
    /// once with its cause so the operator learns of it.
    pub fn storage_full(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage-full",
            "Storage full",
            "the server's database is out of disk space: nothing of this request was saved; \
             retry later"
                .into(),
        );
        e.cause = Some(cause.into());
        e.retry_after_secs = Some(STORAGE_FULL_RETRY_SECS);
        e
    }

    pub fn internal(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
            "the server failed to handle this request; it has been logged".into(),
        );
        e.cause = Some(cause.into());
        e
    }

    /// The body of this problem, as saved for an idempotent replay or sent now.
    pub fn body(&self) -> String {
        serde_json::to_string(&Problem {
            kind: format!("urn:accommador:problem:{}", self.kind),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
            errors: &self.errors,
        })
        .expect("problems serialise")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound => ApiError::not_found("the requested object"),
            StoreError::EmailTaken => ApiError::conflict(
                "email-taken",
                "a user in this organization already has this email".into(),
            ),
            StoreError::IdempotencyInProgress => ApiError::conflict(
                "idempotency-key-in-progress",
                "a request with this Idempotency-Key is still being processed; retry it shortly"
                    .into(),
            ),
            StoreError::IdempotencyMismatch => {
                let mut e = ApiError::validation(vec![FieldError::new(
                    "Idempotency-Key",
                    "was already used with a different request body",
                )]);
                e.kind = "idempotency-key-reused";
                e
            }
            StoreError::UnknownCursor => ApiError::validation(vec![FieldError::new(
                "after",
                "is not a cursor from this list (use next_cursor, or the ID of an item)",
            )]),
            StoreError::EndpointDisabled => ApiError::conflict(
                "endpoint-disabled",
                "the endpoint is disabled; enable it (PATCH status) first".into(),
            ),
            StoreError::AttemptInFlight => ApiError::conflict(
                "attempt-in-flight",
                "an attempt of this delivery is in flight; retry when it has finished".into(),
            ),
            e @ StoreError::StorageFull(_) => ApiError::storage_full(e),
            e @ (StoreError::Database(_) | StoreError::SecretUnreadable { .. }) => {
                ApiError::internal(e)
            }
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        match e {
            ServiceError::Invalid(errors) => ApiError::validation(errors),
            ServiceError::Conflict(kind, detail) => ApiError::conflict(kind, detail),
            ServiceError::Store(e) => e.into(),
        }
    }
}

/// Logs a server error's full cause chain, once.
fn log_server_error(e: &ApiError) {
    let mut chain = String::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = e
        .cause
        .as_deref()
        .map(|c| c as &(dyn std::error::Error + 'static));
    while let Some(err) = next {
        if !chain.is_empty() {
            chain.push_str(": ");
        }
        chain.push_str(&err.to_string());
        next = err.source();
    }
    tracing::error!(status = e.status.as_u16(), error = %chain, "request failed");
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            log_server_error(&self);
        }
        let mut response = (self.status, self.body()).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
