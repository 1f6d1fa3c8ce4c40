//! Every filtered list statement walks the index made for its leading filter: on a database
//! with statistics (a few organizations, one large, with a rare user, type, endpoint and
//! event), `EXPLAIN` of each statement shape, given a rare value of its leading filter, must
//! show a scan of that index and no sequential scan; and no sort, except for one event's
//! deliveries (at most one per endpoint, read through the unique (event_id, endpoint_id)
//! index). A common value may rightly take another index; a rare one is where walking the
//! wrong index would read an organization's whole history. Needs
//! `ACCOMMADOR_TEST_POSTGRES_URL`, like the other PostgreSQL tests.

use tokio_postgres::types::ToSql;

use super::deliveries::delivery_walk_sql;
use super::test_db::{TestDatabase, connect, explain};
use super::{IN_ORDER, PgStore, event_walk_sql};
use crate::store::{DeliveryWalk, EventWalk};

/// Three organizations (one with most rows); in `org_a`, user `usr_a_rare`, type
/// `user.deleted` and endpoint `ep_a_rare` are rare. Every 50th event is a test event.
const ROWS: &str = "
    INSERT INTO organizations (id, name, created_at)
    VALUES ('org_a', 'a', 0), ('org_b', 'b', 0), ('org_c', 'c', 0);
    INSERT INTO events (id, org_id, type, user_id, user_version, occurred_at, payload)
    SELECT 'evt_' || o.id || '_' || g, o.id,
           CASE WHEN g % 50 = 0 THEN 'webhook.test'
                WHEN g % 97 = 0 THEN 'user.deleted'
                WHEN g % 2 = 0 THEN 'user.created' ELSE 'user.updated' END,
           CASE WHEN g % 50 = 0 THEN NULL
                WHEN o.id = 'org_a' AND g % 1000 = 1 THEN 'usr_a_rare'
                ELSE 'usr_' || o.id || '_' || (g % o.users) END,
           1, g, '{}'
    FROM (VALUES ('org_a', 20000, 200), ('org_b', 2000, 50), ('org_c', 20, 2)) AS o(id, n, users),
         generate_series(1, o.n) AS g;
    UPDATE events SET commit_seq = seq;
    INSERT INTO deliveries (id, org_id, event_seq, event_id, event_type, endpoint_id, user_id,
                            status, created_at, updated_at)
    SELECT 'dlv_' || e.seq || '_' || ep, e.org_id, e.seq, e.id, e.type, ep, e.user_id,
           CASE WHEN e.seq % 7 = 0 THEN 'failed' ELSE 'succeeded' END, e.occurred_at,
           e.occurred_at
    FROM events e,
         unnest(CASE e.org_id
                    WHEN 'org_a' THEN
                        ARRAY['ep_a_1', 'ep_a_2', 'ep_a_3']
                        || CASE WHEN e.seq % 500 = 0 THEN ARRAY['ep_a_rare'] ELSE '{}' END
                    WHEN 'org_b' THEN ARRAY['ep_b_1', 'ep_b_2']
                    ELSE ARRAY['ep_c_1'] END) AS ep;
    ANALYZE;
";

/// The plan's lines, for the statement and these parameters, with the settings its list
/// runs it with.
async fn plan(
    client: &mut tokio_postgres::Client,
    sql: &str,
    in_order: bool,
    params: &[&(dyn ToSql + Sync)],
) -> String {
    explain(client, if in_order { IN_ORDER } else { "" }, sql, params).await
}

fn assert_walks(plan: &str, index: &str, sorted: bool, what: &str) {
    assert!(
        plan.contains(&format!(" using {index} on ")) || plan.contains(&format!(" on {index}")),
        "{what} does not read {index}:\n{plan}"
    );
    assert!(!plan.contains("Seq Scan"), "{what} scans a table:\n{plan}");
    assert_eq!(
        plan.contains("Sort"),
        sorted,
        "{what}: sort or not:\n{plan}"
    );
}

#[tokio::test]
async fn each_walk_reads_its_index_for_a_rare_value() {
    let Some(db) = TestDatabase::create("acc_plans").await else {
        return;
    };
    let _store = PgStore::open(&db.url, 2).await.unwrap();
    let mut client = connect(&db.url).await;
    client.batch_execute(ROWS).await.unwrap();

    let none: Option<String> = None;
    for walk in EventWalk::ALL {
        let (org, event_type, user, index) = match walk {
            EventWalk::Org => ("org_c", None, None, "events_org_commit_order"),
            EventWalk::Type => (
                "org_a",
                Some("user.deleted"),
                None,
                "events_org_type_commit_order",
            ),
            EventWalk::User => (
                "org_a",
                None,
                Some("usr_a_rare".to_owned()),
                "events_org_user_commit_order",
            ),
        };
        let sql = event_walk_sql(walk);
        let plan = plan(&mut client, &sql, true, &[&org, &0i64, &event_type, &user]).await;
        assert_walks(&plan, index, false, &format!("the events walk {walk:?}"));
    }

    for walk in DeliveryWalk::ALL {
        let rare = |id: &str| Some(id.to_owned());
        let (org, endpoint, event, user, index, sorted) = match walk {
            DeliveryWalk::Org => ("org_c", None, None, None, "deliveries_org_list", false),
            DeliveryWalk::Endpoint => (
                "org_a",
                rare("ep_a_rare"),
                None,
                None,
                "deliveries_endpoint_list",
                false,
            ),
            DeliveryWalk::User => (
                "org_a",
                None,
                None,
                rare("usr_a_rare"),
                "deliveries_user_list",
                false,
            ),
            DeliveryWalk::Event => (
                "org_a",
                None,
                rare("evt_org_a_77"),
                None,
                "deliveries_event_id_endpoint_id_key",
                true,
            ),
        };
        // Filters the walk does not lead with are set too: they must not change the index.
        let since: Option<i64> = None;
        let params: [&(dyn ToSql + Sync); 9] = [
            &org,
            &i64::MAX,
            &endpoint,
            &event,
            &user,
            &none,
            &Some("failed"),
            &since,
            &Some(1i64 << 50),
        ];
        let plan = plan(&mut client, &delivery_walk_sql(walk), !sorted, &params).await;
        assert_walks(
            &plan,
            index,
            sorted,
            &format!("the deliveries walk {walk:?}"),
        );
    }
}
