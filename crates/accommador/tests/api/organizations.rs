//! The operator's organization routes (admin token): list organizations, issue a key to a
//! locked-out one, delete one. A deleted organization is gone at once (its keys answer 401, it
//! is not listed) and its data leaves the database in bounded batches, even across a crash,
//! while other organizations' data stays as it was.

use std::time::{Duration, Instant};

use accommador::store::keys::PURGE_BATCH;
use accommador::store::{DatabaseUrl, Ownership, Store};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_TOKEN, Tenant, TestApp, TestDb, error_fields, field_names, problem, spawn_app,
    spawn_app_with,
};

async fn admin(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> Response {
    let mut req = app
        .client
        .request(method, app.url(path))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.unwrap()
}

/// Every live organization's ID, following `next_cursor` two at a time.
async fn listed_orgs(app: &TestApp) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after = String::new();
    loop {
        let r = admin(
            app,
            Method::GET,
            &format!("/v1/organizations?limit=2{after}"),
            None,
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        let page: Value = r.json().await.unwrap();
        for org in page["data"].as_array().unwrap() {
            assert_eq!(field_names(org), ["created_at", "id", "name"]);
            ids.push(org["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => after = format!("&after={c}"),
            None => return ids,
        }
    }
}

#[tokio::test]
async fn the_operator_lists_organizations_oldest_first_in_pages() {
    let app = spawn_app().await;
    let mut made = Vec::new();
    for name in ["A", "B", "C"] {
        made.push(app.create_org(name).await.id);
    }
    assert_eq!(listed_orgs(&app).await, made);
    // An organization's own key is not the admin token.
    let t = Tenant {
        id: made[0].clone(),
        key: app.create_org("D").await.key,
    };
    problem(
        app.get(&t, "/v1/organizations").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[tokio::test]
async fn without_an_admin_token_the_operator_routes_do_not_exist() {
    let app = spawn_app_with(|s| s.admin_token = None).await;
    let org = "org_01JAAAAAAAAAAAAAAAAAAAAAAA";
    for (method, path, body) in [
        (Method::GET, "/v1/organizations".to_owned(), None),
        (Method::DELETE, format!("/v1/organizations/{org}"), None),
        (
            Method::POST,
            format!("/v1/organizations/{org}/api-keys"),
            Some(json!({"name": "x"})),
        ),
    ] {
        problem(
            admin(&app, method, &path, body).await,
            StatusCode::NOT_FOUND,
        )
        .await;
    }
}

#[tokio::test]
async fn the_operator_issues_a_key_to_a_locked_out_organization() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let path = format!("/v1/organizations/{}/api-keys", t.id);
    let r = admin(&app, Method::POST, &path, Some(json!({"name": "recovery"}))).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["name"], "recovery");
    let recovered = Tenant {
        id: t.id.clone(),
        key: created["api_key"].as_str().unwrap().to_owned(),
    };
    let page: Value = app
        .get(&recovered, "/v1/api-keys")
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "recovery"]);

    for (body, field) in [
        (json!({}), "name"),
        (json!({"name": "  "}), "name"),
        (json!({"name": "k".repeat(201)}), "name"),
        (json!({"name": "x", "org_id": "y"}), "org_id"),
    ] {
        let r = admin(&app, Method::POST, &path, Some(body.clone())).await;
        let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&p), [field], "{body}");
    }
    let unknown = "/v1/organizations/org_01JAAAAAAAAAAAAAAAAAAAAAAA/api-keys";
    let r = admin(&app, Method::POST, unknown, Some(json!({"name": "x"}))).await;
    problem(r, StatusCode::NOT_FOUND).await;
    // Only with the admin token.
    let r = app.post(&t, &path, &json!({"name": "x"})).await;
    problem(r, StatusCode::UNAUTHORIZED).await;
}

/// Rows of `org` in every table that holds its data (attempts and secrets through their
/// delivery and endpoint IDs).
async fn rows_of(db: &TestDb, org: &str, deliveries: &[String], endpoints: &[String]) -> Vec<i64> {
    let list = |ids: &[String]| {
        let quoted: Vec<String> = ids.iter().map(|id| format!("'{id}'")).collect();
        format!("({})", quoted.join(","))
    };
    let mut counts = Vec::new();
    for table in [
        "organizations WHERE id",
        "api_keys WHERE org_id",
        "idempotency_keys WHERE org_id",
        "users WHERE org_id",
        "events WHERE org_id",
        "endpoints WHERE org_id",
        "deliveries WHERE org_id",
    ] {
        counts.push(
            db.scalar(&format!("SELECT COUNT(*) FROM {table} = '{org}'"))
                .await,
        );
    }
    counts.push(
        db.scalar(&format!(
            "SELECT COUNT(*) FROM attempts WHERE delivery_id IN {}",
            list(deliveries)
        ))
        .await,
    );
    counts.push(
        db.scalar(&format!(
            "SELECT COUNT(*) FROM endpoint_secrets WHERE endpoint_id IN {}",
            list(endpoints)
        ))
        .await,
    );
    counts
}

/// A tenant with every kind of data: users (one through an Idempotency-Key), an endpoint that
/// refuses connections (so its deliveries record attempts), a second API key. Returns the IDs
/// of its deliveries and endpoints once every delivery has failed (its schedule used up).
async fn populate(app: &TestApp, t: &Tenant, users: usize) -> (Vec<String>, Vec<String>) {
    let r = app
        .post(
            t,
            "/v1/endpoints",
            &json!({"url": "http://127.0.0.1:9/hook"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let endpoint: Value = r.json().await.unwrap();
    let r = app
        .client
        .post(app.url("/v1/users"))
        .bearer_auth(&t.key)
        .header("idempotency-key", "signup-1")
        .json(&json!({"email": "first@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    for i in 1..users {
        app.create_user(t, json!({"email": format!("u{i}@example.com")}))
            .await;
    }
    let r = app
        .post(t, "/v1/api-keys", &json!({"name": "second"}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page: Value = app
            .get(t, "/v1/deliveries?limit=500")
            .await
            .json()
            .await
            .unwrap();
        let deliveries = page["data"].as_array().unwrap();
        // Ended, not just attempted: a delivery that fails later writes its `delivery.failed`
        // event then, and the other organization's rows would change under the test.
        if deliveries.len() == users && deliveries.iter().all(|d| d["status"] == "failed") {
            let ids = deliveries
                .iter()
                .map(|d| d["id"].as_str().unwrap().to_owned())
                .collect();
            return (ids, vec![endpoint["id"].as_str().unwrap().to_owned()]);
        }
        assert!(Instant::now() < deadline, "deliveries not failed: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_deleted_organization_is_gone_at_once_and_its_data_soon_after() {
    let app = spawn_app().await;
    let doomed = app.create_org("Doomed").await;
    let kept = app.create_org("Kept").await;
    let (doomed_deliveries, doomed_endpoints) = populate(&app, &doomed, 3).await;
    let (kept_deliveries, kept_endpoints) = populate(&app, &kept, 2).await;
    let kept_before = rows_of(&app.db, &kept.id, &kept_deliveries, &kept_endpoints).await;
    assert!(kept_before.iter().all(|n| *n > 0), "{kept_before:?}");
    let before = rows_of(&app.db, &doomed.id, &doomed_deliveries, &doomed_endpoints).await;
    assert!(before.iter().all(|n| *n > 0), "{before:?}");

    // Its key authenticated just now (it is in the key cache).
    assert_eq!(app.get(&doomed, "/v1/users").await.status(), StatusCode::OK);
    let path = format!("/v1/organizations/{}", doomed.id);
    let r = admin(&app, Method::DELETE, &path, None).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    problem(
        app.get(&doomed, "/v1/users").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert!(!listed_orgs(&app).await.contains(&doomed.id));
    problem(
        admin(&app, Method::DELETE, &path, None).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let r = admin(
        &app,
        Method::POST,
        &format!("{path}/api-keys"),
        Some(json!({"name": "back"})),
    )
    .await;
    problem(r, StatusCode::NOT_FOUND).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = rows_of(&app.db, &doomed.id, &doomed_deliveries, &doomed_endpoints).await;
        if left.iter().all(|n| *n == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "rows left: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The other organization is as it was (its deliveries may have more attempts by now).
    let kept_after = rows_of(&app.db, &kept.id, &kept_deliveries, &kept_endpoints).await;
    assert_eq!(kept_after[..7], kept_before[..7]);
    assert!(kept_after[7] >= kept_before[7] && kept_after[8] == kept_before[8]);
    assert_eq!(app.get(&kept, "/v1/users").await.status(), StatusCode::OK);
    assert!(listed_orgs(&app).await.contains(&kept.id));
}

#[tokio::test]
async fn a_deletion_marked_but_not_finished_is_finished_by_the_server() {
    let app = spawn_app().await;
    let doomed = app.create_org("Doomed").await;
    let (deliveries, endpoints) = populate(&app, &doomed, 2).await;
    // As a process that marked the organization and removed part of its data before it died
    // would have left it.
    let id = &doomed.id;
    app.db
        .execute(
            &format!(
                "UPDATE organizations SET deleted_at = 1 WHERE id = '{id}';
                 DELETE FROM api_keys WHERE org_id = '{id}';"
            ),
            &format!(
                "UPDATE organizations SET deleted_at = 1 WHERE id = '{id}';
                 DELETE FROM api_keys WHERE org_id = '{id}';"
            ),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = rows_of(&app.db, id, &deliveries, &endpoints).await;
        if left.iter().all(|n| *n == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "rows left: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_big_organization_is_removed_in_bounded_steps_that_resume_after_a_crash() {
    let db = TestDb::new().await;
    let url = DatabaseUrl::parse(&db.url).unwrap();
    let store = Store::open(&url, Ownership::Tool, 2).await.unwrap();
    let big = store
        .create_org("Big".into(), accommador::domain::org::NewApiKey::generate())
        .await
        .unwrap()
        .id;
    let other = store
        .create_org(
            "Other".into(),
            accommador::domain::org::NewApiKey::generate(),
        )
        .await
        .unwrap()
        .id;
    // 2,500 users and events, an endpoint with 1,200 deliveries of 3 attempts each: far more
    // than one batch of every kind.
    let (sqlite_n, pg_n) = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2500)",
        "generate_series(1, 2500) AS n(i)",
    );
    let fill = |org: &str, tag: &str, sqlite: bool| {
        let (with, from) = if sqlite { (sqlite_n, "n") } else { ("", pg_n) };
        format!(
            "{with} INSERT INTO users (id, org_id, email, email_lower, attributes, version,
                                       created_at, updated_at)
               SELECT 'usr_{tag}' || i, '{org}', 'u' || i || '@x.co', 'u' || i || '@x.co',
                      '{{}}', 1, 0, 0 FROM {from};
             {with} INSERT INTO events (id, org_id, type, user_id, user_version, occurred_at,
                                        payload)
               SELECT 'evt_{tag}' || i, '{org}', 'user.created', 'usr_{tag}' || i, 1, 0, '{{}}'
               FROM {from};
             INSERT INTO endpoints (id, org_id, url, event_types, description, status,
                                    created_at, updated_at)
               VALUES ('ep_{tag}', '{org}', 'http://127.0.0.1:9/', '[]', '', 'enabled', 0, 0);
             INSERT INTO endpoint_secrets (endpoint_id, secret, created_at)
               VALUES ('ep_{tag}', 'whsec_x', 0);
             INSERT INTO deliveries (id, org_id, event_seq, event_id, event_type, endpoint_id,
                                     status, created_at, updated_at)
               SELECT 'dlv_' || id, org_id, seq, id, type, 'ep_{tag}', 'failed', 0, 0
               FROM events WHERE org_id = '{org}' ORDER BY seq LIMIT 1200;
             INSERT INTO attempts (delivery_id, number, trigger, started_at, duration_ms,
                                   response_headers, response_body)
               SELECT d.id, k.k, 'scheduled', 0, 1, '{{}}', ''
               FROM deliveries d, (SELECT 1 AS k UNION ALL SELECT 2 UNION ALL SELECT 3) k
               WHERE d.org_id = '{org}';"
        )
    };
    db.execute(&fill(&big, "big", true), &fill(&big, "big", false))
        .await;
    db.execute(&fill(&other, "other", true), &fill(&other, "other", false))
        .await;
    let count_all = |org: String| {
        let db = &db;
        async move {
            let mut total = 0;
            for sql in [
                format!("SELECT COUNT(*) FROM users WHERE org_id = '{org}'"),
                format!("SELECT COUNT(*) FROM events WHERE org_id = '{org}'"),
                format!("SELECT COUNT(*) FROM deliveries WHERE org_id = '{org}'"),
                format!(
                    "SELECT COUNT(*) FROM attempts WHERE delivery_id IN
                       (SELECT id FROM deliveries WHERE org_id = '{org}')"
                ),
                format!("SELECT COUNT(*) FROM endpoints WHERE org_id = '{org}'"),
                format!("SELECT COUNT(*) FROM api_keys WHERE org_id = '{org}'"),
                format!("SELECT COUNT(*) FROM organizations WHERE id = '{org}'"),
            ] {
                total += db.scalar(&sql).await;
            }
            total
        }
    };
    let other_before = count_all(other.clone()).await;
    assert_eq!(other_before, 2500 + 2500 + 1200 + 3600 + 1 + 1 + 1);

    store.mark_org_deleted(big.clone()).await.unwrap();
    // A few steps, each at most one batch, then the process "crashes".
    for _ in 0..4 {
        let step = store.org_deletion_step().await.unwrap().unwrap();
        assert_eq!(step.org_id, big);
        assert!(step.rows <= PURGE_BATCH, "{step:?}");
        assert!(!step.finished);
    }
    drop(store);
    assert!(count_all(big.clone()).await > 0);

    // The next start carries on where it stopped.
    let store = Store::open(&url, Ownership::Tool, 2).await.unwrap();
    let mut steps = 0;
    loop {
        let step = store.org_deletion_step().await.unwrap().unwrap();
        assert!(step.rows <= PURGE_BATCH, "{step:?}");
        steps += 1;
        if step.finished {
            break;
        }
    }
    assert!(steps >= 10, "only {steps} steps for about 10,000 rows");
    assert_eq!(store.org_deletion_step().await.unwrap(), None);
    assert_eq!(count_all(big).await, 0);
    assert_eq!(count_all(other).await, other_before);
}

#[tokio::test]
async fn a_fan_out_stopped_inside_a_deleted_organizations_event_goes_on_with_the_next() {
    let db = TestDb::new().await;
    let store = Store::open(&DatabaseUrl::parse(&db.url).unwrap(), Ownership::Tool, 2)
        .await
        .unwrap();
    let new_org = |name: &str| {
        let store = &store;
        let name = name.to_owned();
        async move {
            store
                .create_org(name, accommador::domain::org::NewApiKey::generate())
                .await
                .unwrap()
                .id
        }
    };
    let (doomed, other) = (new_org("Doomed").await, new_org("Other").await);
    // The doomed organization's event, then another's; fan-out stopped part-way through the
    // first (after endpoints up to `ep_9…`, an ID above the other organization's endpoint).
    let setup = |sqlite: bool| {
        let (number, cursor) = if sqlite {
            (
                "",
                "UPDATE fanout_cursor SET partial_endpoint = 'ep_9doomed',
                   last_seq = (SELECT seq FROM events WHERE id = 'evt_t1') - 1",
            )
        } else {
            (
                "UPDATE events SET commit_seq = nextval('events_commit_seq') WHERE id = 'evt_t1';
                 UPDATE events SET commit_seq = nextval('events_commit_seq') WHERE id = 'evt_t2';",
                "UPDATE fanout_cursor SET partial_endpoint = 'ep_9doomed',
                   last_commit_seq = (SELECT commit_seq FROM events WHERE id = 'evt_t1') - 1",
            )
        };
        format!(
            "INSERT INTO endpoints (id, org_id, url, event_types, description, status,
                                    created_at, updated_at)
               VALUES ('ep_0other', '{other}', 'http://127.0.0.1:9/', '[\"user.created\"]', '',
                       'enabled', 0, 0),
                      ('ep_9doomed', '{doomed}', 'http://127.0.0.1:9/', '[\"user.created\"]',
                       '', 'enabled', 0, 0);
             INSERT INTO events (id, org_id, type, user_id, user_version, occurred_at, payload)
               VALUES ('evt_t1', '{doomed}', 'user.created', 'usr_1', 1, 0, '{{}}');
             INSERT INTO events (id, org_id, type, user_id, user_version, occurred_at, payload)
               VALUES ('evt_t2', '{other}', 'user.created', 'usr_2', 1, 0, '{{}}');
             {number}
             {cursor};"
        )
    };
    db.execute(&setup(true), &setup(false)).await;

    store.mark_org_deleted(doomed.clone()).await.unwrap();
    let finished = accommador::org_deletion::run_until_idle(&store).await;
    assert_eq!(finished, [doomed]);
    while store.fan_out().await.unwrap().events > 0 {}
    let delivered = db
        .scalar(
            "SELECT COUNT(*) FROM deliveries WHERE event_id = 'evt_t2' AND endpoint_id = 'ep_0other'",
        )
        .await;
    assert_eq!(
        delivered, 1,
        "the other organization's event lost its delivery"
    );
}
