//! `accommador-bench`: the end-to-end benchmark of issues 7, 11 and 12. It starts the `accommador` server,
//! drives the public HTTP API, receives and verifies the signed deliveries itself, and reports
//! rates, latencies, CPU and memory against the targets. `--help` explains the
//! scenarios; BENCHMARKS.md at the repository root records runs.
//!
//! # Layout
//!
//! - [`cli`]: options and scenario selection;
//! - [`server`]: the server process under test;
//! - [`api`]: the public API calls the bench makes;
//! - [`receivers`]: in-process webhook receivers that verify and record every delivery;
//! - [`load`]: closed- and open-loop request drivers;
//! - [`check`]: losses and duplicates against the outbox;
//! - [`stats`]: percentiles, rates, targets; [`procfs`] and [`meter`]: CPU and memory;
//! - [`scenarios`]: the eight scenarios; [`report`]: JSON and the human summary;
//!   [`progress`]: the progress bar.
//!
//! Two runtimes keep the bench's own CPU time apart: the load driver runs on `bench-load`
//! threads (and the main thread), the receivers on `bench-recv` threads.

mod api;
mod check;
mod cli;
mod load;
mod meter;
mod procfs;
mod progress;
mod receivers;
mod report;
mod scenarios;
mod server;
mod stats;

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::cli::{Cli, Scenario, parse_env, parse_pin, parse_scenarios};
use crate::progress::Progress;
use crate::report::{Report, Results};
use crate::scenarios::Bench;
use crate::server::Launcher;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("accommador-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn runtime(name: &str, workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .with_context(|| format!("starting the {name} runtime"))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let scenarios = parse_scenarios(&cli.scenario).map_err(anyhow::Error::msg)?;
    let server_env = parse_env(&cli.server_env).map_err(anyhow::Error::msg)?;
    let pin = cli
        .pin
        .as_deref()
        .map(parse_pin)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let needs_server = scenarios.iter().any(|s| *s != Scenario::Ceiling);
    if needs_server && !cli.server_bin.is_file() {
        anyhow::bail!(
            "no server binary at {} (build it with `cargo build --release -p accommador`, or \
             pass --server-bin)",
            cli.server_bin.display()
        );
    }
    if let Some((_, bench_cpus)) = &pin {
        // Before any thread exists, so every thread of the bench inherits it.
        let status = std::process::Command::new("taskset")
            .args([
                "-a",
                "-p",
                "-c",
                bench_cpus,
                &std::process::id().to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .context("running taskset")?;
        anyhow::ensure!(
            status.success(),
            "taskset -c {bench_cpus} on the bench failed"
        );
    }
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(4);
    let receivers_rt = runtime(meter::RECEIVER_THREADS, workers)?;
    let load_rt = runtime(meter::LOAD_THREADS, workers)?;

    let data = tempfile::Builder::new()
        .prefix("accommador-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    let ticks = procfs::clock_ticks();
    let load_average_at_start = procfs::load_average();
    let progress = Progress {
        bars: !cli.no_progress && std::io::stderr().is_terminal(),
    };
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let bench = Bench {
        launcher: Launcher {
            bin: cli.server_bin.clone(),
            cpus: pin.as_ref().map(|(s, _)| s.clone()),
            env: server_env,
            log_dir: data.path().to_owned(),
            clock_ticks: ticks,
        },
        receivers_runtime: receivers_rt.handle().clone(),
        data_dir: data.path().to_owned(),
        progress,
        ticks,
        cli,
    };

    let mut results = Results::default();
    load_rt.block_on(async {
        for scenario in &scenarios {
            bench.progress.note(&format!(
                "scenario {} ({})",
                scenario.number(),
                scenario.name()
            ));
            let outcome = match scenario {
                Scenario::Ceiling => scenarios::ceiling(&bench)
                    .await
                    .map(|r| results.ceiling = Some(r)),
                Scenario::Sustained => scenarios::sustained(&bench)
                    .await
                    .map(|r| results.sustained = Some(r)),
                Scenario::Latency => scenarios::latency(&bench)
                    .await
                    .map(|r| results.latency = Some(r)),
                Scenario::Isolation => scenarios::isolation(&bench)
                    .await
                    .map(|r| results.isolation = Some(r)),
                Scenario::Fanout => scenarios::fanout(&bench)
                    .await
                    .map(|r| results.fanout = Some(r)),
                Scenario::Backlog => scenarios::backlog(&bench)
                    .await
                    .map(|r| results.backlog = Some(r)),
                Scenario::Purge => scenarios::purge(&bench)
                    .await
                    .map(|r| results.purge = Some(r)),
                Scenario::Ordering => scenarios::ordering(&bench)
                    .await
                    .map(|r| results.ordering = Some(r)),
                Scenario::SlowClients => scenarios::slow_clients(&bench)
                    .await
                    .map(|r| results.slow_clients = Some(r)),
                Scenario::RateLimit => scenarios::rate_limit(&bench)
                    .await
                    .map(|r| results.rate_limit = Some(r)),
                Scenario::Noisy => scenarios::noisy(&bench)
                    .await
                    .map(|r| results.noisy = Some(r)),
            };
            if let Err(e) = outcome {
                bench
                    .progress
                    .note(&format!("  {}: {e:#}", scenario.name()));
                results
                    .errors
                    .insert(scenario.name().to_owned(), format!("{e:#}"));
            }
        }
    });

    let cli = &bench.cli;
    let postgres = cli
        .database
        .as_deref()
        .is_some_and(|d| d.starts_with("postgres://") || d.starts_with("postgresql://"));
    let report = Report {
        tool: concat!("accommador-bench ", env!("CARGO_PKG_VERSION")).to_owned(),
        started_at,
        command: std::env::args().collect(),
        machine: procfs::machine(),
        server_bin: cli.server_bin.display().to_string(),
        database: cli
            .database
            .clone()
            .unwrap_or_else(|| "sqlite:// (a fresh file per scenario, default settings)".into()),
        pin: cli.pin.clone(),
        server_env: cli.server_env.clone(),
        connections: cli.connections,
        load_average_at_start,
        targets: report::targets(&results, postgres),
        correctness: report::correctness(&results),
        results,
    };
    print!("{}", report::human(&report));
    if let Some(path) = &cli.json {
        let json = serde_json::to_string_pretty(&report).context("rendering JSON")?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("JSON written to {}", path.display());
    }
    if cli.keep_data {
        let kept = data.keep();
        eprintln!("databases and server logs kept in {}", kept.display());
    }
    // Hanging receivers and idle connections need no goodbye.
    load_rt.shutdown_background();
    receivers_rt.shutdown_background();
    Ok(if !report.results.errors.is_empty() {
        ExitCode::from(1)
    } else if !report.correctness.ok {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
