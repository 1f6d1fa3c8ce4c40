//! `ACCOMMADOR_SECRET_KEY` and `accommador secrets reencrypt` with the real binary: a key
//! list that cannot open the stored secrets stops start-up with one clear line, no setting
//! warns once, and a whole key rotation across restarts keeps every endpoint signing.

use std::path::Path;

use base64::Engine;
use serde_json::{Value, json};

use crate::receiver::{Receiver, verify};
use crate::support::{Server, command, run, run_args, sqlite_url};
use crate::{ADMIN, tempdir};

const WAIT: std::time::Duration = std::time::Duration::from_secs(20);
const ALLOW_LOCAL: (&str, &str) = ("ACCOMMADOR_ALLOW_PRIVATE_TARGETS", "true");
const NOT_SET: &str =
    "ACCOMMADOR_SECRET_KEY is not set: endpoint signing secrets are stored in plain text";

fn key(byte: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

fn key_id(key: &str) -> String {
    accommador::domain::secret_box::SecretKeys::parse(key)
        .unwrap()
        .newest_id()
        .unwrap()
        .to_owned()
}

async fn serve(dir: &Path, db: &Path, keys: Option<&str>) -> Server {
    let mut envs = vec![ADMIN, ALLOW_LOCAL];
    if let Some(keys) = keys {
        envs.push(("ACCOMMADOR_SECRET_KEY", keys));
    }
    Server::start(dir, db, &envs).await
}

/// `serve` that is expected to stop at start: its output once it exited.
fn serve_refused(dir: &Path, db: &Path, keys: Option<&str>) -> crate::support::Output {
    let mut cmd = command(dir);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database",
        &sqlite_url(db),
    ])
    .env(ADMIN.0, ADMIN.1);
    if let Some(keys) = keys {
        cmd.env("ACCOMMADOR_SECRET_KEY", keys);
    }
    run(dir, cmd)
}

/// `POST /v1/endpoints`; returns (id, secret).
async fn create_endpoint(server: &Server, api_key: &str, url: &str) -> (String, String) {
    let resp = server
        .client
        .post(server.url("/v1/endpoints"))
        .bearer_auth(api_key)
        .json(&json!({ "url": url }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let e: Value = resp.json().await.unwrap();
    (
        e["id"].as_str().unwrap().to_owned(),
        e["secret"].as_str().unwrap().to_owned(),
    )
}

/// The request to `path` about the user with `email` (waiting for it, bounded), verified with
/// `secret`.
async fn verify_delivery(rx: &Receiver, path: &str, email: &str, secret: &str) {
    verify(secret, &rx.wait_for_body(path, email, WAIT).await);
}

/// (secret, key_id) of every stored endpoint secret.
fn stored(db: &Path) -> Vec<(String, Option<String>)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .unwrap();
    let mut stmt = conn
        .prepare("SELECT secret, key_id FROM endpoint_secrets ORDER BY rowid")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn a_key_list_that_cannot_open_the_stored_secrets_stops_start_up_with_one_clear_line() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (k1, k2) = (key(1), key(2));
    let mut server = serve(dir.path(), &db, Some(&k1)).await;
    let (_, api_key) = server.create_org("Acme").await;
    let (endpoint_id, _) = create_endpoint(&server, &api_key, "http://127.0.0.1:9/hooks").await;
    server.kill();

    let out = serve_refused(dir.path(), &db, Some(&k2));
    let line = out
        .stderr
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    assert!(
        !out.status.success(),
        "started with the wrong key:\n{}",
        out.stderr
    );
    assert!(
        line.starts_with("error: ACCOMMADOR_SECRET_KEY cannot decrypt the stored endpoint secrets")
            && line.contains(&endpoint_id)
            && line.contains(&format!("sealed with key id {}", key_id(&k1))),
        "{line}"
    );
    // No other line says anything, and no key appears anywhere.
    assert_eq!(out.one_line_failure(), line);
    assert!(
        !out.stderr.contains(&k1) && !out.stderr.contains(&k2),
        "{}",
        out.stderr
    );

    let out = serve_refused(dir.path(), &db, None);
    let line = out.one_line_failure();
    assert!(
        line.contains("endpoint secrets in this database are encrypted")
            && line.contains("ACCOMMADOR_SECRET_KEY is not set"),
        "{line}"
    );

    let out = serve_refused(dir.path(), &db, Some("c2hvcnQ="));
    let line = out.one_line_failure();
    assert!(
        line.contains("secret_key: entry 1 is 5 bytes long"),
        "{line}"
    );

    // The right key second in the list: it starts, and serves the secret.
    let server = serve(dir.path(), &db, Some(&format!("{k2},{k1}"))).await;
    let (status, body) = server
        .get(&api_key, &format!("/v1/endpoints/{endpoint_id}/secret"))
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn without_the_setting_the_server_warns_once_and_stores_secrets_as_before() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let server = serve(dir.path(), &db, None).await;
    let (_, api_key) = server.create_org("Acme").await;
    let (_, secret) = create_endpoint(&server, &api_key, "http://127.0.0.1:9/hooks").await;
    let log = server.log();
    assert_eq!(log.matches(NOT_SET).count(), 1, "{log}");
    assert!(!log.contains(&secret), "{log}");
    assert_eq!(stored(&db), vec![(secret, None)]);
}

#[tokio::test]
async fn a_key_rotation_across_restarts_keeps_every_endpoint_signing() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (k1, k2) = (key(1), key(2));
    let rx = Receiver::start().await;

    // Before the setting: a plain-text secret.
    let mut server = serve(dir.path(), &db, None).await;
    let (_, api_key) = server.create_org("Acme").await;
    let (_, plain_secret) = create_endpoint(&server, &api_key, &rx.url("/plain")).await;
    server.kill();

    // With the first key: the old secret still reads, new ones are sealed with it.
    let mut server = serve(dir.path(), &db, Some(&k1)).await;
    assert!(!server.log().contains(NOT_SET));
    let (_, sealed_secret) = create_endpoint(&server, &api_key, &rx.url("/sealed")).await;
    server.create_user(&api_key, "ada@example.com").await;
    verify_delivery(&rx, "/plain", "ada@example.com", &plain_secret).await;
    verify_delivery(&rx, "/sealed", "ada@example.com", &sealed_secret).await;
    assert_eq!(stored(&db)[0].1, None);
    assert_eq!(stored(&db)[1].1, Some(key_id(&k1)));
    server.kill();

    // Rotation: the new key first, reencrypt beside the running server, then the old key goes.
    let both = format!("{k2},{k1}");
    let server = serve(dir.path(), &db, Some(&both)).await;
    let mut reencrypt = command(dir.path());
    reencrypt
        .args(["secrets", "reencrypt", "--database", &sqlite_url(&db)])
        .env("ACCOMMADOR_SECRET_KEY", &both);
    let out = run(dir.path(), reencrypt).success();
    assert_eq!(
        out.stdout.trim(),
        format!(
            "2 endpoint secrets re-encrypted with key id {}",
            key_id(&k2)
        )
    );
    for (secret, kid) in stored(&db) {
        assert_eq!(kid, Some(key_id(&k2)));
        assert!(!secret.contains(plain_secret.trim_start_matches("whsec_")));
    }
    server.create_user(&api_key, "grace@example.com").await;
    verify_delivery(&rx, "/plain", "grace@example.com", &plain_secret).await;
    drop(server);

    let server = serve(dir.path(), &db, Some(&k2)).await;
    server.create_user(&api_key, "linus@example.com").await;
    verify_delivery(&rx, "/plain", "linus@example.com", &plain_secret).await;
    verify_delivery(&rx, "/sealed", "linus@example.com", &sealed_secret).await;

    // Without a key to move to, reencrypt says so.
    let out = run_args(
        dir.path(),
        &["secrets", "reencrypt", "--database", &sqlite_url(&db)],
    );
    assert!(
        out.one_line_failure()
            .contains("ACCOMMADOR_SECRET_KEY is not set"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn neither_the_key_nor_an_endpoint_secret_shows_in_trace_logs_or_metrics() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let k1 = key(7);
    let server = Server::start(
        dir.path(),
        &db,
        &[
            ADMIN,
            ALLOW_LOCAL,
            ("ACCOMMADOR_SECRET_KEY", &k1),
            ("RUST_LOG", "trace"),
        ],
    )
    .await;
    let (_, api_key) = server.create_org("Acme").await;
    let rx = Receiver::start().await;
    let (id, secret) = create_endpoint(&server, &api_key, &rx.url("/hooks")).await;
    server.create_user(&api_key, "ada@example.com").await;
    verify_delivery(&rx, "/hooks", "ada@example.com", &secret).await;
    let (status, _) = server
        .get(&api_key, &format!("/v1/endpoints/{id}/secret"))
        .await;
    assert_eq!(status, 200);
    let mut reencrypt = command(dir.path());
    reencrypt
        .args(["secrets", "reencrypt", "--database", &sqlite_url(&db)])
        .env("ACCOMMADOR_SECRET_KEY", format!("{},{k1}", key(8)))
        .env("RUST_LOG", "trace");
    let out = run(dir.path(), reencrypt).success();
    let metrics = server.metrics().await;
    let bare = secret.trim_start_matches("whsec_");
    for (what, text) in [
        ("the server's log", server.log()),
        (
            "reencrypt's output",
            format!("{}{}", out.stdout, out.stderr),
        ),
        ("/metrics", metrics),
    ] {
        assert!(
            !text.contains(&k1) && !text.contains(&key(8)),
            "{what} shows a key"
        );
        assert!(!text.contains(bare), "{what} shows an endpoint secret");
    }
}
