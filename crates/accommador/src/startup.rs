//! Building and running the server: open the store, bind the listener, serve until the
//! shutdown signal, then let in-flight requests finish. Tests bind port 0 and read the port
//! back from [`Application::local_addr`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::domain::Timestamp;
use crate::http::{self, AppState};
use crate::service::Service;
use crate::store::{DatabaseUrl, Ownership, Store};
use crate::telemetry;

/// How often expired idempotency keys are purged.
const PURGE_EVERY: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Opens the database as its owning server and binds the listen address.
    pub async fn build(settings: &Settings) -> anyhow::Result<Application> {
        let url = DatabaseUrl::parse(&settings.database_url).map_err(anyhow::Error::msg)?;
        let store = tokio::task::spawn_blocking(move || Store::open(&url, Ownership::Server))
            .await
            .context("opening the store")??;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("listening on {}", settings.listen))?;
        let state = AppState {
            service: Arc::new(Service::new(store)),
            admin_token: settings.admin_token.clone(),
            metrics: telemetry::metrics_handle(),
        };
        Ok(Application { listener, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes; requests already running are finished first.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let store = self.state.service.store().clone();
        let purge = tokio::spawn(async move {
            let mut tick = tokio::time::interval(PURGE_EVERY);
            loop {
                tick.tick().await;
                // Bounded batches, each its own write, so requests interleave with the purge.
                loop {
                    match store.purge_idempotency_keys(Timestamp::now()).await {
                        Ok(0) => break,
                        Ok(n) => tracing::info!(purged = n, "expired idempotency keys removed"),
                        Err(e) => {
                            tracing::warn!(error = %e, "purging idempotency keys failed");
                            break;
                        }
                    }
                }
            }
        });
        tracing::info!(address = %self.local_addr(), "accommador is listening");
        let result = axum::serve(self.listener, http::router(self.state))
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving HTTP");
        purge.abort();
        tracing::info!("accommador stopped");
        result
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
