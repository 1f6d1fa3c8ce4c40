//! The results of a run: the JSON document, the comparison with the targets, the
//! correctness verdict (losses, signature failures), and the human summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::check::{ReceiptTally, Tally};
use crate::meter::Usage;
use crate::procfs::{CpuTime, Machine};
use crate::receivers::Counts;
use crate::scenarios::{
    Backlog, Ceiling, Fanout, Isolation, LatencyScenario, Noisy, OrderingScenario, Purge,
    SlowClients, Sustained,
};
use crate::stats::{Goal, LatencySummary, TargetCheck, check, fmt_num};

#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub ceiling: Option<Ceiling>,
    pub sustained: Option<Sustained>,
    pub latency: Option<LatencyScenario>,
    pub isolation: Option<Isolation>,
    pub fanout: Option<Fanout>,
    pub backlog: Option<Backlog>,
    pub purge: Option<Purge>,
    pub ordering: Option<OrderingScenario>,
    pub slow_clients: Option<SlowClients>,
    pub rate_limit: Option<crate::scenarios::RateLimit>,
    pub noisy: Option<Noisy>,
    /// Scenarios that could not run, and why.
    pub errors: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct Correctness {
    /// Nothing lost, no signature failed, no malformed delivery.
    pub ok: bool,
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub tool: String,
    pub started_at: String,
    pub command: Vec<String>,
    pub machine: Machine,
    pub server_bin: String,
    pub database: String,
    pub pin: Option<String>,
    pub server_env: Vec<String>,
    pub connections: usize,
    /// 1-minute load average when the run started (other work on the machine shows here).
    pub load_average_at_start: Option<f64>,
    pub results: Results,
    pub targets: Vec<TargetCheck>,
    pub correctness: Correctness,
}

const MIB: f64 = 1024.0;

/// The targets (2 cores, SQLite, durable), measured by this run.
pub fn targets(r: &Results, postgres: bool) -> Vec<TargetCheck> {
    let mut t = Vec::new();
    let sustained = r.sustained.as_ref().map(|s| s.end_to_end_per_s);
    if postgres {
        t.push(check(
            "PostgreSQL: sustained ≥ 2,000 events/s",
            Goal::AtLeast(2000.0),
            "events/s",
            sustained,
            None,
        ));
    } else {
        t.push(check(
            "sustained ≥ 5,000 events/s end to end (stretch 7,500)",
            Goal::AtLeast(5000.0),
            "events/s",
            sustained,
            Some(7500.0),
        ));
    }
    let at_1000 = r
        .latency
        .as_ref()
        .and_then(|l| l.runs.iter().find(|run| (run.rate - 1000.0).abs() < 0.5))
        .and_then(|run| run.latency.clone());
    t.push(check(
        "at 1,000 events/s: p50 ≤ 2 ms (2xx → receipt)",
        Goal::AtMost(2.0),
        "ms",
        at_1000.as_ref().map(|l| l.p50_ms),
        None,
    ));
    t.push(check(
        "at 1,000 events/s: p99 ≤ 5 ms (2xx → receipt)",
        Goal::AtMost(5.0),
        "ms",
        at_1000.as_ref().map(|l| l.p99_ms),
        None,
    ));
    if let Some(s) = &r.sustained {
        t.push(check(
            "stricter reading: delivered while the load runs ≥ 5,000 events/s",
            Goal::AtLeast(5000.0),
            "events/s",
            Some(s.delivered_in_window_per_s),
            None,
        ));
        t.push(check(
            format!(
                "memory bounded at {} client connections (peak RSS under full load ≤ 256 MiB)",
                s.connections
            ),
            Goal::AtMost(256.0),
            "MiB",
            s.usage.server_peak_rss_kb.map(|k| k as f64 / MIB),
            None,
        ));
    }
    let fan_10k = r
        .fanout
        .as_ref()
        .and_then(|f| f.runs.iter().find(|run| run.endpoints == 10_000))
        .and_then(|run| run.to_last_ms_worst);
    t.push(check(
        "fan-out to 10,000 endpoints: last receipt ≤ 2 s (worst event)",
        Goal::AtMost(2000.0),
        "ms",
        fan_10k,
        None,
    ));
    let (drain_label, rss_label) = match &r.backlog {
        Some(b) if b.events != 1_000_000 => (
            format!(
                "backlog drains at ≥ 5,000/s (target for 1,000,000; measured with {})",
                b.events
            ),
            format!(
                "backlog drain peak RSS ≤ 256 MiB (target for 1,000,000; measured with {})",
                b.events
            ),
        ),
        _ => (
            "backlog of 1,000,000 drains at ≥ 5,000/s".to_owned(),
            "backlog of 1,000,000: peak RSS ≤ 256 MiB".to_owned(),
        ),
    };
    t.push(check(
        drain_label,
        Goal::AtLeast(5000.0),
        "events/s",
        r.backlog.as_ref().map(|b| b.drain_per_s),
        None,
    ));
    t.push(check(
        rss_label,
        Goal::AtMost(256.0),
        "MiB",
        r.backlog
            .as_ref()
            .and_then(|b| b.server_peak_rss_kb)
            .map(|k| k as f64 / MIB),
        None,
    ));
    t.push(check(
        "isolation: healthy p99 ≤ 2× baseline while one endpoint hangs",
        Goal::AtMost(2.0),
        "×",
        r.isolation.as_ref().and_then(|i| i.p99_ratio),
        None,
    ));
    let fraction = match (&r.sustained, &r.ceiling) {
        (Some(s), Some(c)) if c.requests_per_s > 0.0 => {
            Some(s.end_to_end_per_s / c.requests_per_s * 100.0)
        }
        _ => None,
    };
    t.push(check(
        "end to end ≥ 12.5 % of the ceiling (stretch 18 %)",
        Goal::AtLeast(12.5),
        "%",
        fraction,
        Some(18.0),
    ));
    if let Some(p) = &r.purge {
        purge_targets(p, &mut t);
    }
    if let Some(o) = &r.ordering {
        t.push(check(
            "per_user ordering, 1,000 users: end to end ≥ 80 % of unordered",
            Goal::AtLeast(80.0),
            "%",
            o.throughput_ratio.map(|r| r * 100.0),
            None,
        ));
        t.push(check(
            "one user's receiver failing: the others' p99 ≤ 1.2× unordered",
            Goal::AtMost(1.2),
            "×",
            o.p99_ratio,
            None,
        ));
    }
    if let Some(s) = &r.slow_clients {
        t.push(check(
            format!(
                "API p99 beside {} slow connections ≤ 2× without them",
                s.slow_connections
            ),
            Goal::AtMost(2.0),
            "×",
            s.p99_ratio,
            None,
        ));
    }
    if let Some(r) = &r.rate_limit {
        for run in &r.runs {
            t.push(check(
                format!(
                    "rate_limit {}/s: busiest 1 s window ≤ 110 % of N",
                    run.limit
                ),
                Goal::AtMost(110.0),
                "%",
                Some(run.busiest_ratio * 100.0),
                None,
            ));
            t.push(check(
                format!("rate_limit {}/s: achieved rate ≥ 90 % of N", run.limit),
                Goal::AtLeast(90.0),
                "%",
                Some(run.achieved_ratio * 100.0),
                None,
            ));
        }
    }
    if let Some(n) = &r.noisy {
        noisy_targets(n, &mut t);
    }
    if !postgres {
        t.push(TargetCheck {
            target: "PostgreSQL: sustained ≥ 2,000 events/s".into(),
            goal: Goal::AtLeast(2000.0),
            unit: "events/s",
            measured: None,
            met: None,
            verdict: "not measured in this run (needs --database postgres://…)".into(),
        });
    }
    t
}

/// Issue 12's targets, measured by the purge scenario (listed only when it ran).
fn purge_targets(p: &Purge, t: &mut Vec<TargetCheck>) {
    // Not caught up: what it purged before the load stopped.
    let rows = p
        .purged_at_catch_up
        .or(p.purged_at_end)
        .map_or(0, |c| c.rows());
    t.push(check(
        "purge beside a steady load: API p99 ≤ 2× the same load without purge",
        Goal::AtMost(2.0),
        "×",
        p.p99_ratio,
        None,
    ));
    let label = if (900_000..=1_100_000).contains(&rows) {
        "purge of 1,000,000 rows: writer paused ≤ 50 ms at a time".to_owned()
    } else {
        format!("purge: writer paused ≤ 50 ms at a time (target for 1,000,000 rows; purged {rows})")
    };
    t.push(check(
        format!("{label} (steps over 50 ms, measured by the server)"),
        Goal::AtMost(0.0),
        "steps",
        p.purge_steps_over_50ms.map(|n| n as f64),
        None,
    ));
    if let Some(f) = &p.file {
        t.push(check(
            "SQLite: file (db + WAL) stops growing once the purge has caught up (tail growth)",
            Goal::AtMost(0.0),
            "KiB",
            f.tail_growth_bytes.map(|b| b as f64 / 1024.0),
            None,
        ));
    }
}

/// Issue 11's targets, measured by the noisy-neighbour scenario (listed only when it ran).
fn noisy_targets(n: &Noisy, t: &mut Vec<TargetCheck>) {
    t.push(check(
        "noisy neighbour: B's p99 (2xx → receipt) ≤ 2× its baseline beside A's hanging endpoints and delete",
        Goal::AtMost(2.0),
        "×",
        n.p99_ratio,
        None,
    ));
    let backlog = n.delete.as_ref().map_or(0, |d| d.backlog);
    let label = if backlog == 100_000 {
        "noisy neighbour: B's POST /v1/users p99 ≤ 50 ms while a 100,000 backlog is deleted"
            .to_owned()
    } else {
        format!(
            "noisy neighbour: B's POST /v1/users p99 ≤ 50 ms while the backlog is deleted (target for 100,000; measured with {backlog})"
        )
    };
    t.push(check(
        label,
        Goal::AtMost(50.0),
        "ms",
        n.delete
            .as_ref()
            .and_then(|d| d.b_api_latency.as_ref())
            .map(|l| l.p99_ms),
        None,
    ));
}

fn receipt_problems(scenario: &str, t: &ReceiptTally, problems: &mut Vec<String>) {
    if t.lost > 0 {
        problems.push(format!(
            "{scenario}: {} of {} acknowledged users' deliveries never arrived",
            t.lost, t.expected
        ));
    }
}

fn tally_problems(scenario: &str, t: &Tally, problems: &mut Vec<String>) {
    if t.acked_without_event > 0 {
        problems.push(format!(
            "{scenario}: {} acknowledged users have no user.created event",
            t.acked_without_event
        ));
    }
    if t.lost > 0 {
        problems.push(format!(
            "{scenario}: {} of {} deliveries never arrived",
            t.lost, t.expected
        ));
    }
    if t.unexpected > 0 {
        problems.push(format!(
            "{scenario}: {} deliveries of events not in the outbox",
            t.unexpected
        ));
    }
}

fn receiver_problems(
    scenario: &str,
    c: &Counts,
    first_bad: Option<&String>,
    problems: &mut Vec<String>,
) {
    if c.bad_signatures > 0 {
        problems.push(format!(
            "{scenario}: {} requests failed signature verification (first: {})",
            c.bad_signatures,
            first_bad.map_or("?", String::as_str)
        ));
    }
    if c.bad_bodies > 0 {
        problems.push(format!(
            "{scenario}: {} deliveries whose body is not an event with the webhook-id",
            c.bad_bodies
        ));
    }
    if c.unknown_paths > 0 {
        problems.push(format!(
            "{scenario}: {} requests to unknown receiver paths",
            c.unknown_paths
        ));
    }
}

pub fn correctness(r: &Results) -> Correctness {
    let mut p = Vec::new();
    if let Some(c) = &r.ceiling {
        receiver_problems("ceiling", &c.receivers, None, &mut p);
    }
    if let Some(s) = &r.sustained {
        tally_problems("sustained", &s.tally, &mut p);
        receiver_problems(
            "sustained",
            &s.receivers,
            s.first_bad_signature.as_ref(),
            &mut p,
        );
    }
    if let Some(l) = &r.latency {
        for run in &l.runs {
            tally_problems(&format!("latency {}/s", run.rate), &run.tally, &mut p);
        }
        receiver_problems(
            "latency",
            &l.receivers,
            l.first_bad_signature.as_ref(),
            &mut p,
        );
    }
    if let Some(i) = &r.isolation {
        tally_problems("isolation baseline", &i.baseline.tally, &mut p);
        tally_problems("isolation with hanging", &i.with_hanging.tally, &mut p);
        receiver_problems(
            "isolation",
            &i.receivers,
            i.first_bad_signature.as_ref(),
            &mut p,
        );
    }
    if let Some(f) = &r.fanout {
        for run in &f.runs {
            tally_problems(&format!("fan-out {}", run.endpoints), &run.tally, &mut p);
        }
        receiver_problems(
            "fan-out",
            &f.receivers,
            f.first_bad_signature.as_ref(),
            &mut p,
        );
    }
    if let Some(b) = &r.backlog {
        tally_problems("backlog", &b.tally, &mut p);
        receiver_problems(
            "backlog",
            &b.receivers,
            b.first_bad_signature.as_ref(),
            &mut p,
        );
    }
    if let Some(pu) = &r.purge {
        tally_problems("purge build and baseline", &pu.before_restart, &mut p);
        receipt_problems("purge", &pu.delivered, &mut p);
        receiver_problems(
            "purge",
            &pu.receivers,
            pu.first_bad_signature.as_ref(),
            &mut p,
        );
    }
    if let Some(n) = &r.noisy {
        tally_problems("noisy neighbour (organization B)", &n.tally, &mut p);
        receiver_problems(
            "noisy neighbour",
            &n.receivers,
            n.first_bad_signature.as_ref(),
            &mut p,
        );
    }
    Correctness {
        ok: p.is_empty(),
        problems: p,
    }
}

// ---------------------------------------------------------------------------------------------
// human summary

fn lat(l: &Option<LatencySummary>) -> String {
    match l {
        None => "no samples".into(),
        Some(l) => format!(
            "p50 {} · p95 {} · p99 {} · max {} ms (n={})",
            fmt_num(l.p50_ms),
            fmt_num(l.p95_ms),
            fmt_num(l.p99_ms),
            fmt_num(l.max_ms),
            l.count
        ),
    }
}

fn tally(t: &Tally, c: Option<&Counts>) -> String {
    let mut s = format!(
        "{}/{} delivered, {} lost, {} duplicates",
        t.delivered, t.expected, t.lost, t.duplicates
    );
    if t.acked_without_event > 0 || t.unexpected > 0 || t.events_without_ack > 0 {
        let _ = write!(
            s,
            ", {} acked without event, {} events without ack, {} unexpected",
            t.acked_without_event, t.events_without_ack, t.unexpected
        );
    }
    if let Some(c) = c {
        let _ = write!(s, ", {} bad signatures", c.bad_signatures);
    }
    s
}

fn mib(kb: Option<u64>) -> String {
    kb.map_or("?".into(), |k| format!("{} MiB", fmt_num(k as f64 / MIB)))
}

fn threads(map: &BTreeMap<String, CpuTime>) -> String {
    let mut v: Vec<(&String, f64)> = map.iter().map(|(k, c)| (k, c.total())).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.iter()
        .take(6)
        .map(|(k, s)| format!("{k} {}s", fmt_num(*s)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn usage(u: &Usage) -> String {
    let mut s = String::new();
    if let (Some(cpu), Some(cores)) = (u.server_cpu, u.server_cores) {
        let _ = write!(
            s,
            "server CPU {}s ({} cores; user {} / sys {}), RSS max {}, peak {}; ",
            fmt_num(cpu.total()),
            fmt_num(cores),
            fmt_num(cpu.user_s),
            fmt_num(cpu.system_s),
            mib(u.server_rss_max_kb),
            mib(u.server_peak_rss_kb),
        );
    }
    let _ = write!(
        s,
        "bench load {}s, receivers {}s, other processes {}s CPU over {}s; I/O stall {}s",
        fmt_num(u.bench_load_cpu_s),
        fmt_num(u.bench_receivers_cpu_s),
        u.other_cpu_s.map_or("?".into(), fmt_num),
        fmt_num(u.wall_s),
        u.io_stall_s.map_or("?".into(), fmt_num)
    );
    s
}

/// The server's system calls, bytes and context switches per event.
fn per_event_io(u: &Usage, events: u64) -> String {
    let (Some(io), true) = (u.server_io, events > 0) else {
        return "?".into();
    };
    let per = |v: u64| fmt_num(v as f64 / events as f64);
    format!(
        "{} write + {} read syscalls, {} KiB passed to writes, {} KiB to storage, {} context switches",
        per(io.write_syscalls),
        per(io.read_syscalls),
        fmt_num(io.bytes_written as f64 / 1024.0 / events as f64),
        fmt_num(io.storage_bytes_written as f64 / 1024.0 / events as f64),
        per(io.context_switches)
    )
}

fn refused(l: &crate::scenarios::LoadSummary) -> String {
    if l.refused.is_empty() && l.transport_errors == 0 {
        return String::new();
    }
    let codes: Vec<String> = l.refused.iter().map(|(c, n)| format!("{n}×{c}")).collect();
    format!(
        "; NOT 2xx: {} {} transport errors (first: {})",
        codes.join(" "),
        l.transport_errors,
        l.first_error.as_deref().unwrap_or("?")
    )
}

fn ordering_human(s: &OrderingScenario, o: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        o,
        "8 ordering   {} users, one endpoint, {} connections, {} s per phase",
        s.users, s.connections, s.seconds
    );
    for p in [
        &s.none,
        &s.per_user,
        &s.none_steady,
        &s.per_user_one_blocked,
    ] {
        let lat = p.latency.as_ref().map_or("no receipts".to_owned(), |l| {
            format!(
                "p50 {} ms, p99 {} ms, max {} ms",
                fmt_num(l.p50_ms),
                fmt_num(l.p99_ms),
                fmt_num(l.max_ms)
            )
        });
        let _ = writeln!(
            o,
            "             {:<8} {:<9} {} PATCHes ({}/s), {} deliveries{}: end to end {}/s; {}{}",
            p.ordering,
            p.rate.map_or("flat out".to_owned(), |r| format!("{r}/s")),
            p.load.ok,
            fmt_num(p.load.ok_per_s),
            p.expected,
            if p.drained { "" } else { " (not drained)" },
            fmt_num(p.end_to_end_per_s),
            lat,
            if p.refused > 0 {
                format!("; {} refused for the failing user", p.refused)
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(
        o,
        "             per_user ÷ none: {} (throughput); failing user's neighbours' p99 ÷ unordered: {}",
        s.throughput_ratio
            .map_or("?".into(), |r| format!("{} %", fmt_num(r * 100.0))),
        s.p99_ratio
            .map_or("?".into(), |r| format!("{}×", fmt_num(r)))
    );
}

fn slow_clients_human(s: &SlowClients, o: &mut String) {
    let _ = writeln!(
        o,
        "9 slow-clients {} users/s: alone {} ({} ok, refused {:?}, transport errors {})",
        fmt_num(s.rate),
        lat(&s.baseline.api_latency),
        s.baseline.ok,
        s.baseline.refused,
        s.baseline.transport_errors
    );
    let _ = writeln!(
        o,
        "             beside {} slow connections ({} failed to connect): {} ({} ok, refused {:?}, \
         transport errors {}); p99 ratio {}",
        s.slow_connections,
        s.slow_connect_failures,
        lat(&s.with_slow_clients.api_latency),
        s.with_slow_clients.ok,
        s.with_slow_clients.refused,
        s.with_slow_clients.transport_errors,
        s.p99_ratio.map_or("-".into(), |r| format!("{r:.2}×"))
    );
    let _ = writeln!(
        o,
        "             closed by the server's deadlines by the end: {}; server RSS {} MiB before, \
         {} MiB beside them (peak {} MiB)",
        s.closed_by_server,
        s.memory_before.rss_kb / 1024,
        s.memory_with_slow_clients.rss_kb / 1024,
        s.memory_with_slow_clients.peak_rss_kb / 1024
    );
}

fn rate_limit_human(r: &crate::scenarios::RateLimit, o: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        o,
        "\n10 rate-limit ({}; backlog of N x {} s each)",
        r.database, r.seconds
    );
    for run in &r.runs {
        let _ = writeln!(
            o,
            "  N = {:>5}/s: {} of {} delivered{}, achieved {:.1}/s ({:.1} % of N), busiest 1 s \
             window {} ({:.1} % of N)",
            run.limit,
            run.delivered,
            run.backlog.ok,
            if run.drained { "" } else { " (not drained)" },
            run.achieved_per_s,
            run.achieved_ratio * 100.0,
            run.busiest_second,
            run.busiest_ratio * 100.0
        );
    }
}

fn purge_human(p: &Purge, o: &mut String) {
    let _ = writeln!(
        o,
        "7 purge      built {} users at {} users/s (one endpoint){}; {} events expired at the restart",
        p.build.ok,
        fmt_num(p.build.ok_per_s),
        refused(&p.build),
        p.expired_events
    );
    let _ = writeln!(
        o,
        "             baseline {}/s for {} s (achieved {}/s{}): API latency {}",
        fmt_num(p.rate),
        fmt_num(p.baseline.elapsed_s),
        fmt_num(p.baseline.ok_per_s),
        refused(&p.baseline),
        lat(&p.baseline.api_latency)
    );
    let _ = writeln!(o, "             {}", usage(&p.baseline_usage));
    let counters = |c: &Option<crate::scenarios::PurgeMetrics>| {
        c.map_or("?".into(), |c| {
            format!(
                "{} rows ({} events, {} deliveries, {} attempts)",
                c.rows(),
                c.events,
                c.deliveries,
                c.attempts
            )
        })
    };
    let _ = writeln!(
        o,
        "             restart with ACCOMMADOR_RETENTION=1s (ready in {} s): purged {} in {} s = {} rows/s{}",
        fmt_num(p.startup_s),
        counters(&p.purged_at_catch_up),
        p.purge_s.map_or("?".into(), fmt_num),
        p.purged_rows_per_s.map_or("?".into(), fmt_num),
        if p.purge_s.is_none() {
            " (NOT caught up)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "             load beside it {}/s for {} s (achieved {}/s{}); purged by the end: {}",
        fmt_num(p.rate),
        fmt_num(p.load.elapsed_s),
        fmt_num(p.load.ok_per_s),
        refused(&p.load),
        counters(&p.purged_at_end)
    );
    let _ = writeln!(
        o,
        "             API latency during the purge {}",
        lat(&p.during_purge)
    );
    let _ = writeln!(
        o,
        "             API latency after it         {}",
        lat(&p.after_purge)
    );
    let _ = writeln!(
        o,
        "             p99 ratio {}; writer pause estimate {} ms (the baseline's own: {} ms)",
        p.p99_ratio
            .map_or("?".into(), |x| format!("{}×", fmt_num(x))),
        p.writer_pause_ms.map_or("?".into(), fmt_num),
        p.baseline_pause_ms.map_or("?".into(), fmt_num)
    );
    let _ = writeln!(
        o,
        "             purge steps holding the writer over 50 ms: {} of {}",
        p.purge_steps_over_50ms
            .map_or("?".into(), |n| n.to_string()),
        p.purge_steps
    );
    let _ = writeln!(
        o,
        "             creates slower than the baseline median + 50 ms: {} of {} during the purge, {} of {} in the baseline",
        p.slow_creates_during_purge,
        p.during_purge.as_ref().map_or(0, |l| l.count),
        p.slow_creates_baseline,
        p.baseline.ok
    );
    let _ = writeln!(o, "             {}", usage(&p.usage));
    if let Some(f) = &p.file {
        let mb = |b: u64| fmt_num(b as f64 / MIB / MIB);
        let _ = writeln!(
            o,
            "             file (db + WAL): baseline {} → {} MiB ({} KiB/s); purge start {} MiB, caught up {} MiB, end {} MiB, max {} MiB",
            mb(f.baseline_start_bytes),
            mb(f.baseline_end_bytes),
            fmt_num(f.baseline_growth_bytes_per_s / 1024.0),
            mb(f.purge_start_bytes),
            f.caught_up_bytes.map_or("?".into(), mb),
            mb(f.end_bytes),
            mb(f.max_bytes)
        );
        let _ = writeln!(
            o,
            "             tail: grew {} KiB ({} KiB/s); free pages {} → {} ({} KiB/s of free pages reused)",
            f.tail_growth_bytes
                .map_or("?".into(), |b| fmt_num(b as f64 / 1024.0)),
            f.tail_growth_bytes_per_s
                .map_or("?".into(), |b| fmt_num(b / 1024.0)),
            f.free_pages_caught_up.map_or("?".into(), |n| n.to_string()),
            f.free_pages_end,
            f.tail_reuse_bytes_per_s
                .map_or("?".into(), |b| fmt_num(b / 1024.0))
        );
        let series: Vec<String> = thin(&p.samples, 16)
            .into_iter()
            .filter_map(|s| {
                let f = s.file?;
                Some(format!(
                    "{} {}s {} MiB/{} free/{} purged",
                    s.phase,
                    fmt_num(s.t_s),
                    mb(f.bytes()),
                    f.free_pages,
                    s.purged.map_or(0, |c| c.rows())
                ))
            })
            .collect();
        let _ = writeln!(o, "             series: {}", series.join("; "));
    }
    let _ = writeln!(
        o,
        "             check: build and baseline {}; beside the purge {}/{} delivered, {} lost, {} duplicates",
        tally(&p.before_restart, Some(&p.receivers)),
        p.delivered.delivered,
        p.delivered.expected,
        p.delivered.lost,
        p.delivered.duplicates
    );
}

fn noisy_human(n: &Noisy, o: &mut String) {
    let _ = writeln!(
        o,
        "11 noisy     B at {}/s with one healthy endpoint, {} s alone (achieved {}/s{}): 2xx → receipt {}",
        fmt_num(n.rate),
        n.seconds,
        fmt_num(n.baseline.load.ok_per_s),
        refused(&n.baseline.load),
        lat(&n.baseline.latency)
    );
    let _ = writeln!(
        o,
        "             A: backlog of {} built at {}/s{}; {} more endpoints hanging {} s; A's trickle {}/s{}",
        n.backlog_build.ok,
        fmt_num(n.backlog_build.ok_per_s),
        refused(&n.backlog_build),
        n.hanging_endpoints,
        n.hang_s,
        fmt_num(n.a_trickle.ok_per_s),
        refused(&n.a_trickle)
    );
    let _ = writeln!(
        o,
        "             B beside A for {} s (achieved {}/s{}): 2xx → receipt {} = {}× the baseline p99; {} requests held by A's endpoints",
        fmt_num(n.noisy.load.elapsed_s),
        fmt_num(n.noisy.load.ok_per_s),
        refused(&n.noisy.load),
        lat(&n.noisy.latency),
        n.p99_ratio.map_or("?".into(), fmt_num),
        n.hung_requests
    );
    let _ = writeln!(
        o,
        "             B's API latency alone {}; beside A {}",
        lat(&n.baseline.load.api_latency),
        lat(&n.noisy.load.api_latency)
    );
    match &n.delete {
        Some(d) => {
            let _ = writeln!(
                o,
                "             delete of the backlog endpoint: answered in {} ms; {} of {} deliveries failed in the background in {} s{}",
                fmt_num(d.answer_ms),
                d.cancelled,
                d.backlog,
                fmt_num(d.cancel_s),
                if d.reached_backlog {
                    ""
                } else {
                    " (stopped short: the counter stopped growing)"
                }
            );
            let _ = writeln!(
                o,
                "             B during the delete: API {}; 2xx → receipt {}",
                lat(&d.b_api_latency),
                lat(&d.b_receipt_latency)
            );
        }
        None => {
            let _ = writeln!(o, "             the delete did not run");
        }
    }
    let _ = writeln!(o, "             {}", usage(&n.noisy.usage));
    let _ = writeln!(
        o,
        "             check (B): {}",
        tally(&n.tally, Some(&n.receivers))
    );
}

/// At most `n` items, evenly spread, the first and the last included.
fn thin<T>(items: &[T], n: usize) -> Vec<&T> {
    if items.len() <= n || n < 2 {
        return items.iter().collect();
    }
    (0..n)
        .map(|i| &items[i * (items.len() - 1) / (n - 1)])
        .collect()
}

pub fn human(report: &Report) -> String {
    let mut o = String::new();
    let m = &report.machine;
    let _ = writeln!(
        o,
        "accommador-bench on {} × {} ({} GiB), Linux {}; load average {} at the start",
        m.nproc,
        m.cpu_model,
        fmt_num(m.mem_total_kb as f64 / MIB / MIB),
        m.kernel,
        report.load_average_at_start.map_or("?".into(), fmt_num)
    );
    let _ = writeln!(
        o,
        "server {} · database {} · {} connections{}\n",
        report.server_bin,
        report.database,
        report.connections,
        report
            .pin
            .as_ref()
            .map_or(String::new(), |p| format!(" · pinned server:bench {p}"))
    );
    let r = &report.results;
    if let Some(c) = &r.ceiling {
        let _ = writeln!(
            o,
            "6 ceiling    plain keep-alive signed POST loop, {} connections, {} s: {} requests/s{}\n             {}",
            c.connections,
            c.seconds,
            fmt_num(c.requests_per_s),
            refused(&c.load),
            usage(&c.usage)
        );
    }
    if let Some(s) = &r.sustained {
        let _ = writeln!(
            o,
            "1 sustained  {} connections, {} s: intake {} users/s; delivered end to end {} events/s \
             (during the load {} /s, after it {} /s; last receipt {} s after the start){}",
            s.connections,
            s.seconds,
            fmt_num(s.load.ok_per_s),
            fmt_num(s.end_to_end_per_s),
            fmt_num(s.delivered_in_window_per_s),
            s.delivered_after_load_per_s.map_or("—".into(), fmt_num),
            s.last_receipt_after_s.map_or("?".into(), fmt_num),
            refused(&s.load),
        );
        let _ = writeln!(o, "             API latency {}", lat(&s.load.api_latency));
        let _ = writeln!(o, "             2xx → receipt {}", lat(&s.latency));
        let _ = writeln!(
            o,
            "             {}; {} µs server CPU per event",
            usage(&s.usage),
            s.server_cpu_us_per_event.map_or("?".into(), fmt_num)
        );
        let _ = writeln!(
            o,
            "             server threads: {}",
            threads(&s.usage.server_threads)
        );
        let _ = writeln!(
            o,
            "             server per event: {}",
            per_event_io(&s.usage, s.tally.delivered)
        );
        let _ = writeln!(
            o,
            "             check: {}",
            tally(&s.tally, Some(&s.receivers))
        );
        if let Some(c) = &r.ceiling {
            let _ = writeln!(
                o,
                "             = {} % of the ceiling",
                fmt_num(s.end_to_end_per_s / c.requests_per_s.max(1e-9) * 100.0)
            );
        }
    }
    if let Some(l) = &r.latency {
        for run in &l.runs {
            let _ = writeln!(
                o,
                "2 latency    {}/s for {} s (achieved {}/s{}): 2xx → receipt {}",
                fmt_num(run.rate),
                run.seconds,
                fmt_num(run.load.ok_per_s),
                refused(&run.load),
                lat(&run.latency)
            );
            let _ = writeln!(
                o,
                "             p99/max by second (ms): {}",
                run.by_second
                    .iter()
                    .map(|s| format!("{:.0}/{:.0}", s.p99_ms, s.max_ms))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            let _ = writeln!(o, "             API latency {}", lat(&run.load.api_latency));
            let _ = writeln!(o, "             {}", usage(&run.usage));
            let _ = writeln!(
                o,
                "             server per event: {}",
                per_event_io(&run.usage, run.tally.delivered)
            );
            let _ = writeln!(
                o,
                "             check: {}; {} arrived before the bench read the 2xx",
                tally(&run.tally, None),
                run.arrived_before_ack
            );
        }
    }
    if let Some(i) = &r.isolation {
        let _ = writeln!(
            o,
            "5 isolation  {} endpoints, {} deliveries/s ({} users/s), hang {} s:",
            i.endpoints,
            fmt_num(i.deliveries_per_s),
            fmt_num(i.users_per_s),
            i.hang_s
        );
        for (name, p) in [("baseline", &i.baseline), ("1 hanging", &i.with_hanging)] {
            let _ = writeln!(
                o,
                "             {name:<10} healthy 2xx → receipt {}; {} requests held by the hanging endpoint",
                lat(&p.latency),
                p.hung_requests
            );
            let _ = writeln!(o, "                        {}", usage(&p.usage));
            let _ = writeln!(
                o,
                "                        check: {}",
                tally(&p.tally, None)
            );
        }
        let scenario2 = r
            .latency
            .as_ref()
            .and_then(|l| l.runs.iter().find(|run| (run.rate - 1000.0).abs() < 0.5))
            .and_then(|run| run.latency.as_ref())
            .map_or(String::new(), |l| {
                format!(
                    " (scenario 2 at 1,000/s, one endpoint: p99 {} ms)",
                    fmt_num(l.p99_ms)
                )
            });
        let _ = writeln!(
            o,
            "             p99 ratio {}{scenario2}",
            i.p99_ratio
                .map_or("?".into(), |x| format!("{}×", fmt_num(x)))
        );
    }
    if let Some(f) = &r.fanout {
        for run in &f.runs {
            let per_event: Vec<String> = run
                .events
                .iter()
                .map(|e| {
                    format!(
                        "first {} / median {} / last {} ms",
                        fmt_num(e.to_first_ms),
                        fmt_num(e.to_median_ms),
                        fmt_num(e.to_last_ms)
                    )
                })
                .collect();
            let _ = writeln!(
                o,
                "3 fan-out    {:>5} endpoints (created in {} s): {}",
                run.endpoints,
                fmt_num(run.create_endpoints_s),
                per_event.join("; ")
            );
            let _ = writeln!(o, "             check: {}", tally(&run.tally, None));
        }
    }
    if let Some(b) = &r.backlog {
        let _ = writeln!(
            o,
            "4 backlog    {} events built at {} users/s (no worker, peak RSS {}){}",
            b.events,
            fmt_num(b.build.ok_per_s),
            mib(b.build_server_peak_rss_kb),
            refused(&b.build)
        );
        let _ = writeln!(
            o,
            "             restart: ready in {} s, first receipt {} s, drained in {} s: {} events/s \
             ({} /s first → last receipt); peak RSS {}; server CPU {} s ({} µs/event)",
            fmt_num(b.startup_s),
            b.first_receipt_s.map_or("?".into(), fmt_num),
            b.drain_s.map_or("?".into(), fmt_num),
            fmt_num(b.drain_per_s),
            fmt_num(b.steady_per_s),
            mib(b.server_peak_rss_kb),
            fmt_num(b.server_cpu_s),
            b.server_cpu_us_per_event.map_or("?".into(), fmt_num)
        );
        let _ = writeln!(
            o,
            "             server threads: {}",
            threads(&b.usage.server_threads)
        );
        let _ = writeln!(
            o,
            "             server per event (drain): {}",
            per_event_io(&b.usage, b.tally.delivered)
        );
        let _ = writeln!(
            o,
            "             check: {}",
            tally(&b.tally, Some(&b.receivers))
        );
    }
    if let Some(r) = &r.rate_limit {
        rate_limit_human(r, &mut o);
    }
    if let Some(p) = &r.purge {
        purge_human(p, &mut o);
    }
    if let Some(s) = &r.ordering {
        ordering_human(s, &mut o);
    }
    if let Some(s) = &r.slow_clients {
        slow_clients_human(s, &mut o);
    }
    if let Some(n) = &r.noisy {
        noisy_human(n, &mut o);
    }
    for (scenario, error) in &r.errors {
        let _ = writeln!(o, "{scenario}: DID NOT RUN: {error}");
    }
    let _ = writeln!(o, "\nTargets (2 cores, durable commits)");
    for t in &report.targets {
        let measured = t
            .measured
            .map_or("—".into(), |m| format!("{} {}", fmt_num(m), t.unit));
        let _ = writeln!(o, "  {:<86} {:>16}  {}", t.target, measured, t.verdict);
    }
    let _ = writeln!(
        o,
        "\nCorrectness: {}",
        if report.correctness.ok {
            "every acknowledged event arrived at every endpoint, every signature verified".into()
        } else {
            report.correctness.problems.join("; ")
        }
    );
    o
}
