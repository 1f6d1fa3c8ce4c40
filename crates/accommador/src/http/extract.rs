//! Extractors whose rejections use our problem format: a JSON object body (415 for another
//! content type, 413 past the size limit, 400 for malformed JSON, 422 for a non-object), the
//! caller's organization from its API key (429 over the limits), and query strings that reject
//! unknown parameters.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::{StatusCode, header, request::Parts};
use serde_json::{Map, Value};

use super::AppState;
use super::error::ApiError;
use crate::domain::FieldError;

/// Largest request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A request body that is a JSON object.
#[derive(Debug)]
pub struct JsonObject(pub Map<String, Value>);

fn is_json(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json);
        if !json {
            return Err(ApiError::unsupported_media_type());
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large()
            } else if let Some(timeout) = super::serve::body_timeout(&rejection) {
                ApiError::request_timeout(timeout.to_string())
            } else {
                ApiError::bad_request(format!("could not read the request body: {rejection}"))
            }
        })?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(JsonObject(map)),
            Ok(_) => Err(ApiError::validation(vec![FieldError::new(
                "body",
                "must be a JSON object",
            )])),
            Err(e) => Err(ApiError::malformed_json(format!(
                "the request body is not valid JSON: {e}"
            ))),
        }
    }
}

/// The organization whose API key authenticated this request, within its rate limit. Failed
/// authentications are throttled per client address (see [`super::limits`]).
#[derive(Debug, Clone)]
pub struct Org(pub String);

/// The key that authenticated the request (set by [`Org`], read after it with
/// `Extension<Caller>`): what a portal link's sessions are tied to.
#[derive(Debug, Clone)]
pub struct Caller(pub crate::store::keys::KeyOwner);

/// The token after `Bearer ` in the `Authorization` header.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl FromRequestParts<AppState> for Org {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(token) = bearer(parts) else {
            return Err(ApiError::unauthorized(
                "send your API key as Authorization: Bearer <key>",
            ));
        };
        let throttle = state.limits.auth();
        let digest = crate::domain::org::hash_key(token);
        // A key that authenticated here before goes even from a throttled address; any other
        // is counted against its address, and refused without a database read while that
        // address is over its failures.
        let peer = super::client_addr::client_addr(parts, state.ui.trust_proxy);
        let pending = throttle
            .admit(peer, &digest)
            .await
            .map_err(ApiError::too_many_requests)?;
        // On an error `pending` is dropped, which gives its slot back.
        let org = match state.service.authenticate_owner(token).await? {
            Some(owner) => {
                throttle.succeeded(pending, digest, &owner.org);
                let org = owner.org.clone();
                parts.extensions.insert(Caller(owner));
                org
            }
            None => {
                throttle.failed(pending, &digest);
                return Err(ApiError::unauthorized("the API key is not valid"));
            }
        };
        state
            .limits
            .check_org(&org)
            .map_err(ApiError::too_many_requests)?;
        Ok(Org(org))
    }
}

/// Most query parameters one request may carry; no route takes more than a handful.
pub const MAX_QUERY_PARAMS: usize = 100;

/// Screens the request target before any route sees it: a path that is not UTF-8 once
/// percent-decoded, or holds U+0000, names no route and no ID (404, where axum's path
/// extractor would answer a plain-text 400, and PostgreSQL a 500), and more than [`MAX_QUERY_PARAMS`] query parameters are refused (422,
/// field `query`) before anything parses them: thousands would only cost time and a long
/// answer.
pub async fn screen_target(req: Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    match percent_encoding::percent_decode_str(req.uri().path()).decode_utf8() {
        Err(_) => {
            return ApiError::not_found("this path, which is not UTF-8 once decoded,")
                .into_response();
        }
        // No ID holds U+0000 (and PostgreSQL text cannot: it would be a 500).
        Ok(path) if path.contains('\0') => {
            return ApiError::not_found("this path, which holds U+0000,").into_response();
        }
        Ok(_) => {}
    }
    let count = req
        .uri()
        .query()
        .map_or(0, |q| q.split('&').filter(|p| !p.is_empty()).count());
    if count > MAX_QUERY_PARAMS {
        return ApiError::validation(vec![FieldError::new(
            "query",
            format!("has {count} parameters; at most {MAX_QUERY_PARAMS} are accepted"),
        )])
        .into_response();
    }
    next.run(req).await
}

/// Query parameters, rejecting names the route does not know (a typo such as `afer=` would
/// otherwise silently return the first page).
#[derive(Debug, Default)]
pub struct QueryParams(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
        // No parameter of ours takes U+0000, and PostgreSQL text cannot hold it.
        let errors: Vec<FieldError> = pairs
            .iter()
            .filter(|(k, v)| k.contains('\0') || v.contains('\0'))
            .map(|(k, _)| FieldError::new(k.replace('\0', "\\0"), "must not contain U+0000"))
            .collect();
        if !errors.is_empty() {
            return Err(ApiError::validation(errors));
        }
        Ok(QueryParams(pairs))
    }
}

impl QueryParams {
    /// The value of `name`; a repeated parameter is an error.
    pub fn get(&self, name: &str, errors: &mut Vec<FieldError>) -> Option<&str> {
        let mut found = self.0.iter().filter(|(k, _)| k == name);
        let first = found.next().map(|(_, v)| v.as_str());
        if found.next().is_some() {
            errors.push(FieldError::new(name, "must be given at most once"));
        }
        first
    }

    /// Reports every parameter not in `known`.
    pub fn reject_unknown(&self, known: &[&str], errors: &mut Vec<FieldError>) {
        for (k, _) in &self.0 {
            if !known.contains(&k.as_str()) && !errors.iter().any(|e| &e.field == k) {
                errors.push(FieldError::new(k.as_str(), "unknown query parameter"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("Application/JSON"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
    }
}
