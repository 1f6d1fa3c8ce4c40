//! What PostgreSQL adds to the story: many connections and many processes on one database.
//!
//! Needs `ACCOMMADOR_TEST_POSTGRES_URL` (an admin URL, e.g.
//! `postgres://postgres@127.0.0.1:5432/postgres`); each test creates and drops a database of
//! its own. Without it the tests are skipped with a note (the README's plain `cargo test`);
//! where `CI` is set (as in `.ci/run`) they fail instead, and `.ci/run` always sets the URL, so
//! there a missing server fails them too.

#[path = "../api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
mod ordering;
mod pacing;
#[path = "../delivery/receiver.rs"]
#[allow(dead_code)]
mod receiver;
mod secrets;
#[path = "../common/spawn.rs"]
#[allow(dead_code)]
mod spawn;
mod tls;

use std::collections::{BTreeSet, HashSet};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use helpers::{POSTGRES_ENV, TestDb, spawn_app};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

/// `false` (after saying why) when PostgreSQL is not configured; in CI (`CI` set, as
/// `.ci/run` runs) a missing configuration fails the test instead.
fn postgres_configured() -> bool {
    if std::env::var(POSTGRES_ENV).is_ok_and(|v| !v.is_empty()) {
        return true;
    }
    assert!(
        std::env::var("CI").unwrap_or_default().is_empty(),
        "CI is set but {POSTGRES_ENV} is not: the PostgreSQL tests must run in CI"
    );
    eprintln!(
        "skipped: set {POSTGRES_ENV}=postgres://postgres@127.0.0.1:5432/postgres to run the \
         PostgreSQL tests (see README)"
    );
    false
}

#[tokio::test]
async fn fifty_concurrent_patches_make_fifty_versions_each_once() {
    if !postgres_configured() {
        return;
    }
    let app = Arc::new(spawn_app().await);
    assert!(app.db.is_postgres());
    let t = app.create_org("Acme").await;
    let user = app
        .create_user(&t, json!({"email": "race@example.com", "name": "n0"}))
        .await;
    let path = format!("/v1/users/{}", user["id"].as_str().unwrap());
    let mut tasks = Vec::new();
    for i in 1..=50 {
        let (app, t, path) = (app.clone(), t.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let r = app
                .patch(&t, &path, &json!({ "name": format!("n{i}") }))
                .await;
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()["version"]
                .as_u64()
                .unwrap()
        }));
    }
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.unwrap());
    }
    versions.sort();
    assert_eq!(versions, (2..=51).collect::<Vec<u64>>());

    let events = app.all_events(&t, "&type=user.updated").await;
    assert_eq!(events.len(), 50);
    let mut by_version: Vec<&Value> = events.iter().collect();
    by_version.sort_by_key(|e| e["data"]["user"]["version"].as_u64().unwrap());
    let mut previous_name = "n0".to_owned();
    for (i, e) in by_version.iter().enumerate() {
        assert_eq!(e["data"]["user"]["version"], i as u64 + 2);
        // Each change saw exactly the state the one before it left.
        assert_eq!(
            e["data"]["previous_attributes"]["name"],
            previous_name.as_str()
        );
        previous_name = e["data"]["user"]["name"].as_str().unwrap().to_owned();
    }
    let last: Value = app.get(&t, &path).await.json().await.unwrap();
    assert_eq!(last["version"], 51);
    assert_eq!(last["name"], previous_name.as_str());
}

#[tokio::test]
async fn concurrent_creations_written_together_keep_each_email_once() {
    if !postgres_configured() {
        return;
    }
    // Creations without an Idempotency-Key are written in batches: a taken email (or one
    // taken twice within a batch) must refuse only that request, and every created user must
    // have exactly its own event.
    let app = Arc::new(spawn_app().await);
    assert!(app.db.is_postgres());
    let t = app.create_org("Acme").await;
    app.create_user(&t, json!({"email": "taken@example.com"}))
        .await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let (app, t) = (app.clone(), t.clone());
        // 20 emails, each sent three times in different case; plus the taken one.
        let email = match i % 20 {
            0 => "TAKEN@example.com".to_owned(),
            n => match i / 20 {
                0 => format!("u{n}@example.com"),
                1 => format!("U{n}@example.com"),
                _ => format!("u{n}@EXAMPLE.com"),
            },
        };
        tasks.push(tokio::spawn(async move {
            let r = app.post(&t, "/v1/users", &json!({ "email": email })).await;
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            (email.to_lowercase(), status, body)
        }));
    }
    let mut created: std::collections::HashMap<String, String> = Default::default();
    let mut refused = 0;
    for task in tasks {
        let (email, status, body) = task.await.unwrap();
        match status {
            StatusCode::CREATED => {
                let id = body["id"].as_str().unwrap().to_owned();
                assert!(
                    created.insert(email.clone(), id).is_none(),
                    "{email} was created twice"
                );
            }
            StatusCode::CONFLICT => {
                refused += 1;
                assert_eq!(body["status"], 409, "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(created.len(), 19, "one creation per new email");
    assert!(!created.contains_key("taken@example.com"));
    assert_eq!(refused, 60 - 19);
    let events = app.all_events(&t, "&type=user.created").await;
    assert_eq!(events.len(), 20, "the first user and the 19 created now");
    for id in created.values() {
        assert_eq!(
            events
                .iter()
                .filter(|e| e["data"]["user"]["id"] == id.as_str())
                .count(),
            1
        );
        assert_eq!(
            app.get(&t, &format!("/v1/users/{id}")).await.status(),
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn a_poller_following_after_sees_every_event_exactly_once_under_concurrent_writers() {
    if !postgres_configured() {
        return;
    }
    let app = Arc::new(spawn_app().await);
    let t = app.create_org("Acme").await;
    let done = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (app, t) = (app.clone(), t.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..50 {
                app.create_user(&t, json!({ "email": format!("w{w}-{i}@example.com") }))
                    .await;
            }
        }));
    }
    let poller = {
        let (app, t, done) = (app.clone(), t.clone(), done.clone());
        tokio::spawn(async move {
            let mut seen: Vec<String> = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let finished = done.load(Ordering::SeqCst);
                let path = match seen.last() {
                    Some(last) => format!("/v1/events?limit=37&after={last}"),
                    None => "/v1/events?limit=37".to_owned(),
                };
                let page: Value = app.get(&t, &path).await.json().await.unwrap();
                let data = page["data"].as_array().unwrap();
                seen.extend(data.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
                if finished && data.is_empty() && seen.len() >= 400 {
                    return seen;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "poller saw {}",
                    seen.len()
                );
                if data.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let seen = poller.await.unwrap();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an event was returned twice");
    assert_eq!(seen.len(), 400, "an event was skipped");
    let all: BTreeSet<String> = app
        .all_events(&t, "")
        .await
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(all, seen.into_iter().collect());
}

/// A `serve` process on the test's PostgreSQL database, killed when dropped.
struct Server {
    child: Child,
    addr: std::net::SocketAddr,
    _logs: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ADMIN: &str = "pg-admin-token";

/// Connections per spawned process's API pool. Its delivery side keeps a few more of its own;
/// tests run several processes at once, and the server allows 100 connections by default.
const TEST_POOL_SIZE: &str = "4";

impl Server {
    async fn start(database_url: &str) -> Server {
        Server::spawn(database_url, &["serve"], &[]).await
    }

    /// `accommador <command…> --listen 127.0.0.1:0 --database …` with extra environment.
    async fn spawn(database_url: &str, command: &[&str], envs: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_accommador"));
        for (k, _) in std::env::vars() {
            if k.starts_with("ACCOMMADOR_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(command)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--database", database_url])
            .env("ACCOMMADOR_ADMIN_TOKEN", ADMIN)
            .env("ACCOMMADOR_DATABASE_POOL_SIZE", TEST_POOL_SIZE)
            .envs(envs.iter().copied());
        let logs = tempfile::tempdir().unwrap();
        let (child, addr) = spawn::spawn_listening(cmd, &logs.path().join("server.log"))
            .await
            .unwrap_or_else(|e| panic!("accommador {command:?} did not start: {e}"));
        Server {
            child,
            addr,
            _logs: logs,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGKILL, then waits for the process to be gone (without blocking the runtime).
    async fn kill(&mut self) {
        self.child.kill().unwrap();
        spawn::reap(&mut self.child).await;
    }
}

async fn create_org(client: &Client, server: &Server) -> String {
    create_org_with_id(client, server).await.1
}

/// A new organization's ID and API key.
async fn create_org_with_id(client: &Client, server: &Server) -> (String, String) {
    let org: Value = client
        .post(server.url("/v1/organizations"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "Shared"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        org["id"].as_str().unwrap().to_owned(),
        org["api_key"].as_str().unwrap().to_owned(),
    )
}

async fn list_all(client: &Client, server: &Server, key: &str, path: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut url = server.url(&format!("{path}{sep}limit=500"));
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let page: Value = client
            .get(url)
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        out.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => after = Some(c.to_owned()),
            None => return out,
        }
    }
}

#[tokio::test]
async fn two_processes_share_one_database_and_one_idempotency_key() {
    if !postgres_configured() {
        return;
    }
    let db = TestDb::new().await;
    let a = Server::start(&db.url).await;
    let b = Server::start(&db.url).await;
    let client = Client::new();
    let key = create_org(&client, &a).await;

    let mut tasks = Vec::new();
    for i in 0..40 {
        let server_url = if i % 2 == 0 {
            a.url("/v1/users")
        } else {
            b.url("/v1/users")
        };
        let (client, key) = (client.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            // Every other request races the same Idempotency-Key from both processes.
            let mut req = client.post(server_url).bearer_auth(&key);
            let body = if i % 4 < 2 {
                req = req.header("idempotency-key", "shared-key");
                json!({"email": "once@example.com"})
            } else {
                json!({ "email": format!("u{i}@example.com") })
            };
            let r = req.json(&body).send().await.unwrap();
            (i, r.status(), r.text().await.unwrap())
        }));
    }
    // Unkeyed creations all succeed. A keyed one either ran, was replayed (it came after the
    // first committed) or was answered 409 (it came while the first ran, on either process).
    let mut keyed = Vec::new();
    for t in tasks {
        let (i, status, body) = t.await.unwrap();
        if i % 4 >= 2 {
            assert_eq!(status, StatusCode::CREATED, "{i}: {body}");
        } else if status == StatusCode::CONFLICT {
            assert!(body.contains("idempotency-key-in-progress"), "{i}: {body}");
        } else {
            assert_eq!(status, StatusCode::CREATED, "{i}: {body}");
            keyed.push(body);
        }
    }
    assert!(!keyed.is_empty(), "no keyed request was answered 201");
    assert!(
        keyed.iter().all(|b| *b == keyed[0]),
        "the key answered differently"
    );
    let users = list_all(&client, &b, &key, "/v1/users").await;
    let once = users
        .iter()
        .filter(|u| u["email"] == "once@example.com")
        .count();
    assert_eq!(
        once, 1,
        "the raced Idempotency-Key created more than one user"
    );
    assert_eq!(users.len(), 21);
    let created = list_all(&client, &a, &key, "/v1/events?type=user.created").await;
    assert_eq!(created.len(), 21);
}

#[tokio::test]
async fn acknowledged_users_survive_sigkill_with_their_events() {
    if !postgres_configured() {
        return;
    }
    let db = TestDb::new().await;
    let mut server = Server::start(&db.url).await;
    let client = Client::new();
    let key = create_org(&client, &server).await;
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    // Anything but a 201 before the kill is a failure of its own, never a quiet stop.
    let unexpected = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (client, key, acked, stop, unexpected, url) = (
            client.clone(),
            key.clone(),
            acknowledged.clone(),
            stop.clone(),
            unexpected.clone(),
            server.url("/v1/users"),
        );
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let body = json!({ "email": format!("w{w}-{i}@example.com") });
                match client.post(&url).bearer_auth(&key).json(&body).send().await {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        let u: Value = r.json().await.unwrap();
                        acked
                            .lock()
                            .unwrap()
                            .push(u["id"].as_str().unwrap().to_owned());
                    }
                    // A broken connection is expected once the kill is under way (`stop` is
                    // set just before it), and only then.
                    Err(e) => {
                        if !stop.load(Ordering::SeqCst) {
                            unexpected.lock().unwrap().push(format!("writer {w}: {e}"));
                        }
                        return;
                    }
                    Ok(r) => {
                        if !stop.load(Ordering::SeqCst) {
                            let status = r.status();
                            let text = r.text().await.unwrap_or_default();
                            unexpected
                                .lock()
                                .unwrap()
                                .push(format!("writer {w}: {status} {text}"));
                        }
                        return;
                    }
                }
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acknowledged.lock().unwrap().len() < 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the burst did not get going"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Writers finish the request they are in (it meets the kill) and send no more.
    stop.store(true, Ordering::SeqCst);
    server.kill().await;
    for w in writers {
        w.await.unwrap();
    }
    let unexpected = unexpected.lock().unwrap().clone();
    assert!(unexpected.is_empty(), "before the kill: {unexpected:?}");
    let acked: Vec<String> = acknowledged.lock().unwrap().clone();

    let server = Server::start(&db.url).await;
    let users = list_all(&client, &server, &key, "/v1/users").await;
    let stored: HashSet<String> = users
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect();
    for id in &acked {
        assert!(stored.contains(id), "acknowledged user {id} is gone");
    }
    let events = list_all(&client, &server, &key, "/v1/events?type=user.created").await;
    let evented: Vec<String> = events
        .iter()
        .map(|e| e["data"]["user"]["id"].as_str().unwrap().to_owned())
        .collect();
    let unique: HashSet<&String> = evented.iter().collect();
    assert_eq!(unique.len(), evented.len(), "a user has two created events");
    assert_eq!(unique.len(), stored.len());
    assert!(
        stored.iter().all(|id| unique.contains(id)),
        "users and events differ"
    );
}

/// A private PostgreSQL cluster on a temporary port (initdb + pg_ctl as the `postgres` user),
/// so stopping it disturbs no other test.
struct PrivateCluster {
    dir: tempfile::TempDir,
    port: u16,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn as_postgres(args: &[&str]) -> std::process::Output {
    let mut cmd = if nix_is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]);
        c
    } else {
        Command::new(args[0])
    };
    let args = if nix_is_root() { args } else { &args[1..] };
    cmd.args(args).output().unwrap()
}

/// [`as_postgres`] on a blocking thread.
async fn as_postgres_async(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        as_postgres(&refs)
    })
    .await
    .unwrap()
}

/// A number below `n`, different in each call and each process.
fn rand_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) % n
}

fn nix_is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"))
}

impl PrivateCluster {
    /// initdb and start, on a port outside the kernel's ephemeral range (every other listener
    /// in these tests binds port 0, which the kernel takes from that range), so nothing else
    /// in the test run takes it, before the start or between a stop and a restart. Blocking
    /// work runs off the test's runtime, which also hosts the receiver.
    async fn start() -> PrivateCluster {
        let dir = tempfile::tempdir().unwrap();
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        let data = dir.path().join("data");
        let out = as_postgres_async(vec![
            format!("{PG_BIN}/initdb"),
            "-D".into(),
            data.display().to_string(),
            "-A".into(),
            "trust".into(),
            "-U".into(),
            "postgres".into(),
        ])
        .await;
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cluster = PrivateCluster { dir, port: 0 };
        let mut failures = Vec::new();
        for _ in 0..5 {
            cluster.port = 20_000 + rand_below(12_000) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", cluster.port)).is_err() {
                continue;
            }
            match cluster.try_pg_ctl("start").await {
                Ok(()) => return cluster,
                Err(e) => failures.push(e),
            }
        }
        panic!("the private cluster did not start: {failures:?}");
    }

    async fn pg_ctl(&self, action: &str) {
        if let Err(e) = self.try_pg_ctl(action).await {
            panic!("{e}");
        }
    }

    async fn try_pg_ctl(&self, action: &str) -> Result<(), String> {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("pg.log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let mut args = vec![
            format!("{PG_BIN}/pg_ctl"),
            "-D".into(),
            data.display().to_string(),
            "-l".into(),
            log.display().to_string(),
            "-w".into(),
            "-t".into(),
            "120".into(),
            "-o".into(),
            opts,
        ];
        if action == "stop" {
            args.extend(["-m".into(), "immediate".into()]);
        }
        args.push(action.into());
        let out = as_postgres_async(args).await;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl {action} on port {}: {}\n{}",
                self.port,
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            ))
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_postgres(&[
            &format!("{PG_BIN}/pg_ctl"),
            "-D",
            data.to_str().unwrap(),
            "-m",
            "immediate",
            "stop",
        ]);
    }
}

async fn readyz(client: &Client, server: &Server) -> u16 {
    match client
        .get(server.url("/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn eventually_ready(client: &Client, server: &Server, want: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = readyz(client, server).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz stayed {got}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_database_restart_mid_load_loses_nothing_acknowledged() {
    if !postgres_configured() {
        return;
    }
    let cluster = PrivateCluster::start().await;
    let rx = receiver::Receiver::start().await;
    let server = Server::spawn(&cluster.url(), &["serve"], &[PRIVATE]).await;
    let client = Client::new();
    let key = create_org(&client, &server).await;
    create_endpoint(&client, &server, &key, &rx.url("/restart")).await;
    eventually_ready(&client, &server, 200).await;

    // Writers keep creating users through the outage; only 201s count as acknowledged.
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, key, acked, stop, url) = (
            client.clone(),
            key.clone(),
            acknowledged.clone(),
            stop.clone(),
            server.url("/v1/users"),
        );
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let body = json!({ "email": format!("w{w}-{i}@example.com") });
                let sent = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&body)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        let u: Value = r.json().await.unwrap();
                        acked
                            .lock()
                            .unwrap()
                            .push(u["id"].as_str().unwrap().to_owned());
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    let wait_acked = |n: usize| {
        let acknowledged = acknowledged.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while acknowledged.lock().unwrap().len() < n {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "writes did not resume"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_acked(30).await;
    cluster.pg_ctl("stop").await;
    eventually_ready(&client, &server, 503).await;
    let during = acknowledged.lock().unwrap().len();
    cluster.pg_ctl("start").await;
    eventually_ready(&client, &server, 200).await;
    wait_acked(during + 30).await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }

    let acked: Vec<String> = acknowledged.lock().unwrap().clone();
    let users = list_all(&client, &server, &key, "/v1/users").await;
    let stored: HashSet<String> = users
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect();
    for id in &acked {
        assert!(stored.contains(id), "acknowledged user {id} is gone");
    }
    // Every acknowledged user's user.created reaches the endpoint (at least once).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let delivered: HashSet<String> = rx
            .received("/restart")
            .iter()
            .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .map(|b| {
                b["data"]["user"]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        let missing = acked.iter().filter(|id| !delivered.contains(*id)).count();
        if missing == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} acknowledged users never delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const PRIVATE: (&str, &str) = ("ACCOMMADOR_ALLOW_PRIVATE_TARGETS", "true");

/// Creates an endpoint for `url` through `server`; its ID.
async fn create_endpoint(client: &Client, server: &Server, key: &str, url: &str) -> String {
    create_endpoint_with(client, server, key, json!({ "url": url })).await
}

/// Creates an endpoint from `body` through `server`; its ID.
async fn create_endpoint_with(client: &Client, server: &Server, key: &str, body: Value) -> String {
    let r = client
        .post(server.url("/v1/endpoints"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn create_users(client: &Client, servers: &[&Server], key: &str, n: usize, tag: &str) {
    let urls: Vec<String> = servers.iter().map(|s| s.url("/v1/users")).collect();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (client, key, urls, tag) =
            (client.clone(), key.to_owned(), urls.clone(), tag.to_owned());
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(8) {
                let r = client
                    .post(&urls[i % urls.len()])
                    .bearer_auth(&key)
                    .json(&json!({ "email": format!("{tag}{i}@example.com") }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::CREATED);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Waits until the receiver has seen `n` distinct deliveries (path × webhook-id).
async fn wait_distinct(rx: &receiver::Receiver, n: usize, limit: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let all = rx.all();
        let distinct: HashSet<(String, String)> =
            all.iter().map(|r| (r.path.clone(), r.id.clone())).collect();
        if distinct.len() >= n {
            return all.len();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} deliveries arrived within {limit:?}",
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn three_instances_share_the_work_without_ever_attempting_one_delivery_twice_at_once() {
    if !postgres_configured() {
        return;
    }
    // ACCOMMADOR_TEST_FULL=1: the 5,000 events; CI runs a tenth of it.
    let events = if std::env::var("ACCOMMADOR_TEST_FULL").is_ok() {
        5000
    } else {
        250
    };
    let db = TestDb::new().await;
    let rx = receiver::Receiver::start().await;
    let servers = [
        Server::spawn(&db.url, &["serve"], &[PRIVATE]).await,
        Server::spawn(&db.url, &["serve"], &[PRIVATE]).await,
        Server::spawn(&db.url, &["serve"], &[PRIVATE]).await,
    ];
    let client = Client::new();
    let key = create_org(&client, &servers[0]).await;
    let mut endpoints = Vec::new();
    for i in 0..20 {
        endpoints.push(
            create_endpoint(&client, &servers[i % 3], &key, &rx.url(&format!("/e{i}"))).await,
        );
    }
    let refs: Vec<&Server> = servers.iter().collect();
    create_users(&client, &refs, &key, events, "u").await;
    let expected = events * 20;
    let total = wait_distinct(&rx, expected, Duration::from_secs(240)).await;
    assert_eq!(
        rx.overlaps(),
        0,
        "two workers attempted one delivery at once"
    );
    // Delivery is at least once: a lease that ran out while its holder was slow may be taken
    // again. Report every repeat, and fail above a small stated bound (0.5 %).
    let repeats = total - expected;
    if repeats > 0 {
        eprintln!("{repeats} of {expected} deliveries were sent more than once");
    }
    let bound = expected / 200;
    assert!(
        repeats <= bound,
        "{repeats} repeated sends, more than the bound of {bound}"
    );

    // Every event reached every endpoint, and each delivery's log says so: it ends succeeded,
    // with one numbered attempt per send. Acknowledgements are written in batches, so the
    // log is polled until it has caught up with the receipts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut logged_attempts = 0;
    for endpoint in &endpoints {
        loop {
            let ds = list_all(
                &client,
                &servers[1],
                &key,
                &format!("/v1/deliveries?endpoint_id={endpoint}"),
            )
            .await;
            assert_eq!(ds.len(), events, "deliveries of {endpoint}");
            let pending = ds.iter().filter(|d| d["status"] != "succeeded").count();
            if pending == 0 {
                for d in &ds {
                    let n = d["attempt_count"].as_u64().unwrap();
                    assert!(n >= 1, "{d}");
                    logged_attempts += n as usize;
                }
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{pending} deliveries of {endpoint} never recorded their success"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        logged_attempts <= total,
        "{logged_attempts} attempts logged for {total} sends"
    );
    assert!(
        logged_attempts - expected <= bound,
        "{} repeated attempts logged, more than the bound of {bound}",
        logged_attempts - expected
    );
    let sample = list_all(
        &client,
        &servers[2],
        &key,
        &format!("/v1/deliveries?endpoint_id={}", endpoints[0]),
    )
    .await;
    for d in sample.iter().take(5) {
        let id = d["id"].as_str().unwrap();
        let attempts: Value = client
            .get(servers[2].url(&format!("/v1/deliveries/{id}/attempts")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let numbers: Vec<u64> = attempts["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["number"].as_u64().unwrap())
            .collect();
        let n = d["attempt_count"].as_u64().unwrap();
        assert_eq!(numbers, (1..=n).collect::<Vec<_>>(), "{attempts}");
    }
}

#[tokio::test]
async fn options_in_the_database_url_apply_to_every_connection() {
    if !postgres_configured() {
        return;
    }
    // The URL puts the tables in their own schema. The API's connections and the delivery
    // side's own pool (which adds planner options of its own) must both use it: otherwise
    // users are created but their events are never numbered or delivered.
    let db = TestDb::new().await;
    db.execute("", "CREATE SCHEMA accommador_app").await;
    let url = format!("{}?options=-c%20search_path%3Daccommador_app", db.url);
    let rx = receiver::Receiver::start().await;
    let server = Server::spawn(&url, &["serve"], &[PRIVATE]).await;
    let client = Client::new();
    let key = create_org(&client, &server).await;
    create_endpoint(&client, &server, &key, &rx.url("/hook")).await;
    create_users(&client, &[&server], &key, 3, "schema").await;
    rx.wait_for("/hook", 3, Duration::from_secs(20)).await;
    let events = list_all(&client, &server, &key, "/v1/events").await;
    assert_eq!(events.len(), 3);
}

/// The webhook-ids of `received`.
fn ids(received: &[receiver::Received]) -> BTreeSet<String> {
    received.iter().map(|r| r.id.clone()).collect()
}

#[tokio::test]
async fn a_killed_workers_leases_are_taken_over_and_a_stopped_one_gives_them_back() {
    if !postgres_configured() {
        return;
    }
    let db = TestDb::new().await;
    let rx = receiver::Receiver::start().await;
    let api = Server::spawn(&db.url, &["serve", "--no-worker"], &[PRIVATE]).await;
    let client = Client::new();
    let key = create_org(&client, &api).await;
    create_endpoint(&client, &api, &key, &rx.url("/slow")).await;

    // SIGKILL with attempts in flight: A's four requests are never answered (the replies are
    // held far past A's timeout), so A dies holding their leases (2 × 4 s + 5 s = 13 s).
    let hold = Duration::from_secs(120);
    rx.script("/slow", vec![receiver::Reply::status(204).after(hold); 4]);
    let timeout = ("ACCOMMADOR_DELIVERY_TIMEOUT", "4s");
    let mut a = Server::spawn(&db.url, &["worker"], &[PRIVATE, timeout]).await;
    create_users(&client, &[&api], &key, 4, "k").await;
    let first = rx.wait_for("/slow", 4, Duration::from_secs(30)).await;
    a.kill().await;
    // The survivor is started after the kill, while the leases still run: nothing but its own
    // timers makes it look again when they expire.
    let _b = Server::spawn(&db.url, &["worker"], &[PRIVATE, timeout]).await;
    let all = rx.wait_for("/slow", 8, Duration::from_secs(60)).await;
    assert_eq!(ids(&all[4..8]), ids(&first), "other deliveries were sent");
    // The leases were taken no earlier than 13 s after they began, which was before the
    // first request arrived: well after 8 s from it, however slow the machine.
    let waited = all[4].at.duration_since(first[0].at);
    assert!(
        waited >= Duration::from_secs(8),
        "taken over before the lease expired ({waited:?})"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while list_all(&client, &api, &key, "/v1/deliveries?status=succeeded")
        .await
        .len()
        < 4
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the taken-over deliveries never succeeded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(_b);

    // SIGTERM: the worker gives its leases back at once; the next one need not wait for them
    // (2 × 10 s + 5 s = 25 s from when they were taken).
    rx.script("/slow", vec![receiver::Reply::status(204).after(hold); 3]);
    let long = ("ACCOMMADOR_DELIVERY_TIMEOUT", "10s");
    let mut c = Server::spawn(&db.url, &["worker"], &[PRIVATE, long]).await;
    create_users(&client, &[&api], &key, 3, "t").await;
    let all = rx.wait_for("/slow", 11, Duration::from_secs(30)).await;
    let held = all[8..11].to_vec();
    Command::new("kill")
        .args(["-TERM", &c.child.id().to_string()])
        .status()
        .unwrap();
    let status = spawn::reap(&mut c.child).await;
    assert!(
        status.success(),
        "the worker did not stop cleanly: {status}"
    );
    let _d = Server::spawn(&db.url, &["worker"], &[PRIVATE, long]).await;
    let all = rx.wait_for("/slow", 14, Duration::from_secs(30)).await;
    assert_eq!(ids(&all[11..14]), ids(&held), "other deliveries were sent");
    let waited = all[13].at.duration_since(held[0].at);
    assert!(
        waited < Duration::from_secs(20),
        "released leases were not taken at once ({waited:?})"
    );
}

#[tokio::test]
async fn a_key_still_running_on_another_instance_is_409_then_free() {
    if !postgres_configured() {
        return;
    }
    // Another instance running a request with this key holds the key's advisory lock until
    // it commits; here the test holds it, as that instance would.
    let db = TestDb::new().await;
    let server = Server::start(&db.url).await;
    let client = Client::new();
    let (org_id, key) = create_org_with_id(&client, &server).await;
    let (other, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    other
        .execute(
            "SELECT pg_advisory_lock(hashtextextended($1 || ':' || $2, 11))",
            &[&org_id, &"signup-7"],
        )
        .await
        .unwrap();
    let send = || {
        client
            .post(server.url("/v1/users"))
            .bearer_auth(&key)
            .header("idempotency-key", "signup-7")
            .json(&json!({"email": "seven@example.com"}))
            .send()
    };
    let r = send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let p: Value = r.json().await.unwrap();
    assert!(
        p["type"]
            .as_str()
            .unwrap()
            .contains("idempotency-key-in-progress"),
        "{p}"
    );
    other
        .execute(
            "SELECT pg_advisory_unlock(hashtextextended($1 || ':' || $2, 11))",
            &[&org_id, &"signup-7"],
        )
        .await
        .unwrap();
    let r = send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let users = list_all(&client, &server, &key, "/v1/users").await;
    assert_eq!(users.len(), 1);
}

/// How `server` answers `GET /v1/users` with `key`.
async fn users_status(client: &Client, server: &Server, key: &str) -> StatusCode {
    client
        .get(server.url("/v1/users"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
}

/// Polls `server` with `key` until it answers 401; how long that took from `since`.
async fn until_unauthorized(
    client: &Client,
    server: &Server,
    key: &str,
    since: std::time::Instant,
) -> Duration {
    loop {
        let status = users_status(client, server, key).await;
        if status == StatusCode::UNAUTHORIZED {
            return since.elapsed();
        }
        assert_eq!(status, StatusCode::OK);
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "still accepted after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_revoked_key_is_refused_at_once_where_revoked_and_within_5_s_on_another_instance() {
    if !postgres_configured() {
        return;
    }
    let db = TestDb::new().await;
    let (a, b) = tokio::join!(Server::start(&db.url), Server::start(&db.url));
    let client = Client::new();
    let (org, first) = create_org_with_id(&client, &a).await;
    let second: Value = client
        .post(a.url("/v1/api-keys"))
        .bearer_auth(&first)
        .json(&json!({"name": "second"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let second_key = second["api_key"].as_str().unwrap();
    // Both instances have just seen the first key authenticate: it is in both key caches.
    for server in [&a, &b] {
        assert_eq!(users_status(&client, server, &first).await, StatusCode::OK);
    }
    let keys: Value = client
        .get(a.url("/v1/api-keys"))
        .bearer_auth(second_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first_id = keys["data"][0]["id"].as_str().unwrap();
    let r = client
        .delete(a.url(&format!("/v1/api-keys/{first_id}")))
        .bearer_auth(second_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let revoked = std::time::Instant::now();
    let on_a = until_unauthorized(&client, &a, &first, revoked).await;
    assert!(on_a < Duration::from_secs(1), "A took {on_a:?}");
    let on_b = until_unauthorized(&client, &b, &first, revoked).await;
    assert!(on_b < Duration::from_secs(5), "B took {on_b:?}");

    // A deleted organization's keys likewise, on the instance that deleted it and the other.
    for server in [&a, &b] {
        assert_eq!(
            users_status(&client, server, second_key).await,
            StatusCode::OK
        );
    }
    let r = client
        .delete(a.url(&format!("/v1/organizations/{org}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let deleted = std::time::Instant::now();
    let on_a = until_unauthorized(&client, &a, second_key, deleted).await;
    assert!(on_a < Duration::from_secs(1), "A took {on_a:?}");
    let on_b = until_unauthorized(&client, &b, second_key, deleted).await;
    assert!(on_b < Duration::from_secs(5), "B took {on_b:?}");
}

#[tokio::test]
async fn a_deletion_cut_short_by_sigkill_goes_on_at_the_next_start() {
    if !postgres_configured() {
        return;
    }
    let db = TestDb::new().await;
    let mut server = Server::start(&db.url).await;
    let client = Client::new();
    let (org, _) = create_org_with_id(&client, &server).await;
    // Far more users than the deletion removes before the kill below.
    db.execute(
        "",
        &format!(
            "INSERT INTO users (id, org_id, email, email_lower, attributes, version, created_at,
                                updated_at)
             SELECT 'usr_bulk' || i, '{org}', 'u' || i || '@x.co', 'u' || i || '@x.co', '{{}}',
                    1, 0, 0
             FROM generate_series(1, 200000) AS n(i)"
        ),
    )
    .await;
    let r = client
        .delete(server.url(&format!("/v1/organizations/{org}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    server.kill().await;
    let users = format!("SELECT COUNT(*) FROM users WHERE org_id = '{org}'");
    assert!(
        db.scalar(&users).await > 0,
        "the deletion finished before the kill; nothing to resume"
    );

    let _server = Server::start(&db.url).await;
    let orgs = format!("SELECT COUNT(*) FROM organizations WHERE id = '{org}'");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while db.scalar(&users).await > 0 || db.scalar(&orgs).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the deletion did not go on"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two `serve` instances on one new database with `settings` (private targets allowed), a
/// receiver, and an organization's API key.
async fn two_instances(
    settings: &[(&str, &str)],
) -> (TestDb, receiver::Receiver, [Server; 2], Client, String) {
    let db = TestDb::new().await;
    let rx = receiver::Receiver::start().await;
    let mut envs = vec![PRIVATE];
    envs.extend_from_slice(settings);
    let servers = [
        Server::spawn(&db.url, &["serve"], &envs).await,
        Server::spawn(&db.url, &["serve"], &envs).await,
    ];
    let client = Client::new();
    let key = create_org(&client, &servers[0]).await;
    (db, rx, servers, client, key)
}

#[tokio::test]
async fn an_organizations_concurrency_cap_holds_across_instances() {
    if !postgres_configured() {
        return;
    }
    // Two instances, each allowed 2 attempts per endpoint and 4 per organization. Alone,
    // each would keep 4 of the noisy organization's attempts open, 8 in all; together they
    // keep at most 4. Each reply is held 2 s, so slots free and are taken again (here and by
    // the other instance, woken by the release) many times over.
    let (_db, rx, servers, client, noisy) = two_instances(&[
        ("ACCOMMADOR_ORG_CONCURRENCY", "4"),
        ("ACCOMMADOR_ENDPOINT_CONCURRENCY", "2"),
        ("ACCOMMADOR_DELIVERY_TIMEOUT", "10s"),
    ])
    .await;
    rx.watch("/noisy");
    let hold = receiver::Reply::status(204).after(Duration::from_secs(2));
    for i in 0..8 {
        let path = format!("/noisy{i}");
        rx.script(&path, vec![hold.clone(); 4]);
        create_endpoint(&client, &servers[i % 2], &noisy, &rx.url(&path)).await;
    }
    let refs: Vec<&Server> = servers.iter().collect();
    create_users(&client, &refs, &noisy, 4, "n").await;
    wait_distinct(&rx, 4, Duration::from_secs(10)).await;

    // Meanwhile another organization's delivery arrives promptly.
    let quiet = create_org(&client, &servers[1]).await;
    create_endpoint(&client, &servers[1], &quiet, &rx.url("/quiet")).await;
    create_users(&client, &refs[1..], &quiet, 1, "q").await;
    let answered = std::time::Instant::now();
    let got = rx.wait_for("/quiet", 1, Duration::from_secs(10)).await;
    let waited = got[0].at.saturating_duration_since(answered);
    assert!(
        waited < Duration::from_secs(3),
        "the quiet organization waited {waited:?} behind the noisy one"
    );

    // All 32 arrive: 8 rounds of 2 s at 4 at a time, with room to spare, but not if a lane
    // held back by the other instance's leases waited for them to run out (25 s each).
    let started = std::time::Instant::now();
    wait_distinct(&rx, 33, Duration::from_secs(60)).await;
    assert_eq!(
        rx.peak_open("/noisy"),
        4,
        "the organization's attempts open at once across both instances"
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "the noisy organization's deliveries took {:?}",
        started.elapsed()
    );
    assert_eq!(
        rx.overlaps(),
        0,
        "two instances attempted one delivery at once"
    );
}

/// Transactions committed in the test's database so far (as its statistics say).
async fn commits(db: &TestDb) -> i64 {
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn an_instance_waits_for_a_release_instead_of_polling_a_saturated_endpoint() {
    if !postgres_configured() {
        return;
    }
    // One attempt at a time per endpoint. The first instance to lease takes the first
    // delivery and one ahead; the other two are due, but the other instance may not lease
    // them while those leases run. It used to look again every 20 ms (a leasing transaction
    // each time, 50 a second); now it waits until a lease is given up.
    let (db, rx, servers, client, key) = two_instances(&[
        ("ACCOMMADOR_ENDPOINT_CONCURRENCY", "1"),
        ("ACCOMMADOR_DELIVERY_TIMEOUT", "30s"),
    ])
    .await;
    let held = receiver::Reply::status(204).after(Duration::from_secs(8));
    rx.script("/busy", vec![held]);
    create_endpoint(&client, &servers[0], &key, &rx.url("/busy")).await;
    // What the two instances commit in four seconds with nothing to deliver (their periodic
    // work). Statistics reach the shared view within a second of a commit: each count waits
    // for the ones before it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = commits(&db).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let idle = commits(&db).await - before;
    let refs: Vec<&Server> = servers.iter().collect();
    create_users(&client, &refs, &key, 4, "b").await;
    rx.wait_for("/busy", 1, Duration::from_secs(10)).await;

    // The same four seconds while the first attempt is held: polling would add about 200.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = commits(&db).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = commits(&db).await - before;
    assert!(
        during < idle + 80,
        "{during} transactions in 4 s while the endpoint was saturated, {idle} when idle"
    );
    assert_eq!(rx.received("/busy").len(), 1, "the bound of one was broken");

    // Once the first attempt ends, the rest follow one at a time.
    wait_distinct(&rx, 4, Duration::from_secs(20)).await;
    assert_eq!(rx.overlaps(), 0);
}
