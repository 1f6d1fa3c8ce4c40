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
use crate::delivery::client::WebhookClient;
use crate::delivery::dispatcher::Dispatcher;
use crate::delivery::guard::{AddressGuard, Lookup, SystemLookup};
use crate::delivery::{DeliveryHandle, DeliveryWakers, cancel, fanout, notify};
use crate::domain::Timestamp;
use crate::domain::delivery::RetryPolicy;
use crate::http::serve::ConnectionLimits;
use crate::http::{self, AppState};
use crate::lifetime::Lifetime;
use crate::service::Service;
use crate::store::{DatabaseUrl, Ownership, SecretsAtRest, Store};
use crate::telemetry;

/// How often the delivery queue gauges are refreshed.
const STATS_EVERY: Duration = Duration::from_secs(5);
/// How often expired idempotency keys are purged.
const PURGE_EVERY: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    state: AppState,
    /// The delivery workers' settings and wake-up ends; `None` for an API-only server.
    workers: Option<(Settings, DeliveryWakers)>,
    guard: AddressGuard,
    /// Serve the whole API (`serve`), or only health, readiness and metrics (`worker`).
    api: bool,
    /// Deadlines and the connection cap of the HTTP listener.
    connection_limits: ConnectionLimits,
}

/// How to build an [`Application`] beyond its settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Run the delivery workers in this process (`serve` without `--no-worker`).
    pub workers: bool,
    /// How delivery host names are resolved (tests inject fixed answers).
    pub lookup: Arc<dyn Lookup>,
    /// Serve the API; `false` (`accommador worker`) serves `/healthz`, `/readyz`, `/metrics`.
    pub api: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            workers: true,
            lookup: Arc::new(SystemLookup),
            api: true,
        }
    }
}

impl Application {
    /// Opens the database as its owning server, binds the listen address, and prepares the
    /// delivery workers that [`Application::run_until`] starts.
    pub async fn build(settings: &Settings) -> anyhow::Result<Application> {
        Application::build_with(settings, Options::default()).await
    }

    /// As [`Application::build`], with [`Options`].
    pub async fn build_with(settings: &Settings, options: Options) -> anyhow::Result<Application> {
        let guard = AddressGuard::new(options.lookup, settings.allow_private_targets);
        let url = DatabaseUrl::parse(&settings.database_url).map_err(anyhow::Error::msg)?;
        let store = Store::open(&url, Ownership::Server, settings.database_pool_size)
            .await
            .context("opening the store")?
            .with_secret_keys(settings.secret_keys()?);
        // Never serve with secrets that cannot be read: no webhook could be signed.
        match store.check_secret_keys().await? {
            SecretsAtRest::Plain => tracing::warn!(
                "ACCOMMADOR_SECRET_KEY is not set: endpoint signing secrets are stored in plain \
                 text; set it (base64 of 32 random bytes) to encrypt them"
            ),
            SecretsAtRest::Sealed { plain_left: true } => tracing::info!(
                "some endpoint signing secrets are still stored in plain text; \
                 `accommador secrets reencrypt` encrypts them"
            ),
            SecretsAtRest::Sealed { plain_left: false } => {}
        }
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("listening on {}", settings.listen))?;
        let (handle, wakers) = DeliveryHandle::new(&store);
        let state = AppState {
            service: Arc::new(
                Service::new(store, handle, guard.clone())
                    .with_lifetime(Lifetime::new(
                        settings.retention,
                        settings.erase_deleted_after,
                    ))
                    .with_endpoint_concurrency(settings.endpoint_concurrency),
            ),
            admin_token: settings.admin_token.clone(),
            metrics: telemetry::metrics_handle(),
            limits: Arc::new(http::limits::Limits::new(settings.org_rate_limit)),
            ui: Arc::new(http::ui::UiSettings {
                session_ttl: settings.session_ttl,
                public_url: settings.public_url.clone(),
                trust_proxy: settings.trust_proxy,
            }),
        };
        Ok(Application {
            listener,
            state,
            workers: options.workers.then(|| (settings.clone(), wakers)),
            guard,
            api: options.api,
            connection_limits: ConnectionLimits::default(),
        })
    }

    /// Replaces the listener's deadlines and connection cap (tests shorten them).
    pub fn with_connection_limits(mut self, limits: ConnectionLimits) -> Application {
        self.connection_limits = limits;
        self
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
                // Expired UI sessions and portal links, the same way.
                loop {
                    match store.purge_ui(Timestamp::now()).await {
                        Ok(0) => break,
                        Ok(n) => tracing::info!(purged = n, "expired UI sessions removed"),
                        Err(e) => {
                            tracing::warn!(error = %e, "purging UI sessions failed");
                            break;
                        }
                    }
                }
            }
        });
        let address = self.local_addr();
        let deletions = tokio::spawn(crate::org_deletion::run(
            self.state.service.store().clone(),
            self.state.service.org_deletions(),
        ));
        let mut tasks = vec![purge, deletions];
        tasks.extend(
            self.state
                .service
                .lifetime()
                .spawn(self.state.service.store()),
        );
        if self.api
            && let Some(connect) = self.state.service.store().postgres_connector()
        {
            // Keys revoked and organizations deleted on other instances are forgotten here.
            let service = self.state.service.clone();
            tasks.push(tokio::spawn(crate::service::listen_keys(
                connect.clone(),
                move |forget| service.forget_keys(&forget),
            )));
        }
        let mut dispatcher = None;
        if let Some((settings, wakers)) = self.workers {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let (others, main) = start_workers(
                self.state.service.store().clone(),
                &settings,
                wakers,
                self.guard,
                async {
                    let _ = stopped.await;
                },
            )?;
            tasks.extend(others);
            dispatcher = Some((stop, main));
        }
        tracing::info!(%address, "accommador is listening");
        let router = if self.api {
            http::router(self.state)
        } else {
            http::ops_router(self.state)
        };
        http::serve::serve(self.listener, router, self.connection_limits, shutdown).await;
        // The dispatcher records the attempts that were already answered (for up to 3 s), then
        // gives back the leases of the requests still open (PostgreSQL), so another instance
        // takes them at once; on SQLite they are simply due again on the next start.
        if let Some((stop, main)) = dispatcher {
            let _ = stop.send(());
            if tokio::time::timeout(Duration::from_secs(5), main)
                .await
                .is_err()
            {
                tracing::warn!("the dispatcher did not stop within 5 s");
            }
        }
        for task in tasks {
            task.abort();
        }
        tracing::info!("accommador stopped");
        Ok(())
    }
}

/// Starts fan-out, the dispatcher and the queue gauges.
fn start_workers(
    store: Store,
    settings: &Settings,
    wakers: DeliveryWakers,
    guard: AddressGuard,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(
    Vec<tokio::task::JoinHandle<()>>,
    tokio::task::JoinHandle<()>,
)> {
    let client = WebhookClient::new(settings.delivery_timeout, guard)?;
    let policy = RetryPolicy {
        schedule: settings.retry_schedule.clone(),
        disable_after: settings.disable_after,
    };
    // Fan-out wakes the dispatcher through the same channel the API uses.
    let (fanout_wake, dispatcher_wake) = (wakers.wake_sender, wakers.wake);
    let dispatcher = Dispatcher::new(
        store.clone(),
        client,
        policy,
        wakers.in_flight,
        wakers.changes,
        dispatcher_wake,
        wakers.outbox,
        settings.delivery_concurrency,
        settings.endpoint_concurrency,
        settings.org_concurrency,
        settings.delivery_timeout,
    );
    let stats_store = store.clone();
    let main = tokio::spawn(dispatcher.run(shutdown));
    let mut others = Vec::new();
    if let Some(connect) = store.postgres_connector() {
        others.push(tokio::spawn(notify::listen(
            connect.clone(),
            wakers.fanout.clone(),
            fanout_wake.clone(),
        )));
    }
    others.extend([
        tokio::spawn(cancel::run(store.clone(), wakers.cancel)),
        tokio::spawn(fanout::run(
            store,
            wakers.fanout,
            fanout_wake,
            wakers.announcer,
        )),
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(STATS_EVERY);
            loop {
                tick.tick().await;
                let now = Timestamp::now();
                match stats_store.delivery_stats(now).await {
                    Ok(s) => {
                        metrics::gauge!("webhook_due_deliveries").set(s.due as f64);
                        let age = s
                            .oldest_due
                            .map_or(0, |t| (now.millis() - t.millis()).max(0));
                        metrics::gauge!("webhook_oldest_due_age_seconds").set(age as f64 / 1000.0);
                        metrics::gauge!("webhook_disabled_endpoints")
                            .set(s.disabled_endpoints as f64);
                        metrics::gauge!("webhook_deliveries_ordered_waiting")
                            .set(s.ordered_waiting as f64);
                    }
                    Err(e) => tracing::warn!(error = %e, "reading delivery gauges failed"),
                }
                // Cluster-wide (read from the database), like the disabled endpoints: a
                // per-endpoint gauge would grow /metrics with every endpoint.
                match stats_store.reduced_endpoints().await {
                    Ok(n) => metrics::gauge!("webhook_endpoints_concurrency_reduced").set(n as f64),
                    Err(e) => tracing::warn!(error = %e, "reading the reduced endpoints failed"),
                }
            }
        }),
    ]);
    Ok((others, main))
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
