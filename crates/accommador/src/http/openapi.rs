//! The OpenAPI document: generated from the handlers' `#[utoipa::path]` annotations and the
//! schema types below, which describe the JSON the handlers read and write. Served at
//! `/openapi.json`, with an offline docs page at `/docs`.

use serde_json::{Map, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

// The rules below restate what the validation code enforces (src/domain, src/service.rs,
// src/http): the server is the reference, and `tests/api/openapi_rules.rs` sends requests built
// from this document to check that both still agree.

/// The extension a query parameter's annotation carries (spelled out there: the macro takes a
/// literal) when an empty value (`?name=`) is accepted and means "absent"; [`Security`] renders
/// it as OpenAPI's `allowEmptyValue: true`.
pub const ALLOW_EMPTY_VALUE: &str = "x-allow-empty-value";

/// An event type: what endpoints subscribe to and `/v1/events` lists. The `user.*` types are
/// the user lifecycle (the default subscription); `endpoint.disabled`, `endpoint.enabled` and
/// `delivery.failed` are operational: an endpoint receives them only when its `event_types`
/// lists them, and never one about itself.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub enum EventType {
    #[serde(rename = "user.created")]
    UserCreated,
    #[serde(rename = "user.updated")]
    UserUpdated,
    #[serde(rename = "user.deleted")]
    UserDeleted,
    #[serde(rename = "endpoint.disabled")]
    EndpointDisabled,
    #[serde(rename = "endpoint.enabled")]
    EndpointEnabled,
    #[serde(rename = "delivery.failed")]
    DeliveryFailed,
}

/// Any event type a delivery can carry: the subscribable types and `webhook.test`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub enum DeliveryEventType {
    #[serde(rename = "user.created")]
    UserCreated,
    #[serde(rename = "user.updated")]
    UserUpdated,
    #[serde(rename = "user.deleted")]
    UserDeleted,
    #[serde(rename = "endpoint.disabled")]
    EndpointDisabled,
    #[serde(rename = "endpoint.enabled")]
    EndpointEnabled,
    #[serde(rename = "delivery.failed")]
    DeliveryFailed,
    #[serde(rename = "webhook.test")]
    WebhookTest,
}

#[derive(Debug, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum EndpointStatus {
    Enabled,
    Disabled,
}

/// The order an endpoint receives one user's events in. `none`: as soon as each is due.
/// `per_user`: strictly in commit order per user; a delivery waits while an earlier one of
/// the same user to this endpoint is pending (retries included), other users are not held
/// back, and a delivery that ends (succeeded or failed) releases the next.
#[derive(Debug, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum Ordering {
    None,
    PerUser,
}

#[derive(Debug, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
}

/// What started an attempt: the retry schedule, or `POST /v1/deliveries/{id}/retry`.
#[derive(Debug, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum AttemptTrigger {
    Scheduled,
    Manual,
}

/// Why an attempt failed.
#[derive(Debug, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ErrorClass {
    Timeout,
    Connect,
    Dns,
    Tls,
    BlockedAddress,
    HttpStatus,
    EndpointDisabled,
    /// The event's user was erased while the delivery was pending.
    Erased,
}

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
    #[schema(pattern = "^usr_[0-9A-HJKMNP-TV-Z]{26}$")]
    id: String,
    email: String,
    name: Option<String>,
    #[schema(value_type = Object)]
    attributes: Map<String, Value>,
    /// 1 at creation, +1 with every change (deletion included).
    #[schema(minimum = 1)]
    version: u64,
    /// RFC 3339 UTC with milliseconds.
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    /// Only on the user inside a `user.deleted` event.
    #[schema(format = DateTime)]
    deleted_at: Option<String>,
}

/// The answer to an erasure: the user's ID, nothing else of it.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ErasureAccepted {
    #[schema(pattern = "^usr_[0-9A-HJKMNP-TV-Z]{26}$")]
    id: String,
    /// Always `true`.
    erased: bool,
}

/// A new user. Unknown fields are refused (422).
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct CreateUserRequest {
    /// Unique per organization among live users, compared case-insensitively. At most 254
    /// bytes: `local@domain`, a local part of 1–64 bytes without `@`, spaces or control
    /// characters, and a domain of two or more dot-separated labels of letters, digits and
    /// inner hyphens. The pattern spells the ASCII form; non-ASCII letters and digits are
    /// accepted too (the limits count UTF-8 bytes).
    #[schema(
        max_length = 254,
        pattern = "^[!-?A-~]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"
    )]
    email: String,
    /// At most 256 characters, without U+0000; null is the same as absent.
    #[schema(max_length = 256, pattern = "^[^\\u0000]*$")]
    name: Option<String>,
    /// A JSON object of at most 16 KiB as compact JSON; null is the same as absent (`{}`).
    #[schema(value_type = Option<Object>)]
    attributes: Option<Map<String, Value>>,
}

/// Any subset of the fields; `attributes` replaces the whole object. Unknown fields are
/// refused (422).
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct UpdateUserRequest {
    /// As on create: an address of at most 254 bytes, unique among live users.
    #[schema(
        nullable = false,
        max_length = 254,
        pattern = "^[!-?A-~]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"
    )]
    email: Option<String>,
    /// At most 256 characters, without U+0000; null clears the name.
    #[schema(max_length = 256, pattern = "^[^\\u0000]*$")]
    name: Option<String>,
    /// A JSON object of at most 16 KiB as compact JSON; null empties it.
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

/// `data` of a `user.*` event whose user was erased (`POST /v1/users/{id}/erase`, or
/// automatically after `ACCOMMADOR_ERASE_DELETED_AFTER`): the user's ID and nothing else.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ErasedUserEventDataSchema {
    user: ErasedUserSchema,
}

/// An erased user inside an event.
#[derive(Debug, ToSchema)]
#[schema(as = ErasedUser)]
#[allow(dead_code)]
pub struct ErasedUserSchema {
    /// `usr_…`
    #[schema(pattern = "^usr_[0-9A-HJKMNP-TV-Z]{26}$")]
    id: String,
    /// Always `true`.
    erased: bool,
}

/// The answer to `POST /v1/users`: the user, or, for an idempotent replay of a creation whose
/// user has been erased since, only its ID (the saved response was erased with the user).
#[derive(Debug, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum CreatedUser {
    User(UserSchema),
    Erased(ErasedUserSchema),
}

/// `data` of an `endpoint.disabled` or `endpoint.enabled` event.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct EndpointEventDataSchema {
    endpoint: EndpointStateSchema,
}

/// The endpoint an `endpoint.*` event is about, after the change.
#[derive(Debug, ToSchema)]
#[schema(as = EndpointState)]
#[allow(dead_code)]
pub struct EndpointStateSchema {
    /// `ep_…`
    #[schema(pattern = "^ep_[0-9A-HJKMNP-TV-Z]{26}$")]
    id: String,
    url: String,
    status: EndpointStatus,
    /// Why it was disabled (through the API, `410 Gone`, or failing continuously); null on
    /// `endpoint.enabled`.
    disabled_reason: Option<String>,
}

/// `data` of a `delivery.failed` event: a delivery of a user event that used up its retry
/// schedule (never one of an operational event, nor one failed in bulk because its endpoint
/// was disabled or deleted).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct DeliveryEventDataSchema {
    /// As `GET /v1/deliveries/{id}` showed it when it ended.
    delivery: DeliverySchema,
}

/// `data`, by the event's `type`.
#[derive(Debug, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum EventData {
    /// `user.created`, `user.updated`, `user.deleted`.
    User(UserEventDataSchema),
    /// A `user.*` event of an erased user.
    ErasedUser(ErasedUserEventDataSchema),
    /// `endpoint.disabled`, `endpoint.enabled`.
    Endpoint(EndpointEventDataSchema),
    /// `delivery.failed`.
    Delivery(DeliveryEventDataSchema),
}

/// An event: byte for byte the body of its webhook.
#[derive(Debug, ToSchema)]
#[schema(as = Event)]
#[allow(dead_code)]
pub struct EventSchema {
    /// `evt_…`, also the `webhook-id` header.
    #[schema(pattern = "^evt_[0-9A-HJKMNP-TV-Z]{26}$")]
    id: String,
    #[schema(rename = "type")]
    r#type: EventType,
    /// When the change committed (RFC 3339 UTC, milliseconds).
    #[schema(format = DateTime)]
    timestamp: String,
    data: EventData,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct EventList {
    data: Vec<EventSchema>,
    next_cursor: Option<String>,
}

/// Unknown fields are refused (422).
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct CreateOrganizationRequest {
    /// 1–200 characters once surrounding whitespace is trimmed (the trimmed name is stored),
    /// without U+0000.
    #[schema(
        pattern = "^[\\t-\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]*[^\\u0000\\t-\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000](?:[^\\u0000]{0,198}[^\\u0000\\t-\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000])?[\\t-\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]*$"
    )]
    name: String,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct OrganizationCreated {
    /// `org_…`
    #[schema(pattern = "^org_[0-9A-HJKMNP-TV-Z]{26}$")]
    id: String,
    name: String,
    /// Shown only in this response; stored as a SHA-256 hash.
    api_key: String,
}

/// An organization, as the operator lists it.
#[derive(Debug, ToSchema)]
#[schema(as = Organization)]
#[allow(dead_code)]
pub struct OrganizationSchema {
    /// `org_…`
    #[schema(pattern = "^org_[0-9A-HJKMNP-TV-Z]{26}$")]
    id: String,
    name: String,
    #[schema(format = DateTime)]
    created_at: String,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct OrganizationList {
    data: Vec<OrganizationSchema>,
    next_cursor: Option<String>,
}

/// A new API key. Unknown fields are refused (422).
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct CreateApiKeyRequest {
    /// What the key is for, to tell keys apart: 1–200 characters once surrounding whitespace
    /// is trimmed (the trimmed name is stored), without U+0000.
    #[schema(
        pattern = "^[\\t-\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]*[^\\u0000\\t-\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000](?:[^\\u0000]{0,198}[^\\u0000\\t-\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000])?[\\t-\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]*$"
    )]
    name: String,
}

/// An API key as listed: never the key itself.
#[derive(Debug, ToSchema)]
#[schema(as = ApiKey)]
#[allow(dead_code)]
pub struct ApiKeySchema {
    /// `key_…`
    #[schema(pattern = "^key_[0-9A-HJKMNP-TV-Z]{26}$")]
    id: String,
    /// Keys made before keys had names are called `default`.
    name: String,
    /// The start of the key, shown in clear to tell keys apart (`acm_` and 8 characters).
    #[schema(pattern = "^acm_[A-Za-z0-9_-]{8}$")]
    prefix: String,
    #[schema(format = DateTime)]
    created_at: String,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ApiKeyList {
    data: Vec<ApiKeySchema>,
    next_cursor: Option<String>,
}

/// A new API key, with the key itself (shown only in this response).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ApiKeyCreated {
    #[schema(pattern = "^key_[0-9A-HJKMNP-TV-Z]{26}$")]
    id: String,
    name: String,
    #[schema(pattern = "^acm_[A-Za-z0-9_-]{8}$")]
    prefix: String,
    /// `acm_…`: send as `Authorization: Bearer <api_key>`. Shown only here; stored as a
    /// SHA-256 hash.
    api_key: String,
    #[schema(format = DateTime)]
    created_at: String,
}

/// A portal link to make. Unknown fields are refused (422).
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct CreatePortalLinkRequest {
    /// A read-only session sees everything but changes nothing; default `true`.
    read_only: Option<bool>,
    /// How long the link can be opened: a whole number and a unit (`ms`, `s`, `m`, `h`, `d`),
    /// from `1m` to `7d`; default `15m`. Anything else is refused (422). The pattern spells
    /// that range for each unit, without leading zeros.
    #[schema(
        example = "15m",
        pattern = "^(?:[1-7]d|(?:[1-9]|[1-9][0-9]|1[0-5][0-9]|16[0-8])h|(?:[1-9][0-9]{0,3}|100[0-7][0-9]|10080)m|(?:[6-9][0-9]|[1-9][0-9]{2,4}|[1-5][0-9]{5}|60[0-3][0-9]{3}|604[0-7][0-9]{2}|604800)s|(?:[6-9][0-9]{4}|[1-9][0-9]{5,7}|[1-5][0-9]{8}|60[0-3][0-9]{6}|604[0-7][0-9]{5}|604800000)ms)$"
    )]
    expires_in: Option<String>,
}

/// A one-time link into the delivery-log UI for this organization.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct PortalLinkCreated {
    /// Open it once: its page asks to continue, which signs in. Absolute when the server's
    /// `public_url` is set, else a path (`/ui/portal/…`).
    url: String,
    #[schema(format = DateTime)]
    expires_at: String,
    read_only: bool,
}

/// A webhook endpoint.
#[derive(Debug, ToSchema)]
#[schema(as = Endpoint)]
#[allow(dead_code)]
pub struct EndpointSchema {
    /// `ep_…`
    #[schema(pattern = "^ep_[0-9A-HJKMNP-TV-Z]{26}$")]
    id: String,
    url: String,
    /// The event types it receives.
    #[schema(min_items = 1)]
    event_types: Vec<EventType>,
    description: String,
    status: EndpointStatus,
    /// Why it was disabled; null while enabled.
    disabled_reason: Option<String>,
    ordering: Ordering,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    /// Deliveries per second at most, across all instances, spaced evenly (retries count);
    /// null: no limit.
    #[schema(minimum = 1, maximum = 10000)]
    rate_limit: Option<usize>,
    /// Read-only: the attempts it may have in flight now. `ACCOMMADOR_ENDPOINT_CONCURRENCY`,
    /// halved by each `429` or `503` without `Retry-After` (never below 1) and raised by one
    /// by each success.
    #[schema(minimum = 1)]
    current_concurrency: usize,
}

/// A new endpoint with its signing secret (shown here, by rotate, and at `/secret` only).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct EndpointCreated {
    #[schema(pattern = "^ep_[0-9A-HJKMNP-TV-Z]{26}$")]
    id: String,
    url: String,
    #[schema(min_items = 1)]
    event_types: Vec<EventType>,
    description: String,
    status: EndpointStatus,
    disabled_reason: Option<String>,
    ordering: Ordering,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    /// Deliveries per second at most, across all instances, spaced evenly (retries count);
    /// null: no limit.
    #[schema(minimum = 1, maximum = 10000)]
    rate_limit: Option<usize>,
    /// Read-only: the attempts it may have in flight now. `ACCOMMADOR_ENDPOINT_CONCURRENCY`,
    /// halved by each `429` or `503` without `Retry-After` (never below 1) and raised by one
    /// by each success.
    #[schema(minimum = 1)]
    current_concurrency: usize,
    /// `whsec_…`: base64 of 32 random bytes. Verify deliveries with it.
    secret: String,
}

/// A new endpoint. Unknown fields are refused (422).
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct CreateEndpointRequest {
    /// An absolute `http` or `https` URL with a host, without user info or fragment, at most
    /// 2048 bytes. The pattern spells the plain ASCII form to send; the server parses URLs as
    /// browsers do (WHATWG), so it also takes internationalised host names, public IP literals
    /// and other spellings it can normalise, and stores the normalised URL. A host that is, or
    /// resolves to, a private, loopback, link-local or otherwise blocked address is refused
    /// (422) unless the server allows private targets.
    #[schema(
        max_length = 2048,
        pattern = "^[Hh][Tt][Tt][Pp][Ss]?://(?:[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*\\.)*[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*(?::(?:[0-9]{1,4}|[0-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?(?:[/?](?:[A-Za-z0-9._~!$&'()*+,;=:@/?-]|%[0-9A-Fa-f]{2})*)?$"
    )]
    url: String,
    /// At least one; duplicates are ignored. Absent or null: every user event type (the
    /// operational types are received only when listed).
    #[schema(min_items = 1)]
    event_types: Option<Vec<EventType>>,
    /// At most 1024 characters, without U+0000; absent or null: empty.
    #[schema(max_length = 1024, pattern = "^[^\\u0000]*$")]
    description: Option<String>,
    /// Absent or null: `none`.
    ordering: Option<Ordering>,
    /// Deliveries per second at most (1–10000), across all instances, spaced evenly; absent
    /// or null: no limit.
    #[schema(minimum = 1, maximum = 10000)]
    rate_limit: Option<usize>,
}

/// Any subset of the fields. Unknown fields are refused (422).
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct UpdateEndpointRequest {
    /// As on create.
    #[schema(
        nullable = false,
        max_length = 2048,
        pattern = "^[Hh][Tt][Tt][Pp][Ss]?://(?:[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*\\.)*[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*(?::(?:[0-9]{1,4}|[0-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?(?:[/?](?:[A-Za-z0-9._~!$&'()*+,;=:@/?-]|%[0-9A-Fa-f]{2})*)?$"
    )]
    url: Option<String>,
    /// At least one; duplicates are ignored. Null: every user event type (the operational
    /// types are received only when listed).
    #[schema(min_items = 1)]
    event_types: Option<Vec<EventType>>,
    /// At most 1024 characters, without U+0000; null empties it.
    #[schema(max_length = 1024, pattern = "^[^\\u0000]*$")]
    description: Option<String>,
    /// `enabled` clears `disabled_reason`.
    #[schema(nullable = false)]
    status: Option<EndpointStatus>,
    /// Null: `none`. Back to `none`, the deliveries that waited behind an earlier one are
    /// due at once.
    ordering: Option<Ordering>,
    /// Deliveries per second at most (1–10000); null removes the limit.
    #[schema(minimum = 1, maximum = 10000)]
    rate_limit: Option<usize>,
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

/// A recovery window. Unknown fields are refused (422).
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct RecoverRequest {
    /// RFC 3339 date-time, any offset (any one ASCII character is accepted in place of `T`):
    /// recover from here.
    #[schema(format = DateTime)]
    since: String,
    /// RFC 3339 date-time like `since`: up to here (exclusive); absent or null: now. Must be
    /// after `since` (422 otherwise).
    #[schema(format = DateTime)]
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
    #[schema(pattern = "^evt_[0-9A-HJKMNP-TV-Z]{26}$")]
    event_id: String,
    #[schema(pattern = "^dlv_[0-9A-HJKMNP-TV-Z]{26}$")]
    delivery_id: String,
}

/// One event's delivery to one endpoint.
#[derive(Debug, ToSchema)]
#[schema(as = Delivery)]
#[allow(dead_code)]
pub struct DeliverySchema {
    /// `dlv_…`
    #[schema(pattern = "^dlv_[0-9A-HJKMNP-TV-Z]{26}$")]
    id: String,
    #[schema(pattern = "^evt_[0-9A-HJKMNP-TV-Z]{26}$")]
    event_id: String,
    event_type: DeliveryEventType,
    #[schema(pattern = "^ep_[0-9A-HJKMNP-TV-Z]{26}$")]
    endpoint_id: String,
    status: DeliveryStatus,
    attempt_count: u32,
    /// When the next attempt is due, while pending.
    #[schema(format = DateTime)]
    next_attempt_at: Option<String>,
    last_status_code: Option<u16>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
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
    #[schema(minimum = 1)]
    number: u32,
    trigger: AttemptTrigger,
    #[schema(format = DateTime)]
    started_at: String,
    duration_ms: u64,
    status_code: Option<u16>,
    /// Null on success.
    error_class: Option<ErrorClass>,
    error: Option<String>,
    /// Response headers, lower-case names.
    #[schema(value_type = Object)]
    response_headers: Map<String, Value>,
    /// The first 4 KiB of the response body.
    response_body: String,
    /// Sent after a later delivery of the same user to this `per_user` endpoint had already
    /// been sent: a manual retry or `recover` of a delivery that was overtaken.
    out_of_order: bool,
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

/// Every operation can fail with an opaque 500 problem, and every write with a 503 for a full
/// disk; say so once for all of them.
fn add_server_errors(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::ResponseBuilder;
    let response = ResponseBuilder::new()
        .description("Internal error (opaque; the cause is logged)")
        .content("application/problem+json", problem_content())
        .build();
    for op in operations_mut(openapi) {
        op.responses
            .responses
            .entry("500".to_owned())
            .or_insert_with(|| response.clone().into());
    }
    // Every write can meet a full disk: a 503 `storage-full` with `Retry-After`, nothing saved.
    let full = ResponseBuilder::new()
        .description(
            "Storage full (`urn:accommador:problem:storage-full`): the database is out of disk \
             space and nothing of the request was saved; retry after `Retry-After` seconds",
        )
        .header(
            "Retry-After",
            utoipa::openapi::header::HeaderBuilder::new()
                .schema(Some(
                    utoipa::openapi::Object::builder()
                        .schema_type(utoipa::openapi::Type::Integer)
                        .minimum(Some(1)),
                ))
                .description(Some("Seconds to wait before retrying"))
                .build(),
        )
        .content("application/problem+json", problem_content())
        .build();
    for item in openapi.paths.paths.values_mut() {
        for op in [&mut item.post, &mut item.patch, &mut item.delete]
            .into_iter()
            .flatten()
        {
            op.responses
                .responses
                .entry("503".to_owned())
                .or_insert_with(|| full.clone().into());
        }
    }
}

/// Every operation of the document.
fn operations_mut(
    openapi: &mut utoipa::openapi::OpenApi,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    openapi.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
    })
}

/// A problem+json body.
fn problem_content() -> utoipa::openapi::Content {
    utoipa::openapi::ContentBuilder::new()
        .schema(Some(utoipa::openapi::Ref::from_schema_name("Problem")))
        .build()
}

/// utoipa has no attribute for OpenAPI's `allowEmptyValue` and prefixes every extension with
/// `x-`; turn the [`ALLOW_EMPTY_VALUE`] marker of a parameter's annotation into the real field.
fn allow_empty_values(openapi: &mut utoipa::openapi::OpenApi) {
    for op in operations_mut(openapi) {
        for param in op.parameters.iter_mut().flatten() {
            if let utoipa::openapi::RefOr::T(param) = param
                && let Some(ext) = param.extensions.as_mut()
                && ext.remove(ALLOW_EMPTY_VALUE).is_some()
            {
                ext.insert("allowEmptyValue".to_owned(), Value::Bool(true));
            }
        }
    }
}

/// Every operation authenticated by an organization's API key can be refused by the limits
/// (`src/http/limits.rs`): say so once for all of them.
fn add_rate_limit_errors(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::{Object, ResponseBuilder, Type};
    let retry_after = HeaderBuilder::new()
        .schema(Some(
            Object::builder()
                .schema_type(Type::Integer)
                .minimum(Some(1)),
        ))
        .description(Some("Seconds to wait before retrying"))
        .build();
    let response = ResponseBuilder::new()
        .description(
            "The organization is over its API rate limit (`ACCOMMADOR_ORG_RATE_LIMIT`), or this \
             client address sent too many invalid API keys; retry after `Retry-After` seconds",
        )
        .header("Retry-After", retry_after)
        .content("application/problem+json", problem_content())
        .build();
    for op in operations_mut(openapi) {
        let api_key = op.security.iter().flatten().any(|requirement| {
            serde_json::to_value(requirement).is_ok_and(|v| v.get("api_key").is_some())
        });
        if api_key {
            op.responses
                .responses
                .entry("429".to_owned())
                .or_insert_with(|| response.clone().into());
        }
    }
}

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        add_server_errors(openapi);
        add_rate_limit_errors(openapi);
        allow_empty_values(openapi);
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
        super::orgs::list_organizations,
        super::orgs::delete_organization,
        super::orgs::create_organization_key,
        super::api_keys::create_api_key,
        super::api_keys::list_api_keys,
        super::api_keys::revoke_api_key,
        super::portal_links::create_portal_link,
        super::users::create_user,
        super::users::list_users,
        super::users::get_user,
        super::users::update_user,
        super::users::delete_user,
        super::users::erase_user,
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
        (name = "api-keys", description = "The organization's own API keys"),
        (name = "users", description = "Users of an organization; every change writes an event"),
        (name = "endpoints", description = "Webhook endpoints and their signing secrets"),
        (name = "events", description = "The event outbox, in commit order"),
        (name = "deliveries", description = "The delivery log and manual retries"),
        (name = "portal", description = "One-time links into the delivery-log UI"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;
