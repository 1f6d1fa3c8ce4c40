//! The command line (DESIGN 4): `serve`, `worker`, `migrate`, `orgs create`, `secrets
//! reencrypt`, `backup`, `listen`, `verify`; the resource commands of DESIGN 10 are defined in
//! [`crate::client`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "accommador",
    version,
    about = "User-lifecycle webhooks: users, their events, and signed deliveries.",
    long_about = "User-lifecycle webhooks. Every setting has a built-in default, can be set in a \
TOML file (--config), is overridden by ACCOMMADOR_* environment variables, then by flags."
)]
pub struct Cli {
    /// TOML configuration file (keys are the env names without ACCOMMADOR_, lower-cased).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API, the delivery-log UI (/ui/) and the delivery workers (fan-out,
    /// dispatch, retries).
    Serve(ServeArgs),
    /// Run delivery workers only (needs a postgres:// database).
    Worker(WorkerArgs),
    /// Apply database migrations and exit.
    Migrate(DatabaseArgs),
    /// Manage organizations directly on the database.
    #[command(subcommand)]
    Orgs(OrgsCommand),
    /// Endpoint signing secrets at rest (encrypted with ACCOMMADOR_SECRET_KEY).
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Copy a SQLite database, consistently, while its server runs.
    Backup(BackupArgs),
    /// Run a local webhook receiver that verifies and prints each delivery.
    Listen(ListenArgs),
    /// Verify a webhook request saved to files (exit 0 if the signature is valid).
    Verify(VerifyArgs),
    /// Users of your organization, through a running server (--server, --api-key).
    Users(crate::client::commands::Resource<crate::client::commands::UsersCommand>),
    /// Webhook endpoints, through a running server.
    Endpoints(crate::client::commands::Resource<crate::client::commands::EndpointsCommand>),
    /// Deliveries and their attempts (the delivery log), through a running server.
    Deliveries(crate::client::commands::Resource<crate::client::commands::DeliveriesCommand>),
    /// Events in commit order; `events tail` follows new ones, through a running server.
    Events(crate::client::commands::Resource<crate::client::commands::EventsCommand>),
    /// Your organization's API keys, through a running server.
    ApiKeys(crate::client::commands::Resource<crate::client::commands::ApiKeysCommand>),
    /// Print a shell completion script (e.g. `accommador completions bash > …`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// sqlite://PATH or postgres://… [env: ACCOMMADOR_DATABASE_URL] [default: sqlite://accommador.db]
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [env: ACCOMMADOR_LISTEN] [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Serve the API only; deliveries wait in the database for a server or worker with workers.
    #[arg(long)]
    pub no_worker: bool,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Address for /healthz, /readyz and /metrics [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum OrgsCommand {
    /// Create an organization and print its id and a new API key (shown once).
    Create {
        /// The organization's name.
        name: String,
        /// Print {"id", "name", "api_key"} as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Encrypt every stored endpoint secret with the newest key of ACCOMMADOR_SECRET_KEY
    /// (plain-text ones from before the setting included) and print how many were moved.
    ///
    /// Safe beside running servers: it works in batches of at most 1,000 rows, one short
    /// transaction each. Rotating the key: give every server the list "NEW,OLD" and restart
    /// it, run this with the same list, then drop OLD from the list.
    Reencrypt {
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The file to write the copy to (refused if it exists, unless --force).
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Port on 127.0.0.1 to listen on.
    #[arg(long, default_value_t = 8787)]
    pub port: u16,
    /// The endpoint's signing secret; without it requests are printed unverified.
    #[arg(long, value_name = "whsec_…")]
    pub secret: Option<String>,
    /// Print one JSON object per request instead of a readable block.
    #[arg(long)]
    pub json: bool,
    /// Relay each verified delivery (same headers and body) to this URL of your app, report its
    /// answer, and give that answer back to the sender.
    #[arg(long, value_name = "URL")]
    pub forward_to: Option<String>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The endpoint's signing secret (whsec_…).
    #[arg(long, value_name = "whsec_…")]
    pub secret: String,
    /// The request headers: `Name: value` lines (as `curl -D` writes) or a JSON object.
    #[arg(long, value_name = "FILE")]
    pub headers: PathBuf,
    /// The raw request body.
    #[arg(long, value_name = "FILE")]
    pub body: PathBuf,
}
