//! Deleting an organization (DESIGN §10): once the operator's `DELETE` has answered, none of
//! its endpoints receives another request, while other organizations' deliveries go on.

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
