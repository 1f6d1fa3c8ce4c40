//! Starting a real `accommador` process without port races: it is told to listen on port 0,
//! and its address is read back from the line it logs once bound ("accommador is listening
//! address=…"). No port is ever chosen by the test, released, and bound later by the child.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a child may take to bind and answer `/healthz`: generous, for a loaded machine.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The address in the "accommador is listening" line of a text-format log, if it is there.
pub fn listening_address(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|l| l.contains("accommador is listening"))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("address="))
                .and_then(|a| a.parse().ok())
        })
}

/// Spawns `cmd` (which must listen on `…:0`) with stderr going to `log`, waits until it logs
/// its address and answers `/healthz` there. `Err` carries the log if it exited or never
/// became healthy (the child is then killed and reaped).
pub async fn spawn_listening(mut cmd: Command, log: &Path) -> Result<(Child, SocketAddr), String> {
    let file = std::fs::File::create(log).map_err(|e| format!("creating {log:?}: {e}"))?;
    cmd.stdout(Stdio::null()).stderr(file);
    let mut child = cmd.spawn().map_err(|e| format!("spawning: {e}"))?;
    match wait_healthy(&mut child, log).await {
        Ok(addr) => Ok((child, addr)),
        Err(why) => {
            let _ = child.kill();
            let _ = reap(&mut child).await;
            Err(format!(
                "{why}\nlog ({}):\n{}",
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            ))
        }
    }
}

async fn wait_healthy(child: &mut Child, log: &Path) -> Result<SocketAddr, String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut addr = None;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("exited with {status} before answering"));
        }
        if addr.is_none() {
            addr = listening_address(&std::fs::read_to_string(log).unwrap_or_default());
        }
        if let Some(addr) = addr
            && let Ok(r) = client.get(format!("http://{addr}/healthz")).send().await
            && r.status() == 200
        {
            return Ok(addr);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "not healthy within {READY_TIMEOUT:?} (address logged: {addr:?})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for `child` to exit without blocking the async runtime (which may host a receiver or
/// a server that the child is talking to).
pub async fn reap(child: &mut Child) -> std::process::ExitStatus {
    loop {
        if let Some(status) = child.try_wait().expect("polling a child") {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fresh log path under `dir`, unique within this test process.
pub fn log_path(dir: &Path, name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    dir.join(format!(
        "{name}-{}.log",
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A spawned `accommador serve` on port 0, killed and reaped when dropped.
pub struct Server(pub Child, pub SocketAddr);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.1)
    }

    /// `POST path` as `key` (an API key or the admin token) with a JSON body.
    pub async fn post(&self, key: &str, path: &str, body: serde_json::Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// A new organization, created with the operator's `admin` token: its API key.
    pub async fn create_org(&self, admin: &str, name: &str) -> String {
        let r = self
            .post(
                admin,
                "/v1/organizations",
                serde_json::json!({ "name": name }),
            )
            .await;
        assert_eq!(r.status(), 201, "creating organization {name}");
        let org: serde_json::Value = r.json().await.unwrap();
        org["api_key"].as_str().unwrap().to_owned()
    }

    /// `GET path` as `key`: its JSON body, which must come with a 200.
    pub async fn get_json(&self, key: &str, path: &str) -> serde_json::Value {
        let r = reqwest::Client::new()
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }
}

/// Starts `accommador serve` on SQLite file `db` with only the `ACCOMMADOR_*` settings in `env`
/// (none inherited from the test's environment), logging under `logs`.
pub async fn serve(db: &Path, logs: &Path, env: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_accommador"));
    for (k, _) in std::env::vars() {
        if k.starts_with("ACCOMMADOR_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--database")
        .arg(format!("sqlite://{}", db.display()))
        .envs(env.iter().copied());
    let (child, addr) = spawn_listening(cmd, &log_path(logs, "serve"))
        .await
        .unwrap_or_else(|e| panic!("accommador serve did not start: {e}"));
    Server(child, addr)
}
