//! The `accommador` binary: parse the command line, run it, report the whole error chain on
//! one line of stderr and exit non-zero on failure.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = accommador::cli::Cli::parse();
    match accommador::commands::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
