//! Every filtered list statement walks one index in list order: `EXPLAIN QUERY PLAN` of each
//! statement shape must show a search of that index bounded by the walk's filter and cursor,
//! and no full scan and no sort (either would read an organization's whole history). A
//! change that breaks this (a dropped or reshaped index, a filter rewritten so that the index
//! no longer serves it) fails here instead of as a slow list that holds a reader.

use rusqlite::Connection;

use super::deliveries::{DUE_STATS_SQL, FAIL_PENDING_SQL, delivery_walk_sql};
use super::{event_walk_sql, known_in_org_sql, migrate};
use crate::store::{DeliveryWalk, EventWalk};

fn migrated() -> Connection {
    let mut c = Connection::open_in_memory().unwrap();
    migrate(&mut c).unwrap();
    c
}

/// The detail lines of the statement's query plan (parameters unbound: SQLite plans these
/// statements the same whatever their values).
fn plan(c: &Connection, sql: &str) -> Vec<String> {
    c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .and_then(|mut s| {
            s.raw_query()
                .mapped(|r| r.get::<_, String>(3))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_else(|e| panic!("planning {sql}: {e}"))
}

/// Asserts that the plan is exactly one search of `search` (e.g. `events USING INDEX x
/// (org_id=? AND seq>?)`) and nothing else: no scan, no temporary B-tree for a sort.
fn assert_walks(c: &Connection, sql: &str, search: &str) {
    let plan = plan(c, sql);
    assert_eq!(
        plan,
        [format!("SEARCH {search}")],
        "this statement no longer walks one index in list order:\n{sql}"
    );
}

#[test]
fn each_events_walk_is_one_index_range_in_commit_order() {
    let c = migrated();
    for walk in EventWalk::ALL {
        let search = match walk {
            EventWalk::Org => "events USING INDEX events_org_seq (org_id=? AND seq>?)",
            EventWalk::Type => {
                "events USING INDEX events_org_type_seq (org_id=? AND type=? AND seq>?)"
            }
            EventWalk::User => {
                "events USING INDEX events_org_user_seq (org_id=? AND user_id=? AND seq>?)"
            }
        };
        assert_walks(&c, &event_walk_sql(walk), search);
    }
}

#[test]
fn each_deliveries_walk_is_one_index_range_newest_first() {
    let c = migrated();
    for walk in DeliveryWalk::ALL {
        let search = match walk {
            DeliveryWalk::Org => "deliveries USING INDEX deliveries_org_list (org_id=? AND seq<?)",
            DeliveryWalk::Endpoint => {
                "deliveries USING INDEX deliveries_endpoint_list (endpoint_id=? AND seq<?)"
            }
            DeliveryWalk::User => {
                "deliveries USING INDEX deliveries_user_list (org_id=? AND user_id=? AND seq<?)"
            }
            DeliveryWalk::Event => {
                "deliveries USING INDEX deliveries_event_list (event_id=? AND seq<?)"
            }
        };
        assert_walks(&c, &delivery_walk_sql(walk), search);
    }
}

#[test]
fn the_filters_checks_of_ownership_are_lookups_by_id() {
    let c = migrated();
    for table in ["users", "events", "endpoints"] {
        let plan = plan(&c, &known_in_org_sql(table));
        assert_eq!(plan.len(), 1, "{table}: {plan:?}");
        assert!(
            plan[0].starts_with(&format!("SEARCH {table} USING INDEX "))
                && plan[0].ends_with("(id=?)"),
            "{table}: {plan:?}"
        );
    }
}

#[test]
fn the_due_gauge_reads_a_bounded_range_of_the_due_index() {
    let c = migrated();
    let plan = plan(&c, DUE_STATS_SQL);
    let searches = plan
        .iter()
        .filter(|l| l.starts_with("SEARCH deliveries USING COVERING INDEX deliveries_due"))
        .count();
    assert_eq!(searches, 2, "both reads walk the due index: {plan:?}");
    assert!(
        plan.iter()
            .all(|l| !l.starts_with("SCAN deliveries") && !l.contains("TEMP B-TREE")),
        "no scan of deliveries and no sort: {plan:?}"
    );
}

#[test]
fn failing_a_backlog_reads_only_pending_deliveries() {
    let c = migrated();
    assert_eq!(
        plan(&c, FAIL_PENDING_SQL),
        ["SEARCH deliveries USING INDEX deliveries_endpoint_due (endpoint_id=?)"]
    );
}
