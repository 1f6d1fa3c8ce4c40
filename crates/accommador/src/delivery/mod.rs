//! Delivery: from committed events to signed POSTs.
//!
//! - [`fanout`]: reads the events outbox in commit order and creates one delivery per event ×
//!   subscribed endpoint, moving a durable cursor in the same transaction (a crash between
//!   commit and fan-out loses nothing: the cursor has not moved).
//! - [`dispatcher`]: hands due deliveries to attempts, fairly per endpoint, within a global and
//!   a per-endpoint concurrency bound; woken by fan-out, by manual actions and by the timer of
//!   the next due retry. The backlog stays in the database.
//! - [`client`]: the signing HTTP client.
//! - [`pacing`]: per-endpoint rate limits and adaptive concurrency, as the dispatcher applies
//!   them.
//!
//! [`DeliveryHandle`] is how the rest of the process (the service) wakes them.

pub mod cancel;
pub mod client;
pub mod dispatcher;
pub mod fanout;
pub mod guard;
pub mod notify;
pub mod pacing;
pub mod target;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};

use crate::domain::Timestamp;

/// Deliveries being attempted right now in this process.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<Mutex<HashSet<String>>>);

impl InFlight {
    pub fn contains(&self, id: &str) -> bool {
        self.0.lock().expect("in-flight lock").contains(id)
    }
    fn insert(&self, id: &str) {
        self.0.lock().expect("in-flight lock").insert(id.to_owned());
    }
    fn remove(&self, id: &str) {
        self.0.lock().expect("in-flight lock").remove(id);
    }
    pub fn len(&self) -> usize {
        self.0.lock().expect("in-flight lock").len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A nudge to the dispatcher.
/// When each endpoint last changed in a way that matters to a send (URL, secrets, status,
/// deletion), as this process saw it. Set after the change commits and before the API
/// answers; the dispatcher reads it just before each send and reads the endpoint again when it
/// changed after the send's data was read. So once the API has answered, no attempt on this
/// instance starts with the old values.
#[derive(Debug, Clone, Default)]
pub struct EndpointChanges(Arc<Mutex<Changes>>);

#[derive(Debug)]
struct Changes {
    changed: HashMap<String, Instant>,
    /// The last change that may concern any endpoint (an organization was deleted).
    all: Option<Instant>,
    pruned: Instant,
}

impl Default for Changes {
    fn default() -> Changes {
        Changes {
            changed: HashMap::new(),
            all: None,
            pruned: Instant::now(),
        }
    }
}

const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How long a change is remembered: far longer than any delivery waits between being read and
/// being sent (a queued one is given back after one delivery timeout).
const CHANGES_KEPT: Duration = Duration::from_secs(3600);

impl EndpointChanges {
    /// Marks `endpoint_id` as changed now.
    pub fn touch(&self, endpoint_id: &str) {
        let mut map = self.0.lock().expect("endpoint changes lock");
        map.changed.insert(endpoint_id.to_owned(), Instant::now());
        // Forget old changes at most once a minute, so a burst of changes does not make
        // every touch walk the whole map.
        if map.changed.len() >= 4096 && map.pruned.elapsed() >= PRUNE_EVERY {
            map.changed.retain(|_, at| at.elapsed() < CHANGES_KEPT);
            map.pruned = Instant::now();
        }
    }

    /// Marks every endpoint as changed now (rare: an organization was deleted, and its
    /// endpoints are not listed here).
    pub fn touch_all(&self) {
        self.0.lock().expect("endpoint changes lock").all = Some(Instant::now());
    }

    /// Whether `endpoint_id` changed at or after `read_at`.
    pub fn changed_since(&self, endpoint_id: &str, read_at: Instant) -> bool {
        self.read().changed_since(endpoint_id, read_at)
    }

    /// The changes held still for many look-ups (the dispatcher asks about each of its lanes
    /// in one pass): one lock instead of one per endpoint.
    pub fn read(&self) -> ChangesRead<'_> {
        ChangesRead(self.0.lock().expect("endpoint changes lock"))
    }
}

/// [`EndpointChanges`] locked for a series of look-ups; touches wait until it is dropped.
#[derive(Debug)]
pub struct ChangesRead<'a>(std::sync::MutexGuard<'a, Changes>);

impl ChangesRead<'_> {
    /// Whether `endpoint_id` changed at or after `read_at`.
    pub fn changed_since(&self, endpoint_id: &str, read_at: Instant) -> bool {
        self.0.all.is_some_and(|at| at >= read_at)
            || self
                .0
                .changed
                .get(endpoint_id)
                .is_some_and(|at| *at >= read_at)
    }
}

#[derive(Debug, Clone)]
pub enum Wake {
    /// This endpoint has work due at `at`.
    Endpoint { endpoint_id: String, at: Timestamp },
    /// Anything may have changed (a listener reconnected): reload every pending lane.
    Rescan,
    /// Leases of these organizations were given up (`*`: of any): lanes that other instances'
    /// leases held back look again.
    Freed { orgs: Vec<String> },
}

/// Tells fan-out that new events committed: here, and in other instances' workers
/// (PostgreSQL). Used by the API side and by the attempt recorder, whose recording may write
/// operational events (`endpoint.disabled`, `delivery.failed`).
#[derive(Debug, Clone)]
pub struct Outbox {
    fanout: Arc<Notify>,
    announcer: Option<notify::Announcer>,
}

impl Outbox {
    pub fn committed(&self) {
        self.fanout.notify_one();
        if let Some(a) = &self.announcer {
            a.outbox();
        }
    }
}

/// How the API side wakes the delivery side. Cheap to clone; harmless when no workers run
/// (`serve --no-worker`): the work waits in the database.
#[derive(Debug, Clone)]
pub struct DeliveryHandle {
    fanout: Arc<Notify>,
    wake: mpsc::UnboundedSender<Wake>,
    pub in_flight: InFlight,
    pub changes: EndpointChanges,
    /// Wakes the task that fails a disabled or deleted endpoint's pending deliveries.
    cancel: Arc<Notify>,
    /// Tells other instances (PostgreSQL); `None` on SQLite's single process.
    announcer: Option<notify::Announcer>,
}

/// The receiving ends, taken by the workers when they start.
#[derive(Debug)]
pub struct DeliveryWakers {
    pub fanout: Arc<Notify>,
    pub wake: mpsc::UnboundedReceiver<Wake>,
    /// For fan-out, which wakes the dispatcher too.
    pub wake_sender: mpsc::UnboundedSender<Wake>,
    pub in_flight: InFlight,
    pub changes: EndpointChanges,
    pub cancel: Arc<Notify>,
    pub announcer: Option<notify::Announcer>,
    /// For the attempt recorder, whose recording may write operational events.
    pub outbox: Outbox,
}

impl DeliveryHandle {
    /// The handle and its receiving ends. On PostgreSQL an announcer task starts too, so it
    /// must be called inside a Tokio runtime.
    pub fn new(store: &crate::store::Store) -> (DeliveryHandle, DeliveryWakers) {
        let fanout = Arc::new(Notify::new());
        let (tx, rx) = mpsc::unbounded_channel();
        let in_flight = InFlight::default();
        let changes = EndpointChanges::default();
        let cancel = Arc::new(Notify::new());
        let announcer = store
            .postgres_url()
            .map(|_| notify::Announcer::start(store.clone()));
        (
            DeliveryHandle {
                fanout: fanout.clone(),
                wake: tx.clone(),
                in_flight: in_flight.clone(),
                changes: changes.clone(),
                cancel: cancel.clone(),
                announcer: announcer.clone(),
            },
            DeliveryWakers {
                outbox: Outbox {
                    fanout: fanout.clone(),
                    announcer: announcer.clone(),
                },
                fanout,
                wake: rx,
                wake_sender: tx,
                in_flight,
                changes,
                cancel,
                announcer,
            },
        )
    }

    /// New events committed: fan them out (here, and in other instances' workers).
    pub fn events_committed(&self) {
        self.fanout.notify_one();
        if let Some(a) = &self.announcer {
            a.outbox();
        }
    }

    /// An endpoint has work due now (a manual retry, a recovery, a test event).
    /// An endpoint's URL, secrets or status changed, or it was deleted (committed): sends
    /// read before now are checked again before they start.
    pub fn endpoint_changed(&self, endpoint_id: &str) {
        self.changes.touch(endpoint_id);
        self.cancel.notify_one();
    }

    /// An organization was deleted (committed): every send read before now is checked again,
    /// and those of its endpoints find nothing to send.
    pub fn all_endpoints_changed(&self) {
        self.changes.touch_all();
    }

    pub fn endpoint_due(&self, endpoint_id: &str) {
        let _ = self.wake.send(Wake::Endpoint {
            endpoint_id: endpoint_id.to_owned(),
            at: Timestamp::now(),
        });
        if let Some(a) = &self.announcer {
            a.due(endpoint_id);
        }
    }
}
