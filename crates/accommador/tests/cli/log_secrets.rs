//! No secret in any log line (DESIGN §10, "Keys, secrets"): the real binary runs a whole
//! scenario (an organization, its API key, endpoints with secrets created, rotated and read
//! back, users, signed deliveries to a local receiver, failed authentications) with
//! `RUST_LOG=trace`, so every dependency's debug and trace logs are on too; then everything it
//! printed, and `/metrics`, is searched for each secret. On SQLite, and on PostgreSQL with a
//! password in the database URL (`ACCOMMADOR_TEST_POSTGRES_URL`; failing where `CI` is set
//! without it).

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, Database, Server, command, sqlite_url};

/// A local receiver that answers 204 and counts what it got.
async fn receiver() -> (String, Arc<Mutex<usize>>) {
    let got = Arc::new(Mutex::new(0usize));
    let counter = got.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            *counter.lock().unwrap() += 1;
            axum::http::StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hooks"), got)
}

/// Runs the scenario against a server on `database` and returns every secret it handed out
/// with what the server printed and `/metrics`.
async fn scenario(database: &str, extra_secrets: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.env("RUST_LOG", "trace")
        .env("ACCOMMADOR_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("ACCOMMADOR_ALLOW_PRIVATE_TARGETS", "true")
        .args(["serve", "--listen", "127.0.0.1:0", "--database", database]);
    let mut server = Server::spawn(dir.path(), cmd)
        .await
        .unwrap_or_else(|log| panic!("serve did not start:\n{log}"));
    let (hooks, got) = receiver().await;
    let (_, key) = server.create_org("Acme").await;
    let mut secrets = vec![ADMIN_TOKEN.to_owned(), key.clone()];
    secrets.extend(extra_secrets.iter().cloned());

    let created: Value = server
        .client
        .post(server.url("/v1/endpoints"))
        .bearer_auth(&key)
        .json(&json!({"url": hooks}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let endpoint = created["id"].as_str().unwrap().to_owned();
    secrets.push(created["secret"].as_str().unwrap().to_owned());
    let rotated: Value = server
        .client
        .post(server.url(&format!("/v1/endpoints/{endpoint}/secret/rotate")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    secrets.push(rotated["secret"].as_str().unwrap().to_owned());
    let (status, shown) = server
        .get(&key, &format!("/v1/endpoints/{endpoint}/secret"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(shown["secret"], rotated["secret"]);
    for i in 0..5 {
        server
            .create_user(&key, &format!("user{i}@example.com"))
            .await;
    }
    let test = server
        .client
        .post(server.url(&format!("/v1/endpoints/{endpoint}/test")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(test.status(), 202);
    // Refused keys: a wrong one shaped like a real one, and the admin token used as an API key.
    for wrong in [format!("{key}x"), ADMIN_TOKEN.to_owned()] {
        let r = server
            .client
            .get(server.url("/v1/users"))
            .bearer_auth(&wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while *got.lock().unwrap() < 6 {
        assert!(
            std::time::Instant::now() < deadline,
            "the receiver got {} of 6 deliveries",
            got.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let metrics = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    server.kill();
    let log = server.log();
    assert!(
        log.contains(" TRACE ") && log.contains(" DEBUG "),
        "trace logging is on:\n{log}"
    );
    for secret in &secrets {
        // The secret whole, and its random part alone (without `acm_` / `whsec_`).
        let bare = secret
            .strip_prefix("whsec_")
            .or_else(|| secret.strip_prefix("acm_"))
            .unwrap_or(secret);
        for (what, text) in [("the log", &log), ("/metrics", &metrics)] {
            if let Some(line) = text.lines().find(|l| l.contains(bare)) {
                panic!("a secret is in {what}: {line}");
            }
        }
    }
}

#[tokio::test]
async fn no_secret_is_logged_at_any_level_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    scenario(&sqlite_url(&dir.path().join("secrets.db")), &[]).await;
}

#[tokio::test]
async fn no_secret_is_logged_at_any_level_on_postgres() {
    let Some(db) = Database::postgres("logsecrets").await else {
        return;
    };
    // A password the local cluster ignores (it trusts its clients), unless the URL has one.
    let mut url = url::Url::parse(&db.url).unwrap();
    if url.password().is_none() {
        url.set_password(Some("log-s3cr3t-db-pw")).unwrap();
    }
    let password = url.password().unwrap().to_owned();
    scenario(url.as_str(), &[password]).await;
    db.drop_pg().await;
}
