//! Fan-out writes at most 1,000 deliveries per step (DESIGN §10: no tenant action holds the
//! writer or a shared lock for more than one bounded batch): one event to many endpoints takes
//! several steps, each resuming where the last stopped, and every pair is made exactly once.

use std::sync::Arc;

use accommador::store::{DatabaseUrl, Ownership, Store};

use super::*;

/// The number of deliveries of `event_id`, over every page.
async fn deliveries_of_event(app: &TestApp, t: &Tenant, event_id: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after = String::new();
    loop {
        let page = json_of(
            app,
            t,
            &format!("/v1/deliveries?event_id={event_id}&limit=500{after}"),
        )
        .await;
        for d in page["data"].as_array().unwrap() {
            ids.push(d["endpoint_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => after = format!("&after={c}"),
            None => return ids,
        }
    }
}

#[tokio::test]
async fn one_event_to_many_endpoints_is_fanned_out_a_thousand_at_a_time() {
    // No workers: fan-out is driven by hand, one step at a time.
    let app = Arc::new(spawn_api_only().await);
    let t = app.create_org("Acme").await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (app, t) = (app.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (w..1100).step_by(8) {
                ids.push(
                    endpoint(&app, &t, &format!("http://127.0.0.1:9/e{i}"), None)
                        .await
                        .id,
                );
            }
            ids
        }));
    }
    let mut endpoints = Vec::new();
    for task in tasks {
        endpoints.extend(task.await.unwrap());
    }
    endpoints.sort();
    let a = app.create_user(&t, json!({"email": "a@example.com"})).await;
    let b = app.create_user(&t, json!({"email": "b@example.com"})).await;
    let events = app.all_events(&t, "").await;
    let event_of = |user: &Value| {
        events
            .iter()
            .find(|e| e["data"]["user"]["id"] == user["id"])
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (ea, eb) = (event_of(&a), event_of(&b));

    let store = Store::open(
        &DatabaseUrl::parse(&app.db.url).unwrap(),
        Ownership::Tool,
        2,
    )
    .await
    .unwrap();
    // 2,200 pairs, never more than 1,000 in one step: the first step stops in the middle of
    // the first event (SQLite then goes on 1,000 and 200; PostgreSQL, which takes a step's
    // events by their endpoint counts, 100, 1,000 and 100).
    let mut made = Vec::new();
    loop {
        let step = store.fan_out().await.unwrap();
        if step.events == 0 {
            break;
        }
        let total = deliveries_of_event(&app, &t, &ea).await.len()
            + deliveries_of_event(&app, &t, &eb).await.len();
        made.push(total - made.iter().sum::<usize>());
        assert!(made.len() <= 5, "fan-out does not end: {made:?}");
    }
    assert_eq!(made[0], 1000, "{made:?}");
    assert!(made.iter().all(|n| (1..=1000).contains(n)), "{made:?}");
    assert_eq!(made.iter().sum::<usize>(), 2200, "{made:?}");
    for e in [&ea, &eb] {
        let mut got = deliveries_of_event(&app, &t, e).await;
        got.sort();
        assert_eq!(got, endpoints, "every endpoint gets {e} exactly once");
    }
}
