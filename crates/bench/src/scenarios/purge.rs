//! Scenario 7, purge: the retention purge beside a steady load (issue 12). One server with the
//! default retention builds `--purge-events` users with one endpoint (an event, a delivery and an
//! attempt each) and drains them, then runs the fixed-rate baseline; a second server on the
//! same database with `ACCOMMADOR_RETENTION=1s` finds everything expired and purges it while
//! the same load goes on, until `accommador_purged_rows_total{table="events"}` has reached
//! every event that existed at the restart, and `--purge-tail` seconds more.
//!
//! Every half second of both load phases it samples `/metrics` and, on SQLite, the size of the
//! database file and its write-ahead log and the page and free-page counts of the file's header
//! (as of the last checkpoint). Writes go through one writer, so a long purge batch shows as a
//! slow create: the longest create during the purge minus the baseline median estimates the
//! longest pause. Build and baseline are checked against the outbox before the restart; the
//! purge phase's events are gone a second after delivery, so its receipts are matched to the
//! acknowledged users by user id.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Bench, LoadSummary, create_users, drain, drive, load_summary, one_endpoint, stop};
use crate::api::Api;
use crate::check::{self, ReceiptTally, Tally};
use crate::load::{Acked, Plan, Stop};
use crate::meter::{Meter, Usage};
use crate::progress::Progress;
use crate::receivers::Counts;
use crate::stats::{Latencies, LatencySummary};

/// How often the phases sample `/metrics` and the database file.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// The purge's metrics: `accommador_purged_rows_total` by table and
/// `accommador_oldest_event_age_seconds`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PurgeMetrics {
    pub events: u64,
    pub deliveries: u64,
    pub attempts: u64,
    pub oldest_event_age_s: Option<f64>,
    /// Purge steps so far (`accommador_purge_step_seconds_count`), and those that held the
    /// database (SQLite's writer) for at most 50 ms (its `le="0.05"` bucket).
    pub steps: u64,
    pub steps_within_50ms: u64,
}

impl PurgeMetrics {
    pub fn rows(&self) -> u64 {
        self.events + self.deliveries + self.attempts
    }
}

/// Reads the purge's metrics from the Prometheus text of `/metrics` (absent counters are 0).
pub fn parse_metrics(text: &str) -> PurgeMetrics {
    let mut m = PurgeMetrics::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.trim().rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if series == "accommador_oldest_event_age_seconds" {
            m.oldest_event_age_s = Some(value);
        } else if series == "accommador_purge_step_seconds_count" {
            m.steps = value as u64;
        } else if series == "accommador_purge_step_seconds_bucket{le=\"0.05\"}" {
            m.steps_within_50ms = value as u64;
        } else if let Some(labels) = series.strip_prefix("accommador_purged_rows_total{") {
            let table = labels
                .split(',')
                .find_map(|l| l.trim().strip_prefix("table=\""))
                .and_then(|l| l.split('"').next());
            // Counters are whole numbers.
            let n = value as u64;
            match table {
                Some("events") => m.events = n,
                Some("deliveries") => m.deliveries = n,
                Some("attempts") => m.attempts = n,
                _ => {}
            }
        }
    }
    m
}

/// The SQLite database file at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FileSample {
    pub db_bytes: u64,
    /// The write-ahead log (`-wal`), 0 when there is none.
    pub wal_bytes: u64,
    /// From the file's header, as of the last checkpoint.
    pub page_size: u32,
    pub pages: u32,
    pub free_pages: u32,
}

impl FileSample {
    pub fn bytes(&self) -> u64 {
        self.db_bytes + self.wal_bytes
    }
}

/// Page size, page count and free-page count from the first 100 bytes of a SQLite file.
pub fn sqlite_header(h: &[u8]) -> Option<(u32, u32, u32)> {
    if h.len() < 100 || !h.starts_with(b"SQLite format 3\0") {
        return None;
    }
    let be32 = |at: usize| u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    let page_size = match u16::from_be_bytes([h[16], h[17]]) {
        1 => 65_536,
        n => u32::from(n),
    };
    Some((page_size, be32(28), be32(36)))
}

fn sample_file(path: &Path) -> Option<FileSample> {
    use std::io::Read as _;
    let db_bytes = std::fs::metadata(path).ok()?.len();
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal_bytes = std::fs::metadata(PathBuf::from(wal)).map_or(0, |m| m.len());
    let mut header = [0u8; 100];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .ok()?;
    let (page_size, pages, free_pages) = sqlite_header(&header)?;
    Some(FileSample {
        db_bytes,
        wal_bytes,
        page_size,
        pages,
        free_pages,
    })
}

/// The file of a `sqlite://PATH[?…]` URL; `None` for any other database.
pub fn sqlite_path(database: &str) -> Option<PathBuf> {
    let rest = database.strip_prefix("sqlite://")?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// One sample of a load phase.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub phase: &'static str,
    /// Seconds since the phase's server was spawned.
    pub t_s: f64,
    /// `None` when `/metrics` did not answer.
    pub purged: Option<PurgeMetrics>,
    /// `None` on PostgreSQL.
    pub file: Option<FileSample>,
}

/// Samples one server's `/metrics` and database file.
#[derive(Debug, Clone)]
struct Sampler {
    http: reqwest::Client,
    metrics_url: String,
    file: Option<PathBuf>,
    spawned_at: Instant,
    phase: &'static str,
}

impl Sampler {
    async fn sample(&self) -> Sample {
        let purged = match self.http.get(&self.metrics_url).send().await {
            Ok(r) if r.status().is_success() => r.text().await.ok().map(|t| parse_metrics(&t)),
            _ => None,
        };
        Sample {
            phase: self.phase,
            t_s: self.spawned_at.elapsed().as_secs_f64(),
            purged,
            file: self.file.as_deref().and_then(sample_file),
        }
    }

    /// Samples until `until` is cancelled.
    async fn until(self, until: CancellationToken) -> Vec<Sample> {
        let mut samples = Vec::new();
        loop {
            samples.push(self.sample().await);
            tokio::select! {
                () = until.cancelled() => return samples,
                () = tokio::time::sleep(SAMPLE_EVERY) => {}
            }
        }
    }
}

/// What the purge phase's watcher saw.
#[derive(Debug)]
struct Watch {
    samples: Vec<Sample>,
    /// When the purged events reached `expired` (`None`: not before the timeout).
    caught_up_at: Option<Instant>,
    /// The same moment, seconds since the spawn.
    caught_up_t_s: Option<f64>,
    /// The counters at that moment.
    caught_up_counters: Option<PurgeMetrics>,
}

/// Samples until the purge has removed `expired` events and `tail` more has passed (or
/// `timeout` after the spawn), then cancels `load`.
async fn watch_purge(
    sampler: Sampler,
    expired: u64,
    tail: Duration,
    timeout: Duration,
    load: CancellationToken,
    progress: Progress,
) -> Watch {
    let mut watch = Watch {
        samples: Vec::new(),
        caught_up_at: None,
        caught_up_t_s: None,
        caught_up_counters: None,
    };
    loop {
        let s = sampler.sample().await;
        let now = Instant::now();
        if watch.caught_up_at.is_none()
            && let Some(p) = s.purged.filter(|p| p.events >= expired)
        {
            watch.caught_up_at = Some(now);
            watch.caught_up_t_s = Some(s.t_s);
            watch.caught_up_counters = Some(p);
            progress.note(&format!(
                "  7 purge: caught up after {:.1} s ({} rows); the load goes on {} s",
                s.t_s,
                p.rows(),
                tail.as_secs()
            ));
        }
        watch.samples.push(s);
        let over = match watch.caught_up_at {
            Some(at) => now >= at + tail,
            None => now >= sampler.spawned_at + timeout,
        };
        if over {
            if watch.caught_up_at.is_none() {
                progress.note(&format!(
                    "  7 purge: not caught up within {} s; stopping",
                    timeout.as_secs()
                ));
            }
            load.cancel();
            return watch;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// How the database file behaved.
#[derive(Debug, Clone, Serialize)]
pub struct FileGrowth {
    /// db + WAL bytes at the start and the end of the baseline (no purge).
    pub baseline_start_bytes: u64,
    pub baseline_end_bytes: u64,
    pub baseline_growth_bytes_per_s: f64,
    /// db + WAL bytes when the purging server came up, when it had caught up, at the end.
    pub purge_start_bytes: u64,
    pub caught_up_bytes: Option<u64>,
    pub end_bytes: u64,
    pub max_bytes: u64,
    /// Growth from catching up to the end of the load (the tail), in all and per second.
    pub tail_growth_bytes: Option<i64>,
    pub tail_growth_bytes_per_s: Option<f64>,
    /// Free pages in the header when caught up and at the end: fewer means pages were reused.
    pub free_pages_caught_up: Option<u32>,
    pub free_pages_end: u32,
    /// Free pages taken per second over the tail, as bytes/s.
    pub tail_reuse_bytes_per_s: Option<f64>,
}

fn file_growth(
    baseline: &[Sample],
    purge: &[Sample],
    caught_up_t: Option<f64>,
) -> Option<FileGrowth> {
    let files = |s: &[Sample]| -> Vec<(f64, FileSample)> {
        s.iter()
            .filter_map(|x| x.file.map(|f| (x.t_s, f)))
            .collect()
    };
    let (b, p) = (files(baseline), files(purge));
    let ((b0t, b0), (b1t, b1)) = (*b.first()?, *b.last()?);
    let ((_, p0), (p1t, p1)) = (*p.first()?, *p.last()?);
    let at_catch_up = caught_up_t.and_then(|t| p.iter().find(|(st, _)| *st >= t - 1e-9).copied());
    let tail_s = at_catch_up.map(|(t, _)| p1t - t).filter(|s| *s > 0.0);
    let diff = |a: u64, b: u64| {
        i64::try_from(b).unwrap_or(i64::MAX) - i64::try_from(a).unwrap_or(i64::MAX)
    };
    Some(FileGrowth {
        baseline_start_bytes: b0.bytes(),
        baseline_end_bytes: b1.bytes(),
        baseline_growth_bytes_per_s: if b1t > b0t {
            diff(b0.bytes(), b1.bytes()) as f64 / (b1t - b0t)
        } else {
            0.0
        },
        purge_start_bytes: p0.bytes(),
        caught_up_bytes: at_catch_up.map(|(_, f)| f.bytes()),
        end_bytes: p1.bytes(),
        max_bytes: p.iter().map(|(_, f)| f.bytes()).max().unwrap_or_default(),
        tail_growth_bytes: at_catch_up.map(|(_, f)| diff(f.bytes(), p1.bytes())),
        tail_growth_bytes_per_s: at_catch_up
            .zip(tail_s)
            .map(|((_, f), s)| diff(f.bytes(), p1.bytes()) as f64 / s),
        free_pages_caught_up: at_catch_up.map(|(_, f)| f.free_pages),
        free_pages_end: p1.free_pages,
        tail_reuse_bytes_per_s: at_catch_up.zip(tail_s).map(|((_, f), s)| {
            (f64::from(f.free_pages) - f64::from(p1.free_pages)) * f64::from(p1.page_size) / s
        }),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Purge {
    pub database: String,
    /// Users/s of the baseline and of the load beside the purge.
    pub rate: f64,
    /// Building the rows to expire: closed loop, default retention.
    pub build: LoadSummary,
    pub build_drained: bool,
    /// The same fixed-rate load, no purge, on the built database.
    pub baseline: LoadSummary,
    pub baseline_drained: bool,
    pub baseline_usage: Usage,
    /// Build and baseline, checked against the outbox before the restart.
    pub before_restart: Tally,
    /// Events in the outbox at the restart: all of them expire with a 1 s retention.
    pub expired_events: u64,
    /// The purging server: spawn → `/readyz`.
    pub startup_s: f64,
    /// Spawn → the purged-events counter reaching `expired_events` (sampled every 0.5 s).
    pub purge_s: Option<f64>,
    /// The counters at that moment.
    pub purged_at_catch_up: Option<PurgeMetrics>,
    pub purged_rows_per_s: Option<f64>,
    /// The counters at the end of the load.
    pub purged_at_end: Option<PurgeMetrics>,
    /// The whole load beside the purge (purge and tail).
    pub load: LoadSummary,
    /// API latency of the creates sent before the purge had caught up.
    pub during_purge: Option<LatencySummary>,
    /// API latency of the creates sent after it (steady state, 1 s retention).
    pub after_purge: Option<LatencySummary>,
    /// p99 during the purge over the baseline p99.
    pub p99_ratio: Option<f64>,
    /// The longest create during the purge minus the baseline median, ms: the estimate of the
    /// longest writer pause.
    pub writer_pause_ms: Option<f64>,
    /// The same estimate over the baseline (its longest create minus its median), ms: what the
    /// machine does without a purge.
    pub baseline_pause_ms: Option<f64>,
    /// Measured by the server: purge steps, and those that held the writer over 50 ms.
    pub purge_steps: u64,
    pub purge_steps_over_50ms: Option<u64>,
    /// Creates that took more than the baseline median + 50 ms: during the baseline and during
    /// the purge (how often, not only how long, the writer stalled).
    pub slow_creates_baseline: u64,
    pub slow_creates_during_purge: u64,
    pub usage: Usage,
    pub drained: bool,
    /// The load beside the purge, by user id (its events are purged a second after delivery).
    pub delivered: ReceiptTally,
    /// SQLite only.
    pub file: Option<FileGrowth>,
    pub samples: Vec<Sample>,
    pub receivers: Counts,
    pub first_bad_signature: Option<String>,
}

/// How many of `acked` took longer than `limit`.
fn slower_than<'a>(acked: impl IntoIterator<Item = &'a Acked>, limit: Duration) -> u64 {
    acked
        .into_iter()
        .filter(|a| a.acked.saturating_duration_since(a.sent) > limit)
        .count() as u64
}

fn api_latency<'a>(acked: impl IntoIterator<Item = &'a Acked>) -> Option<LatencySummary> {
    let mut l = Latencies::default();
    for a in acked {
        l.record(a.acked.saturating_duration_since(a.sent));
    }
    l.summary()
}

pub async fn purge(b: &Bench) -> anyhow::Result<Purge> {
    let n = b.cli.purge_events.max(1);
    let rate = b.cli.purge_rate.max(1.0);
    let database = b.database("purge");
    let file = sqlite_path(&database);
    let builder = b.server("purge-build", &database, false).await?;
    let api = Api::new(builder.base_url.clone(), 4)?;
    let receivers = b.receivers(1)?;
    let org = api.create_org(&builder.admin_token, "bench purge").await?;
    let endpoints = one_endpoint(&api, &org.api_key, &receivers).await?;

    // 1. The rows to expire.
    let build = create_users(
        b,
        "7 purge: build",
        &builder.base_url,
        &org.api_key,
        n,
        &receivers,
    )
    .await?;
    let timeout = b.drain_timeout() + Duration::from_secs(n / 1000);
    let expected = build.acked.len() as u64;
    let build_drained = drain(b, "7 purge: build drain", &receivers, 0, expected, timeout).await;

    // 2. The baseline: the same load the purge will run beside, no purge.
    let sampler = Sampler {
        http: crate::api::http_client(1)?,
        metrics_url: format!("{}/metrics", builder.base_url),
        file: file.clone(),
        spawned_at: builder.spawned_at,
        phase: "baseline",
    };
    let base = receivers.recorder().counts().unique;
    let sampling = CancellationToken::new();
    let sampled = tokio::spawn(sampler.until(sampling.clone()));
    let meter = Meter::start(Some(&builder), b.ticks);
    let plan = Plan {
        connections: b.cli.connections,
        stop: Stop::After(Duration::from_secs(b.cli.purge_baseline.max(1))),
        rate: Some(rate),
    };
    let baseline = drive(
        b,
        "7 purge: baseline",
        &builder.base_url,
        &org.api_key,
        plan,
        &receivers,
    )
    .await;
    let baseline_usage = meter.finish();
    sampling.cancel();
    let baseline_samples = sampled.await?;
    let baseline = baseline?;
    let baseline_drained = drain(
        b,
        "7 purge: baseline drain",
        &receivers,
        base,
        baseline.acked.len() as u64,
        b.drain_timeout(),
    )
    .await;

    // Checked now: the restart expires these events.
    let (receipts, bad_before) = receivers.recorder().take();
    let events = api.created_events(&org.api_key).await?;
    let expired_events = events.len() as u64;
    let before_restart = check::tally(
        build
            .acked
            .iter()
            .chain(&baseline.acked)
            .map(|a| &*a.user_id),
        &events,
        &endpoints,
        &receipts,
    );
    drop((receipts, events));
    stop(b, builder).await;

    // 3. The purge beside the same load.
    let mut launcher = b.launcher.clone();
    launcher.env.retain(|(k, _)| k != "ACCOMMADOR_RETENTION");
    launcher
        .env
        .push(("ACCOMMADOR_RETENTION".to_owned(), "1s".to_owned()));
    let server = launcher.start("purge", &database, false).await?;
    let startup_s = server
        .ready_at
        .saturating_duration_since(server.spawned_at)
        .as_secs_f64();
    let base = receivers.recorder().counts().unique;
    let load_stop = CancellationToken::new();
    // An error below ends the watcher's load too.
    let _stop_on_error = load_stop.clone().drop_guard();
    let watcher = tokio::spawn(watch_purge(
        Sampler {
            http: crate::api::http_client(1)?,
            metrics_url: format!("{}/metrics", server.base_url),
            file: file.clone(),
            spawned_at: server.spawned_at,
            phase: "purge",
        },
        expired_events,
        Duration::from_secs(b.cli.purge_tail),
        Duration::from_secs(b.cli.purge_timeout.max(1)),
        load_stop.clone(),
        b.progress,
    ));
    let meter = Meter::start(Some(&server), b.ticks);
    let plan = Plan {
        connections: b.cli.connections,
        stop: Stop::Until(load_stop.clone()),
        rate: Some(rate),
    };
    let outcome = drive(
        b,
        "7 purge: load beside the purge",
        &server.base_url,
        &org.api_key,
        plan,
        &receivers,
    )
    .await?;
    let usage = meter.finish();
    let watch = watcher.await?;
    let drained = drain(
        b,
        "7 purge: drain",
        &receivers,
        base,
        outcome.acked.len() as u64,
        b.drain_timeout(),
    )
    .await;
    let (receipts, bad_after) = receivers.recorder().take();
    stop(b, server).await;

    let delivered = check::tally_by_user(
        outcome.acked.iter().map(|a| &*a.user_id),
        &endpoints,
        &receipts,
    );
    let base_latency = load_summary(&baseline).api_latency;
    let (during, after): (Vec<&Acked>, Vec<&Acked>) = outcome
        .acked
        .iter()
        .partition(|a| watch.caught_up_at.is_none_or(|at| a.sent < at));
    let slow = base_latency.as_ref().map_or(Duration::MAX, |a| {
        Duration::from_secs_f64((a.p50_ms + 50.0) / 1000.0)
    });
    let slow_creates_baseline = slower_than(&baseline.acked, slow);
    let slow_creates_during_purge = slower_than(during.iter().copied(), slow);
    let during_purge = api_latency(during);
    let after_purge = api_latency(after);
    let p99_ratio = match (&base_latency, &during_purge) {
        (Some(a), Some(d)) if a.p99_ms > 0.0 => Some(d.p99_ms / a.p99_ms),
        _ => None,
    };
    let writer_pause_ms = base_latency
        .as_ref()
        .zip(during_purge.as_ref())
        .map(|(a, d)| (d.max_ms - a.p50_ms).max(0.0));
    let baseline_pause_ms = base_latency
        .as_ref()
        .map(|a| (a.max_ms - a.p50_ms).max(0.0));
    let purge_s = watch.caught_up_t_s;
    let purged_at_end = watch.samples.iter().rev().find_map(|s| s.purged);
    Ok(Purge {
        database,
        rate,
        build: load_summary(&build),
        build_drained,
        baseline: load_summary(&baseline),
        baseline_drained,
        baseline_usage,
        before_restart,
        expired_events,
        startup_s,
        purge_s,
        purged_rows_per_s: watch
            .caught_up_counters
            .zip(purge_s)
            .filter(|(_, s)| *s > 0.0)
            .map(|(p, s)| p.rows() as f64 / s),
        purged_at_catch_up: watch.caught_up_counters,
        purged_at_end,
        load: load_summary(&outcome),
        during_purge,
        after_purge,
        p99_ratio,
        writer_pause_ms,
        baseline_pause_ms,
        purge_steps: purged_at_end.map_or(0, |m| m.steps),
        purge_steps_over_50ms: purged_at_end
            .filter(|m| m.steps > 0)
            .map(|m| m.steps - m.steps_within_50ms.min(m.steps)),
        slow_creates_baseline,
        slow_creates_during_purge,
        usage,
        drained,
        delivered,
        file: file_growth(&baseline_samples, &watch.samples, purge_s),
        samples: baseline_samples.into_iter().chain(watch.samples).collect(),
        receivers: receivers.recorder().counts(),
        first_bad_signature: bad_before.or(bad_after),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_metrics_from_the_prometheus_text() {
        let text = "\
# TYPE accommador_purged_rows_total counter
accommador_purged_rows_total{table=\"events\"} 333000
accommador_purged_rows_total{table=\"deliveries\"} 332999
accommador_purged_rows_total{table=\"attempts\"} 3.33e5
# TYPE accommador_oldest_event_age_seconds gauge
accommador_oldest_event_age_seconds 1.25
accommador_purged_rows_total_other{table=\"events\"} 7
accommador_purge_step_seconds_bucket{le=\"0.025\"} 990
accommador_purge_step_seconds_bucket{le=\"0.05\"} 998
accommador_purge_step_seconds_bucket{le=\"+Inf\"} 1000
accommador_purge_step_seconds_sum 4.2
accommador_purge_step_seconds_count 1000
http_requests_total{method=\"GET\",route=\"/metrics\",status=\"200\"} 4
";
        let m = parse_metrics(text);
        assert_eq!(
            (m.events, m.deliveries, m.attempts),
            (333_000, 332_999, 333_000)
        );
        assert_eq!(m.rows(), 998_999);
        assert_eq!(m.oldest_event_age_s, Some(1.25));
        assert_eq!((m.steps, m.steps_within_50ms), (1000, 998));
        // Before the first purge the series do not exist yet.
        assert_eq!(parse_metrics("# nothing\n"), PurgeMetrics::default());
    }

    #[test]
    fn page_counts_from_a_sqlite_header() {
        let mut h = [0u8; 100];
        h[..16].copy_from_slice(b"SQLite format 3\0");
        h[16..18].copy_from_slice(&4096u16.to_be_bytes());
        h[28..32].copy_from_slice(&70_000u32.to_be_bytes());
        h[36..40].copy_from_slice(&1_234u32.to_be_bytes());
        assert_eq!(sqlite_header(&h), Some((4096, 70_000, 1_234)));
        h[16..18].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(sqlite_header(&h).map(|x| x.0), Some(65_536));
        assert_eq!(sqlite_header(&h[..99]), None);
        h[0] = b'X';
        assert_eq!(sqlite_header(&h), None);
    }

    #[test]
    fn only_sqlite_urls_have_a_file() {
        assert_eq!(
            sqlite_path("sqlite:///tmp/x/purge.db?mode=rwc"),
            Some(PathBuf::from("/tmp/x/purge.db"))
        );
        assert_eq!(sqlite_path("postgres://u@127.0.0.1/db"), None);
        assert_eq!(sqlite_path("sqlite://"), None);
    }

    fn sample(phase: &'static str, t_s: f64, bytes: u64, free_pages: u32) -> Sample {
        Sample {
            phase,
            t_s,
            purged: None,
            file: Some(FileSample {
                db_bytes: bytes,
                wal_bytes: 0,
                page_size: 4096,
                pages: 0,
                free_pages,
            }),
        }
    }

    #[test]
    fn file_growth_over_the_baseline_and_the_tail() {
        let baseline = [
            sample("baseline", 10.0, 1_000_000, 0),
            sample("baseline", 20.0, 2_000_000, 0),
        ];
        let purge = [
            sample("purge", 0.5, 2_000_000, 0),
            sample("purge", 5.0, 2_100_000, 200),
            sample("purge", 10.0, 2_100_000, 100),
            sample("purge", 15.0, 2_100_000, 50),
        ];
        let f = file_growth(&baseline, &purge, Some(5.0)).unwrap();
        assert!(
            (f.baseline_growth_bytes_per_s - 100_000.0).abs() < 1e-6,
            "{f:?}"
        );
        assert_eq!(f.caught_up_bytes, Some(2_100_000));
        assert_eq!(f.tail_growth_bytes, Some(0));
        assert_eq!((f.free_pages_caught_up, f.free_pages_end), (Some(200), 50));
        // 150 pages of 4 KiB in 10 s.
        assert!(
            (f.tail_reuse_bytes_per_s.unwrap() - 61_440.0).abs() < 1e-6,
            "{f:?}"
        );
        assert_eq!(f.max_bytes, 2_100_000);
        // Never caught up: no tail.
        let f = file_growth(&baseline, &purge, None).unwrap();
        assert_eq!(f.tail_growth_bytes, None);
        // PostgreSQL: no file.
        let pg = Sample {
            file: None,
            ..sample("purge", 1.0, 0, 0)
        };
        let pg = std::slice::from_ref(&pg);
        assert!(file_growth(pg, pg, Some(1.0)).is_none());
    }
}
