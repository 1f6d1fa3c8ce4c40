//! The statements on the delivery path that look rows up by key, planned on tables **without
//! statistics** (autovacuum off, or tables too young to have been analysed): the planner then
//! guesses from table sizes, and each of these once guessed a walk instead of a lookup (an
//! organization's whole list of users or endpoints for a lookup by ID; every pending delivery
//! of an endpoint for a per-user probe; every numbered event's dead index entry for the
//! sequencer; BENCHMARKS, "Fourth session"). `EXPLAIN` of each, with the settings its
//! transaction runs it with, must show the index it was written for. Needs
//! `ACCOMMADOR_TEST_POSTGRES_URL`, like the other PostgreSQL tests.

use tokio_postgres::types::ToSql;

use super::deliveries::{KEYED_UPKEEP, RECHECK_NOTED, RELEASE_UNBLOCKED, SWEEP_WAITING};
use super::leasing::LEASE_LANES;
use super::test_db::{TestDatabase, connect, explain};
use super::{PgStore, SEQUENCE_EVENTS, SEQUENCE_SETTINGS, live_endpoint_sql, live_user_sql};

/// One organization: 3,000 users, 300 endpoints (`ep_1` orders per user), 6,010 events of
/// 1,000 users (the last 10 not numbered yet), each delivered to `ep_1` (each user's first
/// due, the rest waiting behind it: the insert trigger marks them) and, already succeeded, to
/// three more endpoints. Never analysed.
const ROWS: &str = "
    ALTER TABLE users SET (autovacuum_enabled = false);
    ALTER TABLE endpoints SET (autovacuum_enabled = false);
    ALTER TABLE events SET (autovacuum_enabled = false);
    ALTER TABLE deliveries SET (autovacuum_enabled = false);
    INSERT INTO organizations (id, name, created_at) VALUES ('org_a', 'a', 0);
    INSERT INTO users (id, org_id, email, email_lower, attributes, version, created_at,
                       updated_at)
    SELECT 'usr_' || g, 'org_a', 'u' || g || '@example.com', 'u' || g || '@example.com', '{}',
           1, g, g
    FROM generate_series(1, 3000) g;
    INSERT INTO endpoints (id, org_id, url, event_types, description, status, created_at,
                           updated_at, ordering)
    SELECT 'ep_' || g, 'org_a', 'https://example.com/' || g, '[]', '', 'enabled', g, g,
           CASE WHEN g = 1 THEN 'per_user' ELSE 'none' END
    FROM generate_series(1, 300) g;
    INSERT INTO events (id, org_id, type, user_id, user_version, occurred_at, payload,
                        commit_seq)
    SELECT 'evt_' || g, 'org_a', 'user.updated', 'usr_' || (g % 1000 + 1), 1, g, '{}',
           CASE WHEN g <= 6000 THEN g END
    FROM generate_series(1, 6010) g;
    INSERT INTO deliveries (id, org_id, event_seq, event_id, event_type, endpoint_id, user_id,
                            status, next_attempt_at, created_at, updated_at)
    SELECT 'dlv_' || e.seq || '_' || ep, e.org_id, e.seq, e.id, e.type, ep, e.user_id,
           CASE WHEN ep = 'ep_1' THEN 'pending' ELSE 'succeeded' END,
           CASE WHEN ep = 'ep_1' THEN e.occurred_at END, e.occurred_at, e.occurred_at
    FROM events e, unnest(ARRAY['ep_1', 'ep_2', 'ep_3', 'ep_4']) AS ep
    ORDER BY e.seq, ep;
";

/// `plan` reads every index of `reads` and none of `avoids` (nor any table whole).
fn assert_plan(plan: &str, reads: &[&str], avoids: &[&str], what: &str) {
    for index in reads {
        assert!(
            plan.contains(&format!(" {index} ")) || plan.ends_with(&format!(" {index}")),
            "{what} does not read {index}:\n{plan}"
        );
    }
    for index in avoids {
        assert!(
            !plan.contains(&format!(" {index} ")),
            "{what} reads {index}:\n{plan}"
        );
    }
    assert!(!plan.contains("Seq Scan"), "{what} scans a table:\n{plan}");
}

#[tokio::test]
async fn lookups_on_the_delivery_path_read_their_index_without_statistics() {
    let Some(db) = TestDatabase::create("acc_keyed").await else {
        return;
    };
    let _store = PgStore::open(&db.url, 2).await.unwrap();
    let mut client = connect(&db.url).await;
    client.batch_execute(ROWS).await.unwrap();
    let analysed: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stats WHERE schemaname = 'public'
               AND tablename IN ('users', 'endpoints', 'events', 'deliveries')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        analysed, 0,
        "the tables must have no statistics for this test"
    );
    let waiting: i64 = client
        .query_one(
            "SELECT count(*) FROM deliveries WHERE next_attempt_at IS NULL AND status = 'pending'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        waiting, 5010,
        "the insert trigger marks each user's later deliveries"
    );

    // A user's and an endpoint's lookup by ID (every PATCH, every endpoint read).
    for for_update in [false, true] {
        let sql = live_user_sql(for_update);
        let shown = explain(&mut client, "", &sql, &[&"usr_2999", &"org_a"]).await;
        assert_plan(
            &shown,
            &["users_id_key"],
            &["users_live_list"],
            "a user's lookup",
        );
        let sql = live_endpoint_sql(for_update);
        let shown = explain(&mut client, "", &sql, &[&"ep_250", &"org_a"]).await;
        assert_plan(
            &shown,
            &["endpoints_id_key"],
            &["endpoints_live_list"],
            "an endpoint's lookup",
        );
    }

    // The sequencer's step, on every write's path: the unnumbered events in order.
    let step = 1000i64;
    let shown = explain(&mut client, SEQUENCE_SETTINGS, SEQUENCE_EVENTS, &[&step]).await;
    assert_plan(
        &shown,
        &["events_unsequenced"],
        &["events_commit_order"],
        "the numbering step",
    );

    // The release of waiting deliveries (fan-out's recheck: up to 100 a note; the sweep: up
    // to 1,000 a pass): each by key, and whether an earlier one of its user is pending
    // through deliveries_user_pending.
    let waiting_seqs: Vec<i64> = client
        .query(
            "SELECT seq FROM deliveries WHERE next_attempt_at IS NULL AND status = 'pending'
             ORDER BY seq LIMIT 1000",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for n in [100, 1000] {
        let seqs = &waiting_seqs[..n];
        let shown = explain(&mut client, KEYED_UPKEEP, RELEASE_UNBLOCKED, &[&seqs]).await;
        assert_plan(
            &shown,
            &["deliveries_pkey", "deliveries_user_pending"],
            &["deliveries_endpoint_due", "deliveries_due"],
            &format!("the release of {n} waiting deliveries"),
        );
    }

    // Fan-out's recheck of the waiting deliveries it noted (ranges of numbers): each by key.
    let (firsts, lasts) = (vec![waiting_seqs[0]], vec![waiting_seqs[99]]);
    let shown = explain(&mut client, KEYED_UPKEEP, RECHECK_NOTED, &[&firsts, &lasts]).await;
    assert_plan(
        &shown,
        &["deliveries_pkey", "deliveries_user_pending"],
        &["deliveries_endpoint_due", "deliveries_due"],
        "the recheck of noted deliveries",
    );

    // The sweep: the next waiting deliveries in number order, from their own index.
    let (after, most) = (waiting_seqs[10], 1000i64);
    let shown = explain(&mut client, KEYED_UPKEEP, SWEEP_WAITING, &[&after, &most]).await;
    assert_plan(
        &shown,
        &["deliveries_waiting"],
        &["deliveries_due"],
        "the sweep",
    );

    // Leasing a lane that orders per user: its due deliveries in due order, and for each the
    // per-user probe through deliveries_user_pending (sorts off, as leasing sets them then).
    let endpoints = vec!["ep_1".to_owned()];
    let (limit, active, ahead) = (vec![16i64], vec![0i64], vec![16i64]);
    let (token, millis, bound, ordered) = ("lease_t".to_owned(), 60_000i64, 16i64, vec![true]);
    let params: [&(dyn ToSql + Sync); 8] = [
        &endpoints, &limit, &active, &ahead, &token, &millis, &bound, &ordered,
    ];
    let shown = explain(
        &mut client,
        "SET LOCAL enable_bitmapscan TO off; SET LOCAL enable_sort TO off",
        LEASE_LANES,
        &params,
    )
    .await;
    assert_plan(
        &shown,
        &["deliveries_endpoint_due", "deliveries_user_pending"],
        &["deliveries_due"],
        "leasing an ordered lane",
    );
}
