//! The server under test: the `accommador` binary run as a child process
//! (`serve --listen 127.0.0.1:<free port> --database <url> [--no-worker]`), allowed to deliver
//! to loopback, with a random admin token; optionally pinned to CPUs with `taskset`. Its
//! stdout and stderr go to a log file whose tail is quoted if it does not come up.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::procfs::{self, CpuTime, Memory};

/// How to start servers; the same for every scenario of a run.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub bin: PathBuf,
    /// `taskset -c` CPU list for the server.
    pub cpus: Option<String>,
    /// Extra environment (e.g. `ACCOMMADOR_ENDPOINT_CONCURRENCY=32`).
    pub env: Vec<(String, String)>,
    pub log_dir: PathBuf,
    pub clock_ticks: u64,
}

/// A running server. Dropping it kills the process.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub pid: u32,
    pub base_url: String,
    pub admin_token: String,
    pub log_path: PathBuf,
    pub spawned_at: Instant,
    pub ready_at: Instant,
    clock_ticks: u64,
}

fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// 128 random bits in hex, from the operating system.
pub fn random_token() -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn log_tail(path: &PathBuf) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(5)..];
    if tail.is_empty() {
        "(nothing on stderr)".into()
    } else {
        tail.join(" | ")
    }
}

impl Launcher {
    /// Starts a server on `database` and waits until `/readyz` answers 200 (30 s at most).
    pub async fn start(
        &self,
        label: &str,
        database: &str,
        no_worker: bool,
    ) -> anyhow::Result<Server> {
        let port = free_port()?;
        let admin_token = random_token()?;
        let log_path = self.log_dir.join(format!("server-{label}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = match &self.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--database")
            .arg(database);
        if no_worker {
            cmd.arg("--no-worker");
        }
        cmd.env("ACCOMMADOR_ALLOW_PRIVATE_TARGETS", "true")
            .env("ACCOMMADOR_ADMIN_TOKEN", &admin_token)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let spawned_at = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let pid = child.id().context("the server has no pid")?;
        let base_url = format!("http://127.0.0.1:{port}");
        let http = crate::api::http_client(1)?;
        let deadline = spawned_at + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the server refused to start on {database} ({status}): {}",
                    log_tail(&log_path)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the server was not ready within 30 s: {}",
                    log_tail(&log_path)
                );
            }
            let ready = http
                .get(format!("{base_url}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Server {
            child,
            pid,
            base_url,
            admin_token,
            log_path,
            spawned_at,
            ready_at: Instant::now(),
            clock_ticks: self.clock_ticks,
        })
    }
}

impl Server {
    pub fn cpu(&self) -> CpuTime {
        procfs::process_cpu(self.pid, self.clock_ticks).unwrap_or_default()
    }

    pub fn threads_cpu(&self) -> std::collections::BTreeMap<String, CpuTime> {
        procfs::threads_cpu(self.pid, self.clock_ticks)
    }

    pub fn memory(&self) -> Memory {
        procfs::memory(self.pid).unwrap_or_default()
    }

    /// SIGTERM, then up to 30 s for a graceful exit, then SIGKILL.
    pub async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.kill().await?;
                bail!("the server did not stop within 30 s of SIGTERM; killed it")
            }
        }
    }
}
