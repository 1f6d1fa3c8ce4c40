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

/// A nudge to the dispatcher: this endpoint has work due at `at`.
#[derive(Debug, Clone)]
pub struct Wake {
    pub endpoint_id: String,
    pub at: Timestamp,
}

/// How the API side wakes the delivery side. Cheap to clone; harmless when no workers run
/// (`serve --no-worker`): the work waits in the database.
#[derive(Debug, Clone)]
pub struct DeliveryHandle {
    fanout: Arc<Notify>,
    wake: mpsc::UnboundedSender<Wake>,
    pub in_flight: InFlight,
}

/// The receiving ends, taken by the workers when they start.
#[derive(Debug)]
pub struct DeliveryWakers {
    pub fanout: Arc<Notify>,
    pub wake: mpsc::UnboundedReceiver<Wake>,
    /// For fan-out, which wakes the dispatcher too.
    pub wake_sender: mpsc::UnboundedSender<Wake>,
    pub in_flight: InFlight,
}

impl DeliveryHandle {
    pub fn new() -> (DeliveryHandle, DeliveryWakers) {
        let fanout = Arc::new(Notify::new());
        let (tx, rx) = mpsc::unbounded_channel();
        let in_flight = InFlight::default();
        (
            DeliveryHandle {
                fanout: fanout.clone(),
                wake: tx.clone(),
                in_flight: in_flight.clone(),
            },
            DeliveryWakers {
                fanout,
                wake: rx,
                wake_sender: tx,
                in_flight,
            },
        )
    }

    /// New events committed: fan them out.
    pub fn events_committed(&self) {
        self.fanout.notify_one();
    }

    /// An endpoint has work due now (a manual retry, a recovery, a test event).
    pub fn endpoint_due(&self, endpoint_id: &str) {
        let _ = self.wake.send(Wake {
            endpoint_id: endpoint_id.to_owned(),
            at: Timestamp::now(),
        });
    }
}
