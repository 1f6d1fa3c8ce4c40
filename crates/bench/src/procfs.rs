//! CPU time and memory of a process and of its threads, read from Linux `/proc`; and the
//! machine's description (cores, CPU model, memory) for the report.
//!
//! CPU time per *thread name* is how the bench tells apart its own roles (load driver and
//! receivers run on separately named runtimes in one process) and how it shows, without a
//! profiler, which of the server's threads (HTTP workers, the SQLite writer, …) did the work.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

/// User and system CPU seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CpuTime {
    pub user_s: f64,
    pub system_s: f64,
}

impl CpuTime {
    pub fn total(&self) -> f64 {
        self.user_s + self.system_s
    }

    /// `self - earlier`, never below zero (a thread that exited in between loses its time).
    pub fn since(&self, earlier: &CpuTime) -> CpuTime {
        CpuTime {
            user_s: (self.user_s - earlier.user_s).max(0.0),
            system_s: (self.system_s - earlier.system_s).max(0.0),
        }
    }
}

/// The fields of `/proc/<pid>/stat` the bench reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    /// Clock ticks in user mode.
    pub utime: u64,
    /// Clock ticks in kernel mode.
    pub stime: u64,
}

/// Parses one `/proc/<pid>/stat` (or `/proc/<pid>/task/<tid>/stat`) line. The command name sits
/// in parentheses and may itself contain spaces and parentheses, so fields are counted from the
/// last `)`.
pub fn parse_stat(line: &str) -> Option<Stat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?.to_owned();
    // After ") " come fields 3 (state), 4 (ppid), … ; utime is field 14, stime 15.
    let mut rest = line.get(close + 1..)?.split_ascii_whitespace();
    let utime = rest.nth(11)?.parse().ok()?;
    let stime = rest.next()?.parse().ok()?;
    Some(Stat { comm, utime, stime })
}

/// The number after `key:` in `/proc/<pid>/status`, `/proc/<pid>/io` or `/proc/meminfo`, e.g.
/// `VmHWM` (kB), `wchar` (bytes) or `MemTotal` (kB).
pub fn parse_kb(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        if k.trim() != key {
            return None;
        }
        v.split_ascii_whitespace().next()?.parse().ok()
    })
}

/// Clock ticks per second for `/proc` CPU times (`getconf CLK_TCK`; 100 on every Linux the
/// bench is meant for, used when `getconf` is missing).
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

fn to_cpu(stat: &Stat, ticks: u64) -> CpuTime {
    CpuTime {
        user_s: stat.utime as f64 / ticks as f64,
        system_s: stat.stime as f64 / ticks as f64,
    }
}

fn stat_of(path: &Path) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(path).ok()?)
}

/// The whole process's CPU time (its exited threads included).
pub fn process_cpu(pid: u32, ticks: u64) -> Option<CpuTime> {
    stat_of(&Path::new("/proc").join(pid.to_string()).join("stat")).map(|s| to_cpu(&s, ticks))
}

/// CPU time of the process's live threads, added up by thread name.
pub fn threads_cpu(pid: u32, ticks: u64) -> BTreeMap<String, CpuTime> {
    let mut by_name: BTreeMap<String, CpuTime> = BTreeMap::new();
    let dir = Path::new("/proc").join(pid.to_string()).join("task");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return by_name;
    };
    for entry in entries.flatten() {
        if let Some(stat) = stat_of(&entry.path().join("stat")) {
            let cpu = to_cpu(&stat, ticks);
            let slot = by_name.entry(stat.comm).or_default();
            slot.user_s += cpu.user_s;
            slot.system_s += cpu.system_s;
        }
    }
    by_name
}

/// Per-name difference of two [`threads_cpu`] snapshots; names with no CPU time in between are
/// left out.
pub fn threads_since(
    now: &BTreeMap<String, CpuTime>,
    before: &BTreeMap<String, CpuTime>,
) -> BTreeMap<String, CpuTime> {
    now.iter()
        .map(|(name, cpu)| {
            let base = before.get(name).copied().unwrap_or_default();
            (name.clone(), cpu.since(&base))
        })
        .filter(|(_, cpu)| cpu.total() > 0.0)
        .collect()
}

/// Busy CPU seconds of the whole machine since boot (every state but idle and iowait), from
/// the first line of `/proc/stat`.
pub fn parse_machine_busy(proc_stat: &str, ticks: u64) -> Option<f64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle) as f64 / ticks as f64)
}

pub fn machine_busy(ticks: u64) -> Option<f64> {
    parse_machine_busy(&std::fs::read_to_string("/proc/stat").ok()?, ticks)
}

/// Seconds during which some task of the machine waited for storage, since boot: the `some`
/// line of `/proc/pressure/io` (PSI), in µs.
pub fn parse_io_pressure(psi: &str) -> Option<f64> {
    let line = psi.lines().find(|l| l.starts_with("some "))?;
    let total = line
        .split_ascii_whitespace()
        .find_map(|f| f.strip_prefix("total="))?;
    Some(total.parse::<u64>().ok()? as f64 / 1e6)
}

pub fn io_pressure() -> Option<f64> {
    parse_io_pressure(&std::fs::read_to_string("/proc/pressure/io").ok()?)
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resident memory of a process, in KiB: now and its peak (`VmHWM`) since it started.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    pub rss_kb: u64,
    pub peak_rss_kb: u64,
}

pub fn memory(pid: u32) -> Option<Memory> {
    let status =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    Some(Memory {
        rss_kb: parse_kb(&status, "VmRSS")?,
        peak_rss_kb: parse_kb(&status, "VmHWM")?,
    })
}

/// I/O and scheduling counters of a process: `/proc/<pid>/io` (whole process, exited threads
/// included) and the context switches of its live threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IoCounters {
    /// `syscr`, `syscw`: read-like and write-like system calls (files and sockets).
    pub read_syscalls: u64,
    pub write_syscalls: u64,
    /// `rchar`, `wchar`: bytes passed to those calls.
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// `write_bytes`: bytes this process caused to be written to storage.
    pub storage_bytes_written: u64,
    /// Voluntary and involuntary context switches of the live threads.
    pub context_switches: u64,
}

impl IoCounters {
    pub fn since(&self, earlier: &IoCounters) -> IoCounters {
        IoCounters {
            read_syscalls: self.read_syscalls.saturating_sub(earlier.read_syscalls),
            write_syscalls: self.write_syscalls.saturating_sub(earlier.write_syscalls),
            bytes_read: self.bytes_read.saturating_sub(earlier.bytes_read),
            bytes_written: self.bytes_written.saturating_sub(earlier.bytes_written),
            storage_bytes_written: self
                .storage_bytes_written
                .saturating_sub(earlier.storage_bytes_written),
            context_switches: self
                .context_switches
                .saturating_sub(earlier.context_switches),
        }
    }
}

pub fn parse_io(io: &str) -> Option<IoCounters> {
    Some(IoCounters {
        read_syscalls: parse_kb(io, "syscr")?,
        write_syscalls: parse_kb(io, "syscw")?,
        bytes_read: parse_kb(io, "rchar")?,
        bytes_written: parse_kb(io, "wchar")?,
        storage_bytes_written: parse_kb(io, "write_bytes")?,
        context_switches: 0,
    })
}

pub fn io(pid: u32) -> Option<IoCounters> {
    let proc = Path::new("/proc").join(pid.to_string());
    let mut counters = parse_io(&std::fs::read_to_string(proc.join("io")).ok()?)?;
    if let Ok(tasks) = std::fs::read_dir(proc.join("task")) {
        for task in tasks.flatten() {
            if let Ok(status) = std::fs::read_to_string(task.path().join("status")) {
                counters.context_switches += parse_kb(&status, "voluntary_ctxt_switches")
                    .unwrap_or(0)
                    + parse_kb(&status, "nonvoluntary_ctxt_switches").unwrap_or(0);
            }
        }
    }
    Some(counters)
}

/// What the numbers were measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_kb: u64,
    pub kernel: String,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        mem_total_kb: parse_kb(&meminfo, "MemTotal").unwrap_or(0),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (tokio (w) 1) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 0 0 20 0 9 0 100 200000 300 18446744073709551615";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.comm, "tokio (w) 1");
        assert_eq!((stat.utime, stat.stime), (250, 75));
        let cpu = to_cpu(&stat, 100);
        assert!((cpu.total() - 3.25).abs() < 1e-9);
    }

    #[test]
    fn io_counters() {
        let io = "rchar: 1000\nwchar: 2000\nsyscr: 10\nsyscw: 20\nread_bytes: 0\n\
                  write_bytes: 4096\ncancelled_write_bytes: 0\n";
        let c = parse_io(io).unwrap();
        assert_eq!((c.read_syscalls, c.write_syscalls), (10, 20));
        assert_eq!(
            (c.bytes_read, c.bytes_written, c.storage_bytes_written),
            (1000, 2000, 4096)
        );
        let later = IoCounters {
            write_syscalls: 25,
            ..c
        };
        assert_eq!(later.since(&c).write_syscalls, 5);
    }

    #[test]
    fn io_pressure_total() {
        let psi = "some avg10=7.22 avg60=11.30 avg300=11.15 total=192854711\n\
                   full avg10=3.05 avg60=7.29 avg300=7.64 total=106641466\n";
        assert_eq!(parse_io_pressure(psi), Some(192.854711));
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 10 50 1000 20 5 5 0 0 0\ncpu0 50 5 25 500 10 2 3 0 0 0\n";
        assert_eq!(parse_machine_busy(stat, 100), Some(1.7));
    }

    #[test]
    fn kb_values_are_found_by_key() {
        let status = "Name:\taccommador\nVmHWM:\t   51234 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(parse_kb(status, "VmHWM"), Some(51234));
        assert_eq!(parse_kb(status, "VmRSS"), Some(40000));
        assert_eq!(parse_kb(status, "VmSwap"), None);
    }

    #[test]
    fn thread_deltas_drop_idle_names() {
        let before = BTreeMap::from([
            (
                "a".to_owned(),
                CpuTime {
                    user_s: 1.0,
                    system_s: 0.5,
                },
            ),
            (
                "b".to_owned(),
                CpuTime {
                    user_s: 2.0,
                    system_s: 0.0,
                },
            ),
        ]);
        let now = BTreeMap::from([
            (
                "a".to_owned(),
                CpuTime {
                    user_s: 1.5,
                    system_s: 0.5,
                },
            ),
            (
                "b".to_owned(),
                CpuTime {
                    user_s: 2.0,
                    system_s: 0.0,
                },
            ),
            (
                "c".to_owned(),
                CpuTime {
                    user_s: 0.25,
                    system_s: 0.0,
                },
            ),
        ]);
        let delta = threads_since(&now, &before);
        assert_eq!(delta.len(), 2);
        assert!((delta["a"].total() - 0.5).abs() < 1e-9);
        assert!((delta["c"].total() - 0.25).abs() < 1e-9);
    }
}
