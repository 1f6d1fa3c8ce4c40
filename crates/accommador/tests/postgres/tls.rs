//! TLS to PostgreSQL (`sslmode` in the database URL) against the local server, which (as
//! Debian's cluster does) has `ssl = on` with a self-signed "snakeoil" certificate:
//! - `require`: every connection of a server (API pool, delivery pool, the LISTEN session) is
//!   encrypted, as `pg_stat_ssl` shows; `disable`: none is;
//! - `verify-full` against the self-signed certificate (at 127.0.0.1, a name it does not hold)
//!   fails, with a clear error, in the library and on the command line; `verify-ca` with that
//!   certificate as `sslrootcert` connects (the chain checks out, the name is not compared).

use accommador::store::postgres::tls::PgConnect;
use serde_json::json;

use super::helpers::{TestApp, TestDb, spawn_app_with};
use super::postgres_configured;

/// Whether the local server offers TLS at all (`SHOW ssl`); says so when it does not.
async fn server_has_ssl(db: &TestDb) -> bool {
    let on = db.rows("", "SHOW ssl").await[0][0].as_deref() == Some("on");
    if !on {
        eprintln!("skipped: the local PostgreSQL has ssl = off; TLS cannot be tested here");
    }
    on
}

fn with_query(url: &str, query: &str) -> String {
    format!("{url}?{query}")
}

/// (backend's current query, ssl) of every session of this server's database but the
/// test's own.
async fn sessions(app: &TestApp) -> Vec<(String, bool)> {
    let name = app.db.url.rsplit('/').next().unwrap().to_owned();
    app.db
        .rows(
            "",
            &format!(
                "SELECT a.query, s.ssl::text FROM pg_stat_activity a
                 JOIN pg_stat_ssl s USING (pid)
                 WHERE a.datname = '{name}' AND a.pid <> pg_backend_pid()"
            ),
        )
        .await
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].as_deref() == Some("true"),
            )
        })
        .collect()
}

/// A server with `sslmode=MODE`, with some work done, so every kind of connection is open.
async fn busy_app(mode: &str) -> TestApp {
    let mode = mode.to_owned();
    let app = spawn_app_with(move |s| {
        s.database_url = with_query(&s.database_url, &format!("sslmode={mode}"))
    })
    .await;
    let t = app.create_org("Acme").await;
    app.create_user(&t, json!({"email": "ada@example.com"}))
        .await;
    app
}

/// Waits (bounded) for the delivery side's LISTEN session to show up.
async fn wait_for_listen(app: &TestApp) -> Vec<(String, bool)> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let s = sessions(app).await;
        if s.iter().any(|(q, _)| q.starts_with("LISTEN")) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no LISTEN session appeared: {s:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sslmode_require_encrypts_every_connection_and_disable_none() {
    if !postgres_configured() {
        return;
    }
    let probe = TestDb::new().await;
    if !server_has_ssl(&probe).await {
        return;
    }
    let app = busy_app("require").await;
    let sessions = wait_for_listen(&app).await;
    assert!(sessions.len() >= 3, "{sessions:?}");
    assert!(
        sessions.iter().all(|(_, ssl)| *ssl),
        "a session without TLS under sslmode=require: {sessions:?}"
    );

    let app = busy_app("disable").await;
    let sessions = wait_for_listen(&app).await;
    assert!(
        sessions.iter().all(|(_, ssl)| !*ssl),
        "a TLS session under sslmode=disable: {sessions:?}"
    );
}

#[tokio::test]
async fn verify_full_against_a_self_signed_certificate_fails_clearly_and_verify_ca_with_it_connects()
 {
    if !postgres_configured() {
        return;
    }
    let db = TestDb::new().await;
    if !server_has_ssl(&db).await {
        return;
    }
    // The library: the handshake is refused. The snakeoil certificate names the machine, not
    // 127.0.0.1, and is signed by no CA (unless the system trusts it, as Debian's
    // /etc/ssl/certs may): one of the two checks fails.
    let e = PgConnect::parse(&with_query(&db.url, "sslmode=verify-full"))
        .unwrap()
        .connect()
        .await
        .err()
        .expect("verify-full accepted a self-signed certificate");
    let shown = format!("{e:#}");
    assert!(shown.contains("certificate"), "{shown}");

    // The command line: one line on stderr, a non-zero exit, the password not shown.
    let url =
        with_query(&db.url, "sslmode=verify-full").replacen("postgres@", "postgres:hunter2-pw@", 1);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_accommador"))
        .args(["migrate", "--database", &url])
        .env_remove("ACCOMMADOR_DATABASE_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");

    // With the server's own certificate as the trusted root, verify-ca connects, encrypted.
    let cert = db.rows("", "SHOW ssl_cert_file").await[0][0]
        .clone()
        .unwrap();
    if std::fs::read(&cert).is_err() {
        eprintln!("skipped the verify-ca part: {cert} is not readable here");
        return;
    }
    let connect = PgConnect::parse(&with_query(
        &db.url,
        &format!("sslmode=verify-ca&sslrootcert={cert}"),
    ))
    .unwrap();
    let (client, conn) = connect
        .connect()
        .await
        .unwrap_or_else(|e| panic!("verify-ca with {cert} as root: {e:#}"));
    tokio::spawn(conn);
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
}
