//! Serving HTTP/1.1 connections so that slow, idle or hostile clients cannot wear the server
//! down while normal clients are answered: what `axum::serve` does (accept, one task per
//! connection, the peer address for the handlers, graceful shutdown), plus
//! - a deadline for a request's head ([`ConnectionLimits::header_read_timeout`]); it also
//!   ends a keep-alive connection that stays idle that long before its next request;
//! - a deadline for reading a request's whole body ([`ConnectionLimits::body_read_timeout`]),
//!   past which the body reads fail and the extractors answer `408` ([`BodyTimedOut`]);
//! - a bound on the request head (431 from hyper past [`ConnectionLimits::max_header_bytes`]
//!   or 100 header fields);
//! - a cap on open connections ([`ConnectionLimits::max_connections`]): at the cap the
//!   listener stops accepting (new clients wait in the kernel's backlog) until one closes,
//!   which the deadlines above guarantee for clients that send nothing useful.
//!
//! `axum::serve` has none of these (no timer is set, so hyper's header timeout never runs):
//! one client could hold any number of connections open for ever.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// How long clients may take, and how many connections may be open at once.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A request's head (request line and headers) must arrive within this, counted from the
    /// moment the connection is ready for it: its opening, or the previous response on a
    /// keep-alive connection (so it is also the idle timeout). Past it the connection closes.
    pub header_read_timeout: Duration,
    /// A request's whole body must arrive within this, counted from its head.
    pub body_read_timeout: Duration,
    /// The largest request head (request line and headers) in bytes; past it `431`.
    pub max_header_bytes: usize,
    /// Connections open at once at most.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            // Longer than any client takes to send a head, shorter than common pool idle
            // times are worth to a slowloris.
            header_read_timeout: Duration::from_secs(20),
            // 1 MiB (the body limit) at 35 KB/s still fits.
            body_read_timeout: Duration::from_secs(30),
            max_header_bytes: 32 * 1024,
            max_connections: 10_000,
        }
    }
}

/// The error a body read gives once its deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} s", .0.as_secs_f64())]
pub struct BodyTimedOut(pub Duration);

/// The [`BodyTimedOut`] that `error` is or was caused by, if any.
pub fn body_timeout<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimedOut> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(timeout) = e.downcast_ref::<BodyTimedOut>() {
            return Some(timeout);
        }
        next = e.source();
    }
    None
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting, lets every
/// connection finish its request in progress, and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let body_timeout = limits.body_read_timeout;
        let service = tower::service_fn(move |req: Request<Incoming>| {
            let mut req = req.map(|body| Body::new(DeadlineBody::new(body, body_timeout)));
            // Failed authentications are throttled by the peer address.
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        let conn =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, %peer, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// As hyper 0.14 and axum do: a failed accept of one connection is not the listener's end;
/// running out of file descriptors is worth a pause so that some close first.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A request body that fails with [`BodyTimedOut`] once its deadline has passed. The timer is
/// only made when the body is not all there yet, which most small requests never need.
struct DeadlineBody {
    inner: Incoming,
    limit: Duration,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, limit: Duration) -> DeadlineBody {
        DeadlineBody {
            inner,
            limit,
            deadline: Instant::now() + limit,
            timer: None,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.limit)))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
