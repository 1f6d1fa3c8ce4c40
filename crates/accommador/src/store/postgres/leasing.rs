//! Leasing due deliveries on PostgreSQL, where several instances share one database.
//!
//! - A lease (`lease_token`, `lease_until` by the database clock) says which instance attempts
//!   a delivery; only its holder records the result. Leasing leaves `next_attempt_at` alone,
//!   so the delivery log shows when a delivery was scheduled, not when its lease runs out.
//! - Bounds across instances: at most the per-endpoint bound of unexpired leases per endpoint,
//!   and at most `ACCOMMADOR_ORG_CONCURRENCY` per organization. Each organization's count is
//!   taken under its transaction-level advisory lock, so two instances never both see room
//!   for the same slot. An instance alone on an endpoint or an organization (no other
//!   instance's lease on it) leases up to as many again ahead ([`LaneRequest::ahead`],
//!   [`crate::store::Lease::org_ahead`]), started as its own slots free, without a round trip:
//!   another instance counts those leases whole, so the attempts open across instances stay
//!   within the bounds. (One event to 10,000 endpoints of one organization was a round trip
//!   per 64 sends without it.)
//! - One dispatcher step is two round trips whatever its number of lanes: `BEGIN`, the
//!   organizations' locks, counts and the endpoints' state; then one set-based statement
//!   leasing every lane (`UNNEST` of the lanes, `LATERAL … FOR UPDATE SKIP LOCKED`), one
//!   telling when each is due next, and `COMMIT` ([`super::pipelined`]). (It was four; at
//!   1,000 events/s to one endpoint the reads' round trips were part of what bounded its
//!   sends.)
//! - A lane whose due work others' leases hold back waits for a release to be announced
//!   (`accommador_freed`), not for a timer: [`LaneWork::held_until`].

use std::collections::HashMap;

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::pipelined::Pipelined;
use super::{Cached, PgStore, pg_err};
use crate::delivery::notify::FREED;
use crate::domain::delivery::Trigger;
use crate::domain::turns::take_in_turns;
use crate::domain::{Timestamp, ids};
use crate::store::{DueDelivery, LaneRequest, LaneWork, Lease, StoreError};

/// The seed of the organizations' leasing locks (`hashtextextended(org_id, seed)`); other
/// advisory locks use other seeds.
const ORG_LOCK_SEED: i64 = 13;

/// Takes the leasing lock of every organization with a lane in this step, in one order (so
/// instances leasing for the same organizations queue behind each other, never deadlock).
/// The lock is held until the transaction ends.
const LOCK_ORGS: &str = "SELECT count(pg_advisory_xact_lock(hashtextextended(org_id, $2)))
     FROM (SELECT DISTINCT org_id FROM endpoints WHERE id = ANY($1) ORDER BY org_id) o";

/// Per organization (read after [`LOCK_ORGS`], so by a snapshot that sees every lease
/// committed before the lock was granted): the other instances' unexpired leases (`$2` is this
/// instance's token; its own attempts are counted exactly by the caller:
/// [`LaneRequest::org_active`]), and when the first of them runs out. Through
/// `deliveries_org_leased`.
const ORG_LEASES: &str = "SELECT o.org_id,
            (SELECT count(*) FROM deliveries d
             WHERE d.org_id = o.org_id AND d.status = 'pending' AND d.lease_token IS NOT NULL
               AND d.lease_until > accommador_now_ms() AND d.lease_token <> $2),
            (SELECT min(d.lease_until) FROM deliveries d
             WHERE d.org_id = o.org_id AND d.status = 'pending' AND d.lease_token IS NOT NULL
               AND d.lease_until > accommador_now_ms() AND d.lease_token <> $2)
     FROM (SELECT DISTINCT org_id FROM endpoints WHERE id = ANY($1)) o";

/// Each lane's endpoint: its organization, whether it may be sent to, its live signing
/// secrets (newest first, then the ones being rotated out), and whether it orders per user.
const LANE_STATES: &str = "SELECT ep.id, ep.org_id, ep.status, ep.disabled_reason,
            ep.deleted_at IS NOT NULL,
            ARRAY(SELECT s.secret FROM endpoint_secrets s
                  WHERE s.endpoint_id = ep.id AND (s.expires_at IS NULL OR s.expires_at > $2)
                  ORDER BY s.expires_at IS NOT NULL, s.created_at DESC),
            ep.ordering = 'per_user'
     FROM endpoints ep WHERE ep.id = ANY($1)";

/// Leases every lane's due deliveries in one statement: for each lane (`$1` endpoint, `$2`
/// at most this many, `$3` this instance's open and queued attempts there, `$4` how many it
/// may lease ahead), the other instances' unexpired leases on the endpoint (`busy`, through
/// `deliveries_endpoint_leased`), then its due deliveries nobody holds, oldest due first,
/// up to the endpoint's bound (`$7`) across instances. Only an instance alone on the endpoint
/// leases ahead: another instance counts those leases as busy, so the attempts in flight never
/// exceed the bound. `$5` is this instance's token, `$6` the lease's length. On a lane that
/// orders per user (`$8`), a delivery is taken only when no earlier one of its user to the
/// endpoint is pending, leased ones (any instance's) included: one probe of
/// `deliveries_user_pending` per row (written as the earliest such delivery, in the index's
/// order, so that with sorts off it can read no other index). The deliveries that wait behind an earlier one have no
/// `next_attempt_at` (migration 0015), so the walk never reads them. A delivery this
/// instance has in flight holds its unexpired lease, so it is not taken again (should its
/// lease have run out, it is only renewed, and the caller drops it: see
/// [`PgStore::lane_work`]). Every step of it is driven by the lanes and the rows picked, never
/// by a table: the picked rows (locked by this statement, so their `ctid` holds) are updated by
/// a TID scan, and each leased row's event and endpoint are one key probe each (`OFFSET 0`
/// keeps them lookups). Joining the update to `endpoints` let the planner, without
/// statistics, walk every endpoint of the database per step (50 ms at 10,000 endpoints).
pub(super) const LEASE_LANES: &str = "WITH clock AS MATERIALIZED (SELECT accommador_now_ms() AS t),
     picked AS (
         SELECT p.ctid FROM
             UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $8::bool[])
                 AS l(endpoint_id, lim, active, ahead, ordered)
             CROSS JOIN LATERAL (
                 SELECT count(*) AS n FROM deliveries b
                 WHERE b.endpoint_id = l.endpoint_id AND b.status = 'pending'
                   AND b.lease_token IS NOT NULL AND b.lease_until > (SELECT t FROM clock)
                   AND b.lease_token <> $5) busy
             CROSS JOIN LATERAL (
                 SELECT d.ctid FROM deliveries d
                 WHERE d.endpoint_id = l.endpoint_id AND d.status = 'pending'
                   AND d.next_attempt_at <= (SELECT t FROM clock)
                   AND d.seq > COALESCE((SELECT f.cancel_through FROM endpoints f
                                         WHERE f.id = l.endpoint_id), 0)
                   AND (d.lease_until IS NULL OR d.lease_until <= (SELECT t FROM clock))
                   AND (NOT l.ordered OR d.user_id IS NULL OR (
                       SELECT p.event_seq FROM deliveries p
                       WHERE p.endpoint_id = d.endpoint_id AND p.user_id = d.user_id
                         AND p.status = 'pending' AND p.user_id IS NOT NULL
                         AND p.event_seq < d.event_seq
                       ORDER BY p.event_seq LIMIT 1) IS NULL)
                   AND EXISTS (SELECT 1 FROM endpoints ep
                               WHERE ep.id = l.endpoint_id AND ep.status = 'enabled'
                                 AND ep.deleted_at IS NULL
                                 AND NOT EXISTS (SELECT 1 FROM organizations o
                                                 WHERE o.id = ep.org_id
                                                   AND o.deleted_at IS NOT NULL))
                 ORDER BY d.next_attempt_at
                 LIMIT GREATEST(0, LEAST(l.lim, $7::bigint - l.active - busy.n
                     + CASE WHEN busy.n = 0 THEN l.ahead ELSE 0 END))
                 FOR UPDATE OF d SKIP LOCKED) p),
     leased AS (
         UPDATE deliveries d
            SET lease_token = $5, lease_until = (SELECT t FROM clock) + $6
          WHERE d.ctid = ANY(ARRAY(SELECT ctid FROM picked))
          RETURNING d.id, d.endpoint_id, d.event_id, d.manual, d.attempt_count, d.event_seq,
                    d.seq)
     SELECT l.id, l.endpoint_id, l.event_id, l.manual, l.attempt_count, e.payload,
            e.occurred_at, ep.url, l.seq
       FROM leased l
       CROSS JOIN LATERAL (SELECT payload, occurred_at FROM events
                           WHERE seq = l.event_seq OFFSET 0) e
       CROSS JOIN LATERAL (SELECT url FROM endpoints WHERE id = l.endpoint_id OFFSET 0) ep";

/// When each lane may next have work: its earliest pending delivery that nobody holds (in due
/// order through the due index), or the earliest end of a lease that is not one of this
/// instance's live ones (its holder may have died; through the leased index, in lease-end
/// order). `$2` is this instance's token.
const NEXT_DUE: &str = "SELECT l.id, LEAST(
         (SELECT next_attempt_at FROM deliveries
          WHERE endpoint_id = l.id AND status = 'pending' AND lease_token IS NULL
            AND seq > COALESCE((SELECT cancel_through FROM endpoints WHERE id = l.id), 0)
          ORDER BY next_attempt_at LIMIT 1),
         (SELECT GREATEST(next_attempt_at, lease_until) FROM deliveries
          WHERE endpoint_id = l.id AND status = 'pending' AND lease_token IS NOT NULL
            AND NOT (lease_token = $2 AND lease_until > accommador_now_ms())
          ORDER BY lease_until LIMIT 1))
     FROM UNNEST($1::text[]) AS l(id)";

/// If no lease of an organization is found to wait for, how soon a lane whose due work was
/// not handed out looks again (its rows were locked by a recording or a cancellation).
const HELD_RETRY_MS: i64 = 100;

/// One lane's endpoint as leasing read it.
struct LaneState {
    org: String,
    /// Why nothing may be sent to it (disabled or deleted), if so.
    closed: Option<String>,
    secrets: Vec<String>,
    /// `ordering: per_user`.
    ordered: bool,
}

impl LaneState {
    fn from_row(r: &Row) -> (String, LaneState) {
        let closed = if r.get::<_, bool>(4) {
            Some("the endpoint was deleted".to_owned())
        } else if r.get::<_, &str>(2) != "enabled" {
            Some(
                r.get::<_, Option<String>>(3)
                    .unwrap_or_else(|| "the endpoint is disabled".to_owned()),
            )
        } else {
            None
        };
        (
            r.get(0),
            LaneState {
                org: r.get(1),
                closed,
                secrets: r.get(5),
                ordered: r.get(6),
            },
        )
    }
}

/// One organization's leases across instances, as counted under its lock.
struct OrgLeases {
    /// How many more this step may lease for it.
    room: usize,
    /// When its first unexpired lease runs out.
    first_end: Option<Timestamp>,
}

/// How many more leases of one organization this step may take: up to its bound less the
/// other instances' unexpired leases (`others`) and this instance's open and queued attempts
/// (`own`); up to the bound plus [`Lease::org_ahead`] when no other instance holds one (those
/// are started within the bound here, and another instance counts them whole).
fn org_room(lease: &Lease, others: usize, own: usize) -> usize {
    let bound = if others == 0 {
        lease.per_org.saturating_add(lease.org_ahead)
    } else {
        lease.per_org
    };
    bound.saturating_sub(others + own)
}

/// Each lane's limit cut to its organization's room across instances, handed out one at a
/// time to the organization's lanes in turn (in request order), so its endpoints share it.
/// Lanes of closed or unknown endpoints get nothing.
fn share_org_room(
    requests: &[LaneRequest],
    states: &HashMap<String, LaneState>,
    orgs: &mut HashMap<String, OrgLeases>,
) -> Vec<usize> {
    // A closed or unknown endpoint's lane may take nothing (its organization key is then
    // never looked at).
    let (caps, lane_orgs): (Vec<usize>, Vec<String>) = requests
        .iter()
        .map(|req| match states.get(&req.endpoint_id) {
            Some(state) if state.closed.is_none() => (req.limit, state.org.clone()),
            _ => (0, String::new()),
        })
        .unzip();
    let mut room: HashMap<String, usize> =
        orgs.iter().map(|(org, l)| (org.clone(), l.room)).collect();
    // No bound over all organizations here: each has its own room.
    let mut unbounded = usize::MAX;
    let granted = take_in_turns(&caps, &lane_orgs, &mut room, &mut unbounded);
    for (org, leases) in orgs.iter_mut() {
        leases.room = room[org];
    }
    granted
}

/// A leased row (see [`LEASE_LANES`]) as the delivery to attempt.
fn due_delivery(r: &Row, secrets: &[String], token: &str) -> DueDelivery {
    let manual: bool = r.get(3);
    let attempts: i32 = r.get(4);
    let payload: String = r.get(5);
    DueDelivery {
        id: r.get(0),
        seq: r.get(8),
        event_id: r.get(2),
        endpoint_id: r.get(1),
        url: r.get(7),
        payload: bytes::Bytes::from(payload),
        secrets: secrets.to_vec(),
        trigger: if manual {
            Trigger::Manual
        } else {
            Trigger::Scheduled
        },
        event_occurred_at: Timestamp(r.get(6)),
        first_attempt: attempts == 0,
        lease_token: Some(token.to_owned()),
    }
}

/// Marks closed endpoints for the background task that fails their pending deliveries
/// (`cancel_step`): a bulk write inside the leasing transaction would hold every lane of
/// this step.
const MARK_CLOSED: &str = "UPDATE endpoints SET cancel_pending = true,
         cancel_through = (SELECT COALESCE(max(seq), 0) FROM deliveries)
     WHERE id = ANY($1) AND NOT cancel_pending
       AND (status <> 'enabled' OR deleted_at IS NOT NULL)";

impl PgStore {
    /// Leases the due deliveries of each requested endpoint within the bounds across
    /// instances (per endpoint and per organization), lease times by the database clock.
    ///
    /// Its commit is not waited for on disk: a lease lost in a database crash only lets the
    /// delivery be leased again (at-least-once), and every acknowledgement, which is durable,
    /// flushes the leases written before it.
    pub async fn lane_work(
        &self,
        requests: Vec<LaneRequest>,
        _now: Timestamp,
    ) -> Result<Vec<LaneWork>, StoreError> {
        let lease = requests
            .iter()
            .find_map(|r| r.lease.clone())
            .unwrap_or_else(|| Lease {
                token: ids::new_id("lease_"),
                millis: 60_000,
                per_endpoint: requests.iter().map(|r| r.limit).max().unwrap_or(1),
                per_org: usize::MAX,
                org_ahead: 0,
            });
        let endpoint_ids: Vec<String> = requests.iter().map(|r| r.endpoint_id.clone()).collect();
        // BEGIN goes with round trip 1 and COMMIT with round trip 2 (see `pipelined`).
        let tx = Pipelined::new(self.background_client().await?);
        // Prepared first (a connection parses each once): round trip 2 ends with the COMMIT,
        // so its statements must go out as they are polled, not after a parse.
        let (lock_orgs, org_leases, lane_states, lease_lanes, next_due, mark_closed) =
            tokio::try_join!(
                tx.prepare_cached(LOCK_ORGS),
                tx.prepare_cached(ORG_LEASES),
                tx.prepare_cached(LANE_STATES),
                tx.prepare_cached(LEASE_LANES),
                tx.prepare_cached(NEXT_DUE),
                tx.prepare_cached(MARK_CLOSED),
            )
            .map_err(pg_err)?;

        // Round trip 1, pipelined (sent together, run in order). Every statement reads one
        // endpoint's or organization's rows through an index, in index order where it takes
        // the first few. Bitmap scans are off for this transaction: with statistics that guess
        // a backlogged endpoint has a handful of pending rows, the planner would otherwise read
        // and sort all of them on every step.
        let now_ms = Timestamp::now().millis();
        let lock_params: [&(dyn ToSql + Sync); 2] = [&endpoint_ids, &ORG_LOCK_SEED];
        let org_params: [&(dyn ToSql + Sync); 2] = [&endpoint_ids, &lease.token];
        let state_params: [&(dyn ToSql + Sync); 2] = [&endpoint_ids, &now_ms];
        let (_, _, org_rows, state_rows) = tokio::try_join!(
            biased;
            tx.begin("SET LOCAL synchronous_commit TO off; SET LOCAL enable_bitmapscan TO off;"),
            tx.query_one(&lock_orgs, &lock_params),
            tx.query(&org_leases, &org_params),
            tx.query(&lane_states, &state_params),
        )
        .map_err(pg_err)?;
        let states: HashMap<String, LaneState> =
            state_rows.iter().map(LaneState::from_row).collect();
        // This instance's own open and queued attempts per organization (the dispatcher
        // counts them exactly; its answered leases waiting to be recorded hold no slot).
        let mut own: HashMap<&str, usize> = HashMap::new();
        for req in &requests {
            if let Some(state) = states.get(&req.endpoint_id) {
                let n = own.entry(state.org.as_str()).or_default();
                *n = (*n).max(req.org_active);
            }
        }
        let mut orgs: HashMap<String, OrgLeases> = org_rows
            .iter()
            .map(|r| {
                let org: String = r.get(0);
                let others = r.get::<_, i64>(1).max(0) as usize;
                let room = org_room(&lease, others, own.get(org.as_str()).copied().unwrap_or(0));
                (
                    org,
                    OrgLeases {
                        room,
                        first_end: r.get::<_, Option<i64>>(2).map(Timestamp),
                    },
                )
            })
            .collect();
        let limits = share_org_room(&requests, &states, &mut orgs);

        // Deliveries that slipped past a disable or delete (created concurrently with it) are
        // failed in the background rather than sent: their endpoints are marked in round
        // trip 2.
        let closed: Vec<String> = requests
            .iter()
            .filter(|r| {
                states
                    .get(&r.endpoint_id)
                    .is_none_or(|s| s.closed.is_some())
            })
            .map(|r| r.endpoint_id.clone())
            .collect();

        // Round trip 2: every lane leased at once, when each is due next, the commit.
        let as_i64 = |f: fn(&LaneRequest) -> usize| -> Vec<i64> {
            requests.iter().map(|r| f(r) as i64).collect()
        };
        let limit: Vec<i64> = limits.iter().map(|&n| n as i64).collect();
        let (active, ahead) = (as_i64(|r| r.active), as_i64(|r| r.ahead));
        // Never handed out twice: checked here rather than against every row the statement
        // reads.
        let in_flight: std::collections::HashSet<&str> = requests
            .iter()
            .flat_map(|r| r.in_flight.iter().map(String::as_str))
            .collect();
        let bound = lease.per_endpoint as i64;
        let ordered: Vec<bool> = requests
            .iter()
            .map(|r| states.get(&r.endpoint_id).is_some_and(|s| s.ordered))
            .collect();
        let lease_params: [&(dyn ToSql + Sync); 8] = [
            &endpoint_ids,
            &limit,
            &active,
            &ahead,
            &lease.token,
            &lease.millis,
            &bound,
            &ordered,
        ];
        let next_params: [&(dyn ToSql + Sync); 2] = [&endpoint_ids, &lease.token];
        // When a lane orders per user, sorts are off for the rest of the transaction, so
        // that its per-user probe (`ORDER BY event_seq LIMIT 1`) reads deliveries_user_pending,
        // the one index in that order, not every pending delivery of the endpoint (0.6 ms a
        // row at 1,000 users). Only then: with sorts off in every step, fan-out to 10,000
        // unordered endpoints took 12 % longer (3.5-3.7 s became 4.0-4.3 s).
        let sorts = if ordered.contains(&true) {
            "SET LOCAL enable_sort TO off"
        } else {
            "SET LOCAL enable_sort TO on"
        };
        let (_, leased, next, _, _) = tokio::try_join!(
            biased;
            tx.batch_execute(sorts),
            tx.query(&lease_lanes, &lease_params),
            tx.query(&next_due, &next_params),
            async {
                if closed.is_empty() {
                    return Ok(0);
                }
                tx.execute(&mark_closed, &[&closed]).await
            },
            tx.commit(),
        )
        .map_err(pg_err)?;
        drop(tx);

        let mut due_of: HashMap<String, Vec<DueDelivery>> = HashMap::new();
        for r in leased
            .iter()
            .filter(|r| !in_flight.contains(r.get::<_, &str>(0)))
        {
            let endpoint: String = r.get(1);
            let secrets = states
                .get(&endpoint)
                .map(|s| s.secrets.as_slice())
                .unwrap_or_default();
            let d = due_delivery(r, secrets, &lease.token);
            due_of.entry(endpoint).or_default().push(d);
        }
        let next_of: HashMap<String, Option<i64>> =
            next.iter().map(|r| (r.get(0), r.get(1))).collect();
        let now = Timestamp::now();
        let out = requests
            .into_iter()
            .map(|req| {
                let state = states.get(&req.endpoint_id);
                if state.is_none_or(|s| s.closed.is_some()) {
                    return LaneWork {
                        endpoint_id: req.endpoint_id,
                        due: Vec::new(),
                        next_due: None,
                        held_until: None,
                    };
                }
                let due = due_of.remove(&req.endpoint_id).unwrap_or_default();
                let next_due = next_of
                    .get(&req.endpoint_id)
                    .copied()
                    .flatten()
                    .map(Timestamp);
                // Due, yet nothing handed out: other leases hold it back (the endpoint's or
                // the organization's bound across instances).
                let held_until =
                    (due.is_empty() && next_due.is_some_and(|at| at <= now)).then(|| {
                        state
                            .and_then(|s| orgs.get(&s.org))
                            .and_then(|o| o.first_end)
                            .filter(|end| *end > now)
                            .unwrap_or(Timestamp(now.millis() + HELD_RETRY_MS))
                    });
                LaneWork {
                    endpoint_id: req.endpoint_id,
                    due,
                    next_due,
                    held_until,
                }
            })
            .collect();
        Ok(out)
    }

    /// Gives leases back (graceful shutdown, a delivery queued too long, a send called off):
    /// the deliveries are due again at once, as scheduled, and every instance is told which
    /// organizations have room again (`accommador_freed`, sent at commit).
    pub async fn release_leases(&self, token: String, ids: Vec<String>) -> Result<(), StoreError> {
        let client = self.background_client().await?;
        client
            .run(
                &format!(
                    "WITH released AS (
                         UPDATE deliveries SET lease_token = NULL, lease_until = NULL
                         WHERE id = ANY($1) AND lease_token = $2 AND status = 'pending'
                         RETURNING org_id)
                     SELECT pg_notify('{FREED}', string_agg(DISTINCT org_id, ','))
                     FROM released HAVING count(*) > 0"
                ),
                &[&ids, &token],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(endpoint: &str, limit: usize) -> LaneRequest {
        LaneRequest {
            endpoint_id: endpoint.to_owned(),
            limit,
            in_flight: Vec::new(),
            active: 0,
            ahead: 0,
            org_active: 0,
            lease: None,
        }
    }

    fn open(org: &str) -> LaneState {
        LaneState {
            org: org.to_owned(),
            closed: None,
            secrets: Vec::new(),
            ordered: false,
        }
    }

    #[test]
    fn an_organizations_room_is_shared_between_its_lanes_in_turn() {
        let requests = vec![
            request("ep_a", 5),
            request("ep_b", 1),
            request("ep_c", 5),
            request("ep_d", 3),
        ];
        let states = HashMap::from([
            ("ep_a".to_owned(), open("org_1")),
            ("ep_b".to_owned(), open("org_1")),
            ("ep_c".to_owned(), open("org_1")),
            ("ep_d".to_owned(), open("org_2")),
        ]);
        let mut orgs = HashMap::from([
            (
                "org_1".to_owned(),
                OrgLeases {
                    room: 6,
                    first_end: None,
                },
            ),
            (
                "org_2".to_owned(),
                OrgLeases {
                    room: 0,
                    first_end: None,
                },
            ),
        ]);
        assert_eq!(
            share_org_room(&requests, &states, &mut orgs),
            vec![3, 1, 2, 0]
        );
        assert_eq!(orgs["org_1"].room, 0);
    }

    #[test]
    fn only_an_instance_alone_on_an_organization_leases_ahead_of_its_bound() {
        let lease = Lease {
            token: "lease_a".to_owned(),
            millis: 60_000,
            per_endpoint: 16,
            per_org: 64,
            org_ahead: 64,
        };
        // Alone: its bound again ahead, less what it has open or queued.
        assert_eq!(org_room(&lease, 0, 0), 128);
        assert_eq!(org_room(&lease, 0, 100), 28);
        assert_eq!(org_room(&lease, 0, 128), 0);
        // Beside another instance's leases: the bound across both, nothing ahead.
        assert_eq!(org_room(&lease, 1, 0), 63);
        assert_eq!(org_room(&lease, 10, 50), 4);
        // The other instance sees the first one's leases (ahead included) and gets nothing.
        assert_eq!(org_room(&lease, 128, 0), 0);
        // Without leasing ahead (SQLite's dispatcher, or an older caller): the bound.
        let plain = Lease {
            org_ahead: 0,
            ..lease
        };
        assert_eq!(org_room(&plain, 0, 0), 64);
        assert_eq!(org_room(&plain, 0, 64), 0);
    }

    #[test]
    fn closed_and_unknown_endpoints_get_nothing() {
        let requests = vec![request("ep_a", 2), request("ep_gone", 2)];
        let mut closed = open("org_1");
        closed.closed = Some("the endpoint is disabled".to_owned());
        let states = HashMap::from([("ep_a".to_owned(), closed)]);
        let mut orgs = HashMap::from([(
            "org_1".to_owned(),
            OrgLeases {
                room: 10,
                first_end: None,
            },
        )]);
        assert_eq!(share_org_room(&requests, &states, &mut orgs), vec![0, 0]);
    }
}
