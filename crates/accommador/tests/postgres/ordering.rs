//! Per-user ordering across instances (DESIGN §10): two workers sharing one database never
//! send one user's events to a `per_user` endpoint out of order, even when deliveries fail
//! and retry at random.

use std::collections::HashMap;

use super::*;

#[tokio::test]
async fn two_workers_deliver_every_users_events_in_version_order_despite_failures() {
    if !postgres_configured() {
        return;
    }
    // ACCOMMADOR_TEST_FULL=1: the 10,000 events of 1,000 users (about 10 minutes on
    // a busy 2-core machine, most of it the 9,000 PATCHes); otherwise a fifth of it.
    let users = if std::env::var("ACCOMMADOR_TEST_FULL").is_ok() {
        1000
    } else {
        200
    };
    const EVENTS_PER_USER: u64 = 10;
    // Failed attempts retry within 50 ms, up to five times (each delivery fails at most
    // twice), so every delivery succeeds in the end.
    let (_db, rx, servers, client, key) =
        two_instances(&[("ACCOMMADOR_RETRY_SCHEDULE", "20ms,50ms,50ms,50ms,50ms")]).await;
    rx.flaky(2);
    let r = client
        .post(servers[0].url("/v1/endpoints"))
        .bearer_auth(&key)
        .json(&json!({"url": rx.url("/ordered"), "ordering": "per_user"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // Each user is created on one instance and changed on both, one change after another;
    // 16 users at a time.
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (client, key) = (client.clone(), key.clone());
        let urls = [servers[0].url(""), servers[1].url("")];
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (w..users).step_by(16) {
                let r = client
                    .post(format!("{}/v1/users", urls[i % 2]))
                    .bearer_auth(&key)
                    .json(&json!({"email": format!("u{i}@example.com")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::CREATED);
                let id = r.json::<Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                for v in 2..=EVENTS_PER_USER {
                    let r = client
                        .patch(format!("{}/v1/users/{id}", urls[v as usize % 2]))
                        .bearer_auth(&key)
                        .json(&json!({"name": format!("v{v}")}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), StatusCode::OK);
                }
                ids.push(id);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    let expected = users * EVENTS_PER_USER as usize;
    wait_distinct(&rx, expected, Duration::from_secs(300)).await;

    // Per user, every request (failed ones included) in arrival order: versions never go
    // back, and each one arrives.
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    let all = rx.all();
    for r in &all {
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        let user = &body["data"]["user"];
        seen.entry(user["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(user["version"].as_u64().unwrap());
    }
    assert_eq!(seen.len(), users);
    for id in &ids {
        let versions = &seen[id];
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "{id} received versions out of order: {versions:?}"
        );
        let mut distinct = versions.clone();
        distinct.dedup();
        assert_eq!(distinct, (1..=EVENTS_PER_USER).collect::<Vec<_>>(), "{id}");
    }
    let failures = all.len() - expected;
    eprintln!(
        "{expected} events of {users} users delivered in order; {failures} failed attempts retried"
    );
    assert!(
        failures > expected / 2,
        "too few failures to test: {failures}"
    );
    assert_eq!(
        rx.overlaps(),
        0,
        "two workers attempted one delivery at once"
    );
}

/// A delivery waiting behind an earlier one of its user whose release was missed: the update
/// of a user whose creation's delivery failed (retried only after an hour) waits behind it, and
/// fan-out's own recheck has run; then the creation's delivery ends with triggers off (the
/// release never sees the update, as when two transactions end one user's deliveries at
/// once). Returns the database, the receiver, the running server, a connection to the
/// database, the user and the waiting delivery's number.
async fn a_stranded_waiting_delivery() -> (
    TestDb,
    receiver::Receiver,
    Server,
    tokio_postgres::Client,
    String,
    i64,
) {
    let db = TestDb::new().await;
    let rx = receiver::Receiver::start().await;
    let server = Server::spawn(
        &db.url,
        &["serve"],
        &[PRIVATE, ("ACCOMMADOR_RETRY_SCHEDULE", "1h")],
    )
    .await;
    let client = Client::new();
    let key = create_org(&client, &server).await;
    create_endpoint_with(
        &client,
        &server,
        &key,
        json!({"url": rx.url("/ordered"), "ordering": "per_user"}),
    )
    .await;
    rx.script("/ordered", vec![receiver::Reply::status(500)]);
    let r = client
        .post(server.url("/v1/users"))
        .bearer_auth(&key)
        .json(&json!({"email": "ada@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let user = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    rx.wait_for("/ordered", 1, Duration::from_secs(10)).await;
    let r = client
        .patch(server.url(&format!("/v1/users/{user}")))
        .bearer_auth(&key)
        .json(&json!({"name": "Ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let (sql, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (first, waiting) = loop {
        let rows = sql
            .query(
                "SELECT d.id, d.seq, d.next_attempt_at IS NULL, d.event_type,
                        (SELECT count(*) FROM ordered_recheck)
                 FROM deliveries d WHERE d.user_id = $1 ORDER BY d.event_seq",
                &[&user],
            )
            .await
            .unwrap();
        if rows.len() == 2 && rows[1].get::<_, i64>(4) == 0 {
            assert_eq!(rows[1].get::<_, &str>(3), "user.updated");
            assert!(
                rows[1].get::<_, bool>(2),
                "the update must wait behind the creation"
            );
            break (rows[0].get::<_, String>(0), rows[1].get::<_, i64>(1));
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the update was not fanned out and rechecked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rx.received("/ordered").len(),
        1,
        "the update went out too early"
    );

    sql.batch_execute("SET session_replication_role = replica")
        .await
        .unwrap();
    let ended = sql
        .execute(
            "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL WHERE id = $1",
            &[&first],
        )
        .await
        .unwrap();
    assert_eq!(ended, 1);
    (db, rx, server, sql, user, waiting)
}

/// The stranded delivery of [`a_stranded_waiting_delivery`] is sent.
async fn assert_sent(rx: &receiver::Receiver, user: &str) {
    let got = rx.wait_for("/ordered", 2, Duration::from_secs(15)).await;
    let body: Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(body["type"], "user.updated");
    assert_eq!(body["data"]["user"]["id"], user);
}

/// Fan-out marks a delivery waiting without locking what it waits behind and checks it again
/// after its commit, from a note written with it (migration 0020). A note left by a fan-out
/// that died between its commit and its recheck is taken up by the running instance.
#[tokio::test]
async fn a_recheck_note_left_by_a_dead_fan_out_gets_its_delivery_sent() {
    if !postgres_configured() {
        return;
    }
    let (_db, rx, _server, sql, user, waiting) = a_stranded_waiting_delivery().await;
    sql.execute(
        "INSERT INTO ordered_recheck (first_seq, last_seq) VALUES ($1, $1)",
        &[&waiting],
    )
    .await
    .unwrap();
    assert_sent(&rx, &user).await;
    let notes: i64 = sql
        .query_one("SELECT count(*) FROM ordered_recheck", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(notes, 0, "the note is deleted once checked");
}

/// With no note at all (its release missed by two transactions that ended the user's
/// deliveries at once), the sweep of waiting deliveries sends it.
#[tokio::test]
async fn a_waiting_delivery_whose_release_was_missed_is_found_by_the_sweep_and_sent() {
    if !postgres_configured() {
        return;
    }
    let (_db, rx, _server, _sql, user, _) = a_stranded_waiting_delivery().await;
    assert_sent(&rx, &user).await;
}
