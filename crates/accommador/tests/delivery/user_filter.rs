//! `GET /v1/deliveries?user_id=` (DESIGN §10): the deliveries of exactly one user's events,
//! newest first, across pages and combined with the other filters; deleted users included.
//! And a deliveries walk that reads its bound (1,000 rows) before its page is full answers a
//! short page whose cursor continues the walk.

use std::collections::HashSet;

use super::*;

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Every delivery the query lists, following `next_cursor` in pages of two.
async fn every_delivery(app: &TestApp, t: &Tenant, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/deliveries?limit=2{query}");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let page = json_of(app, t, &path).await;
        out.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => after = Some(c.to_owned()),
            None => return out,
        }
    }
}

#[tokio::test]
async fn a_users_deliveries_come_alone_newest_first_across_pages() {
    let app = fast_app().await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    endpoint(&app, &t, &rx.url("/all"), None).await;
    let deletes = endpoint(&app, &t, &rx.url("/deletes"), Some(&["user.deleted"])).await;

    let ada = app
        .create_user(&t, json!({"email": "ada@example.com"}))
        .await;
    let grace = app
        .create_user(&t, json!({"email": "grace@example.com"}))
        .await;
    let (ada, grace) = (ada["id"].as_str().unwrap(), grace["id"].as_str().unwrap());
    for user in [ada, grace] {
        let r = app
            .patch(&t, &format!("/v1/users/{user}"), &json!({"name": "N"}))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = app.delete(&t, &format!("/v1/users/{ada}")).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Received, so fanned out: 5 events to /all, Ada's deletion to /deletes as well.
    rx.wait_for("/all", 5, WAIT).await;
    rx.wait_for("/deletes", 1, WAIT).await;

    let all = every_delivery(&app, &t, "").await;
    assert_eq!(all.len(), 6);
    for (user, count) in [(ada, 4), (grace, 2)] {
        let events: HashSet<String> = app
            .all_events(&t, &format!("&user_id={user}"))
            .await
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        let expected: Vec<Value> = all
            .iter()
            .filter(|d| events.contains(d["event_id"].as_str().unwrap()))
            .cloned()
            .collect();
        let listed = every_delivery(&app, &t, &format!("&user_id={user}")).await;
        assert_eq!(ids(&listed), ids(&expected), "{user}'s deliveries");
        assert_eq!(listed.len(), count);
    }

    // With the other filters, whichever index the list walks.
    let deleted = every_delivery(
        &app,
        &t,
        &format!("&user_id={ada}&endpoint_id={}", deletes.id),
    )
    .await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["event_type"], "user.deleted");
    let updated = every_delivery(
        &app,
        &t,
        &format!("&user_id={grace}&event_type=user.updated"),
    )
    .await;
    assert_eq!(updated.len(), 1);
    let one_event = every_delivery(
        &app,
        &t,
        &format!(
            "&user_id={ada}&event_id={}",
            deleted[0]["event_id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(one_event.len(), 2, "the deletion went to both endpoints");
    let not_hers = every_delivery(
        &app,
        &t,
        &format!(
            "&user_id={grace}&event_id={}",
            deleted[0]["event_id"].as_str().unwrap()
        ),
    )
    .await;
    assert!(not_hers.is_empty());
    assert_eq!(ids(&every_delivery(&app, &t, "&user_id=").await), ids(&all));

    // Another organization: its own users only.
    let other = app.create_org("Other").await;
    let r = app
        .get(&other, &format!("/v1/deliveries?user_id={ada}"))
        .await;
    let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(error_fields(&p), ["user_id"]);
}

#[tokio::test]
async fn a_deliveries_walk_that_reads_its_bound_answers_a_short_page_that_continues() {
    let app = fast_app().await;
    let t = app.create_org("Acme").await;
    let rx = Receiver::start().await;
    let ep = endpoint(&app, &t, &rx.url("/in"), None).await;
    let ada = app
        .create_user(&t, json!({"email": "ada@example.com"}))
        .await;
    rx.wait_for("/in", 1, WAIT).await;
    // 1,050 newer deliveries of test events (settled), straight into the database.
    let (org, ep) = (&t.id, &ep.id);
    app.db
        .execute(
            &format!(
                "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 1050)
                 INSERT INTO deliveries (id, org_id, event_seq, event_id, event_type, endpoint_id,
                                         status, created_at, updated_at)
                 SELECT printf('dlv_T%025d', n), '{org}', (SELECT MAX(seq) FROM events),
                        printf('evt_T%025d', n), 'webhook.test', '{ep}', 'succeeded', 0, 0
                 FROM g"
            ),
            &format!(
                "INSERT INTO deliveries (id, org_id, event_seq, event_id, event_type, endpoint_id,
                                         status, created_at, updated_at)
                 SELECT 'dlv_T' || lpad(g::text, 25, '0'), '{org}',
                        (SELECT MAX(seq) FROM events), 'evt_T' || lpad(g::text, 25, '0'),
                        'webhook.test', '{ep}', 'succeeded', 0, 0
                 FROM generate_series(1, 1050) AS g ORDER BY g"
            ),
        )
        .await;

    // Newest first, the walk reads 1,000 test deliveries and stops: an empty page that
    // continues. The next finds Ada's delivery and the end.
    let page = json_of(&app, &t, "/v1/deliveries?event_type=user.created&limit=10").await;
    assert_eq!(page["data"], json!([]), "{page}");
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a short page carries a cursor");
    let page = json_of(
        &app,
        &t,
        &format!("/v1/deliveries?event_type=user.created&limit=10&after={cursor}"),
    )
    .await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["next_cursor"], Value::Null);
    let delivered = page["data"][0]["event_id"].as_str().unwrap().to_owned();
    let created = app.all_events(&t, "&type=user.created").await;
    assert_eq!(created[0]["id"], delivered.as_str());
    assert_eq!(created[0]["data"]["user"]["id"], ada["id"]);

    // Walking the user's index instead, the same delivery comes at once.
    let page = json_of(
        &app,
        &t,
        &format!(
            "/v1/deliveries?user_id={}&limit=10",
            ada["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(page["data"][0]["event_id"], delivered.as_str());
    assert_eq!(page["next_cursor"], Value::Null);
}
