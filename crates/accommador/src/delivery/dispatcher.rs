//! The dispatcher: decides which due deliveries are attempted now.
//!
//! Work is organised in lanes, one per endpoint with pending deliveries. A lane holds only its
//! earliest due time and the IDs it has in flight (at most the per-endpoint bound), so memory
//! does not grow with the backlog: due deliveries are read from the database a lane at a time.
//! Ready lanes are served oldest due first, each up to its per-endpoint bound and all within
//! the global bound, so a slow, failing or backlogged endpoint holds at most its own share.
//! The loop sleeps until a wake-up (fan-out, manual action), a finished attempt, or the next
//! due time of a lane; it never polls. On PostgreSQL a lane whose due work other instances'
//! leases hold back (the endpoint's or the organization's bound across instances) waits for
//! one of them to be given up (`Wake::Freed`, announced by the instance that recorded it), or
//! at the latest until the first of them runs out. There, an organization's lanes lease up to
//! its bound again ahead (granted only while no other instance holds a lease of it) and start
//! those as its slots free: its attempts in flight stay within the bound, and its next sends
//! do not wait for a read (an answer that comes during a read starts the next queued
//! delivery at once). When every due lane's organization is near
//! its bound, reads are spaced a few milliseconds apart so that the slots freed meanwhile are
//! filled together, instead of one read per finished attempt.
//!
//! Per-endpoint policies ([`super::pacing`]): each lane knows its endpoint's rate limit and
//! the concurrency adaptive concurrency allows (read with the endpoint's organization, again
//! once a second or after a change here). A lane held below the bound leases only up to that
//! bound, on PostgreSQL within it across instances. A rate-limited lane leases what may start
//! within [`super::pacing::PACE_AHEAD`] and no more than it has free slots for, reserves a
//! send time for each, and starts each at its time: waiting takes no global permit, no
//! endpoint slot and no task, so other endpoints and organizations go on meanwhile.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::client::WebhookClient;
use super::pacing::{Pacer, Slots, pace_window};
use super::target::{Checked, Targets};
use super::{EndpointChanges, InFlight, Wake};
use crate::domain::Timestamp;
use crate::domain::delivery::RetryPolicy;
use crate::domain::pacing::{Signal, adjust, stored};
use crate::domain::turns::take_in_turns;
use crate::store::{DueDelivery, LaneRequest, Lease, Store};

/// How often a dispatcher on a shared database reloads its lanes (lost wake-ups).
const SAFETY_RESCAN: Duration = Duration::from_secs(30);

/// How soon to look again at a lane that was due yet got nothing, when the store does not say
/// what holds it back ([`crate::store::LaneWork::held_until`] does on PostgreSQL).
const SATURATED_RETRY_MS: i64 = 20;

/// Most lanes served by one step (one read of the database).
const LANES_PER_STEP: usize = 256;

/// Most deliveries leased ahead and queued, over all lanes (each queued one holds its payload).
const QUEUED_AT_MOST: usize = 1024;

/// When every due lane belongs to an organization near its bound, a read would start one or
/// two deliveries per finished attempt (one event to 10,000 endpoints of one organization:
/// 10,000 reads). Such reads wait until this long after the previous read, so the slots freed
/// meanwhile are filled by one read. A wake-up ends the wait (the read is held again only if
/// every due lane is still crowded).
const CROWDED_READ_EVERY: Duration = Duration::from_millis(5);

/// How late a paced send may start and still count from its reserved time (see
/// [`Lane::next_paced`]): sends this little behind go out together at the next wake-up, later
/// ones are spread again. A window of this length holds at most 2 % of a second's sends.
const LATE_UNSPREAD: Duration = Duration::from_millis(20);

/// A paced send this far behind its reserved time (the process stalled) is not sent late:
/// its lane's queued deliveries get new times. A missed time is never made up, so a stall
/// cannot put more than N into a second, on this instance or beside another one: every send
/// starts within this long after its slot on the shared timeline, so any 1 s window holds at
/// most the slots of 1.05 s (N × 1.05 + 1; the issue allows 10 %).
const LATE_RESLOT: Duration = Duration::from_millis(50);

/// How long an endpoint's policies (rate limit, allowed concurrency) read by this dispatcher
/// are used before they are read again: changes made on other instances (a `PATCH`, another
/// instance's halving) apply here within about this long. Changes made here apply at once.
const POLICY_FRESH: Duration = Duration::from_secs(1);

/// An endpoint's policies as a lane applies them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct LanePolicy {
    rate_limit: Option<u32>,
    /// Held below the bound to this (`None`: at the bound).
    concurrency: Option<u32>,
}

/// A delivery leased and waiting in a lane to be started.
#[derive(Debug)]
struct Queued {
    d: DueDelivery,
    /// When the read that found it began.
    read_at: Instant,
    /// Under a rate limit: the moment it may start (reserved for it), and the interval
    /// between sends.
    slot: Option<(Instant, Duration)>,
}

#[derive(Debug, Default)]
struct Lane {
    due_at: Option<Timestamp>,
    /// Deliveries handed out and not yet recorded: never handed out again meanwhile.
    in_flight: HashSet<String>,
    /// Of those, the ones whose request is still open: what the per-endpoint bound counts.
    /// A slot frees when the endpoint answers, not when the result is committed, so a busy
    /// database does not throttle deliveries to an endpoint that answers quickly.
    active: usize,
    /// Leased ahead (up to the per-endpoint bound again, when no other instance is on the
    /// endpoint): started the moment a slot frees (and its send time, under a rate limit,
    /// comes), without a round trip to the database.
    queued: VecDeque<Queued>,
    /// Due, but other instances' leases hold it back: waits for a release of its
    /// organization's (or for `due_at`, when the first of those leases runs out).
    held: bool,
    /// The endpoint's policies and when their read began (`None`: not read yet).
    policy: Option<(LanePolicy, Instant)>,
    /// When its last paced send started: sends that fell late (a slow machine) are spread
    /// out again rather than sent in a bunch.
    last_paced: Option<Instant>,
}

impl Lane {
    fn policy(&self) -> LanePolicy {
        self.policy.map(|(p, _)| p).unwrap_or_default()
    }

    /// Attempts it may have open at once: the bound, or less while held down.
    fn cap(&self, bound: usize) -> usize {
        self.policy()
            .concurrency
            .map_or(bound, |c| (c as usize).clamp(1, bound))
    }

    /// Whether its first queued delivery may start at `now` (its send time has come).
    fn head_ready(&self, now: Instant) -> bool {
        !self.queued.is_empty()
            && self.next_paced().is_none_or(|at| at <= now)
            && !self.head_missed(now)
    }

    /// Whether its first queued delivery missed its reserved time by over [`LATE_RESLOT`].
    fn head_missed(&self, now: Instant) -> bool {
        self.queued
            .front()
            .and_then(|q| q.slot)
            .is_some_and(|(slot, _)| slot + LATE_RESLOT < now)
    }

    /// When its first queued delivery may start, if it is paced: at its reserved time, and
    /// no sooner than three quarters of the interval after the previous paced send (counted
    /// from that send's reserved time when it went out on time, see [`LATE_UNSPREAD`]), so
    /// sends that fell far behind (a stalled process) go out spread, not in one bunch.
    fn next_paced(&self) -> Option<Instant> {
        let (slot, interval) = self.queued.front()?.slot?;
        let spacing = interval - interval / 4;
        Some(
            self.last_paced
                .map_or(slot, |last| slot.max(last + spacing)),
        )
    }
}

/// What an attempt task reports: the endpoint answered, then the result was recorded.
#[derive(Debug)]
enum Finished {
    Answered {
        endpoint_id: String,
        /// What the answer says about the endpoint's load.
        signal: Option<Signal>,
    },
    Recorded(Done),
    /// Allowed concurrencies as stored (every instance's changes included).
    Concurrency(Vec<(String, u32)>),
}

/// Whether [`Dispatcher::while_waiting`] takes in answers (and starts queued deliveries in
/// the slots they free) while it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answers {
    TakeIn,
    /// Left for the step's end.
    Leave,
}

/// A recorded attempt.
#[derive(Debug)]
struct Done {
    endpoint_id: String,
    delivery_id: String,
    next_due: Option<Timestamp>,
}

/// A delivery the last checks before its send held back: nothing was sent.
struct Unsent {
    permit: tokio::sync::OwnedSemaphorePermit,
    done: mpsc::UnboundedSender<Finished>,
    store: Store,
    in_flight: InFlight,
    endpoint_id: String,
    delivery_id: String,
    lease: Option<String>,
}

impl Unsent {
    /// Frees the slot, gives the lease back, and has the lane looked at again (at once, or in
    /// a second when the endpoint could not be read).
    async fn give_back(self, why: Checked) {
        drop(self.permit);
        let _ = self.done.send(Finished::Answered {
            endpoint_id: self.endpoint_id.clone(),
            signal: None,
        });
        if let Some(token) = self.lease
            && let Err(e) = self
                .store
                .release_leases(token, vec![self.delivery_id.clone()])
                .await
        {
            tracing::warn!(error = %e, "giving back an unsent lease failed; it expires");
        }
        let next_due =
            matches!(why, Checked::Unknown).then(|| Timestamp(Timestamp::now().millis() + 1000));
        self.in_flight.remove(&self.delivery_id);
        let _ = self.done.send(Finished::Recorded(Done {
            endpoint_id: self.endpoint_id,
            delivery_id: self.delivery_id,
            next_due,
        }));
    }
}

#[derive(Debug)]
pub struct Dispatcher {
    store: Store,
    client: WebhookClient,
    /// Checks each send against the endpoint's latest changes just before it starts.
    targets: Targets,
    in_flight: InFlight,
    lanes: HashMap<String, Lane>,
    global: Arc<Semaphore>,
    per_endpoint: usize,
    /// Attempts in flight (or leased ahead) for one organization at most.
    per_org: usize,
    /// Each endpoint's organization, learned once per endpoint (it never changes).
    org_of: HashMap<String, String>,
    /// The organization served last: the next turn starts with the one after it.
    last_served: Option<String>,
    /// Per organization, the lane whose queued delivery was started last.
    last_lane: HashMap<String, String>,
    /// Deliveries queued in all lanes.
    queued: usize,
    /// How many a lane may lease beyond its free slots: the bound on PostgreSQL, where each
    /// read is a round trip; none on SQLite, where reading is cheap and local.
    ahead: usize,
    wake_rx: mpsc::UnboundedReceiver<Wake>,
    done_tx: mpsc::UnboundedSender<Finished>,
    done_rx: mpsc::UnboundedReceiver<Finished>,
    /// This dispatcher's lease terms on a shared database.
    lease: Lease,
    /// Where finished attempts go to be recorded, in batches.
    recorder: mpsc::UnboundedSender<ToRecord>,
    /// On a shared database, a wake-up another instance sent may be lost (it died between
    /// commit and notify): every so often the lanes are reloaded from the database.
    rescan_every: Option<Duration>,
    last_rescan: std::time::Instant,
    /// Fan-out wakes other instances through this (PostgreSQL).
    rescan_pending: bool,
    /// Tells other instances when this one gives up a lease (PostgreSQL).
    announcer: Option<super::notify::Announcer>,
    /// Held lanes by organization: what a release of that organization wakes.
    held: HashMap<String, HashSet<String>>,
    /// Reserves send times under rate limits.
    pacer: Pacer,
    /// Where adaptive concurrency changes go to be stored.
    adjuster: mpsc::UnboundedSender<(String, Signal)>,
    /// Marks endpoints changed on this instance (a policy read before a change is read again).
    changes: EndpointChanges,
    /// When the last read of due lanes began.
    last_read: Instant,
    /// No read before `last_read + CROWDED_READ_EVERY` (every due lane's organization was
    /// near its bound), unless a wake-up brings new work.
    crowded_wait: bool,
    /// Finished attempts taken in during a read other than answers (recordings, stored
    /// concurrencies): applied at the start of the next step, in order, so that what the read
    /// returns does not overwrite them.
    deferred: Vec<Finished>,
    /// Lanes that may have deliveries queued, and lanes that may have attempts open (a
    /// superset of each; `start_queued` trims them): what it walks instead of every lane, since
    /// it runs on every answer during a read.
    queued_lanes: HashSet<String>,
    active_lanes: HashSet<String>,
}

/// `at` as the dispatcher's next wake-up, from `now`: at least a millisecond ahead.
fn wake_up_at(at: Instant, now: Timestamp) -> Timestamp {
    let left = at.saturating_duration_since(Instant::now());
    Timestamp(now.millis() + left.as_millis().max(1) as i64)
}

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        client: WebhookClient,
        policy: RetryPolicy,
        in_flight: InFlight,
        changes: EndpointChanges,
        wake_rx: mpsc::UnboundedReceiver<Wake>,
        outbox: super::Outbox,
        global_bound: usize,
        per_endpoint: usize,
        per_org: usize,
        delivery_timeout: Duration,
    ) -> Dispatcher {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        // A lease outlives the longest attempt (connect + timeout) with room to record it.
        let lease_millis = 2 * delivery_timeout.as_millis() as i64 + 5_000;
        let policy = Arc::new(policy);
        let shared = store.postgres_url().is_some();
        let rescan_every = shared.then_some(SAFETY_RESCAN);
        let adjusted = done_tx.clone();
        let adjuster =
            super::pacing::spawn_adjuster(store.clone(), per_endpoint.max(1) as u32, move |now| {
                let _ = adjusted.send(Finished::Concurrency(now));
            });
        Dispatcher {
            pacer: Pacer::new(&store),
            adjuster,
            changes: changes.clone(),
            rescan_every,
            last_rescan: std::time::Instant::now(),
            recorder: spawn_recorder(store.clone(), policy.clone(), outbox.clone()),
            lease: Lease {
                token: crate::domain::ids::new_id("lease_"),
                millis: lease_millis,
                per_endpoint: per_endpoint.max(1),
                per_org: per_org.max(1),
                org_ahead: if shared { per_org.max(1) } else { 0 },
            },
            rescan_pending: false,
            announcer: outbox.announcer.clone(),
            held: HashMap::new(),
            last_read: Instant::now(),
            crowded_wait: false,
            deferred: Vec::new(),
            queued_lanes: HashSet::new(),
            active_lanes: HashSet::new(),
            targets: Targets::new(store.clone(), changes),
            store,
            client,
            in_flight,
            lanes: HashMap::new(),
            global: Arc::new(Semaphore::new(global_bound.max(1))),
            per_endpoint: per_endpoint.max(1),
            per_org: per_org.max(1),
            org_of: HashMap::new(),
            last_served: None,
            last_lane: HashMap::new(),
            queued: 0,
            ahead: if shared { per_endpoint.max(1) } else { 0 },
            wake_rx,
            done_tx,
            done_rx,
        }
    }

    fn on_wake(&mut self, w: Wake) {
        self.crowded_wait = false;
        match w {
            Wake::Endpoint { endpoint_id, at } => self.wake(endpoint_id, at),
            Wake::Rescan => self.rescan_pending = true,
            Wake::Freed { orgs } => {
                for org in orgs {
                    self.release_held(&org);
                }
            }
        }
    }

    /// Lanes of `org` (`*`: of any) that other instances' leases held back are due again.
    fn release_held(&mut self, org: &str) {
        let ids: Vec<String> = if org == "*" {
            self.held.drain().flat_map(|(_, ids)| ids).collect()
        } else {
            self.held.remove(org).into_iter().flatten().collect()
        };
        let now = Timestamp::now();
        for id in ids {
            if let Some(lane) = self.lanes.get_mut(&id)
                && lane.held
            {
                lane.held = false;
                lane.due_at = Some(now);
            }
        }
    }

    fn wake(&mut self, endpoint_id: String, at: Timestamp) {
        let lane = self.lanes.entry(endpoint_id).or_default();
        lane.due_at = Some(lane.due_at.map_or(at, |d| d.min(at)));
    }

    fn on_finished(&mut self, f: Finished) {
        match f {
            Finished::Answered {
                endpoint_id,
                signal,
            } => {
                let bound = self.per_endpoint;
                let Some(lane) = self.lanes.get_mut(&endpoint_id) else {
                    return;
                };
                lane.active = lane.active.saturating_sub(1);
                let Some(signal) = signal else {
                    return;
                };
                // Applied here at once; the stored value (which other instances move too)
                // comes back and corrects it.
                let before = lane.cap(bound) as u32;
                let after = adjust(before, signal, bound as u32);
                if after != before {
                    let (policy, read_at) = lane
                        .policy
                        .unwrap_or((LanePolicy::default(), Instant::now()));
                    lane.policy = Some((
                        LanePolicy {
                            concurrency: stored(after, bound as u32),
                            ..policy
                        },
                        read_at,
                    ));
                    if signal == Signal::Halve {
                        metrics::counter!("webhook_endpoint_concurrency_halvings_total")
                            .increment(1);
                    }
                    let _ = self.adjuster.send((endpoint_id, signal));
                }
            }
            Finished::Recorded(done) => self.finish(done),
            Finished::Concurrency(now) => {
                let bound = self.per_endpoint as u32;
                for (endpoint_id, allowed) in now {
                    if let Some(lane) = self.lanes.get_mut(&endpoint_id)
                        && let Some((policy, _)) = lane.policy.as_mut()
                    {
                        policy.concurrency = stored(allowed, bound);
                    }
                }
            }
        }
    }

    fn finish(&mut self, done: Done) {
        // Its lease is given up: lanes of its organization held back here or on other
        // instances may go on.
        let org = self.org_key(&done.endpoint_id).to_owned();
        if let Some(a) = &self.announcer {
            a.freed(&org);
        }
        self.release_held(&org);
        self.in_flight.remove(&done.delivery_id);
        if let Some(lane) = self.lanes.get_mut(&done.endpoint_id) {
            lane.in_flight.remove(&done.delivery_id);
        }
        if let Some(at) = done.next_due {
            self.wake(done.endpoint_id, at);
        }
    }

    /// Loads the lanes of every pending delivery (after a restart, in-flight ones included).
    pub async fn restore(&mut self) -> Result<(), crate::store::StoreError> {
        for (endpoint_id, at) in self.store.pending_lanes().await? {
            self.wake(endpoint_id, at);
        }
        Ok(())
    }

    /// One step: takes in wake-ups and finished attempts, starts the attempts that are due,
    /// and returns when the next lane falls due (`None`: nothing scheduled).
    pub async fn step(&mut self) -> Option<Timestamp> {
        while let Ok(w) = self.wake_rx.try_recv() {
            self.on_wake(w);
        }
        if self
            .rescan_every
            .is_some_and(|every| self.last_rescan.elapsed() >= every)
        {
            self.rescan_pending = true;
        }
        if std::mem::take(&mut self.rescan_pending) {
            self.last_rescan = std::time::Instant::now();
            if let Err(e) = self.restore().await {
                tracing::warn!(error = %e, "rescanning pending deliveries failed");
            }
        }
        for f in std::mem::take(&mut self.deferred) {
            self.on_finished(f);
        }
        while let Ok(f) = self.done_rx.try_recv() {
            self.on_finished(f);
        }
        let now = Timestamp::now();
        self.start_queued();
        self.reslot_missed().await;
        if self.crowded_wait {
            let at = self.last_read + CROWDED_READ_EVERY;
            if at > Instant::now() {
                return Some(wake_up_at(at, now));
            }
            self.crowded_wait = false;
        }
        let bound = self.per_endpoint;
        self.learn_policies().await;
        let org_busy = self.org_busy();
        // In flight and leased ahead, per organization: what leasing ahead may add up to.
        let org_load = self.org_load();
        // A lane is read when it is due and has room: free slots, or room to lease ahead, and
        // its organization is under its bound. Organizations take turns, then their lanes.
        // Borrowed, not copied: with one event to 10,000 endpoints every lane is due at once,
        // and this pass runs before every read.
        let ready: Vec<(Timestamp, &str)> = self
            .lanes
            .iter()
            .filter_map(|(id, l)| l.due_at.filter(|d| *d <= now).map(|d| (d, id, l)))
            .filter(|(_, id, l)| {
                self.has_room(l) && self.org_read_room(id, &org_busy, &org_load) > 0
            })
            .map(|(d, id, _)| (d, id.as_str()))
            .collect();
        // Crowded: few free slots left in the organization. Its room to lease ahead does not
        // count here: beside another instance it is never granted, and alone one read every
        // CROWDED_READ_EVERY keeps the queue ahead of the sends.
        let crowded = |id: &str| {
            let busy = org_busy.get(self.org_key(id)).copied().unwrap_or(0);
            self.per_org.saturating_sub(busy) < (self.per_org / 4).max(1)
        };
        if !ready.is_empty()
            && self.last_read.elapsed() < CROWDED_READ_EVERY
            && ready.iter().all(|(_, id)| crowded(id))
        {
            self.crowded_wait = true;
            return Some(wake_up_at(self.last_read + CROWDED_READ_EVERY, now));
        }
        let ready = self.take_turns(ready, LANES_PER_STEP);
        let mut permits = self.global.available_permits();
        let mut room = QUEUED_AT_MOST.saturating_sub(self.queued);
        let mut given_back = Vec::new();
        if !ready.is_empty() && permits + room > 0 {
            // Free slots (as far as the global bound has permits and the organization has
            // room), then lease ahead (queued deliveries start only while their organization
            // is under its bound: `start_queued`). Both are handed out one at a time to the
            // lanes in turn: a lane's count is its free slots, not its due deliveries, so
            // giving the first lanes all their slots would let a few lanes with one delivery
            // each take the organization's whole room (one event to many endpoints).
            let orgs: Vec<String> = ready
                .iter()
                .map(|(_, id)| self.org_key(id).to_owned())
                .collect();
            let busy: Vec<usize> = ready
                .iter()
                .map(|(_, id)| {
                    let lane = &self.lanes[id];
                    lane.active + lane.queued.len()
                })
                .collect();
            let caps: Vec<usize> = ready
                .iter()
                .map(|(_, id)| self.lanes[id].cap(bound))
                .collect();
            let rates: Vec<Option<u32>> = ready
                .iter()
                .map(|(_, id)| self.lanes[id].policy().rate_limit)
                .collect();
            let mut org_room: HashMap<String, usize> = orgs
                .iter()
                .map(|o| {
                    let busy = org_busy.get(o).copied().unwrap_or(0);
                    (o.clone(), self.per_org.saturating_sub(busy))
                })
                .collect();
            // A rate-limited lane starts nothing at once: what it leases waits in its queue for
            // its send time, taking no permit meanwhile.
            let free: Vec<usize> = (0..ready.len())
                .map(|i| match rates[i] {
                    Some(_) => 0,
                    None => caps[i].saturating_sub(busy[i]),
                })
                .collect();
            let startable = take_in_turns(&free, &orgs, &mut org_room, &mut permits);
            let mut org_ahead: HashMap<String, usize> = orgs
                .iter()
                .map(|o| {
                    let load = org_load.get(o).copied().unwrap_or(0);
                    (o.clone(), self.org_lease_bound().saturating_sub(load))
                })
                .collect();
            for (o, n) in orgs.iter().zip(&startable) {
                if let Some(left) = org_ahead.get_mut(o) {
                    *left = left.saturating_sub(*n);
                }
            }
            // What each lane may lease beyond: a rate-limited one, as many as may start within
            // the pacing window and have a free slot to start in; an endpoint held below the
            // bound, no more than it may have open; others, the bound again ahead.
            let lease_ahead: Vec<usize> = (0..ready.len())
                .map(|i| {
                    if rates[i].is_some() || caps[i] < bound {
                        0
                    } else {
                        self.ahead
                    }
                })
                .collect();
            let more: Vec<usize> = ready
                .iter()
                .enumerate()
                .map(|(i, (_, id))| {
                    let lane = &self.lanes[id];
                    match rates[i] {
                        Some(rate) => pace_window(rate)
                            .min(caps[i].saturating_sub(lane.active))
                            .saturating_sub(lane.queued.len()),
                        None => (caps[i] + lease_ahead[i]).saturating_sub(busy[i] + startable[i]),
                    }
                })
                .collect();
            let ahead = take_in_turns(&more, &orgs, &mut org_ahead, &mut room);
            let mut served = None;
            let mut requests = Vec::new();
            for (i, (_, id)) in ready.iter().enumerate() {
                if startable[i] > 0 {
                    served = Some(orgs[i].clone());
                }
                if startable[i] + ahead[i] == 0 {
                    continue;
                }
                // The bound across instances is the lane's own (PostgreSQL leases within it;
                // see `lane_work_within_caps`).
                let mut lease = self.lease.clone();
                lease.per_endpoint = caps[i];
                requests.push((
                    LaneRequest {
                        endpoint_id: id.clone(),
                        limit: startable[i] + ahead[i],
                        in_flight: self.lanes[id].in_flight.iter().cloned().collect(),
                        active: busy[i],
                        ahead: lease_ahead[i],
                        org_active: org_load.get(&orgs[i]).copied().unwrap_or(0),
                        lease: Some(lease),
                    },
                    orgs[i].clone(),
                ));
            }
            if served.is_some() {
                self.last_served = served;
            }
            // Before the read: whatever changes after this instant is checked again at send.
            let leased_at = Instant::now();
            self.last_read = leased_at;
            if requests.is_empty() {
                // Due lanes, yet none may take anything now (their slots and the queues are
                // full): look again after the crowded spacing or a wake-up, not at once.
                self.crowded_wait = true;
                return Some(wake_up_at(leased_at + CROWDED_READ_EVERY, now));
            }
            let reading = lane_work_within_caps(self.store.clone(), bound, requests, now);
            match self.while_waiting(reading, Answers::TakeIn).await {
                Ok(work) => {
                    let slots = self.reserve_sends(&work).await;
                    for w in work {
                        let org = self.org_key(&w.endpoint_id).to_owned();
                        let lane = self.lanes.entry(w.endpoint_id.clone()).or_default();
                        lane.held = w.held_until.is_some();
                        if let Some(until) = w.held_until {
                            self.held.entry(org).or_default().insert(w.endpoint_id);
                            lane.due_at = Some(until);
                            continue;
                        }
                        lane.due_at = match w.next_due {
                            // Due, yet none handed out, and nothing said to be holding it
                            // back: look again shortly instead of spinning.
                            Some(at) if w.due.is_empty() && at <= now => {
                                Some(Timestamp(now.millis() + SATURATED_RETRY_MS))
                            }
                            other => other,
                        };
                        let slots = match &slots {
                            Ok(slots) => Ok(slots.get(&w.endpoint_id)),
                            Err(()) if lane.policy().rate_limit.is_some() => Err(()),
                            Err(()) => Ok(None),
                        };
                        for (i, d) in w.due.into_iter().enumerate() {
                            lane.in_flight.insert(d.id.clone());
                            self.in_flight.insert(&d.id);
                            match slots {
                                Ok(slots) => {
                                    lane.queued.push_back(Queued {
                                        d,
                                        read_at: leased_at,
                                        slot: slots.map(|s| (s.nth(i), s.interval)),
                                    });
                                    self.queued += 1;
                                    self.queued_lanes.insert(w.endpoint_id.clone());
                                }
                                // No send time could be reserved: given back, to be leased
                                // again (never sent unpaced).
                                Err(()) => given_back.push((w.endpoint_id.clone(), d.id)),
                            }
                        }
                    }
                    self.give_back(std::mem::take(&mut given_back));
                    self.start_queued();
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading due deliveries failed; retrying in 1 s");
                    return Some(Timestamp(now.millis() + 1000));
                }
            }
        }
        self.lanes
            .retain(|_, l| l.due_at.is_some() || !l.in_flight.is_empty());
        metrics::gauge!("webhook_deliveries_in_flight").set(self.in_flight.len() as f64);
        let next_rescan = self.rescan_every.map(|every| {
            let left = every.saturating_sub(self.last_rescan.elapsed());
            Timestamp(now.millis() + left.as_millis() as i64)
        });
        // A lane waiting for room (its own, or its organization's) is woken by a finished
        // attempt, not by the clock; one whose next send time is reserved, at that time.
        let org_busy = self.org_busy();
        let org_load = self.org_load();
        let next_send = self.next_send_at().map(|at| {
            let wait = at.saturating_duration_since(Instant::now());
            Timestamp(Timestamp::now().millis() + wait.as_micros().div_ceil(1000) as i64)
        });
        // The earliest due lane with room: room is looked up only for a lane that is earlier
        // than the earliest found so far.
        let mut next_due: Option<Timestamp> = None;
        for (id, l) in &self.lanes {
            if let Some(due) = l.due_at
                && next_due.is_none_or(|n| due < n)
                && self.has_room(l)
                && self.org_read_room(id, &org_busy, &org_load) > 0
            {
                next_due = Some(due);
            }
        }
        next_due
            .into_iter()
            .chain(next_rescan)
            .chain(next_send)
            .min()
    }

    /// Awaits `fut` (a database round trip), meanwhile starting queued deliveries as slots
    /// free and as their reserved send times come: a slow read never holds sends back, nor
    /// makes paced sends late and then bunched.
    async fn while_waiting<T>(
        &mut self,
        fut: impl std::future::Future<Output = T>,
        answers: Answers,
    ) -> T {
        tokio::pin!(fut);
        let mut stuck = false;
        loop {
            let next = if stuck { None } else { self.next_send_at() };
            tokio::select! {
                biased;
                out = &mut fut => return out,
                // An answer frees a slot: a queued delivery takes it now, not when the read
                // returns (a read is a round trip or two; a fast endpoint answers several
                // times meanwhile, and its sends waited for every read).
                f = self.done_rx.recv(), if answers == Answers::TakeIn => match f {
                    Some(f @ Finished::Answered { .. }) => {
                        self.on_finished(f);
                        self.start_queued();
                        stuck = false;
                    }
                    Some(other) => self.deferred.push(other),
                    None => {}
                },
                () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now).into()),
                    if next.is_some() => {
                    // Nothing started (no permit, or the organization is full): wait for the
                    // read alone; the step that follows looks again.
                    stuck = self.start_queued() == 0;
                }
            }
        }
    }

    /// The earliest reserved send time among lanes that may start their next delivery.
    fn next_send_at(&self) -> Option<Instant> {
        let bound = self.per_endpoint;
        let paced: Vec<(&String, Instant)> = self
            .lanes
            .iter()
            .filter(|(_, l)| l.active < l.cap(bound))
            .filter_map(|(id, l)| l.next_paced().map(|at| (id, at)))
            .collect();
        // Usually none is paced: the organizations are counted only when one is.
        if paced.is_empty() {
            return None;
        }
        let org_busy = self.org_busy();
        paced
            .into_iter()
            .filter(|(id, _)| self.org_has_room(id, &org_busy))
            .map(|(_, at)| at)
            .min()
    }

    /// Reserves send times for the deliveries just leased on rate-limited lanes, one per
    /// delivery. `Err` when they could not be reserved (those deliveries are given back).
    async fn reserve_sends(
        &mut self,
        work: &[crate::store::LaneWork],
    ) -> Result<HashMap<String, Slots>, ()> {
        let wanted: Vec<(String, u32, u32)> = work
            .iter()
            .filter(|w| !w.due.is_empty())
            .filter_map(|w| {
                let rate = self.lanes.get(&w.endpoint_id)?.policy().rate_limit?;
                Some((w.endpoint_id.clone(), rate, w.due.len() as u32))
            })
            .collect();
        if wanted.is_empty() {
            return Ok(HashMap::new());
        }
        let reserving = self.pacer.reserve(wanted);
        self.while_waiting(reserving, Answers::TakeIn).await.map_err(|e| {
            tracing::warn!(error = %e, "reserving send times under rate limits failed; retrying");
        })
    }

    /// New send times for the queued deliveries of lanes whose first one missed its time by
    /// over [`LATE_RESLOT`] (all of the lane's, in order, so the queue stays in time order).
    async fn reslot_missed(&mut self) {
        let now = Instant::now();
        let mut missed = Vec::new();
        for (id, lane) in self.lanes.iter_mut() {
            if !lane.head_missed(now) {
                continue;
            }
            lane.last_paced = None;
            match lane.policy().rate_limit {
                Some(rate) => missed.push((id.clone(), rate, lane.queued.len() as u32)),
                // No limit any more: they need not wait.
                None => lane.queued.iter_mut().for_each(|q| q.slot = None),
            }
        }
        if missed.is_empty() {
            return;
        }
        let ids: Vec<String> = missed.iter().map(|(id, _, _)| id.clone()).collect();
        let reserving = self.pacer.reserve(missed);
        match self.while_waiting(reserving, Answers::TakeIn).await {
            Ok(slots) => {
                for id in ids {
                    if let Some(lane) = self.lanes.get_mut(&id) {
                        let s = slots.get(&id);
                        for (i, q) in lane.queued.iter_mut().enumerate() {
                            q.slot = s.map(|s| (s.nth(i), s.interval));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reserving new send times failed; retrying");
            }
        }
    }

    /// Reads the policies (and organization) of lanes that are due or have deliveries queued,
    /// where never read, read over [`POLICY_FRESH`] ago, or changed here since.
    async fn learn_policies(&mut self) {
        let now = Timestamp::now();
        // One lock for the whole pass (a scope, so no guard lives across an await).
        let stale: Vec<String> = {
            let changes = self.changes.read();
            self.lanes
                .iter()
                .filter(|(id, l)| {
                    let wanted = !l.queued.is_empty() || l.due_at.is_some_and(|d| d <= now);
                    wanted
                        && l.policy.is_none_or(|(_, at)| {
                            at.elapsed() >= POLICY_FRESH || changes.changed_since(id, at)
                        })
                })
                .map(|(id, _)| id.clone())
                .collect()
        };
        if stale.is_empty() {
            return;
        }
        let began = Instant::now();
        let store = self.store.clone();
        match self
            // Not during a policy read: an answer's change to the allowed concurrency would be
            // overwritten by the value read.
            .while_waiting(
                async move { store.endpoint_policies(stale).await },
                Answers::Leave,
            )
            .await
        {
            Ok(found) => {
                if self.org_of.len() > 100_000 {
                    let lanes = &self.lanes;
                    self.org_of.retain(|id, _| lanes.contains_key(id));
                }
                for p in found {
                    if let Some(lane) = self.lanes.get_mut(&p.endpoint_id) {
                        lane.policy = Some((
                            LanePolicy {
                                rate_limit: p.rate_limit,
                                concurrency: p.concurrency,
                            },
                            began,
                        ));
                    }
                    self.org_of.insert(p.endpoint_id, p.org_id);
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading endpoints' delivery policies failed"),
        }
    }

    /// Gives leases back and hands the deliveries over as finished: that takes them out of
    /// the in-flight sets and makes their lanes due now (the rows are due again once
    /// released).
    fn give_back(&self, deliveries: Vec<(String, String)>) {
        if deliveries.is_empty() {
            return;
        }
        let (store, token, done) = (
            self.store.clone(),
            self.lease.token.clone(),
            self.done_tx.clone(),
        );
        tokio::spawn(async move {
            let ids = deliveries.iter().map(|(_, id)| id.clone()).collect();
            if let Err(e) = store.release_leases(token, ids).await {
                tracing::warn!(error = %e, "giving back leases failed; they expire");
            }
            for (endpoint_id, delivery_id) in deliveries {
                let _ = done.send(Finished::Recorded(Done {
                    endpoint_id,
                    delivery_id,
                    next_due: Some(Timestamp::now()),
                }));
            }
        });
    }

    /// The organization an endpoint's lane counts against (until it is known, the lane
    /// counts alone).
    fn org_key<'a>(&'a self, endpoint_id: &'a str) -> &'a str {
        self.org_of
            .get(endpoint_id)
            .map_or(endpoint_id, String::as_str)
    }

    /// Where a turn starts in `orgs` (sorted): after the organization served last.
    fn first_turn<S: AsRef<str>>(&self, orgs: &[S]) -> usize {
        self.last_served
            .as_deref()
            .and_then(|last| orgs.iter().position(|o| o.as_ref() > last))
            .unwrap_or(0)
    }

    /// Attempts in flight, per organization.
    fn org_busy(&self) -> HashMap<String, usize> {
        self.org_counts(|lane| lane.active)
    }

    /// Attempts in flight and deliveries leased ahead, per organization.
    fn org_load(&self) -> HashMap<String, usize> {
        self.org_counts(|lane| lane.active + lane.queued.len())
    }

    /// `count` of each lane, summed per organization.
    fn org_counts(&self, count: impl Fn(&Lane) -> usize) -> HashMap<String, usize> {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for (id, lane) in &self.lanes {
            let n = count(lane);
            if n > 0 {
                *counts.entry(self.org_key(id).to_owned()).or_default() += n;
            }
        }
        counts
    }

    fn org_has_room(&self, endpoint_id: &str, org_busy: &HashMap<String, usize>) -> bool {
        org_busy
            .get(self.org_key(endpoint_id))
            .is_none_or(|n| *n < self.per_org)
    }

    /// What one organization's attempts in flight and leased ahead add up to at most: its
    /// bound, and on PostgreSQL as much again leased ahead (the store grants that only to an
    /// instance alone on the organization; starts stay within the bound: `start_queued`).
    fn org_lease_bound(&self) -> usize {
        self.per_org + self.lease.org_ahead
    }

    /// How much a read may hand the endpoint's organization (nothing: its lanes are not read):
    /// its free slots, or its room to lease ahead (while the queues have room) if that is more.
    fn org_read_room(
        &self,
        endpoint_id: &str,
        org_busy: &HashMap<String, usize>,
        org_load: &HashMap<String, usize>,
    ) -> usize {
        let org = self.org_key(endpoint_id);
        let busy = org_busy.get(org).copied().unwrap_or(0);
        let load = org_load.get(org).copied().unwrap_or(0);
        // Leasing ahead needs room in the queues too: without it a read could hand out
        // nothing, and the lane would be read again at once.
        let ahead = if self.queued < QUEUED_AT_MOST {
            self.org_lease_bound().saturating_sub(load)
        } else {
            0
        };
        self.per_org.saturating_sub(busy).max(ahead)
    }

    /// The first `most` of the due lanes `ready` (each with its due time), oldest due first
    /// within an organization, organizations taking turns: the first of each, then the second
    /// of each, and so on, the turn starting after the organization served last. Linear in the
    /// number of lanes (each organization's earliest are selected, not all of them sorted).
    fn take_turns(&self, ready: Vec<(Timestamp, &str)>, most: usize) -> Vec<(Timestamp, String)> {
        if most == 0 {
            return Vec::new();
        }
        let mut by_org: HashMap<&str, Vec<(Timestamp, &str)>> = HashMap::new();
        for (at, id) in ready {
            by_org.entry(self.org_key(id)).or_default().push((at, id));
        }
        let mut orgs: Vec<(&str, std::vec::IntoIter<(Timestamp, &str)>)> = by_org
            .into_iter()
            .map(|(org, mut lanes)| {
                if lanes.len() > most {
                    lanes.select_nth_unstable(most - 1);
                    lanes.truncate(most);
                }
                lanes.sort_unstable();
                (org, lanes.into_iter())
            })
            .collect();
        orgs.sort_unstable_by_key(|(org, _)| *org);
        let names: Vec<&str> = orgs.iter().map(|(org, _)| *org).collect();
        let first = self.first_turn(&names);
        orgs.rotate_left(first);
        let mut out = Vec::new();
        while out.len() < most {
            let before = out.len();
            for (_, lanes) in orgs.iter_mut() {
                if out.len() == most {
                    break;
                }
                if let Some((at, id)) = lanes.next() {
                    out.push((at, id.to_owned()));
                }
            }
            if out.len() == before {
                break;
            }
        }
        out
    }

    /// Whether reading the lane could hand out anything: it has a free slot, or room to lease
    /// ahead (up to the bound again) while the queues have room.
    /// A rate-limited lane is read once half its pacing window (within its free slots) is
    /// used up; one held below the bound, while under it.
    fn has_room(&self, lane: &Lane) -> bool {
        let busy = lane.active + lane.queued.len();
        let cap = lane.cap(self.per_endpoint);
        if let Some(rate) = lane.policy().rate_limit {
            let want = pace_window(rate).min(cap.saturating_sub(lane.active));
            return lane.queued.len() * 2 < want && self.queued < QUEUED_AT_MOST;
        }
        if cap < self.per_endpoint {
            return busy < cap;
        }
        busy < cap || (busy < cap + self.ahead && self.queued < QUEUED_AT_MOST)
    }

    /// Starts queued deliveries on lanes with free slots, while global permits last. One
    /// queued so long that its lease could run out before its attempt ends is given back
    /// instead (`stale`), to be leased again.
    fn start_queued(&mut self) -> usize {
        // Nothing queued anywhere: nothing to start (and no pass over every lane, which an
        // answer during a read would otherwise pay with 10,000 lanes).
        if self.queued == 0 {
            return 0;
        }
        // A lease lasts 2 × the delivery timeout + 5 s: one started within a timeout of its
        // lease still has 5 s to be recorded after its longest possible attempt.
        let fresh_for = Duration::from_millis(((self.lease.millis - 5_000) / 2).max(0) as u64);
        let now = Instant::now();
        let bound = self.per_endpoint;
        let mut starts = Vec::new();
        let mut stale: Vec<(String, String)> = Vec::new();
        // Lanes with something queued and a free slot, organizations taking turns: each turn
        // starts one delivery per organization under its bound, while global permits last.
        let lanes = &self.lanes;
        self.active_lanes
            .retain(|id| lanes.get(id).is_some_and(|l| l.active > 0));
        self.queued_lanes
            .retain(|id| lanes.get(id).is_some_and(|l| !l.queued.is_empty()));
        let mut org_active: HashMap<String, usize> = HashMap::new();
        for id in &self.active_lanes {
            *org_active.entry(self.org_key(id).to_owned()).or_default() += self.lanes[id].active;
        }
        let mut waiting: Vec<&String> = self
            .queued_lanes
            .iter()
            .filter(|id| {
                let l = &self.lanes[*id];
                l.head_ready(now) && l.active < l.cap(bound)
            })
            .collect();
        waiting.sort_unstable();
        let mut by_org: HashMap<String, VecDeque<String>> = HashMap::new();
        for id in waiting {
            by_org
                .entry(self.org_key(id).to_owned())
                .or_default()
                .push_back(id.clone());
        }
        // Within an organization its lanes take turns too: after the lane served last.
        for (org, lanes) in by_org.iter_mut() {
            if let Some(last) = self.last_lane.get(org) {
                let first = lanes.iter().position(|l| l > last).unwrap_or(0);
                lanes.rotate_left(first);
            }
        }
        let mut orgs: Vec<String> = by_org.keys().cloned().collect();
        orgs.sort_unstable();
        let first = self.first_turn(&orgs);
        orgs.rotate_left(first);
        let mut turns: VecDeque<String> = orgs.into();
        let mut served = None;
        'turns: while let Some(org) = turns.pop_front() {
            let org_n = org_active.entry(org.clone()).or_default();
            let Some(lanes) = by_org.get_mut(&org) else {
                continue;
            };
            if *org_n >= self.per_org {
                continue;
            }
            let Some(endpoint_id) = lanes.pop_front() else {
                continue;
            };
            let Some(lane) = self.lanes.get_mut(&endpoint_id) else {
                continue;
            };
            while let Some(q) = lane.queued.front() {
                if q.read_at.elapsed() > fresh_for {
                    let q = lane.queued.pop_front().expect("a queued delivery");
                    self.queued -= 1;
                    stale.push((endpoint_id.clone(), q.d.id));
                    continue;
                }
                if !lane.head_ready(now) {
                    break;
                }
                let Ok(permit) = self.global.clone().try_acquire_owned() else {
                    break 'turns;
                };
                let q = lane.queued.pop_front().expect("a queued delivery");
                self.queued -= 1;
                if let Some((slot, _)) = q.slot {
                    // On time, or a few milliseconds late (a timer tick): the next follows its
                    // own reserved time, so several due at one wake-up all start. Far behind:
                    // the rest are spread from now.
                    lane.last_paced = Some(if now <= slot + LATE_UNSPREAD {
                        slot
                    } else {
                        now
                    });
                }
                lane.active += 1;
                self.active_lanes.insert(endpoint_id.clone());
                *org_n += 1;
                starts.push((q.d, q.read_at, permit));
                served = Some(org.clone());
                self.last_lane.insert(org.clone(), endpoint_id.clone());
                break;
            }
            if lane.head_ready(now) && lane.active < lane.cap(bound) {
                lanes.push_back(endpoint_id);
            }
            if !lanes.is_empty() {
                // This organization's next turn comes after every other one's.
                turns.push_back(org);
            }
        }
        if served.is_some() {
            self.last_served = served;
        }
        let started = starts.len();
        for (d, read_at, permit) in starts {
            self.start(d, read_at, permit);
        }
        self.give_back(stale);
        started
    }

    fn start(&self, d: DueDelivery, read_at: Instant, permit: tokio::sync::OwnedSemaphorePermit) {
        let client = self.client.clone();
        let recorder = self.recorder.clone();
        let done = self.done_tx.clone();
        let in_flight = self.in_flight.clone();
        let targets = self.targets.clone();
        let store = self.store.clone();
        let changes = self.targets.changes().clone();
        tokio::spawn(async move {
            // Nothing is sent until the checks below pass: what to give back if one fails.
            let unsent = Unsent {
                permit,
                done: done.clone(),
                store: store.clone(),
                in_flight: in_flight.clone(),
                endpoint_id: d.endpoint_id.clone(),
                delivery_id: d.id.clone(),
                lease: d.lease_token.clone(),
            };
            let checked_at = Instant::now();
            let (d, secrets) = match targets.current(d, read_at).await {
                Checked::Send(d, secrets) => (*d, secrets),
                other => return unsent.give_back(other).await,
            };
            // The host's look-up may take up to its bound: the endpoint is checked again after
            // it (for any change since the first check began), just before the connection is
            // made (the connection uses this look-up).
            client.look_up(&d.url).await;
            let (d, secrets) = if targets.fresh(&d.endpoint_id, checked_at) {
                (d, secrets)
            } else {
                match targets.current(d, checked_at).await {
                    Checked::Send(d, secrets) => (*d, secrets),
                    other => return unsent.give_back(other).await,
                }
            };
            let permit = unsent.permit;
            let result = client.attempt(&d, &secrets).await;
            // The endpoint has answered: its slot and the global one are free again.
            drop(permit);
            let _ = done.send(Finished::Answered {
                endpoint_id: d.endpoint_id.clone(),
                signal: Signal::of(&result),
            });
            record_metrics(&d, &result);
            let (reply, recorded) = oneshot::channel();
            let _ = recorder.send(ToRecord {
                delivery_id: d.id.clone(),
                lease_token: d.lease_token.clone(),
                result,
                reply,
            });
            let recorded = recorded.await.unwrap_or_else(|_| {
                Err(crate::store::StoreError::database(std::io::Error::other(
                    "the recorder stopped",
                )))
            });
            let next_due = match recorded {
                Ok(recorded) => {
                    if recorded.endpoint_disabled {
                        // Sends of this endpoint read before now must not go out.
                        changes.touch(&d.endpoint_id);
                    }
                    recorded.next_due
                }
                Err(e) => {
                    // The delivery is still due in the database: try it again shortly
                    // (at-least-once; the receiver deduplicates on webhook-id).
                    tracing::error!(delivery_id = %d.id, error = %e, "recording an attempt failed");
                    Some(Timestamp(Timestamp::now().millis() + 1000))
                }
            };
            // Recorded (or given up): a manual retry may be queued from now on.
            in_flight.remove(&d.id);
            let _ = done.send(Finished::Recorded(Done {
                endpoint_id: d.endpoint_id,
                delivery_id: d.id,
                next_due,
            }));
        });
    }

    /// Runs steps until `shutdown` completes; then gives back the leases of the attempts
    /// still in flight, so another instance takes them over at once.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        if let Err(e) = self.restore().await {
            tracing::error!(error = %e, "could not load pending deliveries; trying again");
            self.rescan_pending = true;
        }
        tokio::pin!(shutdown);
        loop {
            let next = self.step().await;
            // Finished attempts taken in during the step's reads and not applied yet: applied
            // by the next step (nothing else would wake this loop for them).
            if !self.deferred.is_empty() {
                continue;
            }
            // If a lane is ready but every global permit is taken, a finished attempt wakes us.
            let sleep = match next {
                Some(at) => {
                    let wait = (at.millis() - Timestamp::now().millis()).max(0) as u64;
                    Duration::from_millis(wait)
                }
                None => Duration::from_secs(3600),
            };
            if sleep.is_zero() && self.global.available_permits() > 0 {
                continue;
            }
            tokio::select! {
                () = &mut shutdown => {
                    self.flush_answered().await;
                    self.release().await;
                    return;
                }
                w = self.wake_rx.recv() => match w {
                    Some(w) => self.on_wake(w),
                    None => return,
                },
                f = self.done_rx.recv() => {
                    if let Some(f) = f {
                        self.on_finished(f);
                    }
                }
                () = tokio::time::sleep(sleep), if !sleep.is_zero() => {}
            }
        }
    }
}

/// On shutdown, how long to wait for attempts that were answered to be recorded.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);

impl Dispatcher {
    /// On shutdown: waits (briefly) until every attempt whose endpoint has answered is
    /// recorded, so a restart or deploy does not send those again. Open requests are not
    /// waited for: their leases are given back at once (`release`).
    async fn flush_answered(&mut self) {
        for f in std::mem::take(&mut self.deferred) {
            self.on_finished(f);
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_FLUSH;
        while self
            .lanes
            .values()
            .any(|l| l.in_flight.len() > l.active + l.queued.len())
        {
            match tokio::time::timeout_at(deadline, self.done_rx.recv()).await {
                Ok(Some(f)) => self.on_finished(f),
                _ => {
                    tracing::warn!(
                        "answered attempts not yet recorded at shutdown; they will be attempted again"
                    );
                    return;
                }
            }
        }
    }

    async fn release(&mut self) {
        let ids: Vec<String> = self
            .lanes
            .values()
            .flat_map(|l| l.in_flight.iter().cloned())
            .collect();
        if ids.is_empty() {
            return;
        }
        match self
            .store
            .release_leases(self.lease.token.clone(), ids.clone())
            .await
        {
            Ok(()) => tracing::info!(
                released = ids.len(),
                "leases of in-flight attempts released"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "releasing leases failed; they expire by themselves")
            }
        }
    }
}

/// A finished attempt waiting to be recorded.
#[derive(Debug)]
struct ToRecord {
    delivery_id: String,
    lease_token: Option<String>,
    result: crate::domain::delivery::AttemptResult,
    reply: oneshot::Sender<Result<crate::store::Recorded, crate::store::StoreError>>,
}

/// Most attempts recorded in one batch.
const RECORD_BATCH: usize = 64;

/// Records finished attempts in batches: whatever arrived while the previous batch was being
/// written goes in the next one, so under load one commit acknowledges many attempts (a lost
/// acknowledgement only causes a duplicate, which at-least-once allows).
/// When recording wrote operational events, fan-out is told.
fn spawn_recorder(
    store: Store,
    policy: Arc<RetryPolicy>,
    outbox: super::Outbox,
) -> mpsc::UnboundedSender<ToRecord> {
    let (tx, mut rx) = mpsc::unbounded_channel::<ToRecord>();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < RECORD_BATCH {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            let (items, replies): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|t| ((t.delivery_id, t.lease_token, t.result), t.reply))
                .unzip();
            let results = store.record_attempts(items, policy.clone()).await;
            let events = results.iter().flatten().any(|r| r.events);
            // Answered first: the attempts' slots and in-flight marks go as soon as their
            // results are committed, not after the numbering below.
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
            if events {
                store.number_written_events().await;
                outbox.committed();
            }
        }
    });
    tx
}

fn record_metrics(d: &DueDelivery, r: &crate::domain::delivery::AttemptResult) {
    let outcome = if r.succeeded() { "succeeded" } else { "failed" };
    let class = r.error_class.map_or("none", |c| c.as_str());
    metrics::counter!("webhook_attempts_total", "outcome" => outcome, "error_class" => class)
        .increment(1);
    metrics::histogram!("webhook_attempt_duration_seconds").record(r.duration_ms as f64 / 1000.0);
    if d.first_attempt {
        let waited = (r.started_at.millis() - d.event_occurred_at.millis()).max(0);
        metrics::histogram!("webhook_commit_to_first_attempt_seconds")
            .record(waited as f64 / 1000.0);
    }
}

/// [`Store::lane_work`] for lanes whose bounds across instances differ (endpoints held below
/// `bound` by adaptive concurrency): one call per bound, since leasing applies one per call.
/// Usually every lane has the configured bound and this is one call. Owns what it reads, so
/// the dispatcher goes on starting paced sends meanwhile.
///
/// Each request comes with its endpoint's organization: what one call leased for an
/// organization counts in the next calls' `org_active`, so that the calls together stay within
/// its bound (each is its own transaction, and the store counts only other instances' leases).
async fn lane_work_within_caps(
    store: Store,
    bound: usize,
    requests: Vec<(LaneRequest, String)>,
    now: Timestamp,
) -> Result<Vec<crate::store::LaneWork>, crate::store::StoreError> {
    let cap_of = |r: &LaneRequest| r.lease.as_ref().map_or(0, |l| l.per_endpoint);
    if requests.iter().all(|(r, _)| cap_of(r) == bound) {
        return store
            .lane_work(requests.into_iter().map(|(r, _)| r).collect(), now)
            .await;
    }
    let org_of: HashMap<String, String> = requests
        .iter()
        .map(|(r, org)| (r.endpoint_id.clone(), org.clone()))
        .collect();
    let mut by_cap: HashMap<usize, Vec<(LaneRequest, String)>> = HashMap::new();
    for (r, org) in requests {
        by_cap.entry(cap_of(&r)).or_default().push((r, org));
    }
    let mut leased: HashMap<String, usize> = HashMap::new();
    let mut work = Vec::new();
    for (_, requests) in by_cap {
        let requests = requests
            .into_iter()
            .map(|(mut r, org)| {
                r.org_active += leased.get(&org).copied().unwrap_or(0);
                r
            })
            .collect();
        let got = store.lane_work(requests, now).await?;
        for w in &got {
            if let Some(org) = org_of.get(&w.endpoint_id) {
                *leased.entry(org.clone()).or_default() += w.due.len();
            }
        }
        work.extend(got);
    }
    Ok(work)
}
