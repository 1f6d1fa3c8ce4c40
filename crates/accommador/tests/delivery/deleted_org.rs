//! Deleting an organization (DESIGN §10): once the operator's `DELETE` has answered, none of
//! its endpoints receives another request, while other organizations' deliveries go on.

use std::time::Instant;

use super::*;

const ADMIN_TOKEN: &str = helpers::ADMIN_TOKEN;

#[tokio::test]
async fn a_deleted_organizations_endpoints_receive_nothing_more() {
    // Retries every 100 ms for a long while: the doomed endpoint keeps being attempted.
    let app = spawn_app_with(|s| s.retry_schedule = vec![ms(100); 100]).await;
    let rx = Receiver::start().await;
    rx.default_reply(Reply::status(500));
    rx.script("/kept", (0..10).map(|_| Reply::status(200)).collect());
    let doomed = app.create_org("Doomed").await;
    let kept = app.create_org("Kept").await;
    endpoint(&app, &doomed, &rx.url("/doomed"), None).await;
    let kept_ep = endpoint(&app, &kept, &rx.url("/kept"), None).await;
    for i in 0..3 {
        app.create_user(&doomed, json!({ "email": format!("d{i}@example.com") }))
            .await;
    }
    // Being retried.
    rx.wait_for("/doomed", 6, WAIT).await;

    let r = app
        .client
        .delete(app.url(&format!("/v1/organizations/{}", doomed.id)))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // An attempt that had already started when the answer came may still land.
    tokio::time::sleep(ms(300)).await;
    let at_answer = rx.received("/doomed").len();
    // Other organizations' deliveries go on meanwhile.
    app.create_user(&kept, json!({"email": "k@example.com"}))
        .await;
    let got = rx.wait_for("/kept", 1, WAIT).await;
    verify(&kept_ep.secret, &got[0]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        rx.received("/doomed").len(),
        at_answer,
        "a deleted organization's endpoint was sent to after the answer"
    );
}

/// `SELECT COUNT(*)` of `sql` on the SQLite file beside the running server.
async fn count_in(path: std::path::PathBuf, sql: String) -> i64 {
    tokio::task::spawn_blocking(move || {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.busy_timeout(Duration::from_secs(60)).unwrap();
        conn.query_row(&sql, [], |r| r.get(0)).unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_deletion_cut_short_by_sigkill_goes_on_at_the_next_start() {
    use crate::crash::{ADMIN, start};

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crash.db");
    let client = reqwest::Client::new();
    let mut server = start(dir.path()).await;
    let org: Value = client
        .post(server.url("/v1/organizations"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "Big"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = org["id"].as_str().unwrap().to_owned();
    // Far more users than the deletion removes before the kill below.
    let (path, org_id) = (file.clone(), id.clone());
    tokio::task::spawn_blocking(move || {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.busy_timeout(Duration::from_secs(60)).unwrap();
        conn.execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000)
             INSERT INTO users (id, org_id, email, email_lower, attributes, version,
                                created_at, updated_at)
             SELECT 'usr_bulk' || i, '{org_id}', 'u' || i || '@x.co', 'u' || i || '@x.co',
                    '{{}}', 1, 0, 0 FROM n;"
        ))
        .unwrap();
    })
    .await
    .unwrap();

    let r = client
        .delete(server.url(&format!("/v1/organizations/{id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    server.0.kill().unwrap();
    spawn::reap(&mut server.0).await;
    let users = format!("SELECT COUNT(*) FROM users WHERE org_id = '{id}'");
    let left = count_in(file.clone(), users.clone()).await;
    assert!(
        left > 0,
        "the deletion finished before the kill; nothing to resume"
    );

    let server = start(dir.path()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let orgs = format!("SELECT COUNT(*) FROM organizations WHERE id = '{id}'");
        if count_in(file.clone(), users.clone()).await == 0
            && count_in(file.clone(), orgs).await == 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "the deletion did not go on");
        tokio::time::sleep(ms(100)).await;
    }
    let listed: Value = client
        .get(server.url("/v1/organizations"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"], json!([]));
}
