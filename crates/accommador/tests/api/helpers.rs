//! `spawn_app()` and the small vocabulary the API tests speak.

use std::net::SocketAddr;
use std::time::Duration;

use accommador::config::{LogFormat, Secret, Settings};
use accommador::delivery::guard::FixedLookup;
use accommador::startup::{Application, Options};
use reqwest::{Client, Response, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;

pub const ADMIN_TOKEN: &str = "test-admin-token";

pub struct TestApp {
    pub addr: SocketAddr,
    /// What host names resolve to for this server.
    pub lookup: FixedLookup,
    pub client: Client,
    pub db: TestDb,
    _shutdown: oneshot::Sender<()>,
}

/// The env var that switches these tests to PostgreSQL: an admin URL such as
/// `postgres://postgres@127.0.0.1:5432/postgres`. Each test then gets a database of its own,
/// created here and dropped when the test ends.
pub const POSTGRES_ENV: &str = "ACCOMMADOR_TEST_POSTGRES_URL";

/// The database of one test: a fresh SQLite file, or a fresh PostgreSQL database.
pub struct TestDb {
    pub url: String,
    _dir: tempfile::TempDir,
    postgres: Option<(String, String)>,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        match std::env::var(POSTGRES_ENV) {
            Ok(admin) if !admin.is_empty() => {
                let name = format!("acc_test_{}", ulid_lower());
                let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                    .await
                    .unwrap_or_else(|e| panic!("{POSTGRES_ENV}={admin} is not reachable: {e}"));
                tokio::spawn(conn);
                client
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .await
                    .unwrap();
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                TestDb {
                    url: format!("{base}/{name}"),
                    _dir: dir,
                    postgres: Some((admin.clone(), name)),
                }
            }
            _ => TestDb {
                url: format!("sqlite://{}", dir.path().join("test.db").display()),
                _dir: dir,
                postgres: None,
            },
        }
    }

    #[allow(dead_code)] // used by tests/postgres and tests/delivery
    pub fn is_postgres(&self) -> bool {
        self.postgres.is_some()
    }

    /// Runs SQL straight on the test's database (outside the server), e.g. to inject a
    /// failure. `sqlite` and `postgres` are the same statement in each dialect.
    pub async fn execute(&self, sqlite: &str, postgres: &str) {
        match &self.postgres {
            None => {
                let sql = sqlite.to_owned();
                self.on_sqlite(move |conn| conn.execute_batch(&sql))
                    .await
                    .unwrap_or_else(|e| panic!("test SQL on SQLite failed: {e}\n{sqlite}"));
            }
            Some(_) => self
                .pg_client()
                .await
                .batch_execute(postgres)
                .await
                .unwrap_or_else(|e| panic!("test SQL on PostgreSQL failed: {e}\n{postgres}")),
        }
    }

    /// The first column of the first row of `sql` (the same statement on both backends, with
    /// no parameters), read straight from the database, e.g. a count.
    #[allow(dead_code)] // used by the API tests only
    pub async fn scalar(&self, sql: &str) -> i64 {
        match &self.postgres {
            None => {
                let owned = sql.to_owned();
                self.on_sqlite(move |conn| conn.query_row(&owned, [], |r| r.get::<_, i64>(0)))
                    .await
                    .unwrap_or_else(|e| panic!("test query on SQLite failed: {e}\n{sql}"))
            }
            Some(_) => self
                .pg_client()
                .await
                .query_one(sql, &[])
                .await
                .unwrap_or_else(|e| panic!("test query on PostgreSQL failed: {e}\n{sql}"))
                .get::<_, i64>(0),
        }
    }

    /// Runs `f` on a connection of its own to the SQLite file. The server's writer holds the
    /// file's write lock while it commits; wait for it as long as a loaded machine may need,
    /// and off the test's runtime, which also hosts the server and the receiver.
    async fn on_sqlite<R: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> rusqlite::Result<R> {
        let path = self.url.trim_start_matches("sqlite://").to_owned();
        tokio::task::spawn_blocking(move || {
            let conn = rusqlite::Connection::open(path)?;
            conn.busy_timeout(Duration::from_secs(60))?;
            f(&conn)
        })
        .await
        .unwrap()
    }

    async fn pg_client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }
}

impl TestDb {
    /// Rows read straight from the test's database (outside the server), every column as
    /// text. `sqlite` and `postgres` are the same query in each dialect.
    #[allow(dead_code)] // used by tests/delivery and tests/postgres
    pub async fn rows(&self, sqlite: &str, postgres: &str) -> Vec<Vec<Option<String>>> {
        match &self.postgres {
            None => {
                let sql = sqlite.to_owned();
                self.on_sqlite(move |conn| {
                    let mut stmt = conn.prepare(&sql)?;
                    let n = stmt.column_count();
                    stmt.query_map([], |r| {
                        (0..n).map(|i| r.get::<_, Option<String>>(i)).collect()
                    })?
                    .collect::<Result<Vec<_>, _>>()
                })
                .await
                .unwrap_or_else(|e| panic!("test query on SQLite failed: {e}\n{sqlite}"))
            }
            Some(_) => {
                let rows = self
                    .pg_client()
                    .await
                    .query(postgres, &[])
                    .await
                    .unwrap_or_else(|e| panic!("test query on PostgreSQL failed: {e}\n{postgres}"));
                rows.iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| r.get::<_, Option<String>>(i))
                            .collect()
                    })
                    .collect()
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.postgres.take() {
            // Drop runs inside the test's runtime: do the async work on a thread of its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
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
}

fn ulid_lower() -> String {
    accommador::domain::ids::new_id("").to_lowercase()
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A server whose settings `adjust` may change first.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_options(adjust, true).await
}

/// An API-only server (`serve --no-worker`): nothing fans out or delivers unless a test
/// drives the store itself.
#[allow(dead_code)] // not every test binary sharing this file uses it
pub async fn spawn_api_only() -> TestApp {
    spawn_app_options(|_| {}, false).await
}

/// A server whose listener has these deadlines and connection cap.
#[allow(dead_code)] // used by the API tests only
pub async fn spawn_app_limited(limits: accommador::http::serve::ConnectionLimits) -> TestApp {
    spawn_app_full(|_| {}, true, Some(limits)).await
}

async fn spawn_app_options(adjust: impl FnOnce(&mut Settings), workers: bool) -> TestApp {
    spawn_app_full(adjust, workers, None).await
}

async fn spawn_app_full(
    adjust: impl FnOnce(&mut Settings),
    workers: bool,
    limits: Option<accommador::http::serve::ConnectionLimits>,
) -> TestApp {
    let db = TestDb::new().await;
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: db.url.clone(),
        admin_token: Some(Secret::new(ADMIN_TOKEN)),
        secret_key: None,
        retry_schedule: vec![Duration::from_secs(1)],
        delivery_timeout: Duration::from_secs(5),
        allow_private_targets: true,
        disable_after: Duration::from_secs(3600),
        log_format: LogFormat::Text,
        endpoint_concurrency: 16,
        org_concurrency: 64,
        delivery_concurrency: 256,
        database_pool_size: 8,
        org_rate_limit: 0,
        retention: Duration::from_secs(30 * 86_400),
        erase_deleted_after: Duration::from_secs(30 * 86_400),
        session_ttl: Duration::from_secs(12 * 3600),
        public_url: None,
        trust_proxy: false,
    };
    adjust(&mut settings);
    // Host names resolve only through this table: tests never touch real DNS.
    let lookup = FixedLookup::default();
    let options = Options {
        workers,
        lookup: std::sync::Arc::new(lookup.clone()),
        api: true,
    };
    let mut app = Application::build_with(&settings, options)
        .await
        .expect("app builds");
    if let Some(limits) = limits {
        app = app.with_connection_limits(limits);
    }
    let addr = app.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        lookup,
        client: Client::new(),
        db,
        _shutdown: tx,
    }
}

/// An organization and its API key.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub id: String,
    pub key: String,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn create_org(&self, name: &str) -> Tenant {
        let r = self
            .client
            .post(self.url("/v1/organizations"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.unwrap();
        assert!(body["id"].as_str().unwrap().starts_with("org_"));
        assert_eq!(body["name"], name);
        Tenant {
            id: body["id"].as_str().unwrap().to_owned(),
            key: body["api_key"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn get(&self, t: &Tenant, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(&t.key)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, t: &Tenant, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(&t.key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn patch(&self, t: &Tenant, path: &str, body: &Value) -> Response {
        self.client
            .patch(self.url(path))
            .bearer_auth(&t.key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, t: &Tenant, path: &str) -> Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(&t.key)
            .send()
            .await
            .unwrap()
    }

    /// Creates a user and returns its JSON, asserting 201.
    pub async fn create_user(&self, t: &Tenant, body: Value) -> Value {
        let r = self.post(t, "/v1/users", &body).await;
        assert_eq!(r.status(), StatusCode::CREATED, "creating {body}");
        r.json().await.unwrap()
    }

    /// Creates an endpoint and returns its JSON, asserting 201.
    pub async fn create_endpoint(&self, t: &Tenant, body: Value) -> Value {
        let r = self.post(t, "/v1/endpoints", &body).await;
        assert_eq!(r.status(), StatusCode::CREATED, "creating {body}");
        r.json().await.unwrap()
    }

    /// `GET path` without credentials: the operational routes, or a refusal to see.
    pub async fn get_anonymous(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// The `/metrics` page, as Prometheus reads it.
    pub async fn metrics(&self) -> String {
        self.get_anonymous("/metrics").await.text().await.unwrap()
    }

    /// The OpenAPI document the server serves (asserting 200).
    pub async fn openapi(&self) -> Value {
        let r = self.get_anonymous("/openapi.json").await;
        assert_eq!(r.status(), StatusCode::OK, "GET /openapi.json");
        r.json().await.unwrap()
    }

    /// Every event of the organization, following `next_cursor` to the end.
    pub async fn all_events(&self, t: &Tenant, query: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = format!("/v1/events?limit=2{query}");
            if let Some(a) = &after {
                path.push_str(&format!("&after={a}"));
            }
            let r = self.get(t, &path).await;
            assert_eq!(r.status(), StatusCode::OK);
            let page: Value = r.json().await.unwrap();
            out.extend(page["data"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => after = Some(c.to_owned()),
                None => return out,
            }
        }
    }
}

/// Asserts a problem+json response and returns its body.
pub async fn problem(r: Response, status: StatusCode) -> Value {
    assert_eq!(r.status(), status);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    for field in ["type", "title", "detail"] {
        assert!(body[field].is_string(), "problem without {field}: {body}");
    }
    body
}

/// The fields named in a 422 problem's `errors`.
pub fn error_fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .expect("a validation problem lists its errors")
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect()
}

/// The names of a JSON object's fields, sorted.
#[allow(dead_code)] // used by the API tests only
pub fn field_names(object: &Value) -> Vec<String> {
    let mut names: Vec<String> = object.as_object().unwrap().keys().cloned().collect();
    names.sort();
    names
}
