//! Did every event arrive? Compares what the API acknowledged, what the outbox
//! (`GET /v1/events`) holds, and what the receivers got, per endpoint. The user API answers
//! with the user, not the event, so the user id links an acknowledged request to its
//! `user.created` event, whose id is the `webhook-id` every delivery must carry. When the
//! outbox no longer has the events (the purge scenario expires them after a second),
//! [`tally_by_user`] matches receipts to acknowledged users by the body's user id instead. Pure.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::api::EventRef;
use crate::receivers::Receipt;

/// Delivery accounting of one phase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Users created with a 2xx.
    pub acked: u64,
    /// Acknowledged users without a `user.created` event in the outbox (a lost event).
    pub acked_without_event: u64,
    /// Outbox events for users the bench never saw acknowledged (e.g. a request that timed
    /// out on the bench's side but committed).
    pub events_without_ack: u64,
    /// Events × endpoints that should have arrived.
    pub expected: u64,
    /// Distinct (endpoint, event) pairs that arrived.
    pub delivered: u64,
    /// Expected but never arrived.
    pub lost: u64,
    /// Receipts beyond the first of the same event at the same endpoint (allowed: delivery is
    /// at least once; counted so a storm of them shows).
    pub duplicates: u64,
    /// Receipts at these endpoints for events the outbox does not have.
    pub unexpected: u64,
}

/// Tallies one phase: `acked` user ids, the organization's `events`, the `endpoints` that
/// should each have received every event, and the receipts (receipts at other endpoints are
/// ignored).
pub fn tally<'a>(
    acked: impl IntoIterator<Item = &'a str>,
    events: &[EventRef],
    endpoints: &[u32],
    receipts: &[Receipt],
) -> Tally {
    let acked: HashSet<&str> = acked.into_iter().collect();
    let event_users: HashSet<&str> = events.iter().map(|e| e.user_id.as_str()).collect();
    let event_ids: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let wanted: HashSet<u32> = endpoints.iter().copied().collect();

    let mut seen: HashMap<(u32, &str), u64> = HashMap::new();
    let mut unexpected = 0;
    for r in receipts.iter().filter(|r| wanted.contains(&r.endpoint)) {
        if event_ids.contains(&*r.event_id) {
            *seen.entry((r.endpoint, &r.event_id)).or_default() += 1;
        } else {
            unexpected += 1;
        }
    }
    let expected = event_ids.len() as u64 * wanted.len() as u64;
    let delivered = seen.len() as u64;
    Tally {
        acked: acked.len() as u64,
        acked_without_event: acked.iter().filter(|u| !event_users.contains(*u)).count() as u64,
        events_without_ack: event_users.iter().filter(|u| !acked.contains(*u)).count() as u64,
        expected,
        delivered,
        lost: expected - delivered,
        duplicates: seen.values().map(|n| n - 1).sum(),
        unexpected,
    }
}

/// Delivery accounting of one phase whose events were purged from the outbox: each
/// acknowledged user (one `user.created` event each) must have arrived at every endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReceiptTally {
    /// Users created with a 2xx.
    pub acked: u64,
    /// Acknowledged users × endpoints.
    pub expected: u64,
    /// Distinct (endpoint, acknowledged user) pairs that arrived.
    pub delivered: u64,
    /// Expected but never arrived.
    pub lost: u64,
    /// Receipts beyond the first of the same event at the same endpoint.
    pub duplicates: u64,
    /// Distinct events at these endpoints about users the bench did not see acknowledged
    /// (e.g. a request that timed out on the bench's side but committed).
    pub unmatched: u64,
}

/// Tallies one phase by user id: `acked` user ids, the `endpoints` that should each have
/// received every user's event, and the receipts (receipts at other endpoints are ignored).
pub fn tally_by_user<'a>(
    acked: impl IntoIterator<Item = &'a str>,
    endpoints: &[u32],
    receipts: &[Receipt],
) -> ReceiptTally {
    let acked: HashSet<&str> = acked.into_iter().collect();
    let wanted: HashSet<u32> = endpoints.iter().copied().collect();
    let mut events: HashMap<(u32, &str), (&str, u64)> = HashMap::new();
    for r in receipts.iter().filter(|r| wanted.contains(&r.endpoint)) {
        events
            .entry((r.endpoint, &r.event_id))
            .or_insert((&r.user_id, 0))
            .1 += 1;
    }
    let mut arrived: HashSet<(u32, &str)> = HashSet::new();
    let mut unmatched = 0;
    for ((endpoint, _), (user, _)) in &events {
        if acked.contains(user) {
            arrived.insert((*endpoint, user));
        } else {
            unmatched += 1;
        }
    }
    let expected = acked.len() as u64 * wanted.len() as u64;
    let delivered = arrived.len() as u64;
    ReceiptTally {
        acked: acked.len() as u64,
        expected,
        delivered,
        lost: expected - delivered,
        duplicates: events.values().map(|(_, n)| n - 1).sum(),
        unmatched,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn event(id: &str, user: &str) -> EventRef {
        EventRef {
            id: id.into(),
            user_id: user.into(),
        }
    }

    fn receipt(endpoint: u32, event_id: &str) -> Receipt {
        user_receipt(endpoint, event_id, "")
    }

    fn user_receipt(endpoint: u32, event_id: &str, user_id: &str) -> Receipt {
        Receipt {
            endpoint,
            event_id: event_id.into(),
            user_id: user_id.into(),
            version: 1,
            at: Instant::now(),
        }
    }

    #[test]
    fn by_user_every_acknowledged_user_at_every_endpoint() {
        let receipts = [
            user_receipt(0, "e1", "u1"),
            user_receipt(1, "e1", "u1"),
            user_receipt(0, "e2", "u2"),
            user_receipt(0, "e2", "u2"),
            // Not acknowledged, and another phase's endpoint: counted apart, ignored.
            user_receipt(0, "e3", "u3"),
            user_receipt(7, "e4", "u2"),
        ];
        let t = tally_by_user(["u1", "u2"], &[0, 1], &receipts);
        assert_eq!(t.acked, 2);
        assert_eq!(t.expected, 4);
        // u2 never reached endpoint 1.
        assert_eq!((t.delivered, t.lost), (3, 1), "{t:?}");
        assert_eq!((t.duplicates, t.unmatched), (1, 1), "{t:?}");

        let all = tally_by_user(["u1"], &[0, 1], &receipts);
        assert_eq!((all.delivered, all.lost), (2, 0), "{all:?}");
    }

    #[test]
    fn every_event_at_every_endpoint_is_complete() {
        let events = [event("e1", "u1"), event("e2", "u2")];
        let receipts = [
            receipt(0, "e1"),
            receipt(1, "e1"),
            receipt(0, "e2"),
            receipt(1, "e2"),
        ];
        let t = tally(["u1", "u2"], &events, &[0, 1], &receipts);
        assert_eq!(t.expected, 4);
        assert_eq!(t.delivered, 4);
        assert_eq!((t.lost, t.duplicates, t.unexpected), (0, 0, 0), "{t:?}");
    }

    #[test]
    fn losses_duplicates_and_strangers_are_counted() {
        let events = [event("e1", "u1"), event("e2", "u2")];
        let receipts = [
            receipt(0, "e1"),
            receipt(0, "e1"),
            receipt(0, "e1"),
            receipt(0, "e9"),
            // Another phase's endpoint: ignored.
            receipt(7, "e2"),
        ];
        let t = tally(["u1", "u2", "u3"], &events, &[0], &receipts);
        assert_eq!(t.acked_without_event, 1);
        assert_eq!(t.expected, 2);
        assert_eq!(t.delivered, 1);
        assert_eq!(t.lost, 1);
        assert_eq!(t.duplicates, 2);
        assert_eq!(t.unexpected, 1);
    }
}
