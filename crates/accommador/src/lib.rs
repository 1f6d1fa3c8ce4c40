//! # Accommador
//!
//! User-lifecycle webhooks for many organizations: users are created, updated and deleted
//! through an HTTP API, and every change commits together with its event (a transactional
//! outbox) that webhooks deliver and `/v1/events` lists.
//!
//! # Layout
//!
//! Dependencies point down this list: `domain` ← `store` ← `service` ← {`http`, `commands`}.
//!
//! - [`domain`]: pure types and rules (users and patches, events and payloads, keys, IDs, time).
//! - [`store`]: the durable state behind one enum over the backends; each method owns its
//!   transaction. [`store::sqlite`] is the embedded backend with its group-committing writer.
//! - [`service`]: the use-cases shared by the HTTP API and the CLI.
//! - [`http`]: routers, extractors, the problem+json error type, OpenAPI and operations routes.
//! - [`config`]: the typed settings and their layers (defaults, file, env, flags).
//! - [`org_deletion`]: the background removal of deleted organizations' data.
//! - [`startup`]: building the application, serving, graceful shutdown.
//! - [`telemetry`]: logging and the Prometheus recorder.
//! - [`cli`], [`commands`]: the command line and what each subcommand does.
//! - [`listen`]: the local development receiver (`accommador listen`).
//! - [`client`]: the resource CLI (`accommador users|endpoints|deliveries|events|api-keys`), a
//!   client of a running server over HTTP.

pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod http;
pub mod lifetime;
pub mod listen;
pub mod org_deletion;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
