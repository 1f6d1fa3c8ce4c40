//! Delivery: from committed events to signed POSTs.
//!
//! - [`fanout`]: reads the events outbox in commit order and creates one delivery per event ×
//!   subscribed endpoint, moving a durable cursor in the same transaction (a crash between
//!   commit and fan-out loses nothing: the cursor has not moved).
//! - [`dispatcher`]: hands due deliveries to attempts, fairly per endpoint, within a global and
//!   a per-endpoint concurrency bound; woken by fan-out, by manual actions and by the timer of
//!   the next due retry. The backlog stays in the database.
//! - [`client`]: the signing HTTP client.
//!
//! [`DeliveryHandle`] is how the rest of the process (the service) wakes them.

pub mod client;
pub mod dispatcher;
pub mod fanout;
pub mod guard;
pub mod notify;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

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
#[derive(Debug, Clone)]
pub enum Wake {
    /// This endpoint has work due at `at`.
    Endpoint { endpoint_id: String, at: Timestamp },
    /// Anything may have changed (a listener reconnected): reload every pending lane.
    Rescan,
}

/// How the API side wakes the delivery side. Cheap to clone; harmless when no workers run
/// (`serve --no-worker`): the work waits in the database.
#[derive(Debug, Clone)]
pub struct DeliveryHandle {
    fanout: Arc<Notify>,
    wake: mpsc::UnboundedSender<Wake>,
    pub in_flight: InFlight,
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
    pub announcer: Option<notify::Announcer>,
}

impl DeliveryHandle {
    /// The handle and its receiving ends. On PostgreSQL an announcer task starts too, so it
    /// must be called inside a Tokio runtime.
    pub fn new(store: &crate::store::Store) -> (DeliveryHandle, DeliveryWakers) {
        let fanout = Arc::new(Notify::new());
        let (tx, rx) = mpsc::unbounded_channel();
        let in_flight = InFlight::default();
        let announcer = store
            .postgres_url()
            .map(|_| notify::Announcer::start(store.clone()));
        (
            DeliveryHandle {
                fanout: fanout.clone(),
                wake: tx.clone(),
                in_flight: in_flight.clone(),
                announcer: announcer.clone(),
            },
            DeliveryWakers {
                fanout,
                wake: rx,
                wake_sender: tx,
                in_flight,
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
