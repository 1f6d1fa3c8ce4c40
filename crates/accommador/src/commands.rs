//! What each subcommand does, on top of the library; `main` only parses and reports.

use std::collections::BTreeMap;

use anyhow::{Context, bail};

use crate::cli::{BackupArgs, Cli, Command, DatabaseArgs, OrgsCommand, SecretsCommand, VerifyArgs};
use crate::config::{Overrides, Settings};
use crate::service::{Service, ServiceError};
use crate::startup::{Application, shutdown_signal};
use crate::store::{DatabaseUrl, Ownership, Store};
use crate::telemetry;

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config.as_deref();
    match cli.command {
        Command::Serve(args) => {
            let settings = Settings::load(
                config,
                &Overrides {
                    listen: args.listen,
                    database_url: args.database.database,
                },
            )?;
            telemetry::init_logging(settings.log_format);
            if args.no_worker {
                tracing::info!(
                    "--no-worker: serving the API only; deliveries wait in the database"
                );
            }
            let options = crate::startup::Options {
                workers: !args.no_worker,
                ..Default::default()
            };
            let app = Application::build_with(&settings, options).await?;
            app.run_until(shutdown_signal()).await
        }
        Command::Worker(args) => {
            let settings = Settings::load(
                config,
                &Overrides {
                    listen: args.listen,
                    database_url: args.database.database,
                },
            )?;
            match DatabaseUrl::parse(&settings.database_url) {
                Ok(DatabaseUrl::Sqlite(_)) => bail!(
                    "`accommador worker` needs a postgres:// database; with SQLite, \
                     `accommador serve` runs the delivery workers in its own process"
                ),
                Ok(DatabaseUrl::Postgres(_)) => {}
                Err(e) => bail!(e),
            }
            telemetry::init_logging(settings.log_format);
            let options = crate::startup::Options {
                api: false,
                ..Default::default()
            };
            let app = Application::build_with(&settings, options).await?;
            app.run_until(shutdown_signal()).await
        }
        Command::Migrate(args) => {
            let settings = load_with_database(config, &args)?;
            open_tool_store(&settings).await?;
            // Names the database, never its password.
            eprintln!(
                "migrations applied to {}",
                crate::config::redact_database_url(&settings.database_url)
            );
            Ok(())
        }
        Command::Orgs(OrgsCommand::Create {
            name,
            json,
            database,
        }) => {
            let settings = load_with_database(config, &database)?;
            let store = open_tool_store(&settings).await?;
            let (handle, _) = crate::delivery::DeliveryHandle::new(&store);
            let guard = crate::delivery::guard::AddressGuard::new(
                std::sync::Arc::new(crate::delivery::guard::SystemLookup),
                settings.allow_private_targets,
            );
            let org = match Service::new(store, handle, guard).create_org(&name).await {
                Ok(org) => org,
                Err(ServiceError::Invalid(errors)) => {
                    bail!("invalid organization name: {}", errors[0].detail)
                }
                Err(e) => return Err(e).context("creating the organization"),
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({"id": org.id, "name": org.name, "api_key": org.api_key})
                );
            } else {
                println!("organization: {}", org.id);
                println!("api key:      {}", org.api_key);
                eprintln!("(the API key is shown only now; store it somewhere safe)");
            }
            Ok(())
        }
        Command::Secrets(SecretsCommand::Reencrypt { database }) => {
            let settings = load_with_database(config, &database)?;
            reencrypt(&settings).await
        }
        Command::Backup(args) => {
            let settings = load_with_database(config, &args.database)?;
            backup(&settings, &args)
        }
        Command::Listen(args) => {
            crate::listen::run(
                args.port,
                args.secret.as_deref(),
                args.json,
                args.forward_to.as_deref(),
            )
            .await
        }
        Command::Verify(args) => verify(&args),
        Command::Users(r) => crate::client::commands::users(r).await,
        Command::Endpoints(r) => crate::client::commands::endpoints(r).await,
        Command::Deliveries(r) => crate::client::commands::deliveries(r).await,
        Command::Events(r) => crate::client::commands::events(r).await,
        Command::ApiKeys(r) => crate::client::commands::api_keys(r).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "accommador",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

fn load_with_database(
    config: Option<&std::path::Path>,
    db: &DatabaseArgs,
) -> anyhow::Result<Settings> {
    Settings::load(
        config,
        &Overrides {
            listen: None,
            database_url: db.database.clone(),
        },
    )
}

async fn open_tool_store(settings: &Settings) -> anyhow::Result<Store> {
    let url = DatabaseUrl::parse(&settings.database_url).map_err(anyhow::Error::msg)?;
    Store::open(&url, Ownership::Tool, 2)
        .await
        .context("opening the store")
}

/// `secrets reencrypt`: every stored endpoint secret to the newest key, batch by batch.
async fn reencrypt(settings: &Settings) -> anyhow::Result<()> {
    let keys = settings.secret_keys()?;
    let Some(newest) = keys.newest_id().map(str::to_owned) else {
        bail!(
            "ACCOMMADOR_SECRET_KEY is not set: it holds the key to encrypt with (base64 of 32 \
             random bytes, e.g. `openssl rand -base64 32`; a comma-separated list, newest first)"
        );
    };
    let store = open_tool_store(settings).await?.with_secret_keys(keys);
    let (mut moved, mut after) = (0, 0);
    while let Some(step) = store
        .reencrypt_step(after)
        .await
        .context("re-encrypting endpoint secrets")?
    {
        moved += step.moved;
        after = step.last_seq;
    }
    println!("{moved} endpoint secrets re-encrypted with key id {newest}");
    Ok(())
}

/// `backup`: a consistent copy of a SQLite database (PostgreSQL has its own tools).
fn backup(settings: &Settings, args: &BackupArgs) -> anyhow::Result<()> {
    let path = match DatabaseUrl::parse(&settings.database_url).map_err(anyhow::Error::msg)? {
        DatabaseUrl::Sqlite(path) => path,
        DatabaseUrl::Postgres(_) => bail!(
            "`accommador backup` copies the embedded SQLite database; back up PostgreSQL with \
             pg_dump (e.g. `pg_dump --format=custom --file=accommador.dump \"$DATABASE_URL\"`) \
             or your provider's backups"
        ),
    };
    let done = crate::store::sqlite::backup::backup(&path, &args.to, args.force)?;
    println!(
        "backed up sqlite://{} to {} ({} bytes, integrity ok)",
        path.display(),
        args.to.display(),
        done.bytes
    );
    Ok(())
}

fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    use accommador_webhooks::{Secret, Verifier, WebhookHeaders};
    let secret = Secret::parse(&args.secret).context("--secret")?;
    let raw = std::fs::read_to_string(&args.headers)
        .with_context(|| format!("reading {}", args.headers.display()))?;
    let body =
        std::fs::read(&args.body).with_context(|| format!("reading {}", args.body.display()))?;
    let pairs = parse_header_file(&raw)
        .with_context(|| format!("reading headers from {}", args.headers.display()))?;
    let headers = WebhookHeaders::from_pairs(pairs.iter().map(|(k, v)| (k, v)))?;
    Verifier::new(secret).verify(&headers, &body)?;
    println!("valid signature for webhook-id {}", headers.id);
    Ok(())
}

/// `Name: value` lines (a status line and blank lines are skipped), or a JSON object.
fn parse_header_file(raw: &str) -> anyhow::Result<Vec<(String, String)>> {
    if raw.trim_start().starts_with('{') {
        let map: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(raw).context("the headers file is not a JSON object")?;
        return Ok(map
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect());
    }
    Ok(raw
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| !name.contains(' ') && !name.is_empty())
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_files_in_curl_and_json_forms() {
        let curl = "HTTP/1.1 200 OK\r\nwebhook-id: msg_1\r\nWebhook-Timestamp: 123\r\n\r\n";
        assert_eq!(
            parse_header_file(curl).unwrap(),
            vec![
                ("webhook-id".into(), "msg_1".into()),
                ("Webhook-Timestamp".into(), "123".into())
            ]
        );
        let json = r#"{"webhook-id": "msg_1", "webhook-timestamp": 123}"#;
        assert_eq!(
            parse_header_file(json).unwrap(),
            vec![
                ("webhook-id".into(), "msg_1".into()),
                ("webhook-timestamp".into(), "123".into())
            ]
        );
    }
}
