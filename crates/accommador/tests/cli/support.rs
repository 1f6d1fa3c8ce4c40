//! Running the real `accommador` binary: one-shot commands with a bounded wait, and `serve`
//! processes that are polled until `/healthz` answers and killed when dropped.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::spawn;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_accommador");
pub(crate) const ADMIN_TOKEN: &str = "cli-test-admin-token";

/// How long a one-shot command may run before the test gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(20);

/// Names files for children's output uniquely within one test directory.
static SEQ: AtomicUsize = AtomicUsize::new(0);

fn next_seq() -> usize {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

pub(crate) fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// The binary, run in `dir`, with no inherited `ACCOMMADOR_*` setting (nor `RUST_LOG`), so the
/// host environment cannot leak into a test.
pub(crate) fn command(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir).stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("ACCOMMADOR_") || name == "RUST_LOG" {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// What a finished command left behind.
#[derive(Debug)]
pub(crate) struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Panics unless the command exited 0.
    pub fn success(self) -> Output {
        assert!(
            self.status.success(),
            "expected success, got {}\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics unless the command failed the documented way: a non-zero exit and exactly one
    /// line on stderr. Returns that line.
    pub fn one_line_failure(&self) -> String {
        assert!(
            !self.status.success(),
            "expected a failure, got {}\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        let lines: Vec<&str> = self.stderr.trim_end().lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "expected a one-line error on stderr, got:\n{}",
            self.stderr
        );
        assert!(!lines[0].trim().is_empty(), "the error line is empty");
        lines[0].to_owned()
    }
}

/// Runs `cmd` to completion (at most [`COMMAND_TIMEOUT`]), its output captured in files in
/// `dir` so a chatty child can never block on a full pipe.
pub(crate) fn run(dir: &Path, mut cmd: Command) -> Output {
    let n = next_seq();
    let out_path = dir.join(format!("cmd-{n}.stdout"));
    let err_path = dir.join(format!("cmd-{n}.stderr"));
    cmd.stdout(File::create(&out_path).expect("creating the stdout file"))
        .stderr(File::create(&err_path).expect("creating the stderr file"));
    let mut child = cmd.spawn().expect("spawning accommador");
    let status = match wait_for_exit(&mut child, COMMAND_TIMEOUT) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not exit within {COMMAND_TIMEOUT:?}\nstderr: {}",
                read_lossy(&err_path)
            );
        }
    };
    Output {
        status,
        stdout: read_lossy(&out_path),
        stderr: read_lossy(&err_path),
    }
}

/// Runs the binary with `args` in `dir`.
pub(crate) fn run_args(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = command(dir);
    cmd.args(args);
    run(dir, cmd)
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// Polls the child until it exits or `timeout` passes (`None`).
pub(crate) fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("building the HTTP client")
}

/// A running `accommador serve`; killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub(crate) struct Server {
    child: Option<Child>,
    /// Where it listens, as it logged once bound.
    pub addr: SocketAddr,
    log: PathBuf,
    pub client: reqwest::Client,
}

impl Server {
    /// `serve --listen 127.0.0.1:0 --database sqlite://<db>` with `envs`.
    pub async fn start(dir: &Path, db: &Path, envs: &[(&str, &str)]) -> Server {
        let mut cmd = command(dir);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--database")
            .arg(sqlite_url(db))
            .envs(envs.iter().copied());
        Server::spawn(dir, cmd)
            .await
            .unwrap_or_else(|log| panic!("accommador serve did not start:\n{log}"))
    }

    /// Spawns `cmd` (a `serve` command line whose listen address has port 0, however it is
    /// given) and waits until it logs the address it bound and `/healthz` answers there. `Err`
    /// carries the child's stderr if it exited or never became healthy.
    pub async fn spawn(dir: &Path, cmd: Command) -> Result<Server, String> {
        let log = dir.join(format!("serve-{}.log", next_seq()));
        let (child, addr) = spawn::spawn_listening(cmd, &log).await?;
        Ok(Server {
            child: Some(child),
            addr,
            log,
            client: http_client(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a running server").id()
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// SIGKILL and reap (idempotent).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (bounded) for the server to exit on its own and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("a running server");
        let status = wait_for_exit(child, timeout)?;
        self.child = None;
        Some(status)
    }

    /// `POST /v1/organizations` with the admin token; returns (org id, API key).
    pub async fn create_org(&self, name: &str) -> (String, String) {
        let resp = self
            .client
            .post(self.url("/v1/organizations"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .expect("POST /v1/organizations");
        assert_eq!(resp.status(), 201, "creating an organization");
        let body: Value = resp.json().await.expect("organization JSON");
        (
            body["id"].as_str().expect("org id").to_owned(),
            body["api_key"].as_str().expect("api_key").to_owned(),
        )
    }

    /// `POST /v1/users`; returns the created user.
    pub async fn create_user(&self, key: &str, email: &str) -> Value {
        let resp = self
            .client
            .post(self.url("/v1/users"))
            .bearer_auth(key)
            .json(&serde_json::json!({ "email": email }))
            .send()
            .await
            .expect("POST /v1/users");
        assert_eq!(resp.status(), 201, "creating user {email}");
        resp.json().await.expect("user JSON")
    }

    /// `GET path` with the key; returns the status and the JSON body (`Null` if none).
    pub async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        let resp = self
            .client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("response body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The `/metrics` page, as Prometheus reads it.
    pub async fn metrics(&self) -> String {
        let resp = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        resp.text().await.expect("the metrics text")
    }

    /// Every item of a list, following `next_cursor`. `path` already has a `?`.
    pub async fn list_all(&self, key: &str, path: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10_000 {
            let page_path = match &cursor {
                None => path.to_owned(),
                Some(c) => format!("{path}&after={c}"),
            };
            let (status, body) = self.get(key, &page_path).await;
            assert_eq!(status, 200, "GET {page_path}: {body}");
            let data = body["data"].as_array().expect("a list has data");
            items.extend(data.iter().cloned());
            match &body["next_cursor"] {
                Value::Null => return items,
                Value::String(next) => {
                    assert!(!data.is_empty(), "a cursor after an empty page: {body}");
                    cursor = Some(next.clone());
                }
                other => panic!("next_cursor is neither null nor a string: {other}"),
            }
        }
        panic!("{path}: the list did not end after 10,000 pages");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The port a `listen --port 0` child said it listens on ("listening on http://…", in its
/// stderr file `err`), polled for at most 60 s; panics if the child exits first. Returns the
/// whole line too.
pub(crate) async fn listen_port(child: &mut Child, err: &Path) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let said = read_lossy(err);
        if let Some(addr) = said
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http://"))
            .and_then(|a| a.parse::<SocketAddr>().ok())
        {
            return (addr.port(), said);
        }
        assert!(
            Instant::now() < deadline,
            "listen never said where it listens: {said}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "listen exited early: {said}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Polls (at most 30 s) until the file at `path` contains `text`.
pub(crate) async fn file_says(path: &Path, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !read_lossy(path).contains(text) {
        assert!(
            Instant::now() < deadline,
            "{} never said {text:?}: {}",
            path.display(),
            read_lossy(path)
        );
        tokio::time::sleep(POLL).await;
    }
}

pub(crate) const POSTGRES_ENV: &str = "ACCOMMADOR_TEST_POSTGRES_URL";

/// A database for one test: a SQLite file in `dir`, or a fresh PostgreSQL database (dropped by
/// [`Database::drop_pg`]).
pub(crate) struct Database {
    pub url: String,
    pg: Option<(tokio_postgres::Client, String)>,
}

impl Database {
    pub fn sqlite(dir: &Path) -> Database {
        Database {
            url: sqlite_url(&dir.join("cli.db")),
            pg: None,
        }
    }

    /// `None` (test skipped) without `ACCOMMADOR_TEST_POSTGRES_URL`, which CI must set.
    pub async fn postgres(tag: &str) -> Option<Database> {
        let admin = match std::env::var(POSTGRES_ENV) {
            Ok(url) if !url.is_empty() => url,
            _ => {
                assert!(
                    std::env::var("CI").unwrap_or_default().is_empty(),
                    "CI is set but {POSTGRES_ENV} is not: the PostgreSQL tests must run in CI"
                );
                eprintln!("skipped: set {POSTGRES_ENV} to run the PostgreSQL tests");
                return None;
            }
        };
        let name = format!(
            "acc_cli_{tag}_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&format!("/{name}"));
        Some(Database {
            url: url.to_string(),
            pg: Some((client, name)),
        })
    }

    pub async fn drop_pg(self) {
        if let Some((client, name)) = self.pg {
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
    }
}
