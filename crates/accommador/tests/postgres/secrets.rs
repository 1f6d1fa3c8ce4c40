//! A key rotation on PostgreSQL with real processes: servers with the old key, then with
//! "new,old" beside them, `secrets reencrypt` while they run, and finally a server with the new
//! key alone: every delivery verifies with the secret the API showed.

use std::process::Command;

use accommador_webhooks::{Secret, Verifier, WebhookHeaders};
use base64::Engine;
use reqwest::Client;
use serde_json::{Value, json};

use super::helpers::TestDb;
use super::receiver::Receiver;
use super::{Server, create_org, postgres_configured};

const ALLOW_LOCAL: (&str, &str) = ("ACCOMMADOR_ALLOW_PRIVATE_TARGETS", "true");

fn key(byte: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

async fn serve(db: &TestDb, keys: &str) -> Server {
    Server::spawn(
        &db.url,
        &["serve"],
        &[("ACCOMMADOR_SECRET_KEY", keys), ALLOW_LOCAL],
    )
    .await
}

async fn create_user(client: &Client, server: &Server, api_key: &str, email: &str) {
    let r = client
        .post(server.url("/v1/users"))
        .bearer_auth(api_key)
        .json(&json!({ "email": email }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

/// Waits (bounded) for the request about `email` and verifies it with `secret`.
async fn verify_delivery(rx: &Receiver, email: &str, secret: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let found = rx
            .received("/hooks")
            .into_iter()
            .find(|r| String::from_utf8_lossy(&r.body).contains(email));
        if let Some(r) = found {
            let headers = WebhookHeaders {
                id: &r.id,
                timestamp: &r.timestamp,
                signature: &r.signature,
            };
            Verifier::new(Secret::parse(secret).unwrap())
                .verify(&headers, &r.body)
                .unwrap_or_else(|e| panic!("the delivery about {email} does not verify: {e}"));
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery about {email}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_key_rotation_beside_running_servers_keeps_every_delivery_signed() {
    if !postgres_configured() {
        return;
    }
    let db = TestDb::new().await;
    let (k1, k2) = (key(1), key(2));
    let both = format!("{k2},{k1}");
    let client = Client::new();
    let rx = Receiver::start().await;

    let mut old = serve(&db, &k1).await;
    let api_key = create_org(&client, &old).await;
    let e: Value = client
        .post(old.url("/v1/endpoints"))
        .bearer_auth(&api_key)
        .json(&json!({ "url": rx.url("/hooks") }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = e["secret"].as_str().unwrap().to_owned();
    create_user(&client, &old, &api_key, "ada@example.com").await;
    verify_delivery(&rx, "ada@example.com", &secret).await;

    // The new list beside the old server, then the old server goes.
    let mut rotating = serve(&db, &both).await;
    old.kill().await;
    let out = Command::new(env!("CARGO_BIN_EXE_accommador"))
        .args(["secrets", "reencrypt", "--database", &db.url])
        .env("ACCOMMADOR_SECRET_KEY", &both)
        .env_remove("ACCOMMADOR_DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("1 endpoint secrets re-encrypted"),
        "{stdout}"
    );
    create_user(&client, &rotating, &api_key, "grace@example.com").await;
    verify_delivery(&rx, "grace@example.com", &secret).await;
    rotating.kill().await;

    let new_only = serve(&db, &k2).await;
    create_user(&client, &new_only, &api_key, "linus@example.com").await;
    verify_delivery(&rx, "linus@example.com", &secret).await;
    let shown: Value = client
        .get(new_only.url(&format!(
            "/v1/endpoints/{}/secret",
            e["id"].as_str().unwrap()
        )))
        .bearer_auth(&api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["secret"], secret.as_str());
}
