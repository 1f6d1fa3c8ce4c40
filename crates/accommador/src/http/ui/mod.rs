//! The delivery-log UI under `/ui/` (DESIGN §10): server-rendered pages ([`views`]), one
//! stylesheet built into the binary, no script. A client of the service layer like the API.
//!
//! - Sign-in with an organization API key gives a session cookie (`HttpOnly`,
//!   `SameSite=Strict`, `Secure` when the public URL is https or a trusted proxy says the
//!   browser used https). Sessions live in the database (see [`crate::service`]).
//! - Every form carries a CSRF token derived from the session token; forms before a session
//!   (sign-in, a portal link's "Continue") use one derived from a short-lived pre-session
//!   cookie. A POST without the right token is refused (403).
//! - Every page reads through the session's organization: another organization's ID is a 404.
//! - Read-only sessions see no action and the server refuses every action (403); portal
//!   sessions never see an endpoint secret.

mod pages;
pub mod views;

use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::html;

use super::AppState;
use crate::domain::ui::{csrf_matches, csrf_token, new_token, plausible_token};
use crate::service::ServiceError;
use crate::store::StoreError;
use crate::store::ui::SessionRecord;

/// The UI's settings.
#[derive(Debug, Clone)]
pub struct UiSettings {
    pub session_ttl: Duration,
    pub public_url: Option<url::Url>,
    pub trust_proxy: bool,
}

const SESSION_COOKIE: &str = "accommador_session";
/// The pre-session cookie whose derived token protects the sign-in and portal forms.
const FORM_COOKIE: &str = "accommador_form";
const FORM_COOKIE_AGE: u64 = 3600;
const STYLE: &str = include_str!("style.css");
/// No script, no framing, forms only to this server.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(pages::overview))
        .route("/ui/assets/style.css", get(style))
        .route("/ui/sign-in", get(sign_in_page).post(sign_in))
        .route("/ui/sign-out", post(sign_out))
        .route("/ui/portal/{token}", get(portal_page).post(portal_use))
        .route("/ui/deliveries", get(pages::deliveries))
        .route("/ui/deliveries/{id}", get(pages::delivery))
        .route("/ui/deliveries/{id}/retry", post(pages::retry))
        .route(
            "/ui/endpoints",
            get(pages::endpoints).post(pages::endpoint_create),
        )
        .route("/ui/endpoints/new", get(pages::endpoint_new))
        .route(
            "/ui/endpoints/{id}",
            get(pages::endpoint).post(pages::endpoint_update),
        )
        .route("/ui/endpoints/{id}/{action}", post(pages::endpoint_action))
        .route("/ui/events", get(pages::events))
        .route("/ui/users", get(pages::users))
        .route("/ui/users/{id}", get(pages::user))
        .layer(axum::middleware::from_fn(headers))
}

/// A request URI as it may be logged: a portal link's path without its token.
pub fn loggable_uri(uri: &axum::http::Uri) -> std::borrow::Cow<'_, str> {
    match uri.path().strip_prefix("/ui/portal/") {
        Some(_) => "/ui/portal/<token>".into(),
        None => uri.to_string().into(),
    }
}

/// Security headers on every UI response; pages are never cached (they show tenant data).
async fn headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLE,
    )
        .into_response()
}

/// A UI failure, shown as a page.
#[derive(Debug)]
pub struct UiError {
    status: StatusCode,
    message: String,
}

impl UiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> UiError {
        UiError {
            status,
            message: message.into(),
        }
    }

    fn read_only() -> UiError {
        UiError::new(
            StatusCode::FORBIDDEN,
            "This session is read-only: it cannot change anything.",
        )
    }

    fn bad_form() -> UiError {
        UiError::new(
            StatusCode::FORBIDDEN,
            "This form has expired or did not come from this site. Go back, reload the page \
             and try again.",
        )
    }
}

impl From<ServiceError> for UiError {
    fn from(e: ServiceError) -> UiError {
        match e {
            ServiceError::Store(StoreError::NotFound) => UiError::new(
                StatusCode::NOT_FOUND,
                "Not found: nothing with this ID belongs to your organization.",
            ),
            ServiceError::Store(StoreError::UnknownCursor) => UiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "That page cursor is not known here; start from the first page.",
            ),
            ServiceError::Invalid(errors) => UiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.detail))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            ServiceError::Conflict(_, detail) => UiError::new(StatusCode::CONFLICT, detail),
            ServiceError::Store(e) => {
                tracing::error!(error = %e, "a UI page failed");
                UiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong on the server; try again in a moment.",
                )
            }
        }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = views::bare(
            title,
            html! {
                p { (self.message) }
                p { a href="/ui/" { "Back to the overview" } }
            },
        );
        (self.status, body).into_response()
    }
}

/// The value of cookie `name` in the request.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Whether the browser reached us over https (so cookies get `Secure`).
fn secure(ui: &UiSettings, headers: &HeaderMap) -> bool {
    let public = ui
        .public_url
        .as_ref()
        .is_some_and(|u| u.scheme() == "https");
    let proxied = ui.trust_proxy
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    public || proxied
}

/// A `Set-Cookie` for the UI; `max_age` 0 removes the cookie.
fn set_cookie(name: &str, value: &str, max_age: u64, secure: bool) -> (header::HeaderName, String) {
    let secure = if secure { "; Secure" } else { "" };
    (
        header::SET_COOKIE,
        format!("{name}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"),
    )
}

/// A signed-in request: its session, and the CSRF token its forms carry.
#[derive(Debug)]
pub struct Ui {
    token: String,
    pub session: SessionRecord,
    pub csrf: String,
}

impl Ui {
    pub fn org(&self) -> &str {
        &self.session.org
    }

    /// Refuses a POST whose form lacks this session's CSRF token, or any action of a
    /// read-only session.
    pub fn check_action(&self, form: &Form) -> Result<(), UiError> {
        self.check_csrf(form)?;
        if self.session.read_only {
            return Err(UiError::read_only());
        }
        Ok(())
    }

    fn check_csrf(&self, form: &Form) -> Result<(), UiError> {
        match form.get("csrf") {
            Some(t) if csrf_matches(&self.token, t) => Ok(()),
            _ => Err(UiError::bad_form()),
        }
    }
}

/// No session: to the sign-in page.
#[derive(Debug)]
pub enum NoSession {
    SignIn,
    Failed(UiError),
}

impl IntoResponse for NoSession {
    fn into_response(self) -> Response {
        match self {
            NoSession::SignIn => Redirect::to("/ui/sign-in").into_response(),
            NoSession::Failed(e) => e.into_response(),
        }
    }
}

impl FromRequestParts<AppState> for Ui {
    type Rejection = NoSession;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(NoSession::SignIn);
        };
        match state.service.session(&token).await {
            Ok(Some(session)) => Ok(Ui {
                csrf: csrf_token(&token),
                token,
                session,
            }),
            Ok(None) => Err(NoSession::SignIn),
            Err(e) => Err(NoSession::Failed(e.into())),
        }
    }
}

/// A submitted form's fields, in order (a field may repeat, like ticked checkboxes).
#[derive(Debug, Default)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for Form {
    type Rejection = UiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Form(fields) = axum::Form::<Vec<(String, String)>>::from_request(req, state)
            .await
            .map_err(|e| UiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
        Ok(Form(fields))
    }
}

/// The pre-session form token of this browser, made (with its cookie) when it has none.
fn form_token(headers: &HeaderMap) -> (String, Option<String>) {
    match cookie(headers, FORM_COOKIE).filter(|t| plausible_token(t)) {
        Some(t) => (t, None),
        None => {
            let t = new_token();
            (t.clone(), Some(t))
        }
    }
}

fn form_cookie_matches(headers: &HeaderMap, form: &Form) -> bool {
    let cookie = cookie(headers, FORM_COOKIE).filter(|t| plausible_token(t));
    match (cookie, form.get("csrf")) {
        (Some(c), Some(t)) => csrf_matches(&c, t),
        _ => false,
    }
}

/// A page for someone without a session, setting the pre-session cookie when new.
fn with_form_cookie(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    render: impl FnOnce(&str) -> maud::Markup,
) -> Response {
    let (token, fresh) = form_token(headers);
    let body = render(&csrf_token(&token));
    let mut res = (status, body).into_response();
    if let Some(t) = fresh {
        let (name, value) =
            set_cookie(FORM_COOKIE, &t, FORM_COOKIE_AGE, secure(&state.ui, headers));
        res.headers_mut().append(
            name,
            HeaderValue::from_str(&value).expect("cookie is ASCII"),
        );
    }
    res
}

/// Signed in: the session cookie, then the overview.
fn signed_in(state: &AppState, headers: &HeaderMap, token: &str) -> Response {
    let secure = secure(&state.ui, headers);
    let mut res = Redirect::to("/ui/").into_response();
    for (name, value) in [
        set_cookie(
            SESSION_COOKIE,
            token,
            state.ui.session_ttl.as_secs(),
            secure,
        ),
        set_cookie(FORM_COOKIE, "", 0, secure),
    ] {
        res.headers_mut().append(
            name,
            HeaderValue::from_str(&value).expect("cookie is ASCII"),
        );
    }
    res
}

async fn sign_in_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(t) = cookie(&headers, SESSION_COOKIE)
        && let Ok(Some(_)) = state.service.session(&t).await
    {
        return Redirect::to("/ui/").into_response();
    }
    with_form_cookie(&state, &headers, StatusCode::OK, |csrf| {
        views::sign_in(csrf, None)
    })
}

async fn sign_in(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    form: Form,
) -> Response {
    if !form_cookie_matches(&headers, &form) {
        return with_form_cookie(&state, &headers, StatusCode::FORBIDDEN, |csrf| {
            views::sign_in(csrf, Some("The form expired; please sign in again."))
        });
    }
    let key = form.get("api_key").unwrap_or_default().trim();
    // Failed sign-ins count against the client's address like failed API authentications.
    let throttle = state.limits.auth();
    let digest = crate::domain::org::hash_key(key);
    let Ok(pending) = throttle.admit(peer, &digest).await else {
        return with_form_cookie(&state, &headers, StatusCode::TOO_MANY_REQUESTS, |csrf| {
            views::sign_in(
                csrf,
                Some("Too many failed sign-ins from your address: wait a few seconds."),
            )
        });
    };
    match state.service.sign_in(key, state.ui.session_ttl).await {
        Ok(Some(signed)) => {
            throttle.succeeded(pending, digest, &signed.session.org);
            signed_in(&state, &headers, &signed.token)
        }
        Ok(None) => {
            throttle.failed(pending, &digest);
            with_form_cookie(&state, &headers, StatusCode::UNAUTHORIZED, |csrf| {
                views::sign_in(
                    csrf,
                    Some("That API key is not valid (or has been revoked)."),
                )
            })
        }
        Err(e) => UiError::from(e).into_response(),
    }
}

/// The client's address, when the server knows it (the proxy's word for it with
/// `ACCOMMADOR_TRUST_PROXY`).
#[derive(Debug)]
struct Peer(Option<std::net::IpAddr>);

impl FromRequestParts<AppState> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(crate::http::client_addr::client_addr(
            parts,
            state.ui.trust_proxy,
        )))
    }
}

async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    ui: Ui,
    form: Form,
) -> Result<Response, UiError> {
    ui.check_csrf(&form)?;
    state.service.sign_out(&ui.token).await?;
    let mut res = Redirect::to("/ui/sign-in").into_response();
    let (name, value) = set_cookie(SESSION_COOKIE, "", 0, secure(&state.ui, &headers));
    res.headers_mut().append(
        name,
        HeaderValue::from_str(&value).expect("cookie is ASCII"),
    );
    Ok(res)
}

/// A portal link opened: "Continue" while it can be used; opening it uses nothing.
async fn portal_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Path(token): axum::extract::Path<String>,
) -> Result<Response, UiError> {
    if !state.service.portal_link_usable(&token).await? {
        return Ok((StatusCode::GONE, views::portal_refused()).into_response());
    }
    Ok(with_form_cookie(&state, &headers, StatusCode::OK, |csrf| {
        views::portal_continue(&token, csrf)
    }))
}

/// "Continue": uses the link (once) and signs in.
async fn portal_use(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Path(token): axum::extract::Path<String>,
    form: Form,
) -> Result<Response, UiError> {
    if !form_cookie_matches(&headers, &form) {
        return Err(UiError::bad_form());
    }
    match state
        .service
        .use_portal_link(&token, state.ui.session_ttl)
        .await?
    {
        Some(signed) => Ok(signed_in(&state, &headers, &signed.token)),
        None => Ok((StatusCode::GONE, views::portal_refused()).into_response()),
    }
}
