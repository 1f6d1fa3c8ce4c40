//! The slice of Accommador's public HTTP API the bench uses: organizations (admin token),
//! endpoints (create, delete), users, the events outbox used to check that every event
//! arrived, and `/metrics`.

use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// A keep-alive HTTP/1.1 client. `max_connections` bounds the idle pool: each load worker owns
/// a client with one connection, so N workers hold exactly N connections.
pub fn http_client(max_connections: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(max_connections)
        .pool_idle_timeout(Duration::from_secs(300))
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building an HTTP client")
}

/// The server's API at `base` (`http://127.0.0.1:PORT`).
#[derive(Debug, Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Org {
    pub api_key: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CreatedEndpoint {
    pub id: String,
    pub secret: String,
}

/// An event of the outbox: its id and the user it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRef {
    pub id: String,
    pub user_id: String,
}

#[derive(Deserialize)]
struct Page {
    data: Vec<WireEvent>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct WireEvent {
    id: String,
    data: WireData,
}

#[derive(Deserialize)]
struct WireData {
    user: WireUser,
}

#[derive(Deserialize)]
struct WireUser {
    id: String,
}

async fn expect_status(
    response: reqwest::Response,
    want: reqwest::StatusCode,
    what: &str,
) -> anyhow::Result<reqwest::Response> {
    if response.status() == want {
        return Ok(response);
    }
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    bail!("{what}: expected {want}, got {status}: {body}")
}

impl Api {
    pub fn new(base: String, max_connections: usize) -> anyhow::Result<Api> {
        Ok(Api {
            http: http_client(max_connections)?,
            base,
        })
    }

    pub async fn create_org(&self, admin_token: &str, name: &str) -> anyhow::Result<Org> {
        let response = self
            .http
            .post(format!("{}/v1/organizations", self.base))
            .bearer_auth(admin_token)
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .context("POST /v1/organizations")?;
        let response = expect_status(
            response,
            reqwest::StatusCode::CREATED,
            "POST /v1/organizations",
        )
        .await?;
        Ok(response.json().await?)
    }

    pub async fn create_endpoint(&self, key: &str, url: &str) -> anyhow::Result<CreatedEndpoint> {
        let response = self
            .http
            .post(format!("{}/v1/endpoints", self.base))
            .bearer_auth(key)
            .json(&serde_json::json!({ "url": url, "description": "accommador-bench" }))
            .send()
            .await
            .context("POST /v1/endpoints")?;
        let response =
            expect_status(response, reqwest::StatusCode::CREATED, "POST /v1/endpoints").await?;
        Ok(response.json().await?)
    }

    /// `PATCH /v1/endpoints/{id}` with `body`.
    pub async fn patch_endpoint(
        &self,
        key: &str,
        id: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<()> {
        let response = self
            .http
            .patch(format!("{}/v1/endpoints/{id}", self.base))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .context("PATCH /v1/endpoints/{id}")?;
        expect_status(
            response,
            reqwest::StatusCode::OK,
            "PATCH /v1/endpoints/{id}",
        )
        .await?;
        Ok(())
    }

    /// `DELETE /v1/endpoints/{id}`: answered once the endpoint row has changed; its pending
    /// deliveries are failed in the background.
    pub async fn delete_endpoint(&self, key: &str, id: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .delete(format!("{}/v1/endpoints/{id}", self.base))
            .bearer_auth(key)
            .send()
            .await
            .context("DELETE /v1/endpoints/{id}")?;
        expect_status(
            response,
            reqwest::StatusCode::NO_CONTENT,
            "DELETE /v1/endpoints/{id}",
        )
        .await?;
        Ok(())
    }

    /// Sets an endpoint's `ordering` (`none` or `per_user`).
    pub async fn set_ordering(
        &self,
        key: &str,
        endpoint_id: &str,
        ordering: &str,
    ) -> anyhow::Result<()> {
        self.patch_endpoint(
            key,
            endpoint_id,
            serde_json::json!({ "ordering": ordering }),
        )
        .await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let response = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .context("GET /metrics")?;
        let response = expect_status(response, reqwest::StatusCode::OK, "GET /metrics").await?;
        Ok(response.text().await?)
    }

    /// Every `user.created` event of the key's organization, in commit order.
    pub async fn created_events(&self, key: &str) -> anyhow::Result<Vec<EventRef>> {
        let mut events = Vec::new();
        let mut after: Option<String> = None;
        // Bounded: 500 per page, at most 20 million events.
        for _ in 0..40_000 {
            // Cursors are event ids (`evt_` and a ULID): nothing to escape.
            let mut url = format!("{}/v1/events?type=user.created&limit=500", self.base);
            if let Some(cursor) = &after {
                url.push_str("&after=");
                url.push_str(cursor);
            }
            let request = self.http.get(url).bearer_auth(key);
            let response = request.send().await.context("GET /v1/events")?;
            let response =
                expect_status(response, reqwest::StatusCode::OK, "GET /v1/events").await?;
            let page: Page = response.json().await.context("GET /v1/events body")?;
            events.extend(page.data.into_iter().map(|e| EventRef {
                id: e.id,
                user_id: e.data.user.id,
            }));
            match page.next_cursor {
                Some(c) => after = Some(c),
                None => return Ok(events),
            }
        }
        bail!("GET /v1/events: more pages than the bench reads")
    }
}
