//! No database password in anything the binary prints (DESIGN 10, "Keys, secrets"): not in
//! `migrate`'s report, not in the error when the database cannot be reached or its URL is
//! refused (`migrate`, `serve`, `worker`, flag or environment), not in the logs at any level and
//! not in `/metrics`. The database is still named, with `***` for the password, so operators
//! can tell which one was meant.
//!
//! Only the last test needs a live PostgreSQL (`ACCOMMADOR_TEST_POSTGRES_URL`, as in the
//! PostgreSQL tests: skipped with a note without it, failing where `CI` is set).

use std::process::Command;

use crate::support::{Output, Server, command, run, run_args};

const PASSWORD: &str = "s3cr3t-pw";
/// Port 1: nothing listens there, so connecting fails at once.
const UNREACHABLE: &str = "postgres://postgres:s3cr3t-pw@127.0.0.1:1/nope";
const POSTGRES_ENV: &str = "ACCOMMADOR_TEST_POSTGRES_URL";

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("creating a temporary directory")
}

/// The command failed, none of its output holds `secret`, and it names `host`.
fn assert_failed_without(what: &str, out: &Output, secret: &str, host: &str) {
    assert!(
        !out.status.success(),
        "{what}: expected a failure\nstdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(!all.contains(secret), "{what}: the password leaked:\n{all}");
    assert!(
        all.contains(host),
        "{what}: the database is not named:\n{all}"
    );
}

/// `args` with the most verbose logging (dependencies' debug and trace logs included).
fn verbose(dir: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = command(dir);
    cmd.env("RUST_LOG", "trace").args(args);
    cmd
}

#[test]
fn migrate_names_an_unreachable_database_without_its_password() {
    let dir = tempdir();
    let out = run_args(dir.path(), &["migrate", "--database", UNREACHABLE]);
    assert_failed_without("migrate --database", &out, PASSWORD, "127.0.0.1:1");
    assert!(
        out.stderr.contains("postgres:***@127.0.0.1:1/nope"),
        "{}",
        out.stderr
    );

    // The same URL from the environment.
    let mut cmd = command(dir.path());
    cmd.env("ACCOMMADOR_DATABASE_URL", UNREACHABLE)
        .arg("migrate");
    let out = run(dir.path(), cmd);
    assert_failed_without(
        "ACCOMMADOR_DATABASE_URL migrate",
        &out,
        PASSWORD,
        "127.0.0.1:1",
    );
}

#[test]
fn serve_and_worker_name_an_unreachable_database_without_its_password() {
    let dir = tempdir();
    for args in [
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database",
            UNREACHABLE,
        ][..],
        &["worker", "--database", UNREACHABLE][..],
    ] {
        let out = run(dir.path(), verbose(dir.path(), args));
        assert_failed_without(args[0], &out, PASSWORD, "127.0.0.1:1");
    }
}

#[test]
fn refused_database_urls_are_shown_without_their_password() {
    let dir = tempdir();
    for (url, host) in [
        // An option tokio-postgres does not know: the URL does not parse.
        (
            "postgres://postgres:s3cr3t-pw@127.0.0.1:1/nope?bogus=1",
            "127.0.0.1:1",
        ),
        // Not a scheme accommador speaks.
        ("mysql://root:s3cr3t-pw@db.example:3306/app", "db.example"),
        // The password as a query option.
        (
            "postgres://postgres@127.0.0.1:1/nope?password=s3cr3t-pw",
            "127.0.0.1:1",
        ),
    ] {
        for command in ["migrate", "serve"] {
            let mut args = vec![command, "--database", url];
            if command == "serve" {
                args.extend(["--listen", "127.0.0.1:0"]);
            }
            let out = run(dir.path(), verbose(dir.path(), &args));
            assert_failed_without(&format!("{command} {url}"), &out, PASSWORD, host);
        }
    }
}

/// The admin URL of the live PostgreSQL, or `None` (after saying why) without one; where `CI`
/// is set a missing URL fails instead.
fn postgres_admin_url() -> Option<String> {
    match std::env::var(POSTGRES_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").unwrap_or_default().is_empty(),
                "CI is set but {POSTGRES_ENV} is not: the PostgreSQL tests must run in CI"
            );
            eprintln!(
                "skipped: set {POSTGRES_ENV}=postgres://postgres@127.0.0.1:5432/postgres to run \
                 the PostgreSQL tests (see README)"
            );
            None
        }
    }
}

#[tokio::test]
async fn a_live_postgres_database_is_migrated_and_served_without_its_password_showing() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let name = format!(
        "acc_redact_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{POSTGRES_ENV} is not reachable: {e}"));
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let _drop = DropDatabase {
        admin: admin.clone(),
        name: name.clone(),
    };

    // The test database with a password: the admin URL's own one if it has one (then that one
    // must not show), else one the server ignores (the local cluster trusts its clients).
    let mut url = url::Url::parse(&admin).expect("the admin URL parses");
    url.set_path(&format!("/{name}"));
    if url.password().is_none() {
        url.set_password(Some("anything-s3cr3t-pw")).unwrap();
    }
    let password = url.password().unwrap().to_owned();
    let decoded = url
        .password()
        .map(|p| {
            url::form_urlencoded::parse(format!("p={p}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        })
        .unwrap();
    let db_url = url.to_string();
    let host = url.host_str().unwrap().to_owned();
    let hidden = |what: &str, text: &str| {
        assert!(
            !text.contains(&password) && !text.contains(&decoded),
            "{what}: the password leaked:\n{text}"
        );
    };

    let dir = tempdir();
    let path = dir.path().to_owned();
    let migrate_url = db_url.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_args(&path, &["migrate", "--database", &migrate_url])
    })
    .await
    .unwrap();
    let out = out.success();
    let all = format!("{}{}", out.stdout, out.stderr);
    hidden("migrate", &all);
    assert!(
        all.contains("migrations applied to") && all.contains(":***@") && all.contains(&host),
        "migrate names the database it migrated: {all}"
    );
    assert!(all.contains(&name), "migrate names the database: {all}");

    // A server on it, logging everything it and its dependencies log; its metrics too.
    let mut cmd = command(dir.path());
    cmd.env("RUST_LOG", "trace")
        .env("ACCOMMADOR_ADMIN_TOKEN", crate::support::ADMIN_TOKEN)
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &db_url]);
    let mut server = Server::spawn(dir.path(), cmd)
        .await
        .unwrap_or_else(|log| panic!("serve did not start:\n{log}"));
    let (_, key) = server.create_org("Acme").await;
    server.create_user(&key, "someone@example.com").await;
    let metrics = server.metrics().await;
    hidden("/metrics", &metrics);
    server.kill();
    hidden("serve's log", &server.log());
}

/// Drops the test's database when the test ends, passed or not.
struct DropDatabase {
    admin: String,
    name: String,
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}
