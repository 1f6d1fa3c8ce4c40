//! The OpenAPI document: generated from the handlers' `#[utoipa::path]` annotations and the
//! schema types below, which describe the JSON the handlers read and write. Served at
//! `/openapi.json`, with an offline docs page at `/docs`.

use serde_json::{Map, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// An RFC 9457 problem.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct Problem {
    /// A URI naming the kind of problem, e.g. `urn:accommador:problem:validation`.
    #[schema(rename = "type")]
    r#type: String,
    title: String,
    status: u16,
    detail: String,
    /// On 422 only: one entry per invalid field.
    errors: Option<Vec<FieldErrorSchema>>,
}

#[derive(Debug, ToSchema)]
#[schema(as = FieldError)]
#[allow(dead_code)]
pub struct FieldErrorSchema {
    /// The field, query parameter or header at fault.
    field: String,
    detail: String,
}

/// A user.
#[derive(Debug, ToSchema)]
#[schema(as = User)]
#[allow(dead_code)]
pub struct UserSchema {
    /// `usr_…`
    id: String,
    email: String,
    name: Option<String>,
    #[schema(value_type = Object)]
    attributes: Map<String, Value>,
    /// 1 at creation, +1 with every change (deletion included).
    version: u64,
    /// RFC 3339 UTC with milliseconds.
    created_at: String,
    updated_at: String,
    /// Only on the user inside a `user.deleted` event.
    deleted_at: Option<String>,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct CreateUserRequest {
    /// Unique per organization among live users, compared case-insensitively.
    email: String,
    name: Option<String>,
    /// A JSON object of at most 16 KiB.
    #[schema(value_type = Option<Object>)]
    attributes: Option<Map<String, Value>>,
}

/// Any subset of the fields; `attributes` replaces the whole object.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct UpdateUserRequest {
    #[schema(nullable = false)]
    email: Option<String>,
    name: Option<String>,
    #[schema(value_type = Option<Object>)]
    attributes: Option<Map<String, Value>>,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct UserList {
    data: Vec<UserSchema>,
    /// Pass as `after` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// `data` of a `user.*` event.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct UserEventDataSchema {
    /// The user after the change; on `user.deleted` its last state with `deleted_at`.
    user: UserSchema,
    /// On `user.updated` only: previous values of the top-level fields that changed.
    #[schema(value_type = Option<Object>)]
    previous_attributes: Option<Map<String, Value>>,
}

/// An event: byte for byte the body of its webhook.
#[derive(Debug, ToSchema)]
#[schema(as = Event)]
#[allow(dead_code)]
pub struct EventSchema {
    /// `evt_…`, also the `webhook-id` header.
    id: String,
    /// `user.created`, `user.updated` or `user.deleted`.
    #[schema(rename = "type")]
    r#type: String,
    /// When the change committed (RFC 3339 UTC, milliseconds).
    timestamp: String,
    data: UserEventDataSchema,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct EventList {
    data: Vec<EventSchema>,
    next_cursor: Option<String>,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct CreateOrganizationRequest {
    name: String,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct OrganizationCreated {
    /// `org_…`
    id: String,
    name: String,
    /// Shown only in this response; stored as a SHA-256 hash.
    api_key: String,
}

/// A webhook endpoint.
#[derive(Debug, ToSchema)]
#[schema(as = Endpoint)]
#[allow(dead_code)]
pub struct EndpointSchema {
    /// `ep_…`
    id: String,
    url: String,
    /// The user event types it receives.
    event_types: Vec<String>,
    description: String,
    /// `enabled` or `disabled`.
    status: String,
    /// Why it was disabled; null while enabled.
    disabled_reason: Option<String>,
    created_at: String,
    updated_at: String,
}

/// A new endpoint with its signing secret (shown here, by rotate, and at `/secret` only).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct EndpointCreated {
    id: String,
    url: String,
    event_types: Vec<String>,
    description: String,
    status: String,
    disabled_reason: Option<String>,
    created_at: String,
    updated_at: String,
    /// `whsec_…`: base64 of 32 random bytes. Verify deliveries with it.
    secret: String,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct CreateEndpointRequest {
    /// http(s) URL with a host.
    url: String,
    /// Omit for every user event.
    event_types: Option<Vec<String>>,
    description: Option<String>,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct UpdateEndpointRequest {
    url: Option<String>,
    event_types: Option<Vec<String>>,
    description: Option<String>,
    /// `enabled` or `disabled`.
    status: Option<String>,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct EndpointList {
    data: Vec<EndpointSchema>,
    next_cursor: Option<String>,
}

#[derive(Debug, ToSchema)]
#[schema(as = EndpointSecret)]
#[allow(dead_code)]
pub struct SecretSchema {
    /// `whsec_…`: base64 of 32 random bytes.
    secret: String,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct RecoverRequest {
    /// RFC 3339: recover from here.
    since: String,
    /// RFC 3339: up to here (exclusive); default now.
    until: Option<String>,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct RecoverResult {
    /// Failed deliveries queued again.
    requeued: u64,
    /// Deliveries created for events the endpoint never got.
    created: u64,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct TestSent {
    /// The `webhook.test` event (`webhook-id` of the request).
    event_id: String,
    delivery_id: String,
}

/// One event's delivery to one endpoint.
#[derive(Debug, ToSchema)]
#[schema(as = Delivery)]
#[allow(dead_code)]
pub struct DeliverySchema {
    /// `dlv_…`
    id: String,
    event_id: String,
    event_type: String,
    endpoint_id: String,
    /// `pending`, `succeeded` or `failed`.
    status: String,
    attempt_count: u32,
    /// When the next attempt is due, while pending.
    next_attempt_at: Option<String>,
    last_status_code: Option<u16>,
    created_at: String,
    updated_at: String,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct DeliveryList {
    data: Vec<DeliverySchema>,
    next_cursor: Option<String>,
}

/// One attempt of the delivery log.
#[derive(Debug, ToSchema)]
#[schema(as = Attempt)]
#[allow(dead_code)]
pub struct AttemptSchema {
    /// 1, 2, … in the order made.
    number: u32,
    /// `scheduled` or `manual`.
    trigger: String,
    started_at: String,
    duration_ms: u64,
    status_code: Option<u16>,
    /// `timeout`, `connect`, `dns`, `tls`, `blocked_address`, `http_status` or
    /// `endpoint_disabled`; null on success.
    error_class: Option<String>,
    error: Option<String>,
    /// Response headers, lower-case names.
    #[schema(value_type = Object)]
    response_headers: Map<String, Value>,
    /// The first 4 KiB of the response body.
    response_body: String,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct AttemptList {
    data: Vec<AttemptSchema>,
    /// Always null: a delivery's attempts come in one page.
    next_cursor: Option<String>,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct Health {
    status: String,
}

#[derive(Debug)]
struct Security;

/// Every operation can fail with an opaque 500 problem; say so once for all of them.
fn add_server_errors(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let response = ResponseBuilder::new()
        .description("Internal error (opaque; the cause is logged)")
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build();
    for item in openapi.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            op.responses
                .responses
                .entry("500".to_owned())
                .or_insert_with(|| response.clone().into());
        }
    }
}

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        add_server_errors(openapi);
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Accommador",
        description = "User-lifecycle webhooks: users, their events, and signed deliveries."
    ),
    paths(
        super::orgs::create_organization,
        super::users::create_user,
        super::users::list_users,
        super::users::get_user,
        super::users::update_user,
        super::users::delete_user,
        super::endpoints::create_endpoint,
        super::endpoints::list_endpoints,
        super::endpoints::get_endpoint,
        super::endpoints::update_endpoint,
        super::endpoints::delete_endpoint,
        super::endpoints::get_secret,
        super::endpoints::rotate_secret,
        super::endpoints::recover,
        super::endpoints::send_test,
        super::deliveries::list_deliveries,
        super::deliveries::get_delivery,
        super::deliveries::list_attempts,
        super::deliveries::retry_delivery,
        super::events::list_events,
        super::events::get_event,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
    ),
    modifiers(&Security),
    tags(
        (name = "organizations", description = "Operator routes"),
        (name = "users", description = "Users of an organization; every change writes an event"),
        (name = "endpoints", description = "Webhook endpoints and their signing secrets"),
        (name = "events", description = "The event outbox, in commit order"),
        (name = "deliveries", description = "The delivery log and manual retries"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;
