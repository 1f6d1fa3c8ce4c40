//! A measurement, not a check (ignored by default): how long each UI page takes with
//! 1,000,000 deliveries of one organization in SQLite. Run with
//! `cargo test -p accommador --release --test api ui_page_times -- --ignored --nocapture`;
//! the numbers are in BENCHMARKS.md.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::spawn_api_only;
use crate::ui::Browser;

const DELIVERIES: u64 = 1_000_000;

#[tokio::test]
#[ignore = "a measurement: run it on purpose (see BENCHMARKS.md)"]
async fn ui_page_times_with_a_million_deliveries() {
    let app = spawn_api_only().await;
    assert!(!app.db.is_postgres(), "the measurement is made on SQLite");
    let acme = app.create_org("Acme").await;
    let endpoint: serde_json::Value = app
        .post(
            &acme,
            "/v1/endpoints",
            &json!({"url": "http://127.0.0.1:9/hook"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let user = app
        .create_user(&acme, json!({"email": "ada@example.com", "name": "Ada"}))
        .await;
    let (ep, usr, org) = (
        endpoint["id"].as_str().unwrap(),
        user["id"].as_str().unwrap(),
        acme.id.as_str(),
    );
    let now = accommador::domain::Timestamp::now().millis();
    let started = Instant::now();
    // One event per delivery, spread over the last ~28 hours; 10 % failed, 1 % pending (those
    // two with their failed attempt, which the endpoints' last error is read from).
    let sql = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {DELIVERIES})
         INSERT INTO events (id, org_id, type, user_id, user_version, occurred_at, payload)
         SELECT printf('evt_%026d', i), '{org}', 'user.updated', '{usr}', i,
                {now} - ({DELIVERIES} - i) * 100,
                '{{\"id\":\"' || printf('evt_%026d', i) || '\",\"type\":\"user.updated\",\"timestamp\":\"2026-12-01T00:00:00.000Z\",\"data\":{{\"user\":{{\"id\":\"{usr}\",\"version\":' || i || '}}}}}}'
         FROM n;
         INSERT INTO deliveries (id, org_id, event_seq, event_id, event_type, endpoint_id, status,
                                 attempt_count, next_attempt_at, last_status_code, created_at,
                                 updated_at, user_id)
         SELECT printf('dlv_%026d', e.seq), e.org_id, e.seq, e.id, e.type, '{ep}',
                CASE WHEN e.seq % 100 = 0 THEN 'pending' WHEN e.seq % 10 = 0 THEN 'failed'
                     ELSE 'succeeded' END,
                1, CASE WHEN e.seq % 100 = 0 THEN {now} + 86400000 END,
                CASE WHEN e.seq % 10 = 0 THEN 500 ELSE 200 END,
                e.occurred_at, e.occurred_at, e.user_id
         FROM events e WHERE e.id LIKE 'evt\\_0%' ESCAPE '\\';
         INSERT INTO attempts (delivery_id, number, trigger, started_at, duration_ms,
                               status_code, error_class, response_headers, response_body)
         SELECT id, 1, 'scheduled', updated_at - 5, 5, 500, 'http_status', '{{}}', ''
         FROM deliveries WHERE last_status_code = 500;
         UPDATE fanout_cursor SET last_seq = (SELECT MAX(seq) FROM events);
         ANALYZE;"
    );
    app.db.execute(&sql, "").await;
    eprintln!(
        "inserted {DELIVERIES} events and deliveries in {:?}",
        started.elapsed()
    );

    let mut b = Browser::new(&app);
    b.sign_in(&acme.key).await;
    let some = "dlv_00000000000000000000500000";
    let pages = [
        "/ui/".to_owned(),
        "/ui/deliveries".to_owned(),
        "/ui/deliveries?status=failed".to_owned(),
        format!("/ui/deliveries?endpoint_id={ep}&status=pending"),
        format!("/ui/deliveries?user_id={usr}"),
        "/ui/deliveries?event_type=user.updated&since=2026-11-30T00:00:00Z".to_owned(),
        format!("/ui/deliveries?after={some}"),
        format!("/ui/deliveries/{some}"),
        "/ui/endpoints".to_owned(),
        format!("/ui/endpoints/{ep}"),
        "/ui/events".to_owned(),
        "/ui/users".to_owned(),
        format!("/ui/users/{usr}"),
    ];
    eprintln!("| page | median | max (of 9) |\n|---|---|---|");
    for page in pages {
        let mut times: Vec<Duration> = Vec::new();
        for _ in 0..9 {
            let t = Instant::now();
            let (status, _) = b.page(&page).await;
            times.push(t.elapsed());
            assert_eq!(status, reqwest::StatusCode::OK, "{page}");
        }
        times.sort();
        eprintln!(
            "| `{page}` | {:.1} ms | {:.1} ms |",
            times[4].as_secs_f64() * 1000.0,
            times[8].as_secs_f64() * 1000.0
        );
    }
}
