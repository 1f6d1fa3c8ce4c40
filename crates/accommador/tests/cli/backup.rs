//! `accommador backup` with the real binary: a copy taken while a writer creates users through
//! the API holds every user committed before the backup began, passes `PRAGMA
//! integrity_check`, and is served by a fresh server once copied into place.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::support::{Server, run_args, sqlite_url};
use crate::{ADMIN, tempdir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_during_writes_restores_every_user_committed_before_it() {
    let dir = tempdir();
    let db = dir.path().join("live.db");
    let server = Arc::new(Server::start(dir.path(), &db, &[ADMIN]).await);
    let (_, key) = server.create_org("Acme").await;

    // A writer creating users one after another; each is recorded once its 201 arrived.
    let committed = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (server, key, committed, stop) =
            (server.clone(), key.clone(), committed.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 5_000 {
                let user = server
                    .create_user(&key, &format!("user{n}@example.com"))
                    .await;
                committed
                    .lock()
                    .unwrap()
                    .push(user["id"].as_str().unwrap().to_owned());
                n += 1;
            }
        })
    };
    // Some users first, so the copy has something to hold.
    while committed.lock().unwrap().len() < 30 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let before: BTreeSet<String> = committed.lock().unwrap().iter().cloned().collect();
    let copy = dir.path().join("backup.db");
    let (cwd, url, to) = (
        dir.path().to_owned(),
        sqlite_url(&db),
        copy.to_str().unwrap().to_owned(),
    );
    let out = tokio::task::spawn_blocking(move || {
        run_args(&cwd, &["backup", "--database", &url, "--to", &to])
    })
    .await
    .unwrap()
    .success();
    assert!(out.stdout.contains("integrity ok"), "{}", out.stdout);
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();

    let check = rusqlite::Connection::open(&copy).unwrap();
    let verdict: String = check
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(verdict, "ok");
    drop(check);

    // Restore: the copy put in place of a database, served by a fresh server.
    let restored_dir = tempdir();
    let restored = restored_dir.path().join("accommador.db");
    std::fs::copy(&copy, &restored).unwrap();
    let fresh = Server::start(restored_dir.path(), &restored, &[ADMIN]).await;
    let users: BTreeSet<String> = fresh
        .list_all(&key, "/v1/users?limit=100")
        .await
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect();
    let missing: Vec<&String> = before.difference(&users).collect();
    assert!(
        missing.is_empty(),
        "users committed before the backup are missing: {missing:?}"
    );
    let all: BTreeSet<String> = committed.lock().unwrap().iter().cloned().collect();
    assert!(users.is_subset(&all), "the copy holds users nobody created");
    // The restored server takes writes.
    fresh.create_user(&key, "after-restore@example.com").await;
}

#[test]
fn a_backup_never_overwrites_unless_told_and_points_postgres_users_to_pg_dump() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    run_args(dir.path(), &["migrate", "--database", &sqlite_url(&db)]).success();
    let copy = dir.path().join("copy.db");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["backup", "--database", &sqlite_url(&db), "--to"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.push(copy.to_str().unwrap().to_owned());
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let argv = args(&[]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    run_args(dir.path(), &argv).success();

    std::fs::write(&copy, b"precious").unwrap();
    let line = run_args(dir.path(), &argv).one_line_failure();
    assert!(
        line.contains("already exists") && line.contains("--force"),
        "{line}"
    );
    assert_eq!(std::fs::read(&copy).unwrap(), b"precious");

    let itself = sqlite_url(&db);
    let line = run_args(
        dir.path(),
        &[
            "backup",
            "--database",
            &itself,
            "--to",
            db.to_str().unwrap(),
            "--force",
        ],
    )
    .one_line_failure();
    assert!(line.contains("is the database itself"), "{line}");

    let forced = args(&["--force"]);
    let forced: Vec<&str> = forced.iter().map(String::as_str).collect();
    run_args(dir.path(), &forced).success();
    assert_ne!(std::fs::read(&copy).unwrap(), b"precious");

    let line = run_args(
        dir.path(),
        &[
            "backup",
            "--database",
            "postgres://app:hunter2@db.internal/app",
            "--to",
            "x.dump",
        ],
    )
    .one_line_failure();
    assert!(line.contains("pg_dump"), "{line}");
    assert!(!line.contains("hunter2"), "{line}");

    let line = run_args(
        dir.path(),
        &[
            "backup",
            "--database",
            &sqlite_url(&dir.path().join("missing.db")),
            "--to",
            "y.db",
        ],
    )
    .one_line_failure();
    assert!(line.contains("no SQLite database at"), "{line}");
}
