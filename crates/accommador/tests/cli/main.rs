//! The command line, end to end (DESIGN 4 and 5): every test runs the real `accommador` binary
//! as child processes in its own temporary directory, against its own SQLite file and ports.
//!
//! Readiness is a bounded `/healthz` poll, never a fixed sleep; servers are killed when their
//! guard drops, so a failing test leaves no process behind.

mod backup;
mod forward;
mod log_secrets;
#[path = "../delivery/receiver.rs"]
#[allow(dead_code)]
mod receiver;
mod redaction;
mod resources;
mod secrets;
#[path = "../common/spawn.rs"]
#[allow(dead_code)]
mod spawn;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::{ADMIN_TOKEN, Server, command, run, run_args, sqlite_url};

const ADMIN: (&str, &str) = ("ACCOMMADOR_ADMIN_TOKEN", ADMIN_TOKEN);

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("creating a temporary directory")
}

/// `orgs create NAME --json --database URL`, parsed.
fn orgs_create_json(dir: &std::path::Path, name: &str, db: &std::path::Path) -> Value {
    let out = run_args(
        dir,
        &[
            "orgs",
            "create",
            name,
            "--json",
            "--database",
            &sqlite_url(db),
        ],
    )
    .success();
    let lines: Vec<&str> = out.stdout.trim_end().lines().collect();
    assert_eq!(lines.len(), 1, "--json prints one line:\n{}", out.stdout);
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {}", lines[0]))
}

fn assert_org_json(org: &Value, name: &str) {
    assert!(
        org["id"].as_str().is_some_and(|id| id.starts_with("org_")),
        "id: {org}"
    );
    assert_eq!(org["name"], name, "{org}");
    assert!(
        org["api_key"]
            .as_str()
            .is_some_and(|k| k.starts_with("acm_") && k.len() > 20),
        "api_key: {org}"
    );
}

// 1. `orgs create` ---------------------------------------------------------------------------

#[tokio::test]
async fn orgs_create_prints_json_with_a_key_that_a_later_server_accepts() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let org = orgs_create_json(dir.path(), "Acme", &db);
    assert_org_json(&org, "Acme");
    let key = org["api_key"].as_str().unwrap();

    let server = Server::start(dir.path(), &db, &[]).await;
    let (status, body) = server.get(key, "/v1/users").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"data": [], "next_cursor": null}));

    let (status, _) = server.get("acm_not_a_real_key", "/v1/users").await;
    assert_eq!(status, 401, "a made-up key must not be accepted");
}

#[tokio::test]
async fn orgs_create_writes_beside_a_running_server_and_its_key_works_there() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let server = Server::start(dir.path(), &db, &[]).await;

    let org = orgs_create_json(dir.path(), "Beside", &db);
    assert_org_json(&org, "Beside");
    let key = org["api_key"].as_str().unwrap();

    let (status, body) = server.get(key, "/v1/users").await;
    assert_eq!(
        status, 200,
        "the running server rejects the new key: {body}"
    );
    assert_eq!(body, json!({"data": [], "next_cursor": null}));
    let user = server.create_user(key, "first@example.com").await;
    assert!(user["id"].as_str().unwrap().starts_with("usr_"), "{user}");

    // Without --json: the id and the key on stdout, and that key works too.
    let out = run_args(
        dir.path(),
        &["orgs", "create", "Plain", "--database", &sqlite_url(&db)],
    )
    .success();
    let plain_key = out
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with("acm_"))
        .unwrap_or_else(|| panic!("no API key in the output:\n{}", out.stdout));
    assert!(out.stdout.contains("org_"), "no org id in:\n{}", out.stdout);
    let (status, body) = server.get(plain_key, "/v1/users").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        json!([]),
        "another organization's users leaked"
    );
}

// 2. One server per SQLite file --------------------------------------------------------------

#[tokio::test]
async fn a_second_server_on_the_same_file_refuses_and_the_first_keeps_serving() {
    let dir = tempdir();
    let db = dir.path().join("shared.db");
    let key = orgs_create_json(dir.path(), "Lock", &db)["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = Server::start(dir.path(), &db, &[]).await;

    let out = run_args(
        dir.path(),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database",
            &sqlite_url(&db),
        ],
    );
    let line = out.one_line_failure();
    assert!(line.contains("already using"), "{line}");
    assert!(
        line.contains("shared.db"),
        "the message names no file: {line}"
    );
    assert!(
        !out.stderr.contains("is listening"),
        "the refused server served before refusing: {}",
        out.stderr
    );

    let user = first.create_user(&key, "still@example.com").await;
    let id = user["id"].as_str().unwrap();
    let (status, _) = first.get(&key, &format!("/v1/users/{id}")).await;
    assert_eq!(status, 200, "the first server stopped serving");
}

/// The lock belongs to the database file, not to the spelling of its path.
#[cfg(unix)]
#[tokio::test]
async fn a_second_server_through_a_symlink_to_the_same_file_also_refuses() {
    let dir = tempdir();
    let db = dir.path().join("real.db");
    let link = dir.path().join("link.db");
    let _first = Server::start(dir.path(), &db, &[]).await;
    std::os::unix::fs::symlink(&db, &link).unwrap();
    let out = run_args(
        dir.path(),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database",
            &sqlite_url(&link),
        ],
    );
    let line = out.one_line_failure();
    assert!(line.contains("already using"), "{line}");
}

// 3. A crash loses nothing that was acknowledged ---------------------------------------------

/// SIGKILL in the middle of a burst of concurrent creates. After a restart, every user whose
/// create was answered 201 exists, and users and `user.created` events match one to one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_creates_survive_sigkill_with_exactly_one_event_each() {
    const WRITERS: usize = 8;
    const KILL_AFTER: usize = 300;

    let dir = tempdir();
    let db = dir.path().join("crash.db");
    let mut server = Server::start(dir.path(), &db, &[ADMIN]).await;
    let (_, key) = server.create_org("Crash").await;

    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .retry(reqwest::retry::never())
        .build()
        .unwrap();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let reached = Arc::new(tokio::sync::Notify::new());
    let killed = Arc::new(AtomicBool::new(false));
    let unexpected = Arc::new(Mutex::new(Vec::<String>::new()));

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, key, url) = (client.clone(), key.clone(), server.url("/v1/users"));
        let (acked, count, reached, killed, unexpected) = (
            acked.clone(),
            count.clone(),
            reached.clone(),
            killed.clone(),
            unexpected.clone(),
        );
        writers.push(tokio::spawn(async move {
            for n in 0.. {
                let email = format!("w{w}-{n}@example.com");
                let sent = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({ "email": email }))
                    .send()
                    .await;
                let outcome = match sent {
                    Ok(resp) if resp.status() == 201 => match resp.json::<Value>().await {
                        Ok(user) => Ok(user["id"].as_str().map(str::to_owned)),
                        Err(e) => Err(format!("reading a 201 body: {e}")),
                    },
                    Ok(resp) => Err(format!("{email}: status {}", resp.status())),
                    Err(e) => Err(format!("{email}: {e}")),
                };
                match outcome {
                    Ok(Some(id)) => {
                        acked.lock().unwrap().push(id);
                        if count.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER {
                            reached.notify_one();
                        }
                    }
                    Ok(None) => unexpected.lock().unwrap().push(format!("{email}: no id")),
                    Err(why) => {
                        // Before the kill, every create must succeed; after it, the first
                        // failure ends this writer.
                        if !killed.load(Ordering::SeqCst) {
                            unexpected.lock().unwrap().push(why);
                        }
                        return;
                    }
                }
            }
        }));
    }

    let burst = tokio::time::timeout(Duration::from_secs(30), reached.notified()).await;
    killed.store(true, Ordering::SeqCst);
    server.kill();
    for writer in writers {
        writer.await.expect("a writer task panicked");
    }
    assert!(
        burst.is_ok(),
        "only {} creates were acknowledged in 30 s; errors: {:?}",
        count.load(Ordering::SeqCst),
        unexpected.lock().unwrap()
    );
    let unexpected = unexpected.lock().unwrap().clone();
    assert!(
        unexpected.is_empty(),
        "creates failed before the kill: {unexpected:?}"
    );
    let acked: Vec<String> = acked.lock().unwrap().clone();
    let acked_set: BTreeSet<&str> = acked.iter().map(String::as_str).collect();
    assert_eq!(
        acked_set.len(),
        acked.len(),
        "one user id was returned twice"
    );
    assert!(acked.len() >= KILL_AFTER);

    let server = Server::start(dir.path(), &db, &[ADMIN]).await;

    let mut missing = Vec::new();
    for id in &acked {
        let (status, body) = server.get(&key, &format!("/v1/users/{id}")).await;
        if status != 200 || body["id"] != id.as_str() {
            missing.push(format!("{id}: {status}"));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged users are gone after the crash: {missing:?}",
        missing.len(),
        acked.len()
    );

    let users = server.list_all(&key, "/v1/users?limit=500").await;
    let user_ids: BTreeSet<String> = users
        .iter()
        .map(|u| u["id"].as_str().expect("user id").to_owned())
        .collect();
    assert_eq!(user_ids.len(), users.len(), "the user list repeats a user");
    for id in &acked {
        assert!(user_ids.contains(id), "{id} is missing from GET /v1/users");
    }
    // Only a request in flight at the kill can have committed without an answer: one per writer.
    assert!(
        users.len() <= acked.len() + WRITERS,
        "{} users stored but only {} acknowledged with {WRITERS} in flight",
        users.len(),
        acked.len()
    );

    let events = server
        .list_all(&key, "/v1/events?type=user.created&limit=500")
        .await;
    let mut per_user: BTreeMap<String, usize> = BTreeMap::new();
    for event in &events {
        assert_eq!(event["type"], "user.created", "{event}");
        let user_id = event["data"]["user"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("a user.created event without a user: {event}"));
        *per_user.entry(user_id.to_owned()).or_default() += 1;
    }
    let twice: Vec<_> = per_user.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "users with several created events: {twice:?}"
    );
    let event_user_ids: BTreeSet<String> = per_user.into_keys().collect();
    let without_event: Vec<_> = user_ids.difference(&event_user_ids).collect();
    let without_user: Vec<_> = event_user_ids.difference(&user_ids).collect();
    assert!(
        without_event.is_empty() && without_user.is_empty(),
        "users without a user.created event: {without_event:?}; \
         events whose user is not stored: {without_user:?}"
    );
    assert_eq!(events.len(), users.len());
    eprintln!(
        "crash: {} acknowledged, {} stored",
        acked.len(),
        users.len()
    );
}

// 4. migrate ---------------------------------------------------------------------------------

#[tokio::test]
async fn migrate_creates_the_file_and_can_run_again_even_beside_a_server() {
    let dir = tempdir();
    let db = dir.path().join("m.db");
    let url = sqlite_url(&db);
    run_args(dir.path(), &["migrate", "--database", &url]).success();
    assert!(db.is_file(), "migrate did not create {}", db.display());
    run_args(dir.path(), &["migrate", "--database", &url]).success();

    // The migrated file serves, and migrate still runs beside the server.
    let server = Server::start(dir.path(), &db, &[ADMIN]).await;
    let (_, key) = server.create_org("Migrated").await;
    run_args(dir.path(), &["migrate", "--database", &url]).success();
    let user = server.create_user(&key, "after-migrate@example.com").await;
    assert_eq!(user["version"], 1, "{user}");
}

// 5. worker ----------------------------------------------------------------------------------

#[test]
fn worker_refuses_sqlite_and_says_it_needs_postgres() {
    let dir = tempdir();
    let db = dir.path().join("w.db");
    let out = run_args(dir.path(), &["worker", "--database", &sqlite_url(&db)]);
    let line = out.one_line_failure();
    assert!(
        line.to_ascii_lowercase().contains("postgres"),
        "the message does not mention postgres: {line}"
    );
    assert!(!db.exists(), "worker created the SQLite file it refused");
}

// 6. Configuration layers --------------------------------------------------------------------

#[tokio::test]
async fn listen_comes_from_the_file_then_the_environment_then_the_flag() {
    // Each layer names its own loopback address (port 0: the kernel picks a free port, so no
    // port is chosen here and taken by someone else before the server binds it). The address
    // the server reports shows which layer won.
    let dir = tempdir();
    let (ip_a, ip_b, ip_c) = ("127.0.0.2", "127.0.0.3", "127.0.0.4");
    let db = dir.path().join("conf.db");
    let config = dir.path().join("accommador.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{ip_a}:0\"\ndatabase_url = \"{}\"\n",
            sqlite_url(&db)
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    // File only: its address, and its database.
    let mut cmd = command(dir.path());
    cmd.args(["serve", "--config", config]);
    let server = Server::spawn(dir.path(), cmd)
        .await
        .unwrap_or_else(|log| panic!("serve with the file did not start:\n{log}"));
    assert_eq!(
        server.addr.ip().to_string(),
        ip_a,
        "the file's listen address is not used"
    );
    assert!(db.is_file(), "the file's database_url is not used");
    drop(server);

    // The environment overrides the file.
    let mut cmd = command(dir.path());
    cmd.args(["serve", "--config", config])
        .env("ACCOMMADOR_LISTEN", format!("{ip_b}:0"));
    let server = Server::spawn(dir.path(), cmd)
        .await
        .unwrap_or_else(|log| panic!("serve with ACCOMMADOR_LISTEN did not start:\n{log}"));
    assert_eq!(
        server.addr.ip().to_string(),
        ip_b,
        "ACCOMMADOR_LISTEN does not override the file"
    );
    drop(server);

    // The flag overrides the environment.
    let mut cmd = command(dir.path());
    cmd.args(["serve", "--config", config])
        .args(["--listen", &format!("{ip_c}:0")])
        .env("ACCOMMADOR_LISTEN", format!("{ip_b}:0"));
    let server = Server::spawn(dir.path(), cmd)
        .await
        .unwrap_or_else(|log| panic!("serve with --listen did not start:\n{log}"));
    assert_eq!(
        server.addr.ip().to_string(),
        ip_c,
        "--listen does not override the environment"
    );
    drop(server);
}

#[test]
fn an_invalid_setting_fails_fast_with_one_line_naming_it() {
    let dir = tempdir();
    let db = dir.path().join("bad.db");
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database",
        &sqlite_url(&db),
    ];

    let mut cmd = command(dir.path());
    cmd.args(args).env("ACCOMMADOR_DELIVERY_TIMEOUT", "soon");
    let line = run(dir.path(), cmd).one_line_failure();
    assert!(line.contains("delivery_timeout"), "{line}");

    // The same mistake in a config file.
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "delivery_timeout = \"soon\"\n").unwrap();
    let mut cmd = command(dir.path());
    cmd.args(args).args(["--config", config.to_str().unwrap()]);
    let line = run(dir.path(), cmd).one_line_failure();
    assert!(line.contains("delivery_timeout"), "{line}");

    assert!(
        !db.exists(),
        "an invalid configuration still opened the database"
    );
}

// 7. verify ----------------------------------------------------------------------------------

const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const VECTOR_BODY: &str = r#"{"test": 2432232314}"#;

fn verify(dir: &std::path::Path, case: &str, headers: &str, body: &str) -> support::Output {
    let headers_path = dir.join(format!("{case}.headers"));
    let body_path = dir.join(format!("{case}.body"));
    std::fs::write(&headers_path, headers).unwrap();
    std::fs::write(&body_path, body).unwrap();
    run_args(
        dir,
        &[
            "verify",
            "--secret",
            VECTOR_SECRET,
            "--headers",
            headers_path.to_str().unwrap(),
            "--body",
            body_path.to_str().unwrap(),
        ],
    )
}

fn curl_headers(id: &str, ts: i64, signature: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nwebhook-id: {id}\r\n\
         Webhook-Timestamp: {ts}\r\nwebhook-signature: {signature}\r\n\r\n"
    )
}

#[test]
fn verify_accepts_a_signed_request_in_both_header_forms_and_rejects_tampering() {
    let dir = tempdir();
    let secret = accommador_webhooks::Secret::parse(VECTOR_SECRET).unwrap();
    // The published Standard Webhooks vector, so the signing below is the real scheme.
    assert_eq!(
        secret.sign(VECTOR_ID, 1_614_265_330, VECTOR_BODY.as_bytes()),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let signature = secret.sign(VECTOR_ID, now, VECTOR_BODY.as_bytes());

    let curl = curl_headers(VECTOR_ID, now, &signature);
    let out = verify(dir.path(), "curl", &curl, VECTOR_BODY).success();
    assert!(out.stdout.contains(VECTOR_ID), "{}", out.stdout);

    let json_headers = json!({
        "content-type": "application/json",
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": now.to_string(),
        "webhook-signature": signature,
    })
    .to_string();
    verify(dir.path(), "json", &json_headers, VECTOR_BODY).success();

    // One changed byte of the body.
    let tampered = VECTOR_BODY.replace('4', "5");
    let line = verify(dir.path(), "curl-tampered", &curl, &tampered).one_line_failure();
    assert!(line.contains("signature"), "{line}");
    let line = verify(dir.path(), "json-tampered", &json_headers, &tampered).one_line_failure();
    assert!(line.contains("signature"), "{line}");

    // The published vector itself is years old: rejected as a replay.
    let stale = curl_headers(
        VECTOR_ID,
        1_614_265_330,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    );
    let line = verify(dir.path(), "stale", &stale, VECTOR_BODY).one_line_failure();
    assert!(line.contains("timestamp"), "{line}");
}

// 8. Graceful shutdown -----------------------------------------------------------------------

#[tokio::test]
async fn sigterm_stops_the_server_with_status_0_and_keeps_the_data() {
    let dir = tempdir();
    let db = dir.path().join("term.db");
    let mut server = Server::start(dir.path(), &db, &[ADMIN]).await;
    let (_, key) = server.create_org("Term").await;
    let user = server.create_user(&key, "kept@example.com").await;
    let id = user["id"].as_str().unwrap().to_owned();

    let kill = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(server.pid().to_string())
        .status()
        .expect("running kill");
    assert!(kill.success(), "kill -TERM failed");
    let status = server
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{}", server.log()));
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM exit: {status}\n{}",
        server.log()
    );

    let server = Server::start(dir.path(), &db, &[ADMIN]).await;
    let (status, body) = server.get(&key, &format!("/v1/users/{id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["email"], "kept@example.com");
}

// 9. Help ------------------------------------------------------------------------------------

#[test]
fn help_lists_every_subcommand_and_each_has_its_own_help() {
    let dir = tempdir();
    let out = run_args(dir.path(), &["--help"]).success();
    let subcommands = [
        "serve",
        "worker",
        "migrate",
        "orgs",
        "secrets",
        "backup",
        "listen",
        "verify",
        "users",
        "endpoints",
        "deliveries",
        "events",
        "api-keys",
        "completions",
    ];
    for name in subcommands {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "--help does not list {name}:\n{}",
            out.stdout
        );
    }
    for args in subcommands.iter().map(|s| vec![*s, "--help"]).chain([
        vec!["orgs", "create", "--help"],
        vec!["secrets", "reencrypt", "--help"],
        vec!["users", "create", "--help"],
        vec!["endpoints", "recover", "--help"],
        vec!["events", "tail", "--help"],
    ]) {
        let out = run_args(dir.path(), &args).success();
        assert!(out.stdout.contains("Usage:"), "{args:?}:\n{}", out.stdout);
    }
}

/// `accommador listen --secret … --json` accepts a correctly signed delivery with 204, rejects
/// a forged one with 401, and prints one JSON line per request saying which verified.
#[tokio::test]
async fn listen_verifies_signatures_and_prints_each_request() {
    let dir = tempdir();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let out = dir.path().join("listen.out");
    let err = dir.path().join("listen.err");
    // Port 0: the receiver says where it listens ("listening on http://…").
    let mut child = command(dir.path())
        .args(["listen", "--port", "0", "--secret", secret, "--json"])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let (port, _) = support::listen_port(&mut child, &err).await;
    let body =
        r#"{"id":"evt_1","type":"user.created","timestamp":"2026-11-27T01:02:03.456Z","data":{}}"#;
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let good =
        accommador_webhooks::Secret::parse(secret)
            .unwrap()
            .sign("evt_1", ts, body.as_bytes());
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for signature in [
        good.as_str(),
        "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ] {
        let r = client
            .post(format!("http://127.0.0.1:{port}/hooks"))
            .header("content-type", "application/json")
            .header("webhook-id", "evt_1")
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(statuses, [204, 401]);
    let printed = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<Value> = printed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{printed}");
    assert_eq!(lines[0]["verified"], true);
    assert_eq!(lines[0]["webhook_id"], "evt_1");
    assert_eq!(lines[0]["body"]["type"], "user.created");
    assert_eq!(lines[0]["path"], "/hooks");
    assert_eq!(lines[1]["verified"], false);
    assert!(lines[1]["error"].as_str().unwrap().contains("signature"));
}

/// Environment values are strings as written: a numeric-looking admin token is not rewritten.
#[tokio::test]
async fn a_numeric_looking_admin_token_from_the_environment_is_kept_as_written() {
    let dir = tempdir();
    let db = dir.path().join("t.db");
    let server = Server::start(dir.path(), &db, &[("ACCOMMADOR_ADMIN_TOKEN", "007")]).await;
    for (token, expected) in [("7", 401), ("007", 201)] {
        let r = server
            .client
            .post(server.url("/v1/organizations"))
            .bearer_auth(token)
            .json(&json!({"name": "Acme"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), expected, "Bearer {token}");
    }
}
