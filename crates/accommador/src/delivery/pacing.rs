//! Pacing sends to an endpoint: its rate limit and its adaptive concurrency, as the dispatcher
//! applies them (the rules are [`crate::domain::pacing`]).
//!
//! - [`Pacer`] reserves sends under rate limits. SQLite has one owning process, so its
//!   theoretical arrival times live here in memory; on PostgreSQL every instance reserves on
//!   the endpoint row (`store::pacing`), so the limit holds across instances. A reservation
//!   is only made for deliveries already leased, and only for as many as may start at once
//!   (see the dispatcher), so a reserved send starts on time: nothing waits for a global
//!   permit or an endpoint slot while holding one.
//! - [`spawn_adjuster`] stores adaptive concurrency changes in order, in batches, and hands
//!   back the value that results (other instances' changes included). The dispatcher applies
//!   each change at once and corrects it with what comes back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::domain::pacing::{Signal, reserve};
use crate::store::{Store, StoreError};

/// How far ahead a rate-limited endpoint's sends are reserved (and their deliveries leased):
/// enough that a refill is read before the reserved ones run out, short enough that few leases
/// wait at once.
pub const PACE_AHEAD: Duration = Duration::from_millis(200);

/// Sends a lane at `rate` per second reserves at most (at least one).
pub fn pace_window(rate: u32) -> usize {
    ((u128::from(rate) * PACE_AHEAD.as_millis()) / 1000).max(1) as usize
}

/// When the reserved sends of one endpoint may start: the first at `first`, then one every
/// `interval`.
#[derive(Debug, Clone, Copy)]
pub struct Slots {
    pub first: Instant,
    pub interval: Duration,
}

impl Slots {
    pub fn nth(&self, i: usize) -> Instant {
        self.first + self.interval * i as u32
    }
}

#[derive(Debug)]
pub enum Pacer {
    /// SQLite: theoretical arrival times in microseconds since `epoch`.
    Local {
        epoch: Instant,
        tat: HashMap<String, i64>,
    },
    /// PostgreSQL: on the endpoint rows.
    Shared(crate::store::PgStore),
}

impl Pacer {
    pub fn new(store: &Store) -> Pacer {
        match store {
            Store::Postgres(pg) => Pacer::Shared(pg.clone()),
            Store::Sqlite(_) => Pacer::Local {
                epoch: Instant::now(),
                tat: HashMap::new(),
            },
        }
    }

    /// Reserves `count` sends to each endpoint at its `rate` (endpoint, rate, count). An
    /// endpoint missing from the answer has no limit (any more, on PostgreSQL): its sends
    /// need not wait. The returned future owns what it needs (the dispatcher goes on starting
    /// sends while it runs).
    pub fn reserve(&mut self, wanted: Vec<(String, u32, u32)>) -> Reserving {
        match self {
            Pacer::Local { epoch, tat } => {
                let now = epoch.elapsed().as_micros() as i64;
                if tat.len() >= 4096 {
                    // Endpoints idle since their last send start afresh anyway.
                    tat.retain(|_, t| *t > now);
                }
                let slots = wanted
                    .into_iter()
                    .map(|(id, rate, count)| {
                        let last = tat.get(&id).copied().unwrap_or(0);
                        let (first, next) = reserve(last, now, rate, count);
                        tat.insert(id.clone(), next);
                        let slots = Slots {
                            first: *epoch + Duration::from_micros(first.max(0) as u64),
                            interval: Duration::from_micros(
                                crate::domain::pacing::interval_us(rate) as u64,
                            ),
                        };
                        (id, slots)
                    })
                    .collect();
                Box::pin(std::future::ready(Ok(slots)))
            }
            Pacer::Shared(pg) => {
                let pg = pg.clone();
                Box::pin(async move {
                    // Anchored at the moment the request left, not when the answer came: the
                    // database read its clock in between, so a slow answer (a wait for another
                    // instance's row lock, a loaded machine) shows as lateness, which the
                    // dispatcher bounds (`LATE_RESLOT`), instead of shifting this instance's
                    // sends onto the next ones of the shared timeline.
                    let sent = std::time::Instant::now();
                    let reserved = pg
                        .reserve_sends(wanted.into_iter().map(|(id, _, n)| (id, n)).collect())
                        .await?;
                    let now = sent;
                    Ok(reserved
                        .into_iter()
                        .map(|(id, r)| {
                            let slots = Slots {
                                first: now + Duration::from_micros(r.first_in_us.max(0) as u64),
                                interval: Duration::from_micros(r.interval_us.max(0) as u64),
                            };
                            (id, slots)
                        })
                        .collect())
                })
            }
        }
    }
}

/// A reservation under way: each endpoint's send times.
pub type Reserving = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<HashMap<String, Slots>, StoreError>> + Send>,
>;

/// Most signals stored in one batch.
const ADJUST_BATCH: usize = 256;

/// Starts the task that stores concurrency signals (in arrival order, batched) and sends the
/// resulting allowed concurrency of each endpoint to `results`.
pub fn spawn_adjuster(
    store: Store,
    bound: u32,
    results: impl Fn(Vec<(String, u32)>) + Send + 'static,
) -> mpsc::UnboundedSender<(String, Signal)> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Signal)>();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < ADJUST_BATCH {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            // Each endpoint's signals, in the order they came.
            let mut order: Vec<String> = Vec::new();
            let mut by_endpoint: HashMap<String, Vec<Signal>> = HashMap::new();
            for (id, signal) in batch {
                let signals = by_endpoint.entry(id.clone()).or_default();
                if signals.is_empty() {
                    order.push(id);
                }
                signals.push(signal);
            }
            let signals = order
                .into_iter()
                .map(|id| {
                    let s = by_endpoint.remove(&id).unwrap_or_default();
                    (id, s)
                })
                .collect();
            match store.adjust_concurrency(signals, bound).await {
                Ok(now) => results(now),
                Err(e) => {
                    tracing::warn!(error = %e, "storing endpoints' adaptive concurrency failed")
                }
            }
        }
    });
    tx
}
