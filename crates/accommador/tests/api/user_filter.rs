//! `GET /v1/events?user_id=` (DESIGN §10): exactly one user's events, in commit order, across
//! pages; deleted users included; another organization's user, or a value that names no user,
//! is refused like an unknown cursor. And a filtered list reads a bounded number of rows per
//! request: a page may come back short, but its `next_cursor` continues the walk.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Tenant, TestApp, error_fields, problem, spawn_app};

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The events of `all` (in their order) whose user is `user`.
fn about(all: &[Value], user: &str) -> Vec<String> {
    ids(&all
        .iter()
        .filter(|e| e["data"]["user"]["id"] == user)
        .cloned()
        .collect::<Vec<_>>())
}

/// Two users' changes, interleaved; the first is deleted at the end. Returns their IDs.
async fn two_users(app: &TestApp, t: &Tenant) -> (String, String) {
    let ada = app
        .create_user(t, json!({"email": "ada@example.com"}))
        .await;
    let grace = app
        .create_user(t, json!({"email": "grace@example.com"}))
        .await;
    let (ada, grace) = (
        ada["id"].as_str().unwrap().to_owned(),
        grace["id"].as_str().unwrap().to_owned(),
    );
    for (user, name) in [(&ada, "Ada"), (&grace, "Grace"), (&ada, "Ada L.")] {
        let r = app
            .patch(t, &format!("/v1/users/{user}"), &json!({"name": name}))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = app.delete(t, &format!("/v1/users/{ada}")).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    app.create_user(t, json!({"email": "linus@example.com"}))
        .await;
    (ada, grace)
}

#[tokio::test]
async fn a_users_events_come_alone_in_commit_order_across_pages() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let (ada, grace) = two_users(&app, &t).await;
    let all = app.all_events(&t, "").await;
    assert_eq!(all.len(), 7);

    // Ada is deleted: her events (created, 2 updates, deleted) still filter.
    let ada_events = app.all_events(&t, &format!("&user_id={ada}")).await;
    assert_eq!(ids(&ada_events), about(&all, &ada));
    assert_eq!(
        ada_events
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        [
            "user.created",
            "user.updated",
            "user.updated",
            "user.deleted"
        ]
    );
    let grace_events = app.all_events(&t, &format!("&user_id={grace}")).await;
    assert_eq!(ids(&grace_events), about(&all, &grace));
    assert_eq!(grace_events.len(), 2);

    // Combined with a type; and an empty value is no filter, like the others.
    let updates = app
        .all_events(&t, &format!("&user_id={ada}&type=user.updated"))
        .await;
    assert_eq!(ids(&updates), ids(&ada_events[1..3]));
    assert_eq!(ids(&app.all_events(&t, "&user_id=").await), ids(&all));
}

#[tokio::test]
async fn a_user_id_that_names_no_user_of_this_organization_is_refused() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let other = app.create_org("Other").await;
    let (ada, _) = two_users(&app, &t).await;
    let theirs = app
        .create_user(&other, json!({"email": "ada@example.com"}))
        .await;
    let theirs = theirs["id"].as_str().unwrap();

    // Another organization's user gets the same answer as an ID never handed out, so the
    // answer says nothing about other organizations.
    for value in [
        theirs.to_owned(),
        format!("usr_{}", "0".repeat(26)),
        "usr_nope".to_owned(),
        "nope".to_owned(),
        ada.to_lowercase(),
    ] {
        for list in ["/v1/events", "/v1/deliveries"] {
            let r = app.get(&t, &format!("{list}?user_id={value}")).await;
            let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
            assert_eq!(error_fields(&p), ["user_id"], "{list}?user_id={value}");
        }
    }
    // The other organization sees its own user's events, and nothing of Acme's.
    let r = app.get(&other, &format!("/v1/events?user_id={ada}")).await;
    problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    let theirs_events = app.all_events(&other, &format!("&user_id={theirs}")).await;
    assert_eq!(theirs_events.len(), 1);
    assert_eq!(theirs_events[0]["data"]["user"]["id"], theirs);
}

/// Inserts `n` test events (never listed) for the organization, straight into the database.
async fn test_events(app: &TestApp, t: &Tenant, n: usize) {
    let org = &t.id;
    app.db
        .execute(
            &format!(
                "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {n})
                 INSERT INTO events (id, org_id, type, occurred_at, payload)
                 SELECT printf('evt_T%025d', n), '{org}', 'webhook.test', 0, '{{}}' FROM g"
            ),
            &format!(
                "INSERT INTO events (id, org_id, type, occurred_at, payload, commit_seq)
                 SELECT 'evt_T' || lpad(g::text, 25, '0'), '{org}', 'webhook.test', 0, '{{}}',
                        nextval('events_commit_seq')
                 FROM generate_series(1, {n}) AS g ORDER BY g"
            ),
        )
        .await;
}

#[tokio::test]
async fn a_walk_that_reads_its_bound_answers_a_short_page_that_continues() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let first = app.create_user(&t, json!({"email": "a@example.com"})).await;
    // More rows than one request reads (1,000), none of them listed.
    test_events(&app, &t, 1_050).await;
    let last = app.create_user(&t, json!({"email": "b@example.com"})).await;

    let r = app.get(&t, "/v1/events?limit=50").await;
    assert_eq!(r.status(), StatusCode::OK);
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["data"][0]["data"]["user"]["id"], first["id"]);
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a short page carries a cursor");

    let r = app
        .get(&t, &format!("/v1/events?limit=50&after={cursor}"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["data"][0]["data"]["user"]["id"], last["id"]);
    assert_eq!(page["next_cursor"], Value::Null);

    // Following the cursors finds both, and nothing else.
    let all = app.all_events(&t, "").await;
    assert_eq!(all.len(), 2);
}
