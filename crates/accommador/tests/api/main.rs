//! The HTTP API as a user drives it: a real server on port 0 over a fresh SQLite file, a real
//! HTTP client. One binary for the whole API area; each module is one story.

mod atomicity;
mod bad_input;
mod browser;
mod dns_timeout;
mod endpoints;
mod helpers;
mod hostile;
mod idempotency;
mod keys;
mod limits;
mod openapi_rules;
mod operations;
mod organizations;
mod slow_clients;
mod tenancy;
mod tenancy_sweep;
mod ui;
mod ui_endpoints;
mod ui_measure;
mod user_filter;
mod users;
