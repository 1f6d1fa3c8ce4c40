//! The command line. `--help` is the user's manual; BENCHMARKS.md has the recorded runs.

use std::path::PathBuf;

use clap::Parser;

const ABOUT: &str = "End-to-end benchmark of the accommador server (issue 7).";

const LONG_ABOUT: &str = "\
End-to-end benchmark of the accommador server (issue 7).

For each scenario it starts the server itself (`accommador serve --listen 127.0.0.1:<free port> \
--database <url>` with ACCOMMADOR_ALLOW_PRIVATE_TARGETS=true and a random \
ACCOMMADOR_ADMIN_TOKEN), starts its own webhook receivers on 127.0.0.1, creates an organization \
(POST /v1/organizations) and endpoints pointing at those receivers (POST /v1/endpoints), drives \
user creations through the public API (POST /v1/users, unique emails, keep-alive connections), \
and measures at the receivers. Every delivery's Standard Webhooks signature is verified with the \
endpoint's secret (accommador_webhooks::Verifier); every acknowledged user must have its \
user.created event in GET /v1/events, and every event must arrive at every endpoint: losses, \
duplicates and signature failures are reported. All traffic stays on 127.0.0.1.

Scenarios (--scenario all, or a comma list of numbers or names):
  1 sustained  as many users/s as the server accepts for --seconds, one endpoint: events/s \
delivered end to end, server CPU (/proc/<pid>/stat) and peak RSS (VmHWM)
  2 latency    fixed rates (--rates, default 100 and 1000/s), one endpoint: p50/p95/p99/max from \
the bench receiving the API's 2xx to the delivery arriving, both on the bench's monotonic clock
  3 fanout     one event to 1, 100, 1000, 10000 endpoints (--fanout) spread over --receivers \
listeners; time from the API's 2xx to the first and the last receipt, --fanout-repeats events each
  4 backlog    `serve --no-worker`, create --backlog events for one endpoint, SIGTERM, restart \
with workers: drain rate and the draining server's peak RSS
  5 isolation  --isolation-endpoints endpoints in one organization at --isolation-rate \
deliveries/s in all: first all healthy (baseline), then one of them hanging --hang-seconds per \
request; the healthy endpoints' p99 against the baseline (and scenario 2)
  6 ceiling    a plain keep-alive loop of signed POSTs from the bench straight to the receivers \
at --connections, no server in between: the end-to-end rate of scenario 1 as a fraction of it
  7 purge      retention (not part of `all`: it builds about a million rows): --purge-events \
users created flat out with one endpoint and drained, a --purge-baseline run at --purge-rate \
users/s (open loop), then a restart on the same database with ACCOMMADOR_RETENTION=1s, so \
everything is expired, and the same load while the purge runs, until it has caught up and \
--purge-tail seconds more: rows purged per second (/metrics), API latency against the \
baseline, the longest create as the writer-pause estimate, and on SQLite the file size and free \
pages every half second (the file must stop growing once the purge has caught up)
  8 ordering   per-user ordering (not part of `all`): 1,000 users, then PATCHes of them \
round-robin for --seconds to one endpoint with ordering none and again with per_user \
(flat out; end-to-end rate, target per_user ≥ 80 % of none), then at 300/s unordered and \
per_user while the receiver fails every event of one user (the others' p99, target ≤ 1.2× \
unordered)
  9 slow-clients  (not part of `all`) the same --slow-rate users/s create load for --seconds, \
first alone, then beside --slow-clients connections that send nothing, trickle a request head \
or trickle a body (a third each, one byte every 200 ms): API p50/p99 of both, their ratio, how \
many slow connections the server closed, and its resident memory
  10 rate-limit per-endpoint rate limits (not part of `all`): for each N of --rate-limits \
(default 50, 100, 500/s) an endpoint with rate_limit N and a backlog of N x --seconds users: \
the achieved rate (first to last arrival) against N, and the busiest 1 s window against N \
(the issue allows 10 % over)
  11 noisy-neighbour  tenants (not part of `all`): organization B creates --noisy-rate users/s \
with one healthy endpoint, first alone (baseline) for --noisy-seconds, then beside organization A, \
which has one hanging endpoint with a backlog of --noisy-backlog pending deliveries and \
--noisy-hanging more hanging endpoints fed by --noisy-trickle users/s; a third of the way in, A's \
backlog endpoint is deleted and the server fails its backlog in the background. B's p99 (2xx → \
receipt) against its baseline (target ≤ 2×) and the p99 of B's POST /v1/users while the delete \
runs (target ≤ 50 ms). --noisy-quick: a 10,000 backlog and 10 s phases, for a quick check
`all` runs them in the order 6, 1, 2, 5, 3, 4: the ceiling right before the sustained run it \
is compared with, isolation after the latency run it refers to; 7, 8, 9, 10 and 11 only when named.

Every scenario gets a fresh server; without --database, a fresh SQLite file in a temporary \
directory. A postgres:// URL is passed through as is; if the server refuses it (no \
PostgreSQL backend, or no such database), the bench reports the refusal and the server's last \
log lines. Output: a progress bar on stderr, a \
human summary on stdout, and with --json FILE the whole result as JSON.

Exit status: 0 when every scenario ran and nothing was lost; 1 when a scenario could not run \
(e.g. the server refused to start); 2 when an event was lost or a signature failed. Missed \
performance targets do not change the exit status; they are in the summary.";

#[derive(Debug, Parser)]
#[command(name = "accommador-bench", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    /// Scenarios to run: `all` (1-6), or a comma list of numbers (1-8) or names (sustained,
    /// latency, fanout, backlog, isolation, ceiling, purge, ordering, noisy-neighbour).
    #[arg(long, default_value = "all", value_name = "LIST")]
    pub scenario: String,

    /// The server binary (build it with `cargo build --release -p accommador`).
    #[arg(long, default_value = "target/release/accommador", value_name = "PATH")]
    pub server_bin: PathBuf,

    /// Database URL passed to `serve --database`. Default: a fresh sqlite:// file per scenario
    /// in a temporary directory.
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,

    /// Concurrent keep-alive client connections of the load driver (and of the ceiling loop).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub connections: usize,

    /// Length of each timed load phase (sustained, each latency rate, each isolation phase,
    /// ceiling).
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub seconds: u64,

    /// Fixed request rates of the latency scenario, users/s.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100,1000",
        value_name = "LIST"
    )]
    pub rates: Vec<f64>,

    /// Endpoint counts of the fan-out scenario.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,100,1000,10000",
        value_name = "LIST"
    )]
    pub fanout: Vec<usize>,

    /// Events sent, one after the other, to each fan-out size.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub fanout_repeats: u32,

    /// Events in the backlog scenario.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub backlog: u64,

    /// Users created (with one endpoint: an event, a delivery and an attempt each) before the
    /// purge scenario expires them all; the default makes about 1,000,000 rows.
    #[arg(long, default_value_t = 333_000, value_name = "N")]
    pub purge_events: u64,

    /// Fixed create rate, users/s, of the purge scenario's baseline and of the load beside the
    /// purge.
    #[arg(long, default_value_t = 500.0, value_name = "PER_SECOND")]
    pub purge_rate: f64,

    /// Length of the purge scenario's baseline (the same load, no purge).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub purge_baseline: u64,

    /// Slow connections of the slow-clients scenario (mind `ulimit -n`: the bench and the
    /// server each hold one descriptor per connection).
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub slow_clients: usize,

    /// Fixed create rate, users/s, of both phases of the slow-clients scenario.
    #[arg(long, default_value_t = 200.0, value_name = "PER_SECOND")]
    pub slow_rate: f64,

    /// How long the load goes on after the purge has caught up (the file-size tail).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub purge_tail: u64,

    /// Give up on the purge catching up after this long.
    #[arg(long, default_value_t = 900, value_name = "SECONDS")]
    pub purge_timeout: u64,

    /// The rate-limit scenario's endpoint limits, deliveries per second (comma-separated); each
    /// gets a backlog of N × --seconds users.
    #[arg(
        long,
        default_value = "50,100,500",
        value_delimiter = ',',
        value_name = "N,N"
    )]
    pub rate_limits: Vec<u32>,

    /// Noisy-neighbour: pending deliveries of organization A's endpoint that is deleted
    /// mid-run.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub noisy_backlog: u64,

    /// Noisy-neighbour: organization A's other hanging endpoints.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub noisy_hanging: usize,

    /// Noisy-neighbour: organization B's users/s (open loop), in the baseline and beside A.
    #[arg(long, default_value_t = 500.0, value_name = "PER_SECOND")]
    pub noisy_rate: f64,

    /// Noisy-neighbour: organization A's users/s beside B (each one a delivery to every
    /// hanging endpoint: 2/s keeps all of them hanging, well past A's share of the
    /// dispatcher, while the API load stays B's).
    #[arg(long, default_value_t = 2.0, value_name = "PER_SECOND")]
    pub noisy_trickle: f64,

    /// Noisy-neighbour: length of the baseline and of the phase beside A (which lasts at least
    /// until the delete's background work is over).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub noisy_seconds: u64,

    /// Noisy-neighbour, quick check: a 10,000-delivery backlog and 10 s phases.
    #[arg(long)]
    pub noisy_quick: bool,

    /// Total deliveries per second in the isolation scenario (users/s times endpoints).
    #[arg(long, default_value_t = 1000.0, value_name = "PER_SECOND")]
    pub isolation_rate: f64,

    /// Endpoints in the isolation scenario (one of them hangs in the second phase).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub isolation_endpoints: usize,

    /// How long a hanging endpoint (isolation, noisy-neighbour) holds each request.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub hang_seconds: u64,

    /// Receiver listeners the fan-out and isolation endpoints are spread over (distinct paths
    /// per endpoint).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub receivers: usize,

    /// How long to wait, after the load stops, for the last deliveries (the backlog scenario
    /// adds one second per 1,000 events).
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub drain_timeout: u64,

    /// Pin with taskset: CPU list of the server, then of the bench, e.g. `0:1`.
    #[arg(long, value_name = "SERVER_CPUS:BENCH_CPUS")]
    pub pin: Option<String>,

    /// Extra environment for the server, e.g. ACCOMMADOR_ENDPOINT_CONCURRENCY=32 or
    /// RUST_LOG=warn (repeatable).
    #[arg(long = "server-env", value_name = "KEY=VALUE")]
    pub server_env: Vec<String>,

    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// No progress bar (one line per phase instead).
    #[arg(long)]
    pub no_progress: bool,

    /// Keep the temporary directory (databases and server logs) and print where it is.
    #[arg(long)]
    pub keep_data: bool,
}

/// The eight scenarios, in run order (the ceiling right before the sustained run it is
/// compared with; the purge and the noisy neighbour last).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    Ceiling,
    Sustained,
    Latency,
    Isolation,
    Fanout,
    Backlog,
    Purge,
    Ordering,
    SlowClients,
    RateLimit,
    Noisy,
}

impl Scenario {
    /// What `all` runs: every scenario but the purge, which takes minutes to build its rows,
    /// and the noisy neighbour, which builds a backlog of 100,000.
    pub const ALL: [Scenario; 6] = [
        Scenario::Ceiling,
        Scenario::Sustained,
        Scenario::Latency,
        Scenario::Isolation,
        Scenario::Fanout,
        Scenario::Backlog,
    ];

    /// Every scenario, for naming one.
    const EVERY: [Scenario; 11] = [
        Scenario::Ceiling,
        Scenario::Sustained,
        Scenario::Latency,
        Scenario::Isolation,
        Scenario::Fanout,
        Scenario::Backlog,
        Scenario::Purge,
        Scenario::Ordering,
        Scenario::SlowClients,
        Scenario::RateLimit,
        Scenario::Noisy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Sustained => "sustained",
            Scenario::Latency => "latency",
            Scenario::Fanout => "fanout",
            Scenario::Backlog => "backlog",
            Scenario::Isolation => "isolation",
            Scenario::Ceiling => "ceiling",
            Scenario::Purge => "purge",
            Scenario::Ordering => "ordering",
            Scenario::SlowClients => "slow-clients",
            Scenario::RateLimit => "rate-limit",
            Scenario::Noisy => "noisy-neighbour",
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Scenario::Sustained => 1,
            Scenario::Latency => 2,
            Scenario::Fanout => 3,
            Scenario::Backlog => 4,
            Scenario::Isolation => 5,
            Scenario::Ceiling => 6,
            Scenario::Purge => 7,
            Scenario::Ordering => 8,
            Scenario::SlowClients => 9,
            Scenario::RateLimit => 10,
            Scenario::Noisy => 11,
        }
    }

    fn parse(word: &str) -> Option<Scenario> {
        let word = word.trim().to_ascii_lowercase();
        Scenario::EVERY
            .into_iter()
            .find(|s| s.name() == word || s.number().to_string() == word)
    }
}

/// `all` or a comma list of numbers and names → the scenarios, each once, in run order.
pub fn parse_scenarios(list: &str) -> Result<Vec<Scenario>, String> {
    if list.trim().eq_ignore_ascii_case("all") {
        return Ok(Scenario::ALL.to_vec());
    }
    let mut picked = Vec::new();
    for word in list.split(',').filter(|w| !w.trim().is_empty()) {
        let s = Scenario::parse(word).ok_or_else(|| {
            format!("unknown scenario {word:?}: use 1-11, sustained, latency, fanout, backlog, isolation, ceiling, purge, ordering, slow-clients, rate-limit, noisy-neighbour or all")
        })?;
        if !picked.contains(&s) {
            picked.push(s);
        }
    }
    if picked.is_empty() {
        return Err("no scenario given".into());
    }
    picked.sort();
    Ok(picked)
}

/// `KEY=VALUE` → the pair.
pub fn parse_env(pairs: &[String]) -> Result<Vec<(String, String)>, String> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("--server-env {p:?}: expected KEY=VALUE"))
        })
        .collect()
}

/// `SERVER:BENCH` CPU lists.
pub fn parse_pin(pin: &str) -> Result<(String, String), String> {
    match pin.split_once(':') {
        Some((s, b)) if !s.is_empty() && !b.is_empty() => Ok((s.to_owned(), b.to_owned())),
        _ => Err(format!(
            "--pin {pin:?}: expected SERVER_CPUS:BENCH_CPUS, e.g. 0:1"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_by_number_name_or_all_in_run_order() {
        assert_eq!(parse_scenarios("all").unwrap(), Scenario::ALL.to_vec());
        assert_eq!(
            parse_scenarios("1,6,latency,1").unwrap(),
            vec![Scenario::Ceiling, Scenario::Sustained, Scenario::Latency]
        );
        assert!(!parse_scenarios("all").unwrap().contains(&Scenario::Purge));
        assert_eq!(
            parse_scenarios("purge,4").unwrap(),
            vec![Scenario::Backlog, Scenario::Purge]
        );
        assert_eq!(parse_scenarios("7").unwrap(), vec![Scenario::Purge]);
        assert_eq!(parse_scenarios("8").unwrap(), vec![Scenario::Ordering]);
        assert_eq!(
            parse_scenarios("rate-limit,slow-clients").unwrap(),
            vec![Scenario::SlowClients, Scenario::RateLimit]
        );
        for only_when_named in [
            Scenario::Ordering,
            Scenario::SlowClients,
            Scenario::RateLimit,
            Scenario::Noisy,
        ] {
            assert!(!parse_scenarios("all").unwrap().contains(&only_when_named));
        }
        assert!(parse_scenarios("12").is_err());
        assert_eq!(
            parse_scenarios("noisy-neighbour,1").unwrap(),
            vec![Scenario::Sustained, Scenario::Noisy]
        );
        assert_eq!(parse_scenarios("11").unwrap(), vec![Scenario::Noisy]);
        assert!(parse_scenarios("").is_err());
    }

    #[test]
    fn pins_and_env() {
        assert_eq!(parse_pin("0:1").unwrap(), ("0".into(), "1".into()));
        assert!(parse_pin("01").is_err());
        assert_eq!(
            parse_env(&["RUST_LOG=warn".into()]).unwrap(),
            vec![("RUST_LOG".into(), "warn".into())]
        );
        assert!(parse_env(&["=x".into()]).is_err());
    }
}
