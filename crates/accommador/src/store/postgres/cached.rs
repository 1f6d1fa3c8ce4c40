//! Statements through each connection's prepared-statement cache.
//!
//! `tokio_postgres` runs a query given as text in two round trips (parse and describe, then
//! bind and execute) and PostgreSQL plans it afresh each time. Through `prepare_cached` a
//! connection parses each statement once and then sends only bind and execute: half the round
//! trips, and much less server CPU, on every hot path. Queries whose shape depends on optional
//! filters (`$n IS NULL OR …`) keep the one-shot path, so each gets a plan for its values.

use deadpool_postgres::{ClientWrapper, Transaction};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Row};

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// `execute` / `query` / `query_one` / `query_opt` with a cached prepared statement.
pub(crate) trait Cached {
    async fn run(&self, sql: &str, params: Params<'_>) -> Result<u64, Error>;
    async fn fetch(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error>;
    async fn fetch_one(&self, sql: &str, params: Params<'_>) -> Result<Row, Error>;
    async fn fetch_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error>;
}

macro_rules! cached_for {
    ($($ty:ty),*) => {$(
        impl Cached for $ty {
            async fn run(&self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
                let statement = self.prepare_cached(sql).await?;
                self.execute(&statement, params).await
            }
            async fn fetch(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
                let statement = self.prepare_cached(sql).await?;
                self.query(&statement, params).await
            }
            async fn fetch_one(&self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
                let statement = self.prepare_cached(sql).await?;
                self.query_one(&statement, params).await
            }
            async fn fetch_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
                let statement = self.prepare_cached(sql).await?;
                self.query_opt(&statement, params).await
            }
        }
    )*};
}

cached_for!(ClientWrapper, Transaction<'_>);
