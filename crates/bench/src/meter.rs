//! Resource use over one phase: wall time; the server's CPU time (whole process and per thread
//! name), memory (peak RSS since it started, and the largest RSS sampled every 200 ms during the
//! phase), system calls, I/O bytes and context switches; the bench's own CPU time split into the
//! load driver (`bench-load` threads and the main thread) and the receivers (`bench-recv`
//! threads); and what the rest of the machine used meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::procfs::{self, CpuTime, IoCounters};
use crate::server::Server;

/// Thread-name prefix of the load driver's runtime.
pub const LOAD_THREADS: &str = "bench-load";
/// Thread-name prefix of the receivers' runtime.
pub const RECEIVER_THREADS: &str = "bench-recv";

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub wall_s: f64,
    /// Server CPU seconds over the phase (`None` without a server).
    pub server_cpu: Option<CpuTime>,
    /// Server CPU seconds per wall second: 1.0 is one core busy.
    pub server_cores: Option<f64>,
    /// Server CPU seconds by thread name (tokio workers, the SQLite writer, …).
    pub server_threads: BTreeMap<String, CpuTime>,
    /// Largest server RSS sampled during the phase, KiB.
    pub server_rss_max_kb: Option<u64>,
    /// Server `VmHWM` (peak RSS since the process started) at the end of the phase, KiB.
    pub server_peak_rss_kb: Option<u64>,
    /// Server system calls, bytes and context switches over the phase.
    pub server_io: Option<IoCounters>,
    /// The bench's load driver (and main thread), CPU seconds.
    pub bench_load_cpu_s: f64,
    /// The bench's receivers, CPU seconds.
    pub bench_receivers_cpu_s: f64,
    /// Every bench thread name, CPU seconds.
    pub bench_threads: BTreeMap<String, CpuTime>,
    /// CPU seconds the rest of the machine used meanwhile (busy time of all CPUs minus the
    /// server and the bench): other work disturbing the measurement when well above zero.
    pub other_cpu_s: Option<f64>,
    /// Seconds in which some task on the machine (the server's own fsyncs included) was
    /// stalled on storage (`/proc/pressure/io`): far above its usual value, the disk was slow.
    pub io_stall_s: Option<f64>,
}

/// The server's counters at the start of a phase.
#[derive(Debug)]
struct ServerStart {
    pid: u32,
    cpu: CpuTime,
    threads: BTreeMap<String, CpuTime>,
    io: Option<IoCounters>,
}

/// Started at the beginning of a phase, finished at its end.
#[derive(Debug)]
pub struct Meter {
    started: Instant,
    ticks: u64,
    server: Option<ServerStart>,
    bench: BTreeMap<String, CpuTime>,
    rss_max: Arc<AtomicU64>,
    stop_sampling: CancellationToken,
    machine_busy: Option<f64>,
    io_pressure: Option<f64>,
}

impl Meter {
    pub fn start(server: Option<&Server>, ticks: u64) -> Meter {
        let rss_max = Arc::new(AtomicU64::new(0));
        let stop_sampling = CancellationToken::new();
        if let Some(s) = server {
            let pid = s.pid;
            let rss_max = rss_max.clone();
            let stop = stop_sampling.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = stop.cancelled() => break,
                    }
                    if let Some(m) = procfs::memory(pid) {
                        rss_max.fetch_max(m.rss_kb, Ordering::Relaxed);
                    }
                }
            });
        }
        Meter {
            started: Instant::now(),
            ticks,
            server: server.map(|s| ServerStart {
                pid: s.pid,
                cpu: s.cpu(),
                threads: s.threads_cpu(),
                io: procfs::io(s.pid),
            }),
            bench: procfs::threads_cpu(std::process::id(), ticks),
            rss_max,
            stop_sampling,
            machine_busy: procfs::machine_busy(ticks),
            io_pressure: procfs::io_pressure(),
        }
    }

    pub fn finish(self) -> Usage {
        self.stop_sampling.cancel();
        let wall_s = self.started.elapsed().as_secs_f64();
        let bench_now = procfs::threads_cpu(std::process::id(), self.ticks);
        let bench_threads = procfs::threads_since(&bench_now, &self.bench);
        let receivers: f64 = bench_threads
            .iter()
            .filter(|(name, _)| name.starts_with(RECEIVER_THREADS))
            .map(|(_, c)| c.total())
            .sum();
        let total: f64 = bench_threads.values().map(CpuTime::total).sum();
        let (server_cpu, server_threads, memory, server_io) = match &self.server {
            Some(start) => {
                let pid = start.pid;
                let cpu = procfs::process_cpu(pid, self.ticks)
                    .unwrap_or_default()
                    .since(&start.cpu);
                let threads =
                    procfs::threads_since(&procfs::threads_cpu(pid, self.ticks), &start.threads);
                let io = match (procfs::io(pid), &start.io) {
                    (Some(now), Some(then)) => Some(now.since(then)),
                    _ => None,
                };
                (Some(cpu), threads, procfs::memory(pid), io)
            }
            None => (None, BTreeMap::new(), None, None),
        };
        let sampled = self.rss_max.load(Ordering::Relaxed);
        let other_cpu_s = match (procfs::machine_busy(self.ticks), self.machine_busy) {
            (Some(now), Some(then)) => {
                Some((now - then - total - server_cpu.map_or(0.0, |c| c.total())).max(0.0))
            }
            _ => None,
        };
        Usage {
            wall_s,
            server_cores: server_cpu.map(|c| {
                if wall_s > 0.0 {
                    c.total() / wall_s
                } else {
                    0.0
                }
            }),
            server_cpu,
            server_threads,
            server_rss_max_kb: memory.map(|m| sampled.max(m.rss_kb)),
            server_peak_rss_kb: memory.map(|m| m.peak_rss_kb),
            server_io,
            bench_load_cpu_s: total - receivers,
            bench_receivers_cpu_s: receivers,
            bench_threads,
            other_cpu_s,
            io_stall_s: match (procfs::io_pressure(), self.io_pressure) {
                (Some(now), Some(then)) => Some((now - then).max(0.0)),
                _ => None,
            },
        }
    }
}
