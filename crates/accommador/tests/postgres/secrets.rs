//! A key rotation on PostgreSQL with real processes: servers with the old key, then with
//! "new,old" beside them, `secrets reencrypt` while they run, and finally a server with the new
//! key alone: every delivery verifies with the secret the API showed.

use std::process::Command;

use base64::Engine;
use reqwest::Client;
use serde_json::Value;

use super::helpers::TestDb;
use super::receiver::{Receiver, verify};
use super::{PRIVATE, Server, create_endpoint, create_org, create_users, postgres_configured};

fn key(byte: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

async fn serve(db: &TestDb, keys: &str) -> Server {
    Server::spawn(
        &db.url,
        &["serve"],
        &[("ACCOMMADOR_SECRET_KEY", keys), PRIVATE],
    )
    .await
}

/// The endpoint's current secret, as `GET /v1/endpoints/{id}/secret` shows it.
async fn secret_of(client: &Client, server: &Server, api_key: &str, id: &str) -> String {
    let shown: Value = client
        .get(server.url(&format!("/v1/endpoints/{id}/secret")))
        .bearer_auth(api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    shown["secret"].as_str().unwrap().to_owned()
}

/// Waits (bounded) for the request about `email` and verifies it with `secret`.
async fn verify_delivery(rx: &Receiver, email: &str, secret: &str) {
    let got = rx
        .wait_for_body("/hooks", email, std::time::Duration::from_secs(20))
        .await;
    verify(secret, &got);
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
    let id = create_endpoint(&client, &old, &api_key, &rx.url("/hooks")).await;
    let secret = secret_of(&client, &old, &api_key, &id).await;
    create_users(&client, &[&old], &api_key, 1, "ada").await;
    verify_delivery(&rx, "ada0@example.com", &secret).await;

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
    create_users(&client, &[&rotating], &api_key, 1, "grace").await;
    verify_delivery(&rx, "grace0@example.com", &secret).await;
    rotating.kill().await;

    // The old key dropped: the server starts, shows the same secret and signs with it.
    let new_only = serve(&db, &k2).await;
    assert_eq!(secret_of(&client, &new_only, &api_key, &id).await, secret);
    create_users(&client, &[&new_only], &api_key, 1, "linus").await;
    verify_delivery(&rx, "linus0@example.com", &secret).await;
}
