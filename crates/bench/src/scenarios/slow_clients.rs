//! Scenario 9, slow clients (issue 14): the API's latency beside `--slow-clients` connections
//! that send nothing, trickle a request head, or trickle a body, one byte per connection every
//! 200 ms. The same fixed-rate create load runs twice on one server: alone (the baseline), then
//! with the slow connections open. Reported: both phases' API latency, the p99 ratio, how many
//! slow connections the server had closed by the end (its head and body deadlines), and the
//! server's resident memory before, with and after them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Bench, LoadSummary, drive, load_summary, stop};
use crate::api::Api;
use crate::load::{Plan, Stop};
use crate::procfs::Memory;

#[derive(Debug, Clone, Serialize)]
pub struct SlowClients {
    pub database: String,
    pub rate: f64,
    /// Slow connections opened (a third each: silent, trickled head, trickled body).
    pub slow_connections: usize,
    /// Of those, the ones that could not even connect.
    pub slow_connect_failures: u64,
    pub baseline: LoadSummary,
    pub with_slow_clients: LoadSummary,
    /// p99 beside the slow clients over the baseline p99.
    pub p99_ratio: Option<f64>,
    /// Slow connections the server had closed when the second phase ended.
    pub closed_by_server: u64,
    pub memory_before: Memory,
    pub memory_with_slow_clients: Memory,
}

/// Opens `n` slow connections to `addr`; each is kept busy by a task of its own until
/// `closed` counts it closed by the server or the returned handles are aborted.
async fn open_slow(
    addr: &str,
    key: &str,
    n: usize,
    closed: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::with_capacity(n);
    // With the organization's key, so that the body is read (and trickled) rather than the
    // request answered 401 at once.
    let body_head = format!(
        "POST /v1/users HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: 100000\r\n\r\n{{\"email\":\""
    );
    for i in 0..n {
        let stream = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(_) => {
                failures.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let closed = closed.clone();
        let opening: Vec<u8> = match i % 3 {
            0 => Vec::new(),
            1 => b"GET /v1/users HTTP/1.1\r\nhost: bench\r\nx-slow: ".to_vec(),
            _ => body_head.as_bytes().to_vec(),
        };
        tasks.push(tokio::spawn(async move {
            let (mut read, mut write) = stream.into_split();
            if write.write_all(&opening).await.is_err() {
                closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let trickle = i % 3 != 0;
            let mut buf = [0u8; 512];
            loop {
                tokio::select! {
                    n = read.read(&mut buf) => {
                        if matches!(n, Ok(0) | Err(_)) {
                            closed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                    () = tokio::time::sleep(Duration::from_millis(200)) => {
                        if trickle && write.write_all(b"a").await.is_err() {
                            closed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            }
        }));
    }
    tasks
}

pub async fn slow_clients(b: &Bench) -> anyhow::Result<SlowClients> {
    let database = b.database("slow-clients");
    let server = b.server("slow-clients", &database, false).await?;
    let api = Api::new(server.base_url.clone(), 4)?;
    let receivers = b.receivers(1)?;
    let org = api
        .create_org(&server.admin_token, "bench slow clients")
        .await?;
    let rate = b.cli.slow_rate;
    let plan = || Plan {
        connections: b.cli.connections,
        stop: Stop::After(b.seconds()),
        rate: Some(rate),
    };
    let memory_before = server.memory();
    let baseline = drive(
        b,
        "8 slow clients: baseline",
        &server.base_url,
        &org.api_key,
        plan(),
        &receivers,
    )
    .await?;

    let addr = server.base_url.trim_start_matches("http://").to_owned();
    let closed = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let n = b.cli.slow_clients;
    let slow = open_slow(&addr, &org.api_key, n, closed.clone(), failures.clone()).await;
    let with_slow = drive(
        b,
        &format!("8 slow clients: beside {n}"),
        &server.base_url,
        &org.api_key,
        plan(),
        &receivers,
    )
    .await?;
    let memory_with = server.memory();
    let closed_by_server = closed.load(Ordering::Relaxed);
    for task in slow {
        task.abort();
    }
    stop(b, server).await;

    let baseline = load_summary(&baseline);
    let with_slow_clients = load_summary(&with_slow);
    let p99_ratio = match (&baseline.api_latency, &with_slow_clients.api_latency) {
        (Some(a), Some(s)) if a.p99_ms > 0.0 => Some(s.p99_ms / a.p99_ms),
        _ => None,
    };
    Ok(SlowClients {
        database,
        rate,
        slow_connections: n,
        slow_connect_failures: failures.load(Ordering::Relaxed),
        baseline,
        with_slow_clients,
        p99_ratio,
        closed_by_server,
        memory_before,
        memory_with_slow_clients: memory_with,
    })
}
