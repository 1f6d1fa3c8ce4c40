//! Deliveries on PostgreSQL: fan-out, leasing due deliveries, recording attempts, and the
//! delivery log, with the same rules as the SQLite backend.
//!
//! - Fan-out follows the events' commit order under the cursor row lock, so each event is
//!   fanned out exactly once across instances.
//! - Leases (`lease_token`, `lease_until` by the database clock) say which instance attempts
//!   a delivery; only the holder records its result.
//! - Per-user ordering is enforced where leases are taken (`leasing.rs`); the waiting mark and
//!   its release are migration 0015's triggers, and recording a delivery that ends on a
//!   `per_user` endpoint makes its lane due at once, for the delivery it released.
//! - The hot paths (fan-out, leasing, recording) run a fixed number of statements per step,
//!   whatever the batch size: `UNNEST` inserts and updates, pipelined per-lane statements.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use accommador_webhooks::EventType;
use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::pipelined::Pipelined;
use super::rollups::{self, add_counts_sql};
use super::{
    Cached, ENDPOINT_COLUMNS, PgStore, conversion, endpoint_from_row, insert_operational_event,
    live_endpoint, pg_err, walk_rows,
};
use crate::domain::delivery::{
    AttemptRecord, AttemptResult, DeliveryFacts, DeliveryRecord, DeliveryStatus, ErrorClass,
    RetryPolicy, Trigger, disable_reason, failing_since, settle,
};
use crate::domain::endpoint::{EndpointStatus, EventTypeFilter};
use crate::domain::event::{OperationalEvent, fanned_out, reports_failure};
use crate::domain::{Timestamp, ids};
use crate::store::rollups::hour_of;
use crate::store::{
    CANCEL_BATCH, CancelStep, DUE_COUNTED, DeliveryFilter, DeliveryStats, DeliveryWalk, FanOut,
    LIST_SCAN_ROWS, ListPage, ORDERED_WAITING_COUNTED, Recorded, SEND_TARGET_SQL, SendTarget,
    StoreError, cancel_reason, overtaken_sql, send_target_from,
};

const FANOUT_EVENTS: i64 = 256;
/// Most deliveries one fan-out step writes (one event to many endpoints takes several steps),
/// so it never holds the cursor's lock, or its endpoints' share locks, long.
const FANOUT_DELIVERIES: usize = 1_000;

/// Most deliveries one `recover` transaction re-queues or creates.
const RECOVER_BATCH: usize = 1_000;

/// Notes (one per fan-out step, at most [`FANOUT_DELIVERIES`] deliveries each) checked again
/// by one transaction ([`PgStore::recheck_ordered`]).
const RECHECK_BATCH: i64 = 100;

/// Waiting deliveries one pass of [`PgStore::sweep_waiting`] looks at.
const SWEEP_BATCH: i64 = 1_000;

/// How often an instance checks notes left by a process that died between its fan-out
/// commit and its recheck, and sweeps the next [`SWEEP_BATCH`] waiting deliveries.
const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The event types a live endpoint of `org` takes, under a share lock on its row for the rest
/// of the transaction (a disable or delete waits for it); `None` when it is no longer enabled.
/// The first batch of a request says why instead (404, 409).
async fn recoverable(
    tx: &Transaction<'_>,
    org: &str,
    endpoint_id: &str,
    first: bool,
) -> Result<Option<Vec<String>>, StoreError> {
    let row = tx
        .fetch_opt(
            "SELECT status = 'enabled', event_types FROM endpoints
             WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL FOR SHARE",
            &[&endpoint_id, &org],
        )
        .await
        .map_err(pg_err)?;
    match row {
        Some(r) if r.get::<_, bool>(0) => {
            let names: Vec<String> =
                serde_json::from_str(r.get::<_, &str>(1)).map_err(StoreError::database)?;
            Ok(Some(names))
        }
        Some(_) if first => Err(StoreError::EndpointDisabled),
        None if first => Err(StoreError::NotFound),
        _ => Ok(None),
    }
}

/// Disables an endpoint and writes its `endpoint.disabled` event; its pending deliveries are
/// then failed in the background, in bounded batches ([`PgStore::cancel_step`]).
async fn disable_endpoint(
    tx: &impl Cached,
    endpoint_id: &str,
    reason: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    let row = tx
        .fetch_one(
            &format!(
                "UPDATE endpoints SET status = 'disabled', disabled_reason = $2, updated_at = $3,
                     cancel_pending = true,
                     cancel_through = (SELECT COALESCE(max(seq), 0) FROM deliveries)
                 WHERE id = $1
                 RETURNING {ENDPOINT_COLUMNS}, org_id, deleted_at IS NULL AS live"
            ),
            &[&endpoint_id, &reason, &now.millis()],
        )
        .await
        .map_err(pg_err)?;
    // A deleted endpoint (an attempt that was in flight when it went) is not told about.
    // (By name: the endpoint's columns come first and grow with new fields.)
    if !row.get::<_, bool>("live") {
        return Ok(());
    }
    let endpoint = endpoint_from_row(&row)?;
    let org: String = row.get("org_id");
    insert_operational_event(tx, &org, &OperationalEvent::endpoint_status(&endpoint, now)).await
}

#[allow(clippy::too_many_arguments)]
async fn insert_delivery(
    tx: &Transaction<'_>,
    org: &str,
    event_seq: i64,
    event_id: &str,
    event_type: &str,
    endpoint_id: &str,
    now: Timestamp,
) -> Result<Option<String>, StoreError> {
    let id = ids::new_id(ids::DELIVERY);
    // One delivery per (event, endpoint), whoever creates it first (fan-out or recover). The
    // event's user is copied so that a user's deliveries are one index range.
    let inserted = tx
        .run(
            "INSERT INTO deliveries (id, org_id, event_seq, event_id, event_type, endpoint_id,
                                 user_id, status, next_attempt_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, (SELECT user_id FROM events WHERE seq = $3),
                 'pending', $7, $7, $7)
         ON CONFLICT (event_id, endpoint_id) DO NOTHING",
            &[
                &id,
                &org,
                &event_seq,
                &event_id,
                &event_type,
                &endpoint_id,
                &now.millis(),
            ],
        )
        .await
        .map_err(pg_err)?;
    Ok((inserted == 1).then_some(id))
}

/// New deliveries, column by column, for one `INSERT … SELECT FROM UNNEST`.
#[derive(Default)]
struct NewDeliveries {
    id: Vec<String>,
    org_id: Vec<String>,
    event_seq: Vec<i64>,
    event_id: Vec<String>,
    event_type: Vec<String>,
    endpoint_id: Vec<String>,
}

impl NewDeliveries {
    fn push(
        &mut self,
        org: &str,
        event_seq: i64,
        event_id: &str,
        event_type: &str,
        endpoint: &str,
    ) {
        self.id.push(ids::new_id(ids::DELIVERY));
        self.org_id.push(org.to_owned());
        self.event_seq.push(event_seq);
        self.event_id.push(event_id.to_owned());
        self.event_type.push(event_type.to_owned());
        self.endpoint_id.push(endpoint.to_owned());
    }

    /// Inserts them with [`INSERT_DELIVERIES`] (see there); nothing when there are none.
    async fn insert(&self, tx: &Transaction<'_>, now: Timestamp) -> Result<Inserted, StoreError> {
        if self.id.is_empty() {
            return Ok(Inserted::default());
        }
        let now = now.millis();
        let row = tx
            .fetch_one(INSERT_DELIVERIES, &self.params(&now))
            .await
            .map_err(pg_err)?;
        Ok(Inserted::from_row(&row))
    }

    /// The parameters of [`INSERT_DELIVERIES`] and [`INSERT_DELIVERIES_NOTED`].
    fn params<'a>(&'a self, now: &'a i64) -> [&'a (dyn ToSql + Sync); 7] {
        [
            &self.id,
            &self.org_id,
            &self.event_seq,
            &self.event_id,
            &self.event_type,
            &self.endpoint_id,
            now,
        ]
    }
}

/// The insert of new deliveries (column arrays `$1`–`$6`, `$7` now), pending and due now
/// (unless one waits behind an earlier delivery of its user: migration 0015); one delivery per
/// (event, endpoint), whoever creates it first (fan-out or recover). Answers how many were new,
/// and the range of numbers of those that wait. Each copies its event's user (a lookup by
/// primary key) so that a user's deliveries are one index range. `$note` is a further
/// data-modifying `WITH` item, or nothing.
macro_rules! insert_deliveries {
    ($note:literal) => {
        concat!(
            "WITH ins AS (
                 INSERT INTO deliveries (id, org_id, event_seq, event_id, event_type,
                                         endpoint_id, user_id, status, next_attempt_at,
                                         created_at, updated_at)
                 SELECT u.*, (SELECT e.user_id FROM events e WHERE e.seq = u.event_seq),
                        'pending', $7::bigint, $7::bigint, $7::bigint
                 FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[],
                             $6::text[])
                      AS u(id, org_id, event_seq, event_id, event_type, endpoint_id)
                 ORDER BY u.event_seq, u.endpoint_id
                 ON CONFLICT (event_id, endpoint_id) DO NOTHING
                 RETURNING seq, next_attempt_at IS NULL AS waits),
             span AS (
                 SELECT count(*) AS n, min(seq) FILTER (WHERE waits) AS first,
                        max(seq) FILTER (WHERE waits) AS last
                 FROM ins)",
            $note,
            " SELECT n, first, last FROM span"
        )
    };
}

/// New deliveries (see [`insert_deliveries`]).
const INSERT_DELIVERIES: &str = insert_deliveries!("");

/// New deliveries, and in the same statement fan-out's note of the range of those that wait
/// (migration 0020, [`PgStore::recheck_ordered`]), if any does.
const INSERT_DELIVERIES_NOTED: &str = insert_deliveries!(
    ", note AS (INSERT INTO ordered_recheck (first_seq, last_seq)
                SELECT first, last FROM span WHERE first IS NOT NULL)"
);

/// What [`NewDeliveries::insert`] created.
#[derive(Default)]
struct Inserted {
    new: u64,
    /// The range of numbers (`seq`) of the new ones that wait behind an earlier delivery of
    /// their user, if any does.
    waiting: Option<(i64, i64)>,
}

impl Inserted {
    /// From the row of [`INSERT_DELIVERIES`].
    fn from_row(row: &tokio_postgres::Row) -> Inserted {
        Inserted {
            new: row.get::<_, i64>(0) as u64,
            waiting: match (row.get(1), row.get(2)) {
                (Some(first), Some(last)) => Some((first, last)),
                _ => None,
            },
        }
    }
}

const DELIVERY_COLUMNS: &str = "id, event_id, event_type, endpoint_id, status, attempt_count,
    next_attempt_at, last_status_code, created_at, updated_at";

/// The column of a walk's row that says whether it passes every filter.
const WALK_MATCH: usize = 10;

/// The statement of each deliveries walk (`$1` the organization, `$2` the cursor's seq, then
/// the filters: `$3` endpoint, `$4` event, `$5` user, `$6` event type, `$7` status, `$8` since,
/// `$9` until), read newest first through the index that leads with the walk's filter:
/// `deliveries_org_list`, `deliveries_endpoint_list` and `deliveries_user_list` end with
/// `seq`, so their walks need no sort; one event's deliveries (at most one per endpoint) come
/// from the unique (event_id, endpoint_id) index and are sorted. Column [`WALK_MATCH`] checks
/// every filter on the row.
pub(super) fn delivery_walk_sql(walk: DeliveryWalk) -> String {
    let lead = match walk {
        DeliveryWalk::Org => "",
        DeliveryWalk::Endpoint => "AND endpoint_id = $3 ",
        DeliveryWalk::User => "AND user_id = $5 ",
        DeliveryWalk::Event => "AND event_id = $4 ",
    };
    format!(
        "SELECT {DELIVERY_COLUMNS},
                ($3::text IS NULL OR endpoint_id = $3) AND ($4::text IS NULL OR event_id = $4)
                AND ($5::text IS NULL OR user_id = $5) AND ($6::text IS NULL OR event_type = $6)
                AND ($7::text IS NULL OR status = $7)
                AND ($8::bigint IS NULL OR created_at >= $8)
                AND ($9::bigint IS NULL OR created_at < $9)
         FROM deliveries
         WHERE org_id = $1 {lead}AND seq < $2
         ORDER BY seq DESC LIMIT {}",
        LIST_SCAN_ROWS + 1
    )
}

fn delivery_from_row(r: &tokio_postgres::Row) -> Result<DeliveryRecord, StoreError> {
    let status: String = r.get(4);
    let attempts: i32 = r.get(5);
    let code: Option<i32> = r.get(7);
    Ok(DeliveryRecord {
        id: r.get(0),
        event_id: r.get(1),
        event_type: r.get(2),
        endpoint_id: r.get(3),
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| conversion(format!("unknown delivery status {status:?}")))?,
        attempt_count: attempts as u32,
        next_attempt_at: r.get::<_, Option<i64>>(6).map(Timestamp),
        last_status_code: code.map(|c| c as u16),
        created_at: Timestamp(r.get(8)),
        updated_at: Timestamp(r.get(9)),
    })
}

async fn get_delivery_row(
    tx: &Transaction<'_>,
    org: &str,
    id: &str,
) -> Result<Option<DeliveryRecord>, StoreError> {
    tx.fetch_opt(
        &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = $1 AND org_id = $2"),
        &[&id, &org],
    )
    .await
    .map_err(pg_err)?
    .map(|r| delivery_from_row(&r))
    .transpose()
}

pub(super) async fn signing_secrets(
    tx: &Transaction<'_>,
    endpoint_id: &str,
    now: Timestamp,
) -> Result<Vec<String>, StoreError> {
    Ok(tx
        .fetch(
            "SELECT secret FROM endpoint_secrets
             WHERE endpoint_id = $1 AND (expires_at IS NULL OR expires_at > $2)
             ORDER BY expires_at IS NOT NULL, created_at DESC",
            &[&endpoint_id, &now.millis()],
        )
        .await
        .map_err(pg_err)?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Makes due now those of the `waiting` deliveries (by number) that still wait and have no
/// earlier pending delivery of their user to their endpoint; returns their endpoints, once
/// each. How its statement reads them: [`RELEASE_UNBLOCKED`].
async fn release_unblocked(
    tx: &Transaction<'_>,
    waiting: &[i64],
) -> Result<Vec<String>, tokio_postgres::Error> {
    if waiting.is_empty() {
        return Ok(Vec::new());
    }
    let mut endpoints: Vec<String> = tx
        .fetch(RELEASE_UNBLOCKED, &[&waiting])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    endpoints.sort();
    endpoints.dedup();
    Ok(endpoints)
}

/// [`release_unblocked`]'s statement (`$1` the waiting deliveries' numbers); run under
/// [`KEYED_UPKEEP`]. The per-user probe is written as the earliest such delivery (`ORDER BY
/// … LIMIT 1`) so that, with sorts off, it reads deliveries_user_pending, not every pending
/// delivery of the endpoint; `next_attempt_at IS NULL` is kept from being an index condition
/// (it would read every waiting delivery's entry in deliveries_due). The rows are read by key: `status = 'pending'` is written so that it
/// cannot select deliveries_due (whose predicate it is), which the planner, without
/// statistics, would rather read whole than probe the key 100 times (`keyed_plans` tests it).
pub(super) const RELEASE_UNBLOCKED: &str =
    "UPDATE deliveries w SET next_attempt_at = accommador_now_ms()
     WHERE w.seq = ANY($1) AND (w.status = 'pending') IS TRUE AND (w.next_attempt_at + 0) IS NULL
       AND (SELECT p.seq FROM deliveries p
            WHERE p.endpoint_id = w.endpoint_id AND p.user_id = w.user_id
              AND p.status = 'pending' AND p.user_id IS NOT NULL
              AND p.event_seq < w.event_seq
            ORDER BY p.event_seq LIMIT 1) IS NULL
     RETURNING w.endpoint_id";

/// The noted deliveries that still wait (`$1`, `$2`: the notes' first and last numbers), each
/// with the IDs of the earliest pending ones of its user before it that are in flight and
/// that another transaction has touched (see [`PgStore::recheck_ordered`]); by key, as
/// [`RELEASE_UNBLOCKED`] reads them.
pub(super) const RECHECK_NOTED: &str = "SELECT w.seq, ARRAY(
         SELECT p.id FROM (
             SELECT p.id, p.next_attempt_at, p.xmax FROM deliveries p
             WHERE p.endpoint_id = w.endpoint_id AND p.user_id = w.user_id
               AND p.status = 'pending' AND p.user_id IS NOT NULL
               AND p.event_seq < w.event_seq
             ORDER BY p.event_seq LIMIT 3) p
         WHERE p.next_attempt_at IS NOT NULL AND p.xmax::text <> '0')
     FROM deliveries w
     WHERE w.seq = ANY(ARRAY(
               SELECT generate_series(n.first_seq, n.last_seq)
               FROM UNNEST($1::int8[], $2::int8[]) AS n(first_seq, last_seq)))
       AND (w.status = 'pending') IS TRUE AND (w.next_attempt_at + 0) IS NULL
       AND w.user_id IS NOT NULL";

/// The next stretch of the sweep: waiting deliveries after `$1`, at most `$2`, in number order
/// through deliveries_waiting.
pub(super) const SWEEP_WAITING: &str = "SELECT seq FROM deliveries
     WHERE status = 'pending' AND next_attempt_at IS NULL AND seq > $1
     ORDER BY seq LIMIT $2";

/// The settings of the recheck's and the sweep's transactions: not waited for on disk (a
/// step a database crash loses is done again), and the rows read by key and each user's
/// through deliveries_user_pending: without statistics the planner would rather walk every
/// waiting delivery's entry in the due index, or every pending delivery of the endpoint and
/// sort them (bitmap scans and sorts are kept out of its way; migration 0020 says the same of
/// the triggers).
pub(super) const KEYED_UPKEEP: &str = "SET LOCAL synchronous_commit TO off;
    SET LOCAL enable_bitmapscan TO off; SET LOCAL enable_sort TO off";

/// Adds `more` endpoints to `woken`, each once (a set, not a scan per endpoint: a fan-out
/// step wakes up to 1,000 and a recheck may release as many).
fn wake_also(woken: &mut Vec<String>, mut more: Vec<String>) {
    if more.is_empty() {
        return;
    }
    let known: HashSet<&str> = woken.iter().map(String::as_str).collect();
    more.retain(|endpoint| !known.contains(endpoint.as_str()));
    more.sort_unstable();
    more.dedup();
    woken.extend(more);
}

/// Fan-out's cursor after a step: the last event done (in commit order), and the endpoint it
/// stopped at within the next one, if the step's budget ran out in the middle of it.
const MOVE_FANOUT_CURSOR: &str =
    "UPDATE fanout_cursor SET last_commit_seq = $1, partial_endpoint = $2 WHERE id = 1";

impl PgStore {
    /// Fans out the next events in commit order. Events are numbered by the sequencer after
    /// each commit; when none is waiting, events that a crashed process committed and never
    /// numbered are numbered here first (the fan-out loop steps once a second when idle).
    pub async fn fan_out(&self) -> Result<FanOut, StoreError> {
        let mut out = self.fan_out_step().await?;
        // Every RECHECK_EVERY: notes of waiting deliveries that a process which died after
        // its commit never checked (fan-out checks its own right after committing), and the
        // next stretch of the sweep for deliveries whose release was missed.
        // (Its own clock: fan-out's rechecks after each commit must not put the sweep off.)
        let due = {
            let mut at = self.upkept_at.lock().unwrap_or_else(|e| e.into_inner());
            let due = at.is_none_or(|at| at.elapsed() >= RECHECK_EVERY);
            if due {
                *at = Some(std::time::Instant::now());
            }
            due
        };
        if due {
            self.recheck_ordered_now(&mut out.woken).await;
            self.sweep_waiting_now(&mut out.woken).await;
        }
        if out.events > 0 {
            return Ok(out);
        }
        match self.sequence_events().await {
            Ok(0) => return Ok(out),
            Ok(_) => {}
            // The lanes the recheck released are still woken; numbering is tried again at
            // the next step.
            Err(e) => {
                tracing::warn!(error = %e, "numbering left-over events failed; retried later");
                return Ok(out);
            }
        }
        let mut next = self.fan_out_step().await?;
        wake_also(&mut next.woken, out.woken);
        Ok(next)
    }

    /// The cursor row lock makes each event fanned out exactly once across instances. A step
    /// is a fixed number of statements, whatever the number of events and endpoints.
    async fn fan_out_step(&self) -> Result<FanOut, StoreError> {
        // Four round trips (BEGIN travels with the first and COMMIT with the last:
        // [`Pipelined`]): the events, how many endpoints their organizations have, the pairs,
        // then the deliveries, their note and the cursor.
        let tx = Pipelined::new(self.background_client().await?);
        // Not waited for on disk: if a database crash loses this step, it loses the cursor
        // move with it and the events are fanned out again; an acknowledgement of one of its
        // deliveries (a durable commit) flushes it first.
        let (_, events, insert, cursor) = tokio::try_join!(
            biased;
            // Waiting deliveries are checked again after the commit instead of share-locking
            // what they wait behind (migration 0020, [`PgStore::recheck_ordered`]).
            tx.begin(
                "SET LOCAL synchronous_commit TO off;
                 SET LOCAL accommador.ordered_recheck TO 'on';"
            ),
            tx.fetch(
                // The cursor as a parameter (not a join), so the scan starts at it.
                "WITH cursor AS (SELECT last_commit_seq, partial_endpoint FROM fanout_cursor
                                 WHERE id = 1 FOR UPDATE)
                 SELECT e.seq, e.id, e.org_id, e.type, e.commit_seq,
                        (SELECT partial_endpoint FROM cursor), e.about_endpoint
                 FROM events e
                 WHERE e.commit_seq > (SELECT last_commit_seq FROM cursor)
                 ORDER BY e.commit_seq LIMIT $1",
                &[&FANOUT_EVENTS],
            ),
            // Prepared now: they go with the COMMIT.
            tx.prepare_cached(INSERT_DELIVERIES_NOTED),
            tx.prepare_cached(MOVE_FANOUT_CURSOR),
        )
        .map_err(pg_err)?;
        if events.is_empty() {
            tx.commit().await.map_err(pg_err)?;
            return Ok(FanOut {
                events: 0,
                woken: Vec::new(),
            });
        }
        // Bound the step by the endpoints it may create deliveries for (at least one event).
        let mut orgs: Vec<String> = events.iter().map(|r| r.get(2)).collect();
        orgs.sort();
        orgs.dedup();
        let endpoints_per_org: HashMap<String, i64> = tx
            .fetch(
                "SELECT org_id, count(*) FROM endpoints
                 WHERE org_id = ANY($1) AND status = 'enabled' AND deleted_at IS NULL
                 GROUP BY org_id",
                &[&orgs],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut taken = 0;
        let mut budget = 0i64;
        for row in &events {
            let org: String = row.get(2);
            let fan = endpoints_per_org.get(&org).copied().unwrap_or(0);
            if taken > 0 && budget + fan > FANOUT_DELIVERIES as i64 {
                break;
            }
            budget += fan;
            taken += 1;
        }
        let events = &events[..taken];
        // The first event may be partly fanned out already (to the endpoints up to this ID).
        let partial: Option<String> = events[0].get(5);
        let first_seq: i64 = events[0].get(0);
        let seqs: Vec<i64> = events
            .iter()
            .filter(|r| EventType::parse(r.get(3)).is_some_and(fanned_out))
            .map(|r| r.get(0))
            .collect();
        // Each event's endpoints: enabled, and created before the event committed (their
        // creation did not see it).
        let pairs = if seqs.is_empty() {
            Vec::new()
        } else {
            // Both sides are read on their own first (the events by key, the endpoints of
            // just their organizations by index), then joined: left to itself the planner
            // could loop over every endpoint of every organization.
            tx.fetch(
                "WITH ev AS MATERIALIZED (
                     SELECT seq, org_id, xid FROM events WHERE seq = ANY($1)),
                 eps AS MATERIALIZED (
                     SELECT id, org_id, event_types, created_snapshot FROM endpoints
                     WHERE org_id = ANY($2) AND status = 'enabled' AND deleted_at IS NULL
                     FOR SHARE)
                 SELECT ev.seq, eps.id, eps.event_types
                 FROM ev JOIN eps ON eps.org_id = ev.org_id
                 WHERE NOT pg_visible_in_snapshot(ev.xid, eps.created_snapshot)
                   AND (ev.seq <> $3 OR $4::text IS NULL OR eps.id > $4)
                 ORDER BY ev.seq, eps.id",
                &[&seqs, &orgs, &first_seq, &partial],
            )
            .await
            .map_err(pg_err)?
        };
        // Each event's pairs, in endpoint ID order.
        let mut pairs_of: HashMap<i64, Vec<&tokio_postgres::Row>> = HashMap::new();
        for pair in &pairs {
            pairs_of.entry(pair.get(0)).or_default().push(pair);
        }
        let mut filters: HashMap<String, EventTypeFilter> = HashMap::new();
        let mut rows = NewDeliveries::default();
        let now = Timestamp::now();
        let mut woken: Vec<String> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut budget = FANOUT_DELIVERIES;
        // The cursor ends after the last event done (in commit order), and within the next
        // one if the budget ran out in the middle of it.
        let mut last: i64 = events[0].get::<_, i64>(4) - 1;
        let mut stopped_at: Option<String> = None;
        'events: for (i, event) in events.iter().enumerate() {
            let seq: i64 = event.get(0);
            let event_type: String = event.get(3);
            // An operational event is never sent to the endpoint it is about.
            let about: Option<&str> = event.get(6);
            let mut done_up_to = if i == 0 { partial.clone() } else { None };
            if let Some(kind) = EventType::parse(&event_type) {
                for pair in pairs_of.get(&seq).map(Vec::as_slice).unwrap_or_default() {
                    let endpoint_id: String = pair.get(1);
                    if about == Some(endpoint_id.as_str()) {
                        continue;
                    }
                    if !filters.contains_key(&endpoint_id) {
                        let names: Vec<String> = serde_json::from_str(pair.get::<_, &str>(2))
                            .map_err(StoreError::database)?;
                        let filter = EventTypeFilter::from_names(names.iter().map(String::as_str))
                            .map_err(conversion)?;
                        filters.insert(endpoint_id.clone(), filter);
                    }
                    if !filters[&endpoint_id].contains(kind) {
                        continue;
                    }
                    if budget == 0 {
                        stopped_at = done_up_to;
                        break 'events;
                    }
                    budget -= 1;
                    rows.push(event.get(2), seq, event.get(1), &event_type, &endpoint_id);
                    if seen.insert(endpoint_id.clone()) {
                        woken.push(endpoint_id.clone());
                    }
                    done_up_to = Some(endpoint_id);
                }
            }
            last = event.get(4);
        }
        let now = now.millis();
        let cursor_params: [&(dyn ToSql + Sync); 2] = [&last, &stopped_at];
        let (inserted, _, _) = tokio::try_join!(
            biased;
            async {
                if rows.id.is_empty() {
                    return Ok(Inserted::default());
                }
                tx.query_one(&insert, &rows.params(&now))
                    .await
                    .map(|row| Inserted::from_row(&row))
            },
            tx.execute(&cursor, &cursor_params),
            tx.commit(),
        )
        .map_err(pg_err)?;
        drop(tx);
        if inserted.waiting.is_some() {
            self.recheck_ordered_now(&mut woken).await;
        }
        Ok(FanOut {
            events: taken,
            woken,
        })
    }

    /// Runs [`Self::recheck_ordered`] and adds the endpoints it released to `woken`; a failure
    /// (a deadlock with a recorder, say) leaves the notes for the next recheck.
    async fn recheck_ordered_now(&self, woken: &mut Vec<String>) {
        match self.recheck_ordered().await {
            Ok(released) => wake_also(woken, released),
            Err(e) => {
                tracing::warn!(error = %e, "rechecking waiting deliveries failed; retried later")
            }
        }
    }

    /// Checks the waiting deliveries that fan-out noted (migration 0020) again, after the
    /// transactions that inserted them committed: a recorder that ended the delivery one of
    /// them waited behind, while it was being inserted, could not see it to release it. For
    /// each noted delivery that still waits, the earliest pending ones before it (at most
    /// three: the one in flight, and one a manual retry brought back) that do not wait
    /// themselves and that another transaction has touched (`xmax`) are share-locked, in ID
    /// order as the recorder locks them: that waits for a transaction ending one of them.
    /// Then the noted ones with nothing pending before them any more are due now. Notes
    /// another instance is checking are skipped (it deletes them). Returns the endpoints of
    /// the released deliveries.
    pub(super) async fn recheck_ordered(&self) -> Result<Vec<String>, StoreError> {
        let mut client = self.background_client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        // A step a database crash loses leaves its notes, checked again after the restart.
        let (_, notes) = tokio::try_join!(
            tx.batch_execute(KEYED_UPKEEP),
            tx.fetch(
                "SELECT id, first_seq, last_seq FROM ordered_recheck ORDER BY id
                 LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&RECHECK_BATCH],
            ),
        )
        .map_err(pg_err)?;
        if notes.is_empty() {
            tx.commit().await.map_err(pg_err)?;
            return Ok(Vec::new());
        }
        let note_ids: Vec<i64> = notes.iter().map(|r| r.get(0)).collect();
        let firsts: Vec<i64> = notes.iter().map(|r| r.get(1)).collect();
        let lasts: Vec<i64> = notes.iter().map(|r| r.get(2)).collect();
        let mut waiting: Vec<i64> = Vec::new();
        let mut touched: Vec<String> = Vec::new();
        for r in tx
            .fetch(RECHECK_NOTED, &[&firsts, &lasts])
            .await
            .map_err(pg_err)?
        {
            waiting.push(r.get(0));
            touched.extend(r.get::<_, Vec<String>>(1));
        }
        if !touched.is_empty() {
            // One row at a time, in the order given.
            touched.sort_unstable();
            touched.dedup();
            tx.fetch(
                "SELECT l.seq FROM UNNEST($1::text[]) AS t(id)
                 CROSS JOIN LATERAL (SELECT d.seq FROM deliveries d
                                     WHERE d.id = t.id AND d.status = 'pending'
                                     FOR SHARE) l",
                &[&touched],
            )
            .await
            .map_err(pg_err)?;
        }
        let done: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&note_ids];
        let (released, _) = tokio::try_join!(
            release_unblocked(&tx, &waiting),
            tx.run("DELETE FROM ordered_recheck WHERE id = ANY($1)", &done),
        )
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(released)
    }

    /// Runs [`Self::sweep_waiting`] and adds the endpoints it released to `woken`.
    async fn sweep_waiting_now(&self, woken: &mut Vec<String>) {
        match self.sweep_waiting().await {
            Ok(released) => {
                if !released.is_empty() {
                    tracing::warn!(
                        endpoints = released.len(),
                        "released deliveries left waiting with nothing pending before them"
                    );
                }
                wake_also(woken, released);
            }
            Err(e) => tracing::warn!(error = %e, "sweeping waiting deliveries failed"),
        }
    }

    /// The safety net under the triggers' and the recheck's releases: walks the deliveries
    /// that wait behind an earlier one of their user ([`SWEEP_BATCH`] a pass, in number
    /// order through the partial index deliveries_waiting, resuming where the last pass
    /// stopped and starting over after the end) and releases those with nothing pending
    /// before them any more. Releases can be missed when two transactions end one user's
    /// deliveries at once (a cancel beside a recording; two deliveries a manual retry made due
    /// together, recorded by two instances): each sees the other's delivery still pending.
    /// Leasing checks the order on every row it takes, so a release here can never send out
    /// of order. Returns the endpoints of the released deliveries.
    pub(super) async fn sweep_waiting(&self) -> Result<Vec<String>, StoreError> {
        let after = self
            .swept_through
            .load(std::sync::atomic::Ordering::Relaxed);
        let mut client = self.background_client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&after, &SWEEP_BATCH];
        let (_, rows) = tokio::try_join!(
            tx.batch_execute(KEYED_UPKEEP),
            tx.fetch(SWEEP_WAITING, &params,),
        )
        .map_err(pg_err)?;
        let waiting: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let released = release_unblocked(&tx, &waiting).await.map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        let through = match waiting.last() {
            Some(&last) if waiting.len() as i64 == SWEEP_BATCH => last,
            _ => 0,
        };
        self.swept_through
            .store(through, std::sync::atomic::Ordering::Relaxed);
        Ok(released)
    }

    pub async fn pending_lanes(&self) -> Result<Vec<(String, Timestamp)>, StoreError> {
        let client = self.background_client().await?;
        Ok(client
            // One probe of the due index per endpoint (a loose index scan), not a pass over
            // every pending delivery: this runs every SAFETY_RESCAN inside the dispatcher's
            // loop, beside backlogs of millions. The index orders NULL (waiting behind an
            // earlier delivery) last, so each endpoint's first entry is its earliest due time.
            .fetch(
                "WITH RECURSIVE lanes(endpoint_id, at) AS (
                     (SELECT endpoint_id, next_attempt_at FROM deliveries
                       WHERE status = 'pending'
                       ORDER BY endpoint_id, next_attempt_at LIMIT 1)
                     UNION ALL
                     SELECT n.endpoint_id, n.next_attempt_at FROM lanes l
                     CROSS JOIN LATERAL (
                         SELECT endpoint_id, next_attempt_at FROM deliveries
                          WHERE status = 'pending' AND endpoint_id > l.endpoint_id
                          ORDER BY endpoint_id, next_attempt_at LIMIT 1) n)
                 SELECT endpoint_id, at FROM lanes",
                &[],
            )
            .await
            .map_err(pg_err)?
            .iter()
            // Only deliveries waiting behind an earlier one: look now all the same.
            .map(|r| {
                let at = r.get::<_, Option<i64>>(1);
                (r.get(0), at.map_or_else(Timestamp::now, Timestamp))
            })
            .collect())
    }

    /// One bounded step of failing the pending deliveries of disabled or deleted endpoints:
    /// up to [`CANCEL_BATCH`] deliveries of the first such endpoint after `after`, in one
    /// statement, skipping rows locked by an attempt being recorded right now (a later step
    /// takes them if they are still pending). An endpoint enabled again meanwhile still loses
    /// those queued before it was closed (up to its fence, `cancel_through`), not the ones made
    /// since. `None` when there is no such endpoint after `after`.
    pub async fn cancel_step(
        &self,
        after: Option<String>,
    ) -> Result<Option<CancelStep>, StoreError> {
        let client = self.background_client().await?;
        let Some(found) = client
            .fetch_opt(
                "SELECT id, disabled_reason, deleted_at IS NOT NULL FROM endpoints
                 WHERE cancel_pending AND id > $1 ORDER BY id LIMIT 1",
                &[&after.unwrap_or_default()],
            )
            .await
            .map_err(pg_err)?
        else {
            return Ok(None);
        };
        let id: String = found.get(0);
        let reason = cancel_reason(found.get(1), found.get(2));
        let now = Timestamp::now().millis();
        // Closed: everything pending goes. Enabled again: only what the fence covers (read
        // again here, so a re-enable between the two statements is respected).
        let failed = client
            .run(
                &format!(
                    "WITH batch AS (
                     SELECT d.id FROM deliveries d, endpoints ep
                     WHERE d.endpoint_id = $1 AND d.status = 'pending'
                       AND ep.id = $1 AND ep.cancel_pending
                       AND (ep.status <> 'enabled' OR ep.deleted_at IS NOT NULL
                            OR d.seq <= ep.cancel_through)
                     LIMIT $4 FOR UPDATE OF d SKIP LOCKED),
                 failed AS (
                     UPDATE deliveries d SET status = 'failed',
                         attempt_count = d.attempt_count + 1, next_attempt_at = NULL,
                         manual = false, resume_at = NULL, updated_at = $2,
                         lease_token = NULL, lease_until = NULL
                     FROM batch WHERE d.id = batch.id
                     RETURNING d.id, d.attempt_count, d.org_id),
                 counted AS ({})
                 INSERT INTO attempts (delivery_id, number, trigger, started_at, duration_ms,
                                       status_code, error_class, error, response_headers,
                                       response_body)
                 SELECT id, attempt_count, 'scheduled', $2, 0, NULL, 'endpoint_disabled', $3,
                        '{{}}', ''
                 FROM failed",
                    add_counts_sql(
                        "(SELECT org_id, $1 AS endpoint_id, $5::int8 AS hour, 0::int8 AS succeeded,
                                 count(*) AS failed
                          FROM failed GROUP BY org_id) AS c"
                    )
                ),
                &[
                    &id,
                    &now,
                    &reason,
                    &(CANCEL_BATCH as i64),
                    &hour_of(Timestamp(now)),
                ],
            )
            .await
            .map_err(pg_err)?;
        if (failed as usize) < CANCEL_BATCH {
            client
                .run(
                    "UPDATE endpoints ep SET cancel_pending = false, cancel_through = NULL
                     WHERE ep.id = $1 AND NOT EXISTS (
                         SELECT 1 FROM deliveries d
                         WHERE d.endpoint_id = $1 AND d.status = 'pending'
                           AND (ep.status <> 'enabled' OR ep.deleted_at IS NOT NULL
                                OR d.seq <= ep.cancel_through))",
                    &[&id],
                )
                .await
                .map_err(pg_err)?;
        }
        Ok(Some(CancelStep {
            endpoint_id: id,
            failed: failed as usize,
        }))
    }

    pub async fn endpoint_orgs(
        &self,
        endpoint_ids: Vec<String>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let client = self.background_client().await?;
        Ok(client
            .fetch(
                "SELECT id, org_id FROM endpoints WHERE id = ANY($1)",
                &[&endpoint_ids],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    pub async fn send_target(&self, endpoint_id: String) -> Result<Option<SendTarget>, StoreError> {
        let client = self.background_client().await?;
        let rows = client
            .fetch(SEND_TARGET_SQL, &[&endpoint_id, &Timestamp::now().millis()])
            .await
            .map_err(pg_err)?;
        Ok(send_target_from(
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect(),
        ))
    }

    /// Numbers the events a recording wrote (see [`Recorded::events`]).
    pub async fn number_written_events(&self) {
        self.sequence_after_commit().await;
    }

    /// Tells every instance's listener that something happened (after commit, coalesced by
    /// the caller): `outbox` (new events) or `due` with endpoint IDs (`*`: rescan).
    pub async fn announce(&self, channel: &str, payload: String) -> Result<(), StoreError> {
        let client = self.background_client().await?;
        client
            .run("SELECT pg_notify($1, $2)", &[&channel, &payload])
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    /// Records attempts in one transaction (one commit for the batch) with a fixed number of
    /// statements, whatever the batch size. If a batch fails anyway (a deadlock with another
    /// instance, say), each attempt is recorded on its own.
    pub async fn record_attempts(
        &self,
        batch: Vec<Attempted>,
        policy: Arc<RetryPolicy>,
    ) -> Vec<Result<Recorded, StoreError>> {
        let distinct: std::collections::HashSet<&str> =
            batch.iter().map(|b| b.0.as_str()).collect();
        if batch.len() > 1 && distinct.len() == batch.len() {
            match self.record_batch(&batch, &policy).await {
                Ok(recorded) => return recorded,
                Err(e) => {
                    tracing::warn!(error = %e, size = batch.len(), "recording a batch failed; one at a time")
                }
            }
        }
        let mut out = Vec::with_capacity(batch.len());
        for item in batch {
            out.push(
                match self
                    .record_batch(std::slice::from_ref(&item), &policy)
                    .await
                {
                    Ok(mut r) => r.remove(0),
                    Err(e) => Err(e),
                },
            );
        }
        out
    }

    /// One batch (distinct deliveries): lock what changes ([`lock_batch`]), decide each
    /// delivery's next step ([`decide`]), then write every attempt with one INSERT and every
    /// delivery with one UPDATE, tell the schedules used up ([`report_exhausted`]) and move
    /// the endpoints' failure clocks ([`move_failure_clocks`]), all in one transaction.
    async fn record_batch(
        &self,
        batch: &[Attempted],
        policy: &RetryPolicy,
    ) -> Result<Vec<Result<Recorded, StoreError>>, StoreError> {
        let tx = Pipelined::new(self.background_client().await?);
        let now = Timestamp::now();
        let mut rows = lock_batch(&tx, batch).await?;
        let Decided {
            attempts,
            updates,
            mut out,
            mut outcomes,
            exhausted,
            endings,
        } = decide(batch, &mut rows, policy, now);
        // Every write of the batch in one round trip, in this order.
        tokio::try_join!(
            biased;
            async {
                if attempts.delivery_id.is_empty() {
                    return Ok(());
                }
                tokio::try_join!(biased; attempts.insert(&*tx), updates.apply(&*tx, now))
                    .map(|_| ())
            },
            rollups::add_endings(&*tx, &endings, now),
        )?;
        report_exhausted(&*tx, &exhausted).await?;
        let disabled = move_failure_clocks(&*tx, &rows, &mut outcomes, policy, now).await?;
        tx.commit().await.map_err(pg_err)?;
        drop(tx);
        if !disabled.is_empty() {
            for ((delivery_id, _, _), recorded) in batch.iter().zip(out.iter_mut()) {
                if let (Ok(r), Some(endpoint)) = (recorded, rows.endpoint_of.get(delivery_id))
                    && disabled.contains(endpoint)
                {
                    r.next_due = None;
                    r.endpoint_disabled = true;
                }
            }
        }
        if !disabled.is_empty() || !exhausted.is_empty() {
            // Operational events were written: the recorder has them numbered once it has
            // answered (so a delivery is not shown ended while its attempt still counts as in
            // flight), then tells fan-out.
            for r in out.iter_mut().flatten() {
                r.events = true;
            }
        }
        Ok(out)
    }
}

/// One finished attempt to record: the delivery, the lease it was attempted under, the result.
type Attempted = (String, Option<String>, AttemptResult);

/// What recording a batch reads first, locked.
struct BatchRows {
    /// Each delivery's endpoint.
    endpoint_of: HashMap<String, String>,
    /// Each delivery's event type, for `delivery.failed`.
    event_type_of: HashMap<String, String>,
    /// Deliveries of a user to a `per_user` endpoint: ending one releases the next.
    ordered: HashSet<String>,
    /// Of those, the ones a later delivery overtook: their attempts say so.
    out_of_order: HashSet<String>,
    /// The endpoints whose row is written, in ID order.
    touched: Vec<String>,
    /// Their status and failure clock.
    clocks: HashMap<String, (String, Option<i64>)>,
    /// Each delivery's row: id, status, attempt_count, retries_used, resume_at, lease_token.
    current: HashMap<String, tokio_postgres::Row>,
}

/// Begins the transaction with its first read (one round trip), reads the batch's
/// deliveries and locks what changes: the endpoints whose failure clock moves first, then the
/// deliveries, each in ID order (the order disabling and deleting use).
async fn lock_batch(tx: &Pipelined, batch: &[Attempted]) -> Result<BatchRows, StoreError> {
    let ids: Vec<String> = batch.iter().map(|b| b.0.clone()).collect();
    let mut endpoint_of: HashMap<String, String> = HashMap::new();
    let mut clock_set: HashMap<String, bool> = HashMap::new();
    let mut event_type_of: HashMap<String, String> = HashMap::new();
    let (mut ordered, mut out_of_order) = (HashSet::new(), HashSet::new());
    let ids_param: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&ids];
    let (_, facts) = tokio::try_join!(
        biased;
        tx.begin(""),
        tx.fetch(
            "SELECT d.id, d.endpoint_id, ep.failing_since IS NOT NULL, d.event_type,
                    ep.ordering = 'per_user' AND d.user_id IS NOT NULL, d.out_of_order
             FROM deliveries d JOIN endpoints ep ON ep.id = d.endpoint_id
             WHERE d.id = ANY($1)",
            &ids_param,
        ),
    )
    .map_err(pg_err)?;
    for r in facts {
        endpoint_of.insert(r.get(0), r.get(1));
        clock_set.insert(r.get(1), r.get(2));
        event_type_of.insert(r.get(0), r.get(3));
        if r.get::<_, bool>(4) {
            ordered.insert(r.get::<_, String>(0));
            if r.get::<_, bool>(5) {
                out_of_order.insert(r.get::<_, String>(0));
            }
        }
    }
    // An endpoint's row is written (and so locked first) when an attempt failed, or when
    // one succeeded while its failure clock runs. A success racing another instance's
    // first failure leaves that clock running until the next success.
    let mut touched: Vec<String> = batch
        .iter()
        .filter_map(|(id, _, result)| {
            let endpoint = endpoint_of.get(id)?;
            (!result.succeeded() || clock_set.get(endpoint).copied().unwrap_or(false))
                .then(|| endpoint.clone())
        })
        .collect();
    touched.sort();
    touched.dedup();
    let mut clocks: HashMap<String, (String, Option<i64>)> = HashMap::new();
    if !touched.is_empty() {
        for r in tx
            .fetch(
                "SELECT id, status, failing_since FROM endpoints
                 WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
                &[&touched],
            )
            .await
            .map_err(pg_err)?
        {
            clocks.insert(r.get(0), (r.get(1), r.get(2)));
        }
    }
    let current = tx
        .fetch(
            "SELECT id, status, attempt_count, retries_used, resume_at, lease_token
             FROM deliveries WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            &[&ids],
        )
        .await
        .map_err(pg_err)?
        .into_iter()
        .map(|r| (r.get::<_, String>(0), r))
        .collect();
    Ok(BatchRows {
        endpoint_of,
        event_type_of,
        ordered,
        out_of_order,
        touched,
        clocks,
        current,
    })
}

/// What a batch's attempts decided, ready to write.
#[derive(Default)]
struct Decided {
    attempts: AttemptColumns,
    updates: DeliveryColumns,
    /// The answer for each attempt, in batch order.
    out: Vec<Result<Recorded, StoreError>>,
    /// Per touched endpoint: (started_at, succeeded, gone) of its recorded attempts.
    outcomes: HashMap<String, Vec<(i64, bool, bool)>>,
    /// Deliveries of user events whose schedule this batch used up: `delivery.failed`.
    exhausted: Vec<String>,
    /// (endpoint, succeeded) of each delivery this batch ends: the rollup counters.
    endings: Vec<(String, bool)>,
}

/// Each attempt's outcome by the domain's rules ([`settle`]); only the lease holder's result
/// is written.
fn decide(
    batch: &[Attempted],
    rows: &mut BatchRows,
    policy: &RetryPolicy,
    now: Timestamp,
) -> Decided {
    let mut d = Decided::default();
    for (delivery_id, lease_token, result) in batch {
        let Some(row) = rows.current.remove(delivery_id) else {
            d.out.push(Err(StoreError::NotFound));
            continue;
        };
        let status: String = row.get(1);
        let attempt_count: i32 = row.get(2);
        let retries_used: i32 = row.get(3);
        let resume_at: Option<i64> = row.get(4);
        let holder: Option<String> = row.get(5);
        let current = DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Failed);
        if current == DeliveryStatus::Pending
            && lease_token.is_some()
            && holder.as_deref() != lease_token.as_deref()
        {
            // The lease expired and another instance took the delivery (or it was
            // released): only the lease holder writes results. A delivery that is no
            // longer pending was ended while in flight; `settle` keeps it as it is.
            tracing::warn!(delivery_id = %delivery_id, "lease lost; this attempt's result is discarded");
            d.out.push(Ok(Recorded {
                next_due: None,
                endpoint_disabled: false,
                events: false,
            }));
            continue;
        }
        let number = attempt_count + 1;
        let facts = DeliveryFacts {
            retries_used: retries_used as u32,
            resume_at: resume_at.map(Timestamp),
        };
        let jitter = rand::random::<f64>() * 2.0 - 1.0;
        let settled = settle(current, facts, result, policy, now, jitter);
        if rows
            .event_type_of
            .get(delivery_id)
            .is_some_and(|event_type| reports_failure(event_type, &settled))
        {
            d.exhausted.push(delivery_id.clone());
        }
        d.attempts.push(
            delivery_id,
            number,
            result,
            rows.out_of_order.contains(delivery_id),
        );
        d.updates.push(
            delivery_id,
            settled.status,
            number,
            i32::from(settled.spends_retry),
            settled.next_attempt_at,
            settled.applies.then_some(result),
        );
        if current == DeliveryStatus::Pending
            && settled.status != DeliveryStatus::Pending
            && let Some(endpoint) = rows.endpoint_of.get(delivery_id)
        {
            d.endings.push((
                endpoint.clone(),
                settled.status == DeliveryStatus::Succeeded,
            ));
        }
        // An ended delivery's late attempt is only logged: it does not move the clock.
        if settled.applies
            && let Some(endpoint) = rows.endpoint_of.get(delivery_id)
            && rows.clocks.contains_key(endpoint)
        {
            d.outcomes.entry(endpoint.clone()).or_default().push((
                result.started_at.millis(),
                result.succeeded(),
                result.gone(),
            ));
        }
        // Ended on a per-user endpoint: the next delivery of its user is due now (released
        // by the trigger of migration 0015), so the lane is looked at again.
        let released = (settled.next_attempt_at.is_none() && rows.ordered.contains(delivery_id))
            .then_some(now);
        d.out.push(Ok(Recorded {
            next_due: settled.next_attempt_at.or(released),
            endpoint_disabled: false,
            events: false,
        }));
    }
    d
}

/// Writes `delivery.failed` for each delivery whose schedule was used up, each as
/// `GET /v1/deliveries/{id}` now shows it, in the recording's transaction.
async fn report_exhausted(tx: &impl Cached, exhausted: &[String]) -> Result<(), StoreError> {
    if exhausted.is_empty() {
        return Ok(());
    }
    for r in tx
        .fetch(
            &format!(
                "SELECT {DELIVERY_COLUMNS}, org_id FROM deliveries
                 WHERE id = ANY($1) ORDER BY id"
            ),
            &[&exhausted],
        )
        .await
        .map_err(pg_err)?
    {
        let delivery = delivery_from_row(&r)?;
        let org: String = r.get(10);
        insert_operational_event(tx, &org, &OperationalEvent::delivery_failed(&delivery)).await?;
    }
    Ok(())
}

/// Failure clocks, in the order the attempts started: a success stops the clock, the first
/// failure after it starts it again. 410 Gone, or failing for too long, disables the endpoint
/// (and its pending deliveries are failed in the background). Returns the endpoints disabled.
async fn move_failure_clocks(
    tx: &impl Cached,
    rows: &BatchRows,
    outcomes: &mut HashMap<String, Vec<(i64, bool, bool)>>,
    policy: &RetryPolicy,
    now: Timestamp,
) -> Result<Vec<String>, StoreError> {
    let mut disabled: Vec<String> = Vec::new();
    for endpoint in &rows.touched {
        let (Some((ep_status, since_before)), Some(seen)) =
            (rows.clocks.get(endpoint), outcomes.get_mut(endpoint))
        else {
            continue;
        };
        seen.sort_unstable();
        let started: Vec<(Timestamp, bool)> = seen
            .iter()
            .map(|&(at, ok, _)| (Timestamp(at), ok))
            .collect();
        let since = failing_since(since_before.map(Timestamp), &started).map(Timestamp::millis);
        let enabled = ep_status == "enabled";
        if since != *since_before && (enabled || since.is_none()) {
            tx.run(
                "UPDATE endpoints SET failing_since = $2 WHERE id = $1",
                &[endpoint, &since],
            )
            .await
            .map_err(pg_err)?;
        }
        if !enabled {
            continue;
        }
        let gone = seen.iter().any(|&(_, _, gone)| gone);
        if let Some(reason) = disable_reason(gone, since.map(Timestamp), policy, now) {
            disable_endpoint(tx, endpoint, &reason, now).await?;
            disabled.push(endpoint.clone());
        }
    }
    Ok(disabled)
}

/// The attempts of a batch, column by column, for one `INSERT … SELECT FROM UNNEST`.
#[derive(Default)]
struct AttemptColumns {
    delivery_id: Vec<String>,
    number: Vec<i32>,
    trigger: Vec<&'static str>,
    started_at: Vec<i64>,
    duration_ms: Vec<i64>,
    status_code: Vec<Option<i32>>,
    error_class: Vec<Option<&'static str>>,
    error: Vec<Option<String>>,
    response_headers: Vec<String>,
    response_body: Vec<String>,
    out_of_order: Vec<bool>,
}

impl AttemptColumns {
    fn push(&mut self, delivery_id: &str, number: i32, r: &AttemptResult, out_of_order: bool) {
        self.out_of_order.push(out_of_order);
        self.delivery_id.push(delivery_id.to_owned());
        self.number.push(number);
        self.trigger.push(r.trigger.as_str());
        self.started_at.push(r.started_at.millis());
        self.duration_ms.push(r.duration_ms as i64);
        self.status_code.push(r.status_code.map(i32::from));
        self.error_class.push(r.error_class.map(ErrorClass::as_str));
        self.error.push(r.error.clone());
        self.response_headers
            .push(serde_json::to_string(&r.response_headers).expect("headers serialise"));
        self.response_body.push(r.response_body.clone());
    }

    async fn insert(&self, tx: &impl Cached) -> Result<(), StoreError> {
        tx.run(
            "INSERT INTO attempts (delivery_id, number, trigger, started_at, duration_ms,
                                   status_code, error_class, error, response_headers,
                                   response_body, out_of_order)
             SELECT * FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::int8[], $5::int8[],
                                  $6::int4[], $7::text[], $8::text[], $9::text[], $10::text[],
                                  $11::bool[])",
            &[
                &self.delivery_id,
                &self.number,
                &self.trigger,
                &self.started_at,
                &self.duration_ms,
                &self.status_code,
                &self.error_class,
                &self.error,
                &self.response_headers,
                &self.response_body,
                &self.out_of_order,
            ],
        )
        .await
        .map(|_| ())
        .map_err(pg_err)
    }
}

/// What each delivery of a batch becomes, column by column, for one `UPDATE … FROM UNNEST`.
#[derive(Default)]
struct DeliveryColumns {
    id: Vec<String>,
    status: Vec<&'static str>,
    attempt_count: Vec<i32>,
    spent: Vec<i32>,
    next_attempt_at: Vec<Option<i64>>,
    last_status_code: Vec<Option<i32>>,
    keep_code: Vec<bool>,
}

impl DeliveryColumns {
    fn push(
        &mut self,
        id: &str,
        status: DeliveryStatus,
        attempt_count: i32,
        spent: i32,
        next_at: Option<Timestamp>,
        decided: Option<&AttemptResult>,
    ) {
        self.id.push(id.to_owned());
        self.status.push(status.as_str());
        self.attempt_count.push(attempt_count);
        self.spent.push(spent);
        self.next_attempt_at.push(next_at.map(Timestamp::millis));
        // `None` (an ended delivery's late attempt) keeps the last status code it has.
        self.keep_code.push(decided.is_none());
        self.last_status_code
            .push(decided.and_then(|r| r.status_code).map(i32::from));
    }

    async fn apply(&self, tx: &impl Cached, now: Timestamp) -> Result<(), StoreError> {
        tx.run(
            "UPDATE deliveries d SET status = u.status, attempt_count = u.attempt_count,
                 retries_used = d.retries_used + u.spent, next_attempt_at = u.next_attempt_at,
                 manual = false, resume_at = NULL,
                 last_status_code = CASE WHEN u.keep_code THEN d.last_status_code
                                         ELSE u.last_status_code END,
                 updated_at = $7, lease_token = NULL, lease_until = NULL
             FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::int4[], $5::int8[], $6::int4[],
                         $8::bool[])
                  AS u(id, status, attempt_count, spent, next_attempt_at, last_status_code,
                       keep_code)
             WHERE d.id = u.id",
            &[
                &self.id,
                &self.status,
                &self.attempt_count,
                &self.spent,
                &self.next_attempt_at,
                &self.last_status_code,
                &now.millis(),
                &self.keep_code,
            ],
        )
        .await
        .map(|_| ())
        .map_err(pg_err)
    }
}

impl PgStore {
    /// Deliveries newest first, walking the index [`DeliveryFilter::walk`] picks (statements
    /// in [`delivery_walk_sql`]); at most [`LIST_SCAN_ROWS`] rows a request.
    pub async fn list_deliveries(
        &self,
        org: String,
        filter: DeliveryFilter,
        after: Option<String>,
        limit: usize,
    ) -> Result<ListPage<DeliveryRecord>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        // One round trip checks the ID filters against this organization and finds the cursor.
        let facts = tx
            .fetch_one(
                "SELECT $2::text IS NULL
                        OR EXISTS (SELECT 1 FROM users WHERE id = $2 AND org_id = $1),
                        $3::text IS NULL
                        OR EXISTS (SELECT 1 FROM endpoints WHERE id = $3 AND org_id = $1),
                        $4::text IS NULL
                        OR EXISTS (SELECT 1 FROM events WHERE id = $4 AND org_id = $1),
                        (SELECT seq FROM deliveries WHERE id = $5::text AND org_id = $1)",
                &[
                    &org,
                    &filter.user_id,
                    &filter.endpoint_id,
                    &filter.event_id,
                    &after,
                ],
            )
            .await
            .map_err(pg_err)?;
        if !facts.get::<_, bool>(0) {
            return Err(StoreError::NotFound);
        }
        // Newest first: the cursor is the last delivery of the previous page.
        let before: i64 = match after {
            None => i64::MAX,
            Some(_) => facts
                .get::<_, Option<i64>>(3)
                .ok_or(StoreError::UnknownCursor)?,
        };
        // An endpoint or event of another organization, or of none, matches nothing (and so
        // the walks by endpoint or event read only this organization's rows).
        if !facts.get::<_, bool>(1) || !facts.get::<_, bool>(2) {
            return Ok(ListPage::empty());
        }
        let walk = filter.walk();
        walk_rows(
            &tx,
            &delivery_walk_sql(walk),
            &[
                &org,
                &before,
                &filter.endpoint_id,
                &filter.event_id,
                &filter.user_id,
                &filter.event_type,
                &filter.status.map(DeliveryStatus::as_str),
                &filter.since.map(Timestamp::millis),
                &filter.until.map(Timestamp::millis),
            ],
            limit,
            // One event's deliveries are sorted (at most one per endpoint).
            walk != DeliveryWalk::Event,
            |r| {
                // NULL (a NULL column compared) is no match either.
                let item = if r.get::<_, Option<bool>>(WALK_MATCH) == Some(true) {
                    Some(delivery_from_row(r)?)
                } else {
                    None
                };
                Ok((r.get(0), item))
            },
        )
        .await
    }

    pub async fn get_delivery(
        &self,
        org: String,
        id: String,
    ) -> Result<DeliveryRecord, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        get_delivery_row(&tx, &org, &id)
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn list_attempts(
        &self,
        org: String,
        id: String,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        get_delivery_row(&tx, &org, &id)
            .await?
            .ok_or(StoreError::NotFound)?;
        let rows = tx
            .fetch(
                "SELECT number, trigger, started_at, duration_ms, status_code, error_class,
                        error, response_headers, response_body, out_of_order
                 FROM attempts WHERE delivery_id = $1 ORDER BY number",
                &[&id],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows
            .iter()
            .map(|r| {
                let number: i32 = r.get(0);
                let trigger: String = r.get(1);
                let duration: i64 = r.get(3);
                let code: Option<i32> = r.get(4);
                let class: Option<String> = r.get(5);
                let headers: String = r.get(7);
                AttemptRecord {
                    number: number as u32,
                    result: AttemptResult {
                        trigger: if trigger == "manual" {
                            Trigger::Manual
                        } else {
                            Trigger::Scheduled
                        },
                        started_at: Timestamp(r.get(2)),
                        duration_ms: duration as u64,
                        status_code: code.map(|c| c as u16),
                        error_class: class.as_deref().and_then(ErrorClass::parse),
                        error: r.get(6),
                        response_headers: serde_json::from_str(&headers).unwrap_or_default(),
                        response_body: r.get(8),
                        retry_after: None,
                    },
                    out_of_order: r.get(9),
                }
            })
            .collect())
    }

    pub async fn request_retry(
        &self,
        org: String,
        id: String,
    ) -> Result<DeliveryRecord, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let d = get_delivery_row(&tx, &org, &id)
            .await?
            .ok_or(StoreError::NotFound)?;
        let endpoint = live_endpoint(&tx, &org, &d.endpoint_id, true)
            .await?
            .ok_or(StoreError::NotFound)?;
        if endpoint.status != EndpointStatus::Enabled {
            return Err(StoreError::EndpointDisabled);
        }
        // Any instance's attempt in flight holds an unexpired lease.
        let leased: bool = tx
            .fetch_one(
                "SELECT COALESCE(lease_until > accommador_now_ms(), false)
                 FROM deliveries WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(pg_err)?
            .get(0);
        if leased {
            return Err(StoreError::AttemptInFlight);
        }
        let now = Timestamp::now();
        tx.run(
            &format!(
                "UPDATE deliveries d SET
                     resume_at = CASE WHEN status = 'pending' AND NOT manual
                                      THEN COALESCE(next_attempt_at, $2) ELSE resume_at END,
                     status = 'pending', next_attempt_at = $2, manual = true, updated_at = $2,
                     out_of_order = {}
                 WHERE id = $1",
                overtaken_sql("d")
            ),
            &[&id, &now.millis()],
        )
        .await
        .map_err(pg_err)?;
        let d = get_delivery_row(&tx, &org, &id)
            .await?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(d)
    }

    /// Re-queues the endpoint's failed deliveries of events that occurred in `[since,
    /// until)` and creates the ones it never got for events of that window, in bounded
    /// batches: each transaction re-queues or creates at most [`RECOVER_BATCH`] deliveries
    /// (one set-based statement each) under a share lock on the endpoint row, and nothing is
    /// held between batches. Each walk moves forward by a cursor (delivery `seq`, event
    /// `commit_seq`), so every delivery is counted once.
    pub async fn recover(
        &self,
        org: String,
        endpoint_id: String,
        since: Timestamp,
        until: Option<Timestamp>,
    ) -> Result<(usize, usize), StoreError> {
        let until = until.unwrap_or(Timestamp(i64::MAX));
        let now = Timestamp::now();
        let mut requeued = 0;
        let mut after: i64 = 0;
        let mut first = true;
        let types = loop {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let Some(types) = recoverable(&tx, &org, &endpoint_id, first).await? else {
                return Ok((requeued, 0));
            };
            first = false;
            let done = tx
                .fetch_one(
                    &format!(
                        "WITH batch AS (
                         SELECT d.seq FROM deliveries d JOIN events e ON e.seq = d.event_seq
                         WHERE d.endpoint_id = $1 AND d.status = 'failed' AND d.seq > $5
                           AND e.occurred_at >= $2 AND e.occurred_at < $3
                         ORDER BY d.seq LIMIT $6
                         FOR UPDATE OF d),
                     done AS (
                         UPDATE deliveries d SET status = 'pending', next_attempt_at = $4,
                             retries_used = 0, manual = false, resume_at = NULL, updated_at = $4,
                             out_of_order = {overtaken}
                         FROM batch WHERE d.seq = batch.seq
                         RETURNING d.seq)
                     SELECT count(*), max(seq) FROM done",
                        overtaken = overtaken_sql("d")
                    ),
                    &[
                        &endpoint_id,
                        &since.millis(),
                        &until.millis(),
                        &now.millis(),
                        &after,
                        &(RECOVER_BATCH as i64),
                    ],
                )
                .await
                .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            let n = done.get::<_, i64>(0) as usize;
            requeued += n;
            match done.get::<_, Option<i64>>(1) {
                Some(last) if n == RECOVER_BATCH => after = last,
                _ => break types,
            }
        };
        let mut created = 0;
        let mut after: i64 = 0;
        loop {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            if recoverable(&tx, &org, &endpoint_id, false).await?.is_none() {
                break;
            }
            // Events of the window that the endpoint's creation did not see (they are its
            // own), of the types it takes, that it has no delivery of yet.
            let missing = tx
                .fetch(
                    "SELECT e.seq, e.id, e.type, e.commit_seq FROM events e, endpoints ep
                     WHERE ep.id = $4 AND e.org_id = $1 AND e.commit_seq > $5
                       AND NOT pg_visible_in_snapshot(e.xid, ep.created_snapshot)
                       AND e.occurred_at >= $2 AND e.occurred_at < $3
                       AND e.type <> 'webhook.test' AND e.type = ANY($6)
                       AND e.about_endpoint IS DISTINCT FROM $4
                       AND NOT EXISTS (SELECT 1 FROM deliveries d
                                       WHERE d.event_id = e.id AND d.endpoint_id = $4)
                     ORDER BY e.commit_seq LIMIT $7",
                    &[
                        &org,
                        &since.millis(),
                        &until.millis(),
                        &endpoint_id,
                        &after,
                        &types,
                        &(RECOVER_BATCH as i64),
                    ],
                )
                .await
                .map_err(pg_err)?;
            let mut rows = NewDeliveries::default();
            for r in &missing {
                rows.push(&org, r.get(0), r.get(1), r.get(2), &endpoint_id);
            }
            created += rows.insert(&tx, now).await?.new as usize;
            tx.commit().await.map_err(pg_err)?;
            match missing.last() {
                Some(last) if missing.len() == RECOVER_BATCH => after = last.get(3),
                _ => break,
            }
        }
        Ok((requeued, created))
    }

    pub async fn send_test(
        &self,
        org: String,
        endpoint_id: String,
    ) -> Result<(String, String), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let endpoint = live_endpoint(&tx, &org, &endpoint_id, true)
            .await?
            .ok_or(StoreError::NotFound)?;
        if endpoint.status != EndpointStatus::Enabled {
            return Err(StoreError::EndpointDisabled);
        }
        let now = Timestamp::now();
        let (event_id, payload) = crate::domain::event::test_event(&endpoint_id, now);
        let seq: i64 = tx
            .fetch_one(
                "INSERT INTO events (id, org_id, type, occurred_at, payload)
                 VALUES ($1, $2, 'webhook.test', $3, $4) RETURNING seq",
                &[&event_id, &org, &now.millis(), &payload],
            )
            .await
            .map_err(pg_err)?
            .get(0);
        let delivery_id = insert_delivery(
            &tx,
            &org,
            seq,
            &event_id,
            EventType::WebhookTest.as_str(),
            &endpoint_id,
            now,
        )
        .await?
        .ok_or_else(|| StoreError::database(std::io::Error::other("test delivery exists")))?;
        tx.commit().await.map_err(pg_err)?;
        Ok((event_id, delivery_id))
    }

    pub async fn delivery_stats(&self, now: Timestamp) -> Result<DeliveryStats, StoreError> {
        let client = self.client().await?;
        // Bounded: the oldest from the head of the due index, the count up to DUE_COUNTED.
        let row = client
            .fetch_one(
                "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM deliveries
                                               WHERE status = 'pending' AND next_attempt_at <= $1
                                               LIMIT $2) d),
                        (SELECT next_attempt_at FROM deliveries
                          WHERE status = 'pending' AND next_attempt_at <= $1
                          ORDER BY next_attempt_at LIMIT 1)",
                &[&now.millis(), &DUE_COUNTED],
            )
            .await
            .map_err(pg_err)?;
        let disabled = client
            .fetch_one(
                "SELECT COUNT(*) FROM endpoints WHERE status = 'disabled' AND deleted_at IS NULL",
                &[],
            )
            .await
            .map_err(pg_err)?;
        let waiting = client
            .fetch_one(
                "SELECT COUNT(*) FROM (SELECT 1 FROM deliveries
                                       WHERE status = 'pending' AND next_attempt_at IS NULL
                                       LIMIT $1) w",
                &[&ORDERED_WAITING_COUNTED],
            )
            .await
            .map_err(pg_err)?;
        let due: i64 = row.get(0);
        let disabled: i64 = disabled.get(0);
        let waiting: i64 = waiting.get(0);
        Ok(DeliveryStats {
            due: due as u64,
            oldest_due: row.get::<_, Option<i64>>(1).map(Timestamp),
            disabled_endpoints: disabled as u64,
            ordered_waiting: waiting as u64,
        })
    }

    /// Up to [`CANCEL_BATCH`] deliveries of the endpoint that wait behind an earlier one of
    /// their user are due now ([`crate::store::Store::release_waiting`]).
    pub async fn release_waiting_batch(&self, endpoint_id: String) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let n = client
            .run(
                "UPDATE deliveries SET next_attempt_at = accommador_now_ms()
                 WHERE seq IN (SELECT seq FROM deliveries
                               WHERE endpoint_id = $1 AND status = 'pending'
                                 AND next_attempt_at IS NULL
                               LIMIT $2 FOR UPDATE SKIP LOCKED)",
                &[&endpoint_id, &(CANCEL_BATCH as i64)],
            )
            .await
            .map_err(pg_err)?;
        Ok(n as usize)
    }
}
