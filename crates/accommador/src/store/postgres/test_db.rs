//! A PostgreSQL database of a test's own, for the store's unit tests that need a real server
//! (`ACCOMMADOR_TEST_POSTGRES_URL`, an admin URL): created for the test and dropped after it.
//! Without the variable the test is skipped with a note; where `CI` is set it fails instead.

pub(crate) const POSTGRES_ENV: &str = "ACCOMMADOR_TEST_POSTGRES_URL";

pub(crate) struct TestDatabase {
    admin: String,
    pub(crate) name: String,
    pub(crate) url: String,
}

impl TestDatabase {
    /// `None` (after saying why) without a test server; where `CI` is set that fails.
    pub(crate) async fn create(prefix: &str) -> Option<TestDatabase> {
        let admin = match std::env::var(POSTGRES_ENV) {
            Ok(url) if !url.is_empty() => url,
            _ => {
                assert!(
                    std::env::var("CI").unwrap_or_default().is_empty(),
                    "CI is set but {POSTGRES_ENV} is not: the PostgreSQL tests must run in CI"
                );
                eprintln!("skipped: set {POSTGRES_ENV} to run the PostgreSQL tests");
                return None;
            }
        };
        let name = format!("{prefix}_{}", crate::domain::ids::new_id("").to_lowercase());
        connect(&admin)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        Some(TestDatabase {
            url: format!("{base}/{name}"),
            admin,
            name,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(async {
                    let _ = connect(&admin)
                        .await
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                });
        })
        .join();
    }
}

pub(crate) async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{POSTGRES_ENV} is not reachable: {e}"));
    tokio::spawn(conn);
    client
}

/// `EXPLAIN` of `sql` with `params`, after `settings` (if any) in the same transaction: the
/// plan's lines, for the plan tests.
pub(crate) async fn explain(
    client: &mut tokio_postgres::Client,
    settings: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> String {
    let tx = client.transaction().await.unwrap();
    if !settings.is_empty() {
        tx.batch_execute(settings).await.unwrap();
    }
    tx.query(&format!("EXPLAIN {sql}"), params)
        .await
        .unwrap_or_else(|e| panic!("explaining {sql}: {e}"))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}
