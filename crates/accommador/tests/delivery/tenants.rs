//! One organization cannot hold up another's deliveries (DESIGN §10): dispatch takes turns
//! between organizations with due work, and `org_concurrency` caps one organization's
//! attempts in flight, so its slow or hanging endpoints leave the other slots to the rest.

use std::time::Instant;

use super::*;

/// The time from `since` until `path` received its first request.
async fn first_arrival(rx: &Receiver, path: &str, since: Instant, limit: Duration) -> Duration {
    let got = rx.wait_for(path, 1, limit).await;
    got[0].at.saturating_duration_since(since)
}

/// How many requests arrived on paths starting with `prefix`.
fn arrived(rx: &Receiver, prefix: &str) -> usize {
    rx.all()
        .iter()
        .filter(|r| r.path.starts_with(prefix))
        .count()
}

#[tokio::test]
async fn an_organizations_hanging_endpoints_hold_at_most_its_own_bound() {
    // 8 slots in all, 2 per endpoint, 4 per organization. Without the organization's bound,
    // six hanging endpoints of one organization would take all 8 for a minute.
    let app = spawn_app_with(|s| {
        s.retry_schedule = vec![];
        s.delivery_timeout = Duration::from_secs(120);
        s.delivery_concurrency = 8;
        s.endpoint_concurrency = 2;
        s.org_concurrency = 4;
    })
    .await;
    let rx = Receiver::start().await;
    let noisy = app.create_org("Noisy").await;
    for i in 0..6 {
        let path = format!("/noisy{i}");
        rx.script(
            &path,
            vec![Reply::status(200).after(Duration::from_secs(60)); 10],
        );
        endpoint(&app, &noisy, &rx.url(&path), None).await;
    }
    for i in 0..3 {
        app.create_user(&noisy, json!({"email": format!("n{i}@example.com")}))
            .await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while arrived(&rx, "/noisy") < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the noisy organization's first attempts never started"
        );
        tokio::time::sleep(ms(20)).await;
    }

    let quiet = app.create_org("Quiet").await;
    endpoint(&app, &quiet, &rx.url("/quiet"), None).await;
    app.create_user(&quiet, json!({"email": "q@example.com"}))
        .await;
    let answered = Instant::now();
    let waited = first_arrival(&rx, "/quiet", answered, Duration::from_secs(50)).await;
    assert!(
        waited < Duration::from_secs(10),
        "the quiet organization waited {waited:?} behind the noisy one"
    );
    // The noisy organization never had more than its bound in flight (its replies are held
    // for a minute, so none of its attempts has ended).
    assert!(rx.all()[0].at.elapsed() < Duration::from_secs(60));
    assert_eq!(arrived(&rx, "/noisy"), 4);
}

#[tokio::test]
async fn organizations_take_turns_for_free_slots() {
    // 2 slots in all. One organization has a backlog of 80 retries over 10 endpoints, due
    // since before the other's delivery was made, and each takes 300 ms (12 s of work). The
    // other organization's single delivery gets one of the next free slots instead of
    // waiting, oldest due first, behind the whole backlog.
    let app = spawn_app_with(|s| {
        s.retry_schedule = vec![Duration::from_secs(1)];
        s.delivery_concurrency = 2;
        s.endpoint_concurrency = 1;
    })
    .await;
    let rx = Receiver::start().await;
    let busy = app.create_org("Busy").await;
    for i in 0..10 {
        let path = format!("/busy{i}");
        let mut replies = vec![Reply::status(500); 8];
        replies.extend(vec![Reply::status(204).after(ms(300)); 8]);
        rx.script(&path, replies);
        endpoint(&app, &busy, &rx.url(&path), None).await;
    }
    for i in 0..8 {
        app.create_user(&busy, json!({"email": format!("b{i}@example.com")}))
            .await;
    }
    // Every first attempt failed; the retries (due a second later) have begun.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while arrived(&rx, "/busy") < 82 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the busy organization's retries never started ({} requests)",
            arrived(&rx, "/busy")
        );
        tokio::time::sleep(ms(20)).await;
    }

    let other = app.create_org("Other").await;
    endpoint(&app, &other, &rx.url("/other"), None).await;
    app.create_user(&other, json!({"email": "o@example.com"}))
        .await;
    let answered = Instant::now();
    let waited = first_arrival(&rx, "/other", answered, Duration::from_secs(30)).await;
    let retried = arrived(&rx, "/busy") - 80;
    assert!(
        retried < 70,
        "the backlog was nearly done ({retried} of 80 retries), so this shows nothing"
    );
    assert!(
        waited < Duration::from_secs(4),
        "the other organization waited {waited:?} behind the backlog"
    );
}
