//! Logging and metrics set-up: `tracing` to stderr (text or JSON, level from `RUST_LOG`,
//! default `info`) and the process-wide Prometheus recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Whether an event would print secrets whatever `RUST_LOG` says: tokio-postgres logs every
/// statement's parameters (endpoint secrets, key hashes, personal data) at `debug`.
fn prints_parameters(meta: &tracing::Metadata<'_>) -> bool {
    meta.target().starts_with("tokio_postgres::query") && *meta.level() >= tracing::Level::DEBUG
}

/// Installs the global subscriber; later calls (tests) are ignored. Events that would print
/// query parameters are dropped at any level ([`prints_parameters`]).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let no_parameters = tracing_subscriber::filter::filter_fn(|meta| !prints_parameters(meta));
    let _ = match format {
        LogFormat::Text => builder.finish().with(no_parameters).try_init(),
        LogFormat::Json => builder.json().finish().with(no_parameters).try_init(),
    };
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (embedding); ours still renders.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
