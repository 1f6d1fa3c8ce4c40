//! Deliveries on SQLite: fan-out from the events outbox, the dispatcher's per-endpoint due
//! queries, recording attempts with the retry policy, and the delivery log.
//!
//! SQLite has one server process, so nothing here leases rows in the database: the dispatcher
//! keeps the set of deliveries in flight in memory and passes it in, and after a restart every
//! pending delivery is simply due again (at-least-once).
//!
//! Per-user ordering ([`lane_sql`]): a `per_user` endpoint's lane hands out a delivery only
//! when no earlier one of its user is pending (one in flight is pending too, so the in-memory
//! set needs no rule of its own). Deliveries that wait have no `next_attempt_at`, kept so by
//! the triggers of migration 0013, and a delivery that ends wakes its lane
//! ([`Recorded::next_due`]) so the one it released goes out at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use accommador_webhooks::EventType;
use rusqlite::{Connection, OptionalExtension, params};

use super::{
    SqliteStore, cursor_seq, db_err, insert_operational_event, known_in_org, live_endpoint,
};
use crate::domain::delivery::{
    AttemptRecord, AttemptResult, DeliveryFacts, DeliveryRecord, DeliveryStatus, ErrorClass,
    RetryPolicy, Trigger, disable_reason, failing_since, settle,
};
use crate::domain::endpoint::{DeliveryOrder, EndpointStatus, EventTypeFilter};
use crate::domain::event::{OperationalEvent, fanned_out, reports_failure};
use crate::domain::{Timestamp, ids};
use crate::store::{
    CANCEL_BATCH, CancelStep, DUE_COUNTED, DeliveryFilter, DeliveryStats, DeliveryWalk,
    DueDelivery, FanOut, LIST_SCAN_ROWS, LaneRequest, LaneWork, ListPage, ORDERED_WAITING_COUNTED,
    Recorded, SEND_TARGET_SQL, SQLITE_CANCEL_BATCH, SendTarget, StoreError, Walk, cancel_reason,
    overtaken_sql, send_target_from,
};

/// Most events one fan-out step takes, and most deliveries it creates.
const FANOUT_EVENTS: i64 = 256;
/// Most deliveries one fan-out step writes (one event to many endpoints takes several steps),
/// so it never holds the writer long.
const FANOUT_DELIVERIES: usize = 1_000;

/// The next batch of an endpoint's pending deliveries, from the index of pending ones only:
/// walking the endpoint's whole history instead would pass over every delivery the earlier
/// batches already failed (quadratic in the backlog).
pub(super) const FAIL_PENDING_SQL: &str =
    "SELECT id FROM deliveries INDEXED BY deliveries_endpoint_due
     WHERE endpoint_id = ?1 AND status = 'pending' AND seq <= ?3 LIMIT ?2";

/// Fails up to `limit` pending deliveries of an endpoint numbered up to `through` with
/// `endpoint_disabled`, recording why as an attempt in each one's log. Returns how many.
fn fail_pending(
    c: &Connection,
    endpoint_id: &str,
    reason: &str,
    now: Timestamp,
    limit: usize,
    through: i64,
) -> Result<usize, StoreError> {
    let ids: Vec<String> = c
        .prepare_cached(FAIL_PENDING_SQL)
        .and_then(|mut s| {
            s.query_map(params![endpoint_id, limit as i64, through], |r| r.get(0))?
                .collect()
        })
        .map_err(db_err)?;
    let mut attempt = c
        .prepare_cached(
            "INSERT INTO attempts (delivery_id, number, trigger, started_at, duration_ms,
                                   status_code, error_class, error, response_headers,
                                   response_body)
             SELECT id, attempt_count + 1, 'scheduled', ?2, 0, NULL, 'endpoint_disabled', ?3,
                    '{}', ''
             FROM deliveries WHERE id = ?1",
        )
        .map_err(db_err)?;
    let mut fail = c
        .prepare_cached(
            "UPDATE deliveries SET status = 'failed', attempt_count = attempt_count + 1,
                 next_attempt_at = NULL, manual = 0, resume_at = NULL, updated_at = ?2
             WHERE id = ?1",
        )
        .map_err(db_err)?;
    for id in &ids {
        attempt
            .execute(params![id, now.millis(), reason])
            .map_err(db_err)?;
        fail.execute(params![id, now.millis()]).map_err(db_err)?;
    }
    Ok(ids.len())
}

/// Disables an endpoint and writes its `endpoint.disabled` event; its pending deliveries are
/// then failed in the background, in bounded batches ([`SqliteStore::cancel_step`]).
fn disable_endpoint(
    c: &Connection,
    org: &str,
    endpoint_id: &str,
    reason: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE endpoints SET status = 'disabled', disabled_reason = ?2, updated_at = ?3,
             cancel_pending = 1, cancel_through = (SELECT COALESCE(max(seq), 0) FROM deliveries)
         WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![endpoint_id, reason, now.millis()]))
    .map_err(db_err)?;
    // A deleted endpoint (an attempt that was in flight when it went) is not told about.
    if let Some(endpoint) = live_endpoint(c, org, endpoint_id)? {
        insert_operational_event(c, org, &OperationalEvent::endpoint_status(&endpoint, now))?;
    }
    Ok(())
}

/// Most deliveries one `recover` write re-queues or creates.
const RECOVER_BATCH: usize = 1_000;

/// The endpoint when it is live and enabled; `None` when it no longer is. The first batch of a
/// request says why instead (404, 409).
fn recoverable(
    c: &Connection,
    org: &str,
    endpoint_id: &str,
    first: bool,
) -> Result<Option<crate::domain::endpoint::EndpointRecord>, StoreError> {
    match live_endpoint(c, org, endpoint_id)? {
        Some(e) if e.status == EndpointStatus::Enabled => Ok(Some(e)),
        Some(_) if first => Err(StoreError::EndpointDisabled),
        None if first => Err(StoreError::NotFound),
        _ => Ok(None),
    }
}

fn insert_delivery(
    c: &Connection,
    org: &str,
    event_seq: i64,
    event_id: &str,
    event_type: &str,
    endpoint_id: &str,
    now: Timestamp,
) -> Result<Option<String>, StoreError> {
    let id = ids::new_id(ids::DELIVERY);
    // An (event, endpoint) pair gets one delivery, whoever creates it first (fan-out or
    // recover): the other finds it there and moves on. The event's user is copied (one
    // lookup by primary key) so that a user's deliveries are one index range.
    let inserted = c
        .prepare_cached(
            "INSERT INTO deliveries (id, org_id, event_seq, event_id, event_type, endpoint_id,
                                 user_id, status, next_attempt_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, (SELECT user_id FROM events WHERE seq = ?3),
                 'pending', ?7, ?7, ?7)
         ON CONFLICT (event_id, endpoint_id) DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(params![
                id,
                org,
                event_seq,
                event_id,
                event_type,
                endpoint_id,
                now.millis()
            ])
        })
        .map_err(db_err)?;
    Ok((inserted == 1).then_some(id))
}

const DELIVERY_COLUMNS: &str = "id, event_id, event_type, endpoint_id, status, attempt_count,
    next_attempt_at, last_status_code, created_at, updated_at";

/// The column of a walk's row that says whether it passes every filter.
const WALK_MATCH: usize = 10;

/// The statement of each deliveries walk (`?1` the organization, `?2` the cursor's seq, then
/// the filters: `?3` endpoint, `?4` event, `?5` user, `?6` event type, `?7` status, `?8` since,
/// `?9` until): the index named leads with the walk's filter and then `seq`, so the walk is one
/// range read newest first with no sort; column [`WALK_MATCH`] checks every filter on the row.
/// `INDEXED BY` makes a statement fail to prepare rather than quietly walk something else if
/// its index goes.
pub(super) fn delivery_walk_sql(walk: DeliveryWalk) -> String {
    let (index, lead) = match walk {
        DeliveryWalk::Org => ("deliveries_org_list", ""),
        DeliveryWalk::Endpoint => ("deliveries_endpoint_list", "AND endpoint_id = ?3 "),
        DeliveryWalk::User => ("deliveries_user_list", "AND user_id = ?5 "),
        DeliveryWalk::Event => ("deliveries_event_list", "AND event_id = ?4 "),
    };
    format!(
        "SELECT {DELIVERY_COLUMNS},
                (?3 IS NULL OR endpoint_id = ?3) AND (?4 IS NULL OR event_id = ?4)
                AND (?5 IS NULL OR user_id = ?5) AND (?6 IS NULL OR event_type = ?6)
                AND (?7 IS NULL OR status = ?7)
                AND (?8 IS NULL OR created_at >= ?8) AND (?9 IS NULL OR created_at < ?9)
         FROM deliveries INDEXED BY {index}
         WHERE org_id = ?1 {lead}AND seq < ?2
         ORDER BY seq DESC LIMIT {}",
        LIST_SCAN_ROWS + 1
    )
}

fn delivery_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRecord> {
    let status: String = r.get(4)?;
    Ok(DeliveryRecord {
        id: r.get(0)?,
        event_id: r.get(1)?,
        event_type: r.get(2)?,
        endpoint_id: r.get(3)?,
        status: DeliveryStatus::parse(&status).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                4,
                rusqlite::types::Type::Text,
                format!("unknown delivery status {status:?}").into(),
            )
        })?,
        attempt_count: r.get(5)?,
        next_attempt_at: r.get::<_, Option<i64>>(6)?.map(Timestamp),
        last_status_code: r.get(7)?,
        created_at: Timestamp(r.get(8)?),
        updated_at: Timestamp(r.get(9)?),
    })
}

fn get_delivery_row(
    c: &Connection,
    org: &str,
    id: &str,
) -> Result<Option<DeliveryRecord>, StoreError> {
    c.prepare_cached(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?1 AND org_id = ?2"
    ))
    .and_then(|mut s| s.query_row(params![id, org], delivery_from_row).optional())
    .map_err(db_err)
}

fn signing_secrets(
    c: &Connection,
    endpoint_id: &str,
    now: Timestamp,
) -> Result<Vec<String>, StoreError> {
    c.prepare_cached(
        "SELECT secret FROM endpoint_secrets
         WHERE endpoint_id = ?1 AND (expires_at IS NULL OR expires_at > ?2)
         ORDER BY expires_at IS NOT NULL, created_at DESC",
    )
    .and_then(|mut s| {
        s.query_map(params![endpoint_id, now.millis()], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()
    })
    .map_err(db_err)
}

/// The enabled, live endpoints of an organization with their filters and creation points.
fn enabled_endpoints(
    c: &Connection,
    org: &str,
) -> Result<Vec<(String, EventTypeFilter, i64)>, StoreError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT id, event_types, after_event_seq FROM endpoints
             WHERE org_id = ?1 AND status = 'enabled' AND deleted_at IS NULL ORDER BY id",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map([org], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .map_err(db_err)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, types, after) = row.map_err(db_err)?;
        let names: Vec<String> = serde_json::from_str(&types).map_err(StoreError::database)?;
        let filter = EventTypeFilter::from_names(names.iter().map(String::as_str))
            .map_err(|e| StoreError::database(std::io::Error::other(e)))?;
        out.push((id, filter, after));
    }
    Ok(out)
}

impl SqliteStore {
    /// One fan-out step: creates the deliveries of the next events in commit order and moves
    /// the cursor past them, in one transaction. Returns how many events it took and the
    /// endpoints that got new work.
    pub async fn fan_out(&self) -> Result<FanOut, StoreError> {
        self.write(|c| {
            let now = Timestamp::now();
            let (cursor, partial): (i64, Option<String>) = c
                .query_row(
                    "SELECT last_seq, partial_endpoint FROM fanout_cursor WHERE id = 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(db_err)?;
            type EventRow = (i64, String, String, String, Option<String>);
            let events: Vec<EventRow> = c
                .prepare_cached(
                    "SELECT seq, id, org_id, type, about_endpoint FROM events
                     WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )
                .and_then(|mut s| {
                    s.query_map(params![cursor, FANOUT_EVENTS], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })?
                    .collect()
                })
                .map_err(db_err)?;
            let mut endpoints_of: HashMap<String, Vec<(String, EventTypeFilter, i64)>> =
                HashMap::new();
            let mut woken: Vec<String> = Vec::new();
            let mut seen: HashSet<String> = HashSet::new();
            let mut budget = FANOUT_DELIVERIES;
            // Where the cursor ends: after the last event done, and within the next one if
            // the budget ran out in the middle of it.
            let mut last = cursor;
            let mut stopped_at: Option<String> = None;
            let mut taken = 0;
            'events: for (i, (seq, event_id, org, event_type, about)) in events.iter().enumerate() {
                taken += 1;
                // Test events are delivered by the `test` call itself; unknown types by no one.
                let Some(kind) = EventType::parse(event_type).filter(|t| fanned_out(*t)) else {
                    last = *seq;
                    continue;
                };
                if !endpoints_of.contains_key(org) {
                    endpoints_of.insert(org.clone(), enabled_endpoints(c, org)?);
                }
                // Resume within the first event where the previous step stopped. Endpoints
                // come in ID order, so "up to this ID" says which are done.
                let mut done_up_to = if i == 0 { partial.clone() } else { None };
                for (endpoint_id, filter, after_seq) in &endpoints_of[org] {
                    if done_up_to
                        .as_deref()
                        .is_some_and(|p| endpoint_id.as_str() <= p)
                        || !filter.contains(kind)
                        || *after_seq >= *seq
                        || about.as_deref() == Some(endpoint_id.as_str())
                    {
                        continue;
                    }
                    if budget == 0 {
                        stopped_at = done_up_to;
                        break 'events;
                    }
                    budget -= 1;
                    insert_delivery(c, org, *seq, event_id, event_type, endpoint_id, now)?;
                    if seen.insert(endpoint_id.clone()) {
                        woken.push(endpoint_id.clone());
                    }
                    done_up_to = Some(endpoint_id.clone());
                }
                last = *seq;
            }
            if taken > 0 {
                c.prepare_cached(
                    "UPDATE fanout_cursor SET last_seq = ?1, partial_endpoint = ?2 WHERE id = 1",
                )
                .and_then(|mut s| s.execute(params![last, stopped_at]))
                .map_err(db_err)?;
            }
            Ok(FanOut {
                events: taken,
                woken,
            })
        })
        .await
    }

    /// Every endpoint with pending deliveries and its earliest due time (on start).
    pub async fn pending_lanes(&self) -> Result<Vec<(String, Timestamp)>, StoreError> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT endpoint_id, MIN(next_attempt_at) FROM deliveries
                 WHERE status = 'pending' GROUP BY endpoint_id",
            )
            .and_then(|mut s| {
                let now = Timestamp::now();
                // Only deliveries waiting behind an earlier one: look now all the same.
                s.query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get::<_, Option<i64>>(1)?.map_or(now, Timestamp),
                    ))
                })?
                .collect()
            })
            .map_err(db_err)
        })
        .await
    }

    /// The due deliveries of each requested endpoint, earliest first.
    pub async fn lane_work(
        &self,
        requests: Vec<LaneRequest>,
        now: Timestamp,
    ) -> Result<Vec<LaneWork>, StoreError> {
        self.read(move |c| {
            let mut out = Vec::with_capacity(requests.len());
            for req in requests {
                out.push(lane_work_one(c, req, now)?);
            }
            Ok(out)
        })
        .await
    }

    /// One bounded step of failing the pending deliveries of disabled or deleted endpoints:
    /// up to [`SQLITE_CANCEL_BATCH`] deliveries of the first such endpoint after `after`, in one
    /// short write. An endpoint enabled again meanwhile still loses those queued before it was
    /// closed (up to its fence, `cancel_through`), not the ones made since. `None` when there
    /// is no such endpoint after `after`.
    pub async fn cancel_step(
        &self,
        after: Option<String>,
    ) -> Result<Option<CancelStep>, StoreError> {
        self.write(move |c| {
            type Marked = (String, Option<String>, Option<i64>, String, Option<i64>);
            let found: Option<Marked> = c
                .prepare_cached(
                    "SELECT id, disabled_reason, deleted_at, status, cancel_through FROM endpoints
                     WHERE cancel_pending = 1 AND id > ?1 ORDER BY id LIMIT 1",
                )
                .and_then(|mut s| {
                    s.query_row([after.unwrap_or_default()], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })
                    .optional()
                })
                .map_err(db_err)?;
            let Some((id, disabled_reason, deleted_at, status, fence)) = found else {
                return Ok(None);
            };
            let closed = deleted_at.is_some() || status != EndpointStatus::Enabled.as_str();
            // Closed: everything pending goes. Enabled again: only what the fence covers.
            let through = if closed { Some(i64::MAX) } else { fence };
            let failed = match through {
                Some(through) => {
                    let reason = cancel_reason(disabled_reason, deleted_at.is_some());
                    let now = Timestamp::now();
                    fail_pending(c, &id, &reason, now, SQLITE_CANCEL_BATCH, through)?
                }
                None => 0,
            };
            if failed < SQLITE_CANCEL_BATCH {
                c.prepare_cached(
                    "UPDATE endpoints SET cancel_pending = 0, cancel_through = NULL WHERE id = ?1",
                )
                .and_then(|mut s| s.execute([&id]))
                .map_err(db_err)?;
            }
            Ok(Some(CancelStep {
                endpoint_id: id,
                failed,
            }))
        })
        .await
    }

    pub async fn endpoint_orgs(
        &self,
        endpoint_ids: Vec<String>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.read(move |c| {
            let mut s = c
                .prepare_cached("SELECT org_id FROM endpoints WHERE id = ?1")
                .map_err(db_err)?;
            let mut out = Vec::with_capacity(endpoint_ids.len());
            for id in endpoint_ids {
                if let Some(org) = s
                    .query_row([&id], |r| r.get::<_, String>(0))
                    .optional()
                    .map_err(db_err)?
                {
                    out.push((id, org));
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn send_target(&self, endpoint_id: String) -> Result<Option<SendTarget>, StoreError> {
        self.read(move |c| {
            // `$N` is a named parameter to SQLite (numbered by first appearance): use `?N`.
            c.prepare_cached(&SEND_TARGET_SQL.replace('$', "?"))
                .and_then(|mut s| {
                    s.query_map(params![endpoint_id, Timestamp::now().millis()], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()
                })
                .map(send_target_from)
                .map_err(db_err)
        })
        .await
    }

    /// Records an attempt and applies what follows it: success, a retry, failure, and the
    /// endpoint's continuous-failure clock (disabling it when it has failed too long).
    pub async fn record_attempt(
        &self,
        delivery_id: String,
        _lease_token: Option<String>,
        result: AttemptResult,
        policy: Arc<RetryPolicy>,
    ) -> Result<Recorded, StoreError> {
        self.write(move |c| {
            let now = Timestamp::now();
            let row = c
                .prepare_cached(
                    "SELECT d.endpoint_id, d.status, d.attempt_count, d.retries_used,
                            d.resume_at, d.org_id, d.event_type,
                            d.out_of_order AND ep.ordering = 'per_user',
                            d.user_id IS NOT NULL AND ep.ordering = 'per_user'
                     FROM deliveries d LEFT JOIN endpoints ep ON ep.id = d.endpoint_id
                     WHERE d.id = ?1",
                )
                .and_then(|mut s| {
                    s.query_row([&delivery_id], |r| {
                        Ok((
                            (
                                r.get::<_, String>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, u32>(2)?,
                                r.get::<_, u32>(3)?,
                                r.get::<_, Option<i64>>(4)?,
                            ),
                            (r.get::<_, String>(5)?, r.get::<_, String>(6)?),
                            (
                                r.get::<_, Option<bool>>(7)?.unwrap_or(false),
                                r.get::<_, Option<bool>>(8)?.unwrap_or(false),
                            ),
                        ))
                    })
                    .optional()
                })
                .map_err(db_err)?
                .ok_or(StoreError::NotFound)?;
            let (
                (endpoint_id, status, attempt_count, retries_used, resume_at),
                (org, event_type),
                (out_of_order, ordered),
            ) = row;
            let number = attempt_count + 1;
            insert_attempt(c, &delivery_id, number, &result, out_of_order)?;

            let current = DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Failed);
            let facts = DeliveryFacts {
                retries_used,
                resume_at: resume_at.map(Timestamp),
            };
            let jitter = rand::random::<f64>() * 2.0 - 1.0;
            let settled = settle(current, facts, &result, &policy, now, jitter);
            let next_at = settled.next_attempt_at;
            c.prepare_cached(
                "UPDATE deliveries SET status = ?2, attempt_count = ?3,
                     retries_used = retries_used + ?4, next_attempt_at = ?5, manual = 0,
                     resume_at = NULL,
                     last_status_code = CASE WHEN ?8 THEN ?6 ELSE last_status_code END,
                     updated_at = ?7
                 WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    delivery_id,
                    settled.status.as_str(),
                    number,
                    u32::from(settled.spends_retry),
                    next_at.map(Timestamp::millis),
                    result.status_code,
                    now.millis(),
                    settled.applies
                ])
            })
            .map_err(db_err)?;
            if !settled.applies {
                // Ended while in flight: logged, and nothing else.
                return Ok(Recorded {
                    next_due: None,
                    endpoint_disabled: false,
                    events: false,
                });
            }
            let mut events = false;
            if reports_failure(&event_type, &settled) {
                let delivery =
                    get_delivery_row(c, &org, &delivery_id)?.ok_or(StoreError::NotFound)?;
                insert_operational_event(c, &org, &OperationalEvent::delivery_failed(&delivery))?;
                events = true;
            }

            // The endpoint's failure clock (the same rules as PostgreSQL's batches, in
            // `domain::delivery`): a success stops it on any endpoint; a failure starts it,
            // and may disable the endpoint, only while it is enabled.
            let mut endpoint_disabled = false;
            let clock: Option<(String, Option<i64>)> = c
                .prepare_cached("SELECT status, failing_since FROM endpoints WHERE id = ?1")
                .and_then(|mut s| {
                    s.query_row([&endpoint_id], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(db_err)?;
            if let Some((endpoint_status, before)) = clock {
                let enabled = endpoint_status == EndpointStatus::Enabled.as_str();
                let before = before.map(Timestamp);
                let since = failing_since(before, &[(result.started_at, result.succeeded())]);
                if since != before && (enabled || since.is_none()) {
                    c.prepare_cached("UPDATE endpoints SET failing_since = ?2 WHERE id = ?1")
                        .and_then(|mut s| {
                            s.execute(params![endpoint_id, since.map(Timestamp::millis)])
                        })
                        .map_err(db_err)?;
                }
                if enabled && let Some(reason) = disable_reason(result.gone(), since, &policy, now)
                {
                    disable_endpoint(c, &org, &endpoint_id, &reason, now)?;
                    endpoint_disabled = true;
                    events = true;
                }
            }
            // Ended on a per-user endpoint: the next delivery of its user is due now
            // (released by the trigger of migration 0013), so the lane is looked at again.
            let released = (ordered && next_at.is_none()).then_some(now);
            Ok(Recorded {
                next_due: if endpoint_disabled {
                    None
                } else {
                    next_at.or(released)
                },
                endpoint_disabled,
                events,
            })
        })
        .await
    }

    /// Deliveries newest first, walking the index [`DeliveryFilter::walk`] picks (statements
    /// in [`delivery_walk_sql`]); at most [`LIST_SCAN_ROWS`] rows a request.
    pub async fn list_deliveries(
        &self,
        org: String,
        filter: DeliveryFilter,
        after: Option<String>,
        limit: usize,
    ) -> Result<ListPage<DeliveryRecord>, StoreError> {
        self.read(move |c| {
            if let Some(user) = &filter.user_id
                && !known_in_org(c, "users", &org, user)?
            {
                return Err(StoreError::NotFound);
            }
            // Newest first: the cursor is the last delivery of the previous page.
            let before = match after.as_deref() {
                None => i64::MAX,
                Some(_) => cursor_seq(c, "deliveries", &org, after.as_deref())?,
            };
            // An endpoint or event of another organization, or of none, matches nothing (and
            // so the walks by endpoint or event read only this organization's rows).
            for (table, id) in [
                ("endpoints", &filter.endpoint_id),
                ("events", &filter.event_id),
            ] {
                if let Some(id) = id
                    && !known_in_org(c, table, &org, id)?
                {
                    return Ok(ListPage::empty());
                }
            }
            let mut stmt = c
                .prepare_cached(&delivery_walk_sql(filter.walk()))
                .map_err(db_err)?;
            let mut rows = stmt
                .query(params![
                    org,
                    before,
                    filter.endpoint_id,
                    filter.event_id,
                    filter.user_id,
                    filter.event_type,
                    filter.status.map(DeliveryStatus::as_str),
                    filter.since.map(Timestamp::millis),
                    filter.until.map(Timestamp::millis),
                ])
                .map_err(db_err)?;
            let mut walk = Walk::new(limit);
            while let Some(r) = rows.next().map_err(db_err)? {
                // NULL (a NULL column compared) is no match either.
                let matches: Option<bool> = r.get(WALK_MATCH).map_err(db_err)?;
                let item = if matches == Some(true) {
                    Some(delivery_from_row(r).map_err(db_err)?)
                } else {
                    None
                };
                if !walk.push(r.get(0).map_err(db_err)?, item) {
                    break;
                }
            }
            Ok(walk.finish())
        })
        .await
    }

    pub async fn get_delivery(
        &self,
        org: String,
        id: String,
    ) -> Result<DeliveryRecord, StoreError> {
        self.read(move |c| get_delivery_row(c, &org, &id)?.ok_or(StoreError::NotFound))
            .await
    }

    pub async fn list_attempts(
        &self,
        org: String,
        id: String,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        self.read(move |c| {
            get_delivery_row(c, &org, &id)?.ok_or(StoreError::NotFound)?;
            c.prepare_cached(
                "SELECT number, trigger, started_at, duration_ms, status_code, error_class,
                        error, response_headers, response_body, out_of_order
                 FROM attempts WHERE delivery_id = ?1 ORDER BY number",
            )
            .and_then(|mut s| {
                s.query_map([&id], |r| {
                    let headers: String = r.get(7)?;
                    let class: Option<String> = r.get(5)?;
                    let trigger: String = r.get(1)?;
                    Ok(AttemptRecord {
                        number: r.get(0)?,
                        result: AttemptResult {
                            trigger: if trigger == "manual" {
                                Trigger::Manual
                            } else {
                                Trigger::Scheduled
                            },
                            started_at: Timestamp(r.get(2)?),
                            duration_ms: r.get(3)?,
                            status_code: r.get(4)?,
                            error_class: class.as_deref().and_then(ErrorClass::parse),
                            error: r.get(6)?,
                            response_headers: serde_json::from_str(&headers).unwrap_or_default(),
                            response_body: r.get(8)?,
                            retry_after: None,
                        },
                        out_of_order: r.get(9)?,
                    })
                })?
                .collect()
            })
            .map_err(db_err)
        })
        .await
    }

    /// Queues one manual attempt as soon as possible. A delivery that was still retrying
    /// resumes its schedule if the manual attempt fails.
    pub async fn request_retry(
        &self,
        org: String,
        id: String,
    ) -> Result<DeliveryRecord, StoreError> {
        self.write(move |c| {
            let d = get_delivery_row(c, &org, &id)?.ok_or(StoreError::NotFound)?;
            let endpoint = live_endpoint(c, &org, &d.endpoint_id)?.ok_or(StoreError::NotFound)?;
            if endpoint.status != EndpointStatus::Enabled {
                return Err(StoreError::EndpointDisabled);
            }
            let now = Timestamp::now();
            c.prepare_cached(&format!(
                "UPDATE deliveries SET
                         resume_at = CASE WHEN status = 'pending' AND manual = 0
                                          THEN COALESCE(next_attempt_at, ?2) ELSE resume_at END,
                         status = 'pending', next_attempt_at = ?2, manual = 1, updated_at = ?2,
                         out_of_order = {}
                     WHERE id = ?1",
                overtaken_sql("deliveries")
            ))
            .and_then(|mut s| s.execute(params![id, now.millis()]))
            .map_err(db_err)?;
            get_delivery_row(c, &org, &id)?.ok_or(StoreError::NotFound)
        })
        .await
    }

    /// Re-queues the endpoint's failed deliveries of events that occurred in `[since,
    /// until)` and creates the ones it never got for events of that window (e.g. while it was
    /// disabled), in bounded batches: each write re-queues or creates at most
    /// [`RECOVER_BATCH`] deliveries, so the writer is never held longer, and each walk moves
    /// forward by a cursor (delivery `seq`, event `seq`), so every delivery is counted once.
    pub async fn recover(
        &self,
        org: String,
        endpoint_id: String,
        since: Timestamp,
        until: Option<Timestamp>,
    ) -> Result<(usize, usize), StoreError> {
        let now = Timestamp::now();
        let until = until.unwrap_or(Timestamp(i64::MAX));
        let mut requeued = 0;
        let mut after: i64 = 0;
        let mut first = true;
        loop {
            let (org, endpoint_id) = (org.clone(), endpoint_id.clone());
            let step = self
                .write(move |c| {
                    if recoverable(c, &org, &endpoint_id, first)?.is_none() {
                        return Ok(None);
                    }
                    let seqs: Vec<i64> = c
                        .prepare_cached(&format!(
                            "UPDATE deliveries SET status = 'pending', next_attempt_at = ?4,
                                 retries_used = 0, manual = 0, resume_at = NULL,
                                 updated_at = ?4, out_of_order = {}
                             WHERE seq IN (
                                 SELECT d.seq FROM deliveries d
                                 WHERE d.endpoint_id = ?1 AND d.status = 'failed'
                                   AND d.seq > ?5
                                   AND (SELECT occurred_at FROM events WHERE seq = d.event_seq)
                                       BETWEEN ?2 AND ?3 - 1
                                 ORDER BY d.seq LIMIT ?6)
                             RETURNING seq",
                            overtaken_sql("deliveries")
                        ))
                        .and_then(|mut s| {
                            s.query_map(
                                params![
                                    endpoint_id,
                                    since.millis(),
                                    until.millis(),
                                    now.millis(),
                                    after,
                                    RECOVER_BATCH as i64
                                ],
                                |r| r.get(0),
                            )?
                            .collect()
                        })
                        .map_err(db_err)?;
                    Ok(Some(seqs))
                })
                .await?;
            first = false;
            let Some(seqs) = step else {
                return Ok((requeued, 0));
            };
            requeued += seqs.len();
            match seqs.iter().max() {
                Some(&last) if seqs.len() == RECOVER_BATCH => after = last,
                _ => break,
            }
        }
        let mut created = 0;
        let mut after: i64 = 0;
        loop {
            let (org, endpoint_id) = (org.clone(), endpoint_id.clone());
            let step = self
                .write(move |c| {
                    let Some(endpoint) = recoverable(c, &org, &endpoint_id, false)? else {
                        return Ok(None);
                    };
                    let after_seq: i64 = c
                        .prepare_cached("SELECT after_event_seq FROM endpoints WHERE id = ?1")
                        .and_then(|mut s| s.query_row([&endpoint_id], |r| r.get(0)))
                        .map_err(db_err)?;
                    let types = serde_json::to_string(&endpoint.event_types.names())
                        .map_err(StoreError::database)?;
                    // Events of the window after the endpoint's creation, of the types it
                    // takes, that it has no delivery of yet.
                    let missing: Vec<(i64, String, String)> = c
                        .prepare_cached(
                            "SELECT e.seq, e.id, e.type FROM events e
                             WHERE e.org_id = ?1 AND e.seq > max(?2, ?6)
                               AND e.occurred_at >= ?3 AND e.occurred_at < ?4
                               AND e.type <> 'webhook.test'
                               AND e.type IN (SELECT value FROM json_each(?7))
                               AND (e.about_endpoint IS NULL OR e.about_endpoint <> ?5)
                               AND NOT EXISTS (SELECT 1 FROM deliveries d
                                               WHERE d.event_id = e.id AND d.endpoint_id = ?5)
                             ORDER BY e.seq LIMIT ?8",
                        )
                        .and_then(|mut s| {
                            s.query_map(
                                params![
                                    org,
                                    after_seq,
                                    since.millis(),
                                    until.millis(),
                                    endpoint_id,
                                    after,
                                    types,
                                    RECOVER_BATCH as i64
                                ],
                                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                            )?
                            .collect()
                        })
                        .map_err(db_err)?;
                    let mut created = 0;
                    for (seq, event_id, event_type) in &missing {
                        if insert_delivery(c, &org, *seq, event_id, event_type, &endpoint_id, now)?
                            .is_some()
                        {
                            created += 1;
                        }
                    }
                    let last = (missing.len() == RECOVER_BATCH)
                        .then(|| missing.last().map(|m| m.0))
                        .flatten();
                    Ok(Some((created, last)))
                })
                .await?;
            let Some((n, last)) = step else { break };
            created += n;
            match last {
                Some(last) => after = last,
                None => break,
            }
        }
        Ok((requeued, created))
    }

    /// Writes a `webhook.test` event (not listed in `/v1/events`) and its one delivery to this
    /// endpoint, ignoring the endpoint's filter.
    pub async fn send_test(
        &self,
        org: String,
        endpoint_id: String,
    ) -> Result<(String, String), StoreError> {
        self.write(move |c| {
            let endpoint = live_endpoint(c, &org, &endpoint_id)?.ok_or(StoreError::NotFound)?;
            if endpoint.status != EndpointStatus::Enabled {
                return Err(StoreError::EndpointDisabled);
            }
            let now = Timestamp::now();
            let (event_id, payload) = crate::domain::event::test_event(&endpoint_id, now);
            let seq: i64 = c
                .prepare_cached(
                    "INSERT INTO events (id, org_id, type, occurred_at, payload)
                     VALUES (?1, ?2, 'webhook.test', ?3, ?4) RETURNING seq",
                )
                .and_then(|mut s| {
                    s.query_row(params![event_id, org, now.millis(), payload], |r| r.get(0))
                })
                .map_err(db_err)?;
            let delivery_id = insert_delivery(
                c,
                &org,
                seq,
                &event_id,
                EventType::WebhookTest.as_str(),
                &endpoint_id,
                now,
            )?
            .ok_or_else(|| StoreError::database(std::io::Error::other("test delivery exists")))?;
            Ok((event_id, delivery_id))
        })
        .await
    }

    /// Up to [`CANCEL_BATCH`] deliveries of the endpoint that wait behind an earlier one of
    /// their user are due now ([`crate::store::Store::release_waiting`]).
    pub async fn release_waiting_batch(&self, endpoint_id: String) -> Result<usize, StoreError> {
        self.write(move |c| {
            let now = Timestamp::now().millis();
            c.prepare_cached(
                "UPDATE deliveries SET next_attempt_at = ?2
                 WHERE seq IN (SELECT seq FROM deliveries INDEXED BY deliveries_endpoint_due
                               WHERE endpoint_id = ?1 AND status = 'pending'
                                 AND next_attempt_at IS NULL LIMIT ?3)",
            )
            .and_then(|mut s| s.execute(params![endpoint_id, now, CANCEL_BATCH as i64]))
            .map_err(db_err)
        })
        .await
    }

    pub async fn delivery_stats(&self, now: Timestamp) -> Result<DeliveryStats, StoreError> {
        self.read(move |c| {
            let (due, oldest): (u64, Option<i64>) = c
                // Bounded: the oldest from the head of the due index, the count up to
                // DUE_COUNTED.
                .prepare_cached(DUE_STATS_SQL)
                .and_then(|mut s| {
                    s.query_row(params![now.millis(), DUE_COUNTED], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                })
                .map_err(db_err)?;
            let disabled: u64 = c
                .query_row(
                    "SELECT COUNT(*) FROM endpoints WHERE status = 'disabled' AND deleted_at IS NULL",
                    [],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            let ordered_waiting: u64 = c
                .prepare_cached(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM deliveries
                                           WHERE status = 'pending' AND next_attempt_at IS NULL
                                           LIMIT ?1)",
                )
                .and_then(|mut s| s.query_row([ORDERED_WAITING_COUNTED], |r| r.get(0)))
                .map_err(db_err)?;
            Ok(DeliveryStats {
                due,
                oldest_due: oldest.map(Timestamp),
                disabled_endpoints: disabled,
                ordered_waiting,
            })
        })
        .await
    }
}

/// id, event_id, next_attempt_at, manual, attempt_count, payload, occurred_at, url, seq.
type DueRow = (
    String,
    String,
    Option<i64>,
    bool,
    u32,
    String,
    i64,
    String,
    i64,
);

/// The due gauge and the age of the oldest due delivery, both read from the due index: the
/// count stops at its bound (`?2`), the oldest is the index's first entry.
pub(super) const DUE_STATS_SQL: &str = "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM deliveries
                                   WHERE status = 'pending' AND next_attempt_at <= ?1
                                   LIMIT ?2)),
            (SELECT next_attempt_at FROM deliveries
              WHERE status = 'pending' AND next_attempt_at <= ?1
              ORDER BY next_attempt_at LIMIT 1)";

/// The due-delivery statement of a lane (`?1` the endpoint, `?2` how many rows). Earliest due
/// first through `deliveries_endpoint_due`. With per-user ordering, a row is taken only when no
/// earlier delivery of its user to this endpoint is pending (one probe of
/// `deliveries_user_pending`; one in flight is pending too), and the walk starts after the
/// deliveries that wait behind an earlier one (no `next_attempt_at`, see migration 0013), so
/// a user whose receiver keeps failing costs each read at most its one due delivery.
fn lane_sql(ordering: DeliveryOrder) -> String {
    let gate = match ordering {
        DeliveryOrder::None => "",
        DeliveryOrder::PerUser => {
            "AND d.next_attempt_at >= 0
               AND (d.user_id IS NULL OR NOT EXISTS (
                   SELECT 1 FROM deliveries p INDEXED BY deliveries_user_pending
                   WHERE p.endpoint_id = d.endpoint_id AND p.user_id = d.user_id
                     AND p.status = 'pending' AND p.user_id IS NOT NULL
                     AND p.event_seq < d.event_seq))"
        }
    };
    format!(
        "SELECT d.id, d.event_id, d.next_attempt_at, d.manual, d.attempt_count,
                e.payload, e.occurred_at, ep.url, d.seq
         FROM deliveries d INDEXED BY deliveries_endpoint_due
         JOIN events e ON e.seq = d.event_seq
         JOIN endpoints ep ON ep.id = d.endpoint_id
         WHERE d.endpoint_id = ?1 AND d.status = 'pending' {gate}
           AND ep.status = 'enabled' AND ep.deleted_at IS NULL
           AND d.seq > COALESCE(ep.cancel_through, 0)
           AND NOT EXISTS (SELECT 1 FROM organizations o
                           WHERE o.id = ep.org_id AND o.deleted_at IS NOT NULL)
         ORDER BY d.next_attempt_at LIMIT ?2"
    )
}

fn lane_work_one(c: &Connection, req: LaneRequest, now: Timestamp) -> Result<LaneWork, StoreError> {
    let ordering: Option<String> = c
        .prepare_cached("SELECT ordering FROM endpoints WHERE id = ?1")
        .and_then(|mut s| s.query_row([&req.endpoint_id], |r| r.get(0)).optional())
        .map_err(db_err)?;
    let ordering = ordering
        .as_deref()
        .and_then(DeliveryOrder::parse)
        .unwrap_or_default();
    let rows: Vec<DueRow> = c
        .prepare_cached(&lane_sql(ordering))
        .and_then(|mut s| {
            s.query_map(
                params![
                    req.endpoint_id,
                    (req.limit + req.in_flight.len() + 1) as i64
                ],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                    ))
                },
            )?
            .collect()
        })
        .map_err(db_err)?;
    let mut due = Vec::new();
    let mut next_due = None;
    let mut secrets: Option<Vec<String>> = None;
    for (id, event_id, next_at, manual, attempts, payload, occurred_at, url, seq) in rows {
        if req.in_flight.contains(&id) {
            continue;
        }
        let at = Timestamp(next_at.unwrap_or(now.millis()));
        if at > now || due.len() >= req.limit {
            next_due = Some(at);
            break;
        }
        if secrets.is_none() {
            secrets = Some(signing_secrets(c, &req.endpoint_id, now)?);
        }
        due.push(DueDelivery {
            id,
            seq,
            event_id,
            endpoint_id: req.endpoint_id.clone(),
            url,
            payload: bytes::Bytes::from(payload),
            secrets: secrets.clone().unwrap_or_default(),
            trigger: if manual {
                Trigger::Manual
            } else {
                Trigger::Scheduled
            },
            event_occurred_at: Timestamp(occurred_at),
            first_attempt: attempts == 0,
            lease_token: None,
        });
    }
    Ok(LaneWork {
        endpoint_id: req.endpoint_id,
        due,
        next_due,
        // One process owns the database: nothing else holds its deliveries.
        held_until: None,
    })
}

fn insert_attempt(
    c: &Connection,
    delivery_id: &str,
    number: u32,
    r: &AttemptResult,
    out_of_order: bool,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO attempts (delivery_id, number, trigger, started_at, duration_ms,
                               status_code, error_class, error, response_headers, response_body,
                               out_of_order)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .and_then(|mut s| {
        s.execute(params![
            delivery_id,
            number,
            r.trigger.as_str(),
            r.started_at.millis(),
            r.duration_ms,
            r.status_code,
            r.error_class.map(ErrorClass::as_str),
            r.error,
            serde_json::to_string(&r.response_headers).expect("headers serialise"),
            r.response_body,
            out_of_order
        ])
    })
    .map(|_| ())
    .map_err(db_err)
}
