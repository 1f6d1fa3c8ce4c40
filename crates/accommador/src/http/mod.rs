//! The HTTP API: one router per resource, thin handlers (extract, call one service function,
//! map the result), one error type ([`error::ApiError`]) turned into problem+json in one place.
//! [`ui`] is the delivery-log UI, a client of the same service layer.

pub mod api_keys;
pub mod client_addr;
pub mod deliveries;
pub mod endpoints;
pub mod error;
pub mod events;
pub mod extract;
pub mod limits;
pub mod openapi;
pub mod ops;
pub mod orgs;
pub mod portal_links;
pub mod serve;
pub mod ui;
pub mod users;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::{
    SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeadersLayer,
};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::Secret;
use crate::service::Service;

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    pub service: Arc<Service>,
    pub admin_token: Option<Secret>,
    pub metrics: PrometheusHandle,
    /// The per-organization rate limit and the failed-authentication throttle.
    pub limits: Arc<limits::Limits>,
    /// The delivery-log UI's settings (session length, public address, proxy trust).
    pub ui: Arc<ui::UiSettings>,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(orgs::router())
        .merge(api_keys::router())
        .merge(users::router())
        .merge(endpoints::router())
        .merge(deliveries::router())
        .merge(events::router())
        .merge(ops::router())
        .merge(portal_links::router())
        .merge(ui::router())
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi::ApiDoc::openapi()))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(axum::middleware::from_fn(extract::screen_target))
        .layer(axum::middleware::from_fn(ops::record))
        .layer(DefaultBodyLimit::max(extract::MAX_BODY_BYTES))
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                error::ApiError::internal("a request handler panicked").into_response()
            },
        ))
        .layer(SetSensitiveResponseHeadersLayer::new([header::SET_COOKIE]))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
        ]))
        .with_state(state)
}

/// The span of one request, as tower-http's default (method, URI, version at DEBUG) but with
/// a portal link's one-time token left out of the URI.
fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %req.method(),
        uri = %ui::loggable_uri(req.uri()),
        version = ?req.version(),
    )
}

pub fn json_response(status: StatusCode, body: String) -> Response {
    let content_type = if status.is_success() {
        "application/json"
    } else {
        error::PROBLEM_JSON
    };
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

/// `?limit=&after=` plus the route's `extra` parameters; anything else is a 422.
pub fn parse_page(
    query: &extract::QueryParams,
    extra: &[&str],
) -> Result<crate::service::PageRequest, error::ApiError> {
    let mut errors = Vec::new();
    let page = crate::service::PageRequest::parse(
        query.get("limit", &mut errors),
        query.get("after", &mut errors),
        &mut errors,
    );
    let known: Vec<&str> = ["limit", "after"].iter().chain(extra).copied().collect();
    query.reject_unknown(&known, &mut errors);
    if errors.is_empty() {
        Ok(page)
    } else {
        Err(error::ApiError::validation(errors))
    }
}

/// A 200 list response; `next_cursor` is the last item's ID when more follow.
pub fn page_response<T>(
    page: crate::store::Page<T>,
    id: impl Fn(&T) -> &str,
    render: impl Fn(T) -> String,
) -> Response {
    let next = if page.has_more {
        page.items.last().map(|item| id(item).to_owned())
    } else {
        None
    };
    let items: Vec<String> = page.items.into_iter().map(render).collect();
    json_response(StatusCode::OK, list_body(&items, next.as_deref()))
}

/// A worker's listener: `/healthz`, `/readyz` and `/metrics` only.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .merge(ops::router())
        .fallback(ops::not_found)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// `{"data": [...], "next_cursor": ...}` around items that are already JSON text, so stored
/// payloads go out byte for byte.
pub fn list_body(items: &[String], next_cursor: Option<&str>) -> String {
    let mut body = String::with_capacity(items.iter().map(String::len).sum::<usize>() + 64);
    body.push_str(r#"{"data":["#);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(item);
    }
    body.push_str(r#"],"next_cursor":"#);
    body.push_str(&serde_json::to_string(&next_cursor).expect("cursor serialises"));
    body.push('}');
    body
}
