//! The resource CLI (DESIGN 10) as a person or a script uses it: the real binary against a real
//! server on port 0 (SQLite, and PostgreSQL when `ACCOMMADOR_TEST_POSTGRES_URL` is set), every
//! command's `--json` output parsed, tables read, errors exiting non-zero with the server's
//! detail, and `events tail` following events across a server restart.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use accommador_webhooks::{UserData, WebhookEvent};
use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, Database, Output, Server, command, file_says, run};

/// `serve` on `db`, on `listen` (port 0 unless a restart needs the old address).
pub(crate) async fn serve(dir: &Path, db: &Database, listen: &str) -> Server {
    let mut cmd = command(dir);
    cmd.env("ACCOMMADOR_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("ACCOMMADOR_ALLOW_PRIVATE_TARGETS", "true")
        .env("ACCOMMADOR_RETRY_SCHEDULE", "100ms")
        .args(["serve", "--listen", listen, "--database", &db.url]);
    Server::spawn(dir, cmd)
        .await
        .unwrap_or_else(|log| panic!("serve did not start:\n{log}"))
}

/// A temporary directory, a server on `db` there, and the API key of a new organization.
pub(crate) async fn start(db: &Database) -> (tempfile::TempDir, Server, String) {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), db, "127.0.0.1:0").await;
    let (_, key) = server.create_org("Acme").await;
    (dir, server, key)
}

/// The resource CLI pointed at one server with one key (given by flag or by environment).
pub(crate) struct Client<'a> {
    pub dir: &'a Path,
    pub server: String,
    pub key: String,
}

impl<'a> Client<'a> {
    pub fn of(dir: &'a Path, server: &Server, key: &str) -> Client<'a> {
        Client {
            dir,
            server: server.url(""),
            key: key.to_owned(),
        }
    }

    /// The binary with `args`, the server and key in `ACCOMMADOR_SERVER`/`ACCOMMADOR_API_KEY`.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = command(self.dir);
        cmd.env("ACCOMMADOR_SERVER", &self.server)
            .env("ACCOMMADOR_API_KEY", &self.key)
            .args(args);
        run(self.dir, cmd)
    }

    /// `args --json`: succeeds, prints exactly one line of JSON, returned parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.run(&all).success();
        let lines: Vec<&str> = out.stdout.trim_end().lines().collect();
        assert_eq!(lines.len(), 1, "{args:?} --json printed:\n{}", out.stdout);
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {}", lines[0]))
    }

    /// `args`: fails with one line on stderr, returned.
    pub fn fails(&self, args: &[&str]) -> String {
        self.run(args).one_line_failure()
    }
}

/// Two tests running one scenario: on a SQLite file, and on a fresh PostgreSQL database.
macro_rules! on_both_backends {
    ($sqlite:ident, $postgres:ident, $scenario:ident, $tag:literal) => {
        #[tokio::test]
        async fn $sqlite() {
            let dir = tempfile::tempdir().unwrap();
            $scenario(Database::sqlite(dir.path())).await;
        }

        #[tokio::test]
        async fn $postgres() {
            if let Some(db) = Database::postgres($tag).await {
                $scenario(db).await;
            }
        }
    };
}

fn id(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_owned()
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(id)
        .collect()
}

/// A local receiver answering 200 `thanks` and recording each body.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let seen = seen.clone();
        async move {
            seen.lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            (axum::http::StatusCode::OK, "thanks")
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hooks"), got)
}

/// Polls `check` (bounded, 30 s) until it returns `Some`.
pub(crate) async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// Users ---------------------------------------------------------------------------------------

async fn users_scenario(db: Database) {
    let (dir, server, key) = start(&db).await;
    let cli = Client::of(dir.path(), &server, &key);

    let ada = cli.json(&[
        "users",
        "create",
        "--email",
        "ada@example.com",
        "--name",
        "Ada",
        "--attributes",
        r#"{"plan":"pro"}"#,
    ]);
    assert!(id(&ada).starts_with("usr_"), "{ada}");
    assert_eq!(ada["attributes"], json!({"plan": "pro"}));
    assert_eq!(ada["version"], 1);
    let ada_id = id(&ada);

    // The same idempotency key twice makes one user.
    let first = cli.json(&[
        "users",
        "create",
        "--email",
        "bob@example.com",
        "--idempotency-key",
        "k-1",
    ]);
    let again = cli.json(&[
        "users",
        "create",
        "--email",
        "bob@example.com",
        "--idempotency-key",
        "k-1",
    ]);
    assert_eq!(id(&first), id(&again));
    cli.json(&["users", "create", "--email", "cy@example.com"]);

    assert_eq!(cli.json(&["users", "get", &ada_id]), ada);

    let updated = cli.json(&["users", "update", &ada_id, "--name", "Ada L."]);
    assert_eq!(updated["name"], "Ada L.");
    assert_eq!(updated["version"], 2);

    // One page of two, then --all across pages.
    let page = cli.json(&["users", "list", "--limit", "2"]);
    assert_eq!(ids(&page).len(), 2, "{page}");
    assert!(page["next_cursor"].is_string(), "{page}");
    let rest = cli.json(&[
        "users",
        "list",
        "--after",
        page["next_cursor"].as_str().unwrap(),
    ]);
    assert_eq!(ids(&rest).len(), 1, "{rest}");
    let all = cli
        .run(&["users", "list", "--all", "--limit", "1", "--json"])
        .success();
    assert!(
        all.stderr.is_empty(),
        "a progress bar (or anything) on a piped stderr: {}",
        all.stderr
    );
    let all: Value = serde_json::from_str(all.stdout.trim()).unwrap();
    assert_eq!(all["next_cursor"], Value::Null);
    assert_eq!(
        ids(&all),
        [ids(&page), ids(&rest)].concat(),
        "--all is every page in order"
    );

    // A table for people: a heading and one row per user.
    let table = cli.run(&["users", "list"]).success().stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[0].contains("ID") && lines[0].contains("EMAIL"),
        "{table}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&ada_id) && l.contains("ada@example.com") && l.contains("Ada L.")),
        "{table}"
    );
    let shown = cli.run(&["users", "get", &ada_id]).success().stdout;
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("email") && l.contains("ada@example.com")),
        "{shown}"
    );

    let deleted = cli.json(&["users", "delete", &ada_id]);
    assert_eq!(deleted, json!({"id": ada_id, "result": "deleted"}));
    let line = cli.fails(&["users", "get", &ada_id]);
    assert!(line.contains("404"), "{line}");

    let bob = id(&first);
    assert_eq!(
        cli.json(&["users", "erase", &bob]),
        json!({"id": bob, "result": "erasure started"})
    );
    let erased = eventually("bob's events to be erased", || {
        let events = cli.json(&["events", "list", "--user-id", &bob]);
        let data = events["data"].as_array().unwrap().clone();
        let done = data.len() == 2
            && data
                .iter()
                .all(|e| e["data"]["user"] == json!({"id": bob, "erased": true}));
        done.then_some(data)
    })
    .await;
    assert_eq!(erased[1]["type"], "user.deleted");
    // The receiver crate reads the erased form as such.
    for event in &erased {
        let typed = WebhookEvent::from_slice(&serde_json::to_vec(event).unwrap()).unwrap();
        assert!(
            matches!(typed.user(), Some(UserData::Erased { user }) if user.id == bob),
            "{typed:?}"
        );
    }
    let table = cli
        .run(&["events", "list", "--user-id", &bob])
        .success()
        .stdout;
    assert!(
        table.lines().skip(1).all(|l| l.contains(&bob)) && table.lines().count() == 3,
        "{table}"
    );

    drop(server);
    db.drop_pg().await;
}

on_both_backends!(
    users_commands_create_read_page_update_delete_and_erase_on_sqlite,
    users_commands_create_read_page_update_delete_and_erase_on_postgres,
    users_scenario,
    "users"
);

// Endpoints, deliveries, events, keys ---------------------------------------------------------

async fn endpoints_scenario(db: Database) {
    let (dir, server, key) = start(&db).await;
    let cli = Client::of(dir.path(), &server, &key);
    let (hooks, got) = receiver().await;

    let ep = cli.json(&[
        "endpoints",
        "create",
        "--url",
        &hooks,
        "--event-types",
        "user.created,user.updated",
        "--description",
        "CRM",
    ]);
    let ep_id = id(&ep);
    assert!(ep_id.starts_with("ep_"), "{ep}");
    assert!(ep["secret"].as_str().unwrap().starts_with("whsec_"), "{ep}");
    assert_eq!(ep["event_types"], json!(["user.created", "user.updated"]));
    let got_ep = cli.json(&["endpoints", "get", &ep_id]);
    assert_eq!(got_ep["description"], "CRM");
    assert!(
        got_ep.get("secret").is_none(),
        "get shows the secret: {got_ep}"
    );
    assert_eq!(ids(&cli.json(&["endpoints", "list"])), vec![ep_id.clone()]);
    let renamed = cli.json(&["endpoints", "update", &ep_id, "--description", "CRM sync"]);
    assert_eq!(renamed["description"], "CRM sync");
    let rotated = cli.json(&["endpoints", "rotate-secret", &ep_id]);
    assert!(rotated["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_ne!(rotated["secret"], ep["secret"]);

    assert_eq!(
        cli.json(&["endpoints", "test", &ep_id]),
        json!({"id": ep_id, "result": "test event queued"})
    );
    let user = cli.json(&["users", "create", "--email", "dee@example.com"]);
    let user_id = id(&user);

    // The user.created delivery succeeds at the local receiver.
    let delivery = eventually("a succeeded user.created delivery", || {
        let list = cli.json(&[
            "deliveries",
            "list",
            "--endpoint-id",
            &ep_id,
            "--event-type",
            "user.created",
        ]);
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["status"] == "succeeded")
            .cloned()
    })
    .await;
    let dlv_id = id(&delivery);
    assert!(
        got.lock()
            .unwrap()
            .iter()
            .any(|b| b["type"] == "user.created" && b["data"]["user"]["id"] == user_id.as_str()),
        "the receiver never got the user.created event"
    );
    assert!(
        got.lock()
            .unwrap()
            .iter()
            .any(|b| b["type"] == "webhook.test"),
        "the receiver never got the test event"
    );
    // The receiver crate reads every real delivery as its typed event.
    for body in got.lock().unwrap().iter() {
        match WebhookEvent::from_slice(&serde_json::to_vec(body).unwrap()).unwrap() {
            WebhookEvent::UserCreated(e) => assert_eq!(e.data.user_id(), user_id),
            WebhookEvent::WebhookTest(e) => assert_eq!(e.data.endpoint_id, ep_id),
            other => panic!("an unexpected delivery: {other:?}"),
        }
    }
    assert_eq!(
        cli.json(&["deliveries", "get", &dlv_id])["status"],
        "succeeded"
    );
    let attempts = cli.json(&["deliveries", "attempts", &dlv_id]);
    assert_eq!(attempts["data"][0]["status_code"], 200, "{attempts}");
    assert_eq!(attempts["data"][0]["response_body"], "thanks", "{attempts}");
    let table = cli
        .run(&["deliveries", "attempts", &dlv_id])
        .success()
        .stdout;
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("200") && l.contains("scheduled")),
        "{table}"
    );

    assert_eq!(
        cli.json(&["deliveries", "retry", &dlv_id]),
        json!({"id": dlv_id, "result": "retry queued"})
    );
    let manual = eventually("the manual attempt", || {
        let a = cli.json(&["deliveries", "attempts", &dlv_id]);
        let data = a["data"].as_array().unwrap().clone();
        (data.len() == 2).then_some(data)
    })
    .await;
    assert_eq!(manual[1]["trigger"], "manual");

    // Events: list, get (the webhook body), filtered by type.
    let events = cli.json(&["events", "list", "--type", "user.created"]);
    assert_eq!(events["data"].as_array().unwrap().len(), 1, "{events}");
    let evt_id = id(&events["data"][0]);
    assert_eq!(cli.json(&["events", "get", &evt_id]), events["data"][0]);

    // Disabled while a user changes: recover creates the missed delivery. A second endpoint
    // getting that event shows its fan-out is over before the first is enabled again.
    let since = delivery["created_at"].as_str().unwrap().to_owned();
    let witness = id(&cli.json(&["endpoints", "create", "--url", &hooks]));
    let disabled = cli.json(&["endpoints", "update", &ep_id, "--status", "disabled"]);
    assert_eq!(disabled["status"], "disabled");
    let eve = id(&cli.json(&["users", "create", "--email", "eve@example.com"]));
    let eve_event = id(&cli.json(&["events", "list", "--user-id", &eve])["data"][0]);
    eventually("the fan-out of eve's event", || {
        let list = cli.json(&["deliveries", "list", "--event-id", &eve_event]);
        (ids(&list).len() == 1 && list["data"][0]["endpoint_id"] == witness.as_str()).then_some(())
    })
    .await;
    cli.json(&["endpoints", "update", &ep_id, "--status", "enabled"]);
    let recovered = cli.json(&["endpoints", "recover", &ep_id, "--since", &since]);
    assert_eq!(recovered["created"], 1, "{recovered}");
    let out = cli
        .run(&["endpoints", "recover", &ep_id, "--since", &since])
        .success();
    assert!(
        out.stdout.contains("re-queued 0") && out.stdout.contains("created 0"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.is_empty(),
        "a spinner on a piped stderr: {}",
        out.stderr
    );

    // API keys: a new key works; revoking it makes it fail.
    let made = cli.json(&["api-keys", "create", "ci"]);
    let new_key = made["api_key"].as_str().unwrap().to_owned();
    let keys = cli.json(&["api-keys", "list"]);
    assert!(ids(&keys).contains(&id(&made)), "{keys}");
    assert!(
        keys["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("api_key").is_none()),
        "the list shows a secret: {keys}"
    );
    let with_new = Client {
        dir: dir.path(),
        server: cli.server.clone(),
        key: new_key,
    };
    with_new.json(&["users", "list"]);
    assert_eq!(
        cli.json(&["api-keys", "revoke", &id(&made)]),
        json!({"id": id(&made), "result": "revoked"})
    );
    let line = eventually("the revoked key to be refused", || {
        let out = with_new.run(&["users", "list"]);
        (!out.status.success()).then(|| out.one_line_failure())
    })
    .await;
    assert!(line.contains("401"), "{line}");

    assert_eq!(
        cli.json(&["endpoints", "delete", &ep_id]),
        json!({"id": ep_id, "result": "deleted"})
    );
    assert!(cli.fails(&["endpoints", "get", &ep_id]).contains("404"));

    drop(server);
    db.drop_pg().await;
}

on_both_backends!(
    endpoint_delivery_event_and_key_commands_work_end_to_end_on_sqlite,
    endpoint_delivery_event_and_key_commands_work_end_to_end_on_postgres,
    endpoints_scenario,
    "endpoints"
);

// Errors --------------------------------------------------------------------------------------

#[tokio::test]
async fn api_errors_print_the_detail_and_the_fields_and_exit_non_zero() {
    let files = tempfile::tempdir().unwrap();
    let (dir, server, key) = start(&Database::sqlite(files.path())).await;
    let cli = Client::of(dir.path(), &server, &key);

    let line = cli.fails(&["users", "create", "--email", "not-an-email"]);
    assert!(line.contains("422") && line.contains("email:"), "{line}");
    let line = cli.fails(&["endpoints", "create", "--url", "ftp://x.example", "--json"]);
    assert!(line.contains("422") && line.contains("url:"), "{line}");
    let line = cli.fails(&["users", "get", "usr_00000000000000000000000000"]);
    assert!(line.contains("404"), "{line}");
    cli.json(&["users", "create", "--email", "twice@example.com"]);
    let line = cli.fails(&["users", "create", "--email", "twice@example.com"]);
    assert!(line.contains("409"), "{line}");
    let line = cli.fails(&["api-keys", "revoke", "key_00000000000000000000000000"]);
    assert!(line.contains("404"), "{line}");
    let line = cli.fails(&["users", "update", "usr_00000000000000000000000000"]);
    assert!(line.contains("nothing to update"), "{line}");

    // A wrong key, no key, no server: each its own message; the key never printed.
    let wrong = Client {
        dir: dir.path(),
        server: server.url(""),
        key: "acm_wrong_key_for_this_test".into(),
    };
    let line = wrong.fails(&["users", "list"]);
    assert!(line.contains("401"), "{line}");
    assert!(!line.contains("acm_wrong_key_for_this_test"), "{line}");
    let mut cmd = command(dir.path());
    cmd.args(["users", "list", "--server", &server.url("")]);
    let line = run(dir.path(), cmd).one_line_failure();
    assert!(line.contains("API key"), "{line}");
    let out = Client {
        dir: dir.path(),
        server: "http://127.0.0.1:9".into(),
        key,
    }
    .run(&["users", "list"]);
    let line = out.one_line_failure();
    assert!(
        line.contains("cannot reach") && line.contains("127.0.0.1:9"),
        "{line}"
    );
}

// events tail ---------------------------------------------------------------------------------

fn tail_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

async fn tail_scenario(db: Database) {
    let (dir, mut server, key) = start(&db).await;
    let addr = server.addr;
    let cli = Client::of(dir.path(), &server, &key);
    // Before the tail starts: not printed.
    cli.json(&["users", "create", "--email", "before@example.com"]);

    let out = dir.path().join("tail.out");
    let err = dir.path().join("tail.err");
    let mut tail = command(dir.path())
        .args(["events", "tail", "--json", "--interval", "100ms"])
        .args(["--server", &cli.server, "--api-key", &key])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    file_says(&err, "following").await;

    let mut expected = Vec::new();
    for n in 0..3 {
        expected.push(id(&cli.json(&[
            "users",
            "create",
            "--email",
            &format!("a{n}@example.com"),
        ])));
    }
    eventually("the first events", || {
        (tail_lines(&out).len() >= 3).then_some(())
    })
    .await;

    server.kill();
    // The tail notices the server is gone before it comes back.
    file_says(&err, "lost the server").await;
    let server = serve(dir.path(), &db, &addr.to_string()).await;
    assert_eq!(server.addr, addr);
    for n in 0..3 {
        expected.push(id(&cli.json(&[
            "users",
            "create",
            "--email",
            &format!("b{n}@example.com"),
        ])));
    }
    let printed = eventually("the events after the restart", || {
        let lines = tail_lines(&out);
        (lines.len() >= 6).then_some(lines)
    })
    .await;
    // A little longer: nothing is printed twice.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let printed_after = tail_lines(&out);
    let _ = tail.kill();
    let _ = tail.wait();
    assert_eq!(printed_after.len(), printed.len(), "events printed twice");
    let users: Vec<String> = printed
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "user.created", "{e}");
            e["data"]["user"]["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(users, expected, "missed, repeated or out of order");
    assert!(
        std::fs::read_to_string(&err)
            .unwrap()
            .contains("the server is back"),
        "tail said nothing about reconnecting"
    );
    drop(server);
    db.drop_pg().await;
}

on_both_backends!(
    events_tail_follows_new_events_across_a_server_restart_on_sqlite,
    events_tail_follows_new_events_across_a_server_restart_on_postgres,
    tail_scenario,
    "tail"
);

// Completions and help ------------------------------------------------------------------------

#[test]
fn completions_are_printed_for_bash_zsh_and_fish() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let mut cmd = command(dir.path());
        cmd.args(["completions", shell]);
        let out = run(dir.path(), cmd).success();
        assert!(out.stdout.contains("accommador"), "{shell}: {}", out.stdout);
        for word in ["users", "endpoints", "rotate-secret", "tail", "api-keys"] {
            assert!(out.stdout.contains(word), "{shell} completions lack {word}");
        }
    }
    let mut cmd = command(dir.path());
    cmd.args(["completions", "tcsh-ish"]);
    let out = run(dir.path(), cmd);
    assert!(!out.status.success(), "an unknown shell was accepted");
}

/// On a terminal (a pseudo-terminal from util-linux `script`) a long listing shows a progress
/// bar on stderr; piped, it shows none (asserted in the users scenario).
#[tokio::test]
async fn a_long_listing_shows_a_progress_bar_on_a_terminal() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no `script` to give the command a terminal");
        return;
    }
    let files = tempfile::tempdir().unwrap();
    let (dir, server, key) = start(&Database::sqlite(files.path())).await;
    let cli = Client::of(dir.path(), &server, &key);
    cli.json(&["users", "create", "--email", "tty@example.com"]);
    let line = format!("{} users list --all --limit 1", crate::support::BIN);
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .current_dir(dir.path())
        .env("ACCOMMADOR_SERVER", &cli.server)
        .env("ACCOMMADOR_API_KEY", &key);
    let out = run(dir.path(), cmd).success();
    assert!(
        out.stdout.contains("fetched"),
        "no progress bar: {:?}",
        out.stdout
    );
    assert!(out.stdout.contains("tty@example.com"), "{}", out.stdout);
}

/// `--server` and `--api-key` belong to the client: a server ignores their environment
/// variables, and its configuration file has no such keys.
#[tokio::test]
async fn the_client_settings_are_not_server_settings() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let server = Server::start(
        dir.path(),
        &db,
        &[
            ("ACCOMMADOR_SERVER", "not a url at all"),
            ("ACCOMMADOR_API_KEY", "acm_not_a_key"),
        ],
    )
    .await;
    assert_eq!(server.addr.ip().to_string(), "127.0.0.1");
    drop(server);

    let config = dir.path().join("client.toml");
    std::fs::write(&config, "server = \"http://127.0.0.1:1\"\n").unwrap();
    let mut cmd = command(dir.path());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .args(["--database", &crate::support::sqlite_url(&db)]);
    let line = run(dir.path(), cmd).one_line_failure();
    assert!(line.contains("server"), "{line}");
}
