//! No secret in any log line (DESIGN §10, "Keys, secrets"): the real binary runs a whole
//! scenario with `RUST_LOG=trace`, so every dependency's debug and trace logs are on too: an
//! organization and its API keys (created, revoked, issued by the operator), endpoints with
//! secrets created, rotated and read back, users, signed deliveries to a local receiver, failed
//! authentications. Then everything it printed, and `/metrics`, is searched for each secret.
//! On SQLite, and on PostgreSQL with a password in the database URL
//! (`ACCOMMADOR_TEST_POSTGRES_URL`; failing where `CI` is set without it).

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, Database, Server, command, sqlite_url};

/// A local receiver that answers 204 and counts what it got.
async fn receiver() -> (String, Arc<Mutex<usize>>) {
    let got = Arc::new(Mutex::new(0usize));
    let counter = got.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            *counter.lock().unwrap() += 1;
            axum::http::StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hooks"), got)
}

/// The value of `name="csrf"` in a page.
fn csrf_in(html: &str) -> String {
    let marker = r#"name="csrf" value=""#;
    let rest = &html[html.find(marker).expect("a form") + marker.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// `name=value` of the cookie `name` a response sets.
fn set_cookie(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie"))
}

/// Uses the UI like a browser: a portal link opened and continued, a sign-in with the API key,
/// pages read with the session cookies. Returns the tokens that must never be logged.
async fn use_the_ui(server: &Server, key: &str) -> Vec<String> {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let link: Value = server
        .client
        .post(server.url("/v1/portal-links"))
        .bearer_auth(key)
        .json(&json!({"read_only": false}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let path = link["url"].as_str().unwrap().to_owned();
    let mut tokens = vec![path.trim_start_matches("/ui/portal/").to_owned()];
    for (target, form) in [
        (path.clone(), vec![]),
        ("/ui/sign-in".to_owned(), vec![("api_key", key.to_owned())]),
    ] {
        let page = browser.get(server.url(&target)).send().await.unwrap();
        let form_cookie = set_cookie(&page, "accommador_form");
        let csrf = csrf_in(&page.text().await.unwrap());
        let mut fields = form.clone();
        fields.push(("csrf", csrf));
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let r = browser
            .post(server.url(&target))
            .header("cookie", &form_cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{target}");
        let session = set_cookie(&r, "accommador_session");
        for page in ["/ui/", "/ui/deliveries", "/ui/endpoints"] {
            let r = browser
                .get(server.url(page))
                .header("cookie", &session)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{page}");
        }
        tokens.push(session.trim_start_matches("accommador_session=").to_owned());
        tokens.push(
            form_cookie
                .trim_start_matches("accommador_form=")
                .to_owned(),
        );
    }
    tokens
}

/// `POST path` with `bearer` and an optional JSON body; the JSON answer.
async fn post_json(server: &Server, bearer: &str, path: &str, body: Option<Value>) -> Value {
    let mut request = server.client.post(server.url(path)).bearer_auth(bearer);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap().json().await.unwrap()
}

/// Runs the scenario against a server on `database` and returns every secret it handed out
/// with what the server printed and `/metrics`.
async fn scenario(database: &str, extra_secrets: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.env("RUST_LOG", "trace")
        .env("ACCOMMADOR_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("ACCOMMADOR_ALLOW_PRIVATE_TARGETS", "true")
        .args(["serve", "--listen", "127.0.0.1:0", "--database", database]);
    let mut server = Server::spawn(dir.path(), cmd)
        .await
        .unwrap_or_else(|log| panic!("serve did not start:\n{log}"));
    let (hooks, got) = receiver().await;
    let (org_id, key) = server.create_org("Acme").await;
    let mut secrets = vec![ADMIN_TOKEN.to_owned(), key.clone()];
    secrets.extend(extra_secrets.iter().cloned());
    // A second key made by the organization, then revoked; and one the operator issues.
    let second = post_json(&server, &key, "/v1/api-keys", Some(json!({"name": "ci"}))).await;
    secrets.push(second["api_key"].as_str().unwrap().to_owned());
    let revoked = server
        .client
        .delete(server.url(&format!("/v1/api-keys/{}", second["id"].as_str().unwrap())))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    let (status, orgs) = server.get(ADMIN_TOKEN, "/v1/organizations").await;
    assert_eq!((status, &orgs["data"][0]["id"]), (200, &json!(org_id)));
    let issued = post_json(
        &server,
        ADMIN_TOKEN,
        &format!("/v1/organizations/{org_id}/api-keys"),
        Some(json!({"name": "rescue"})),
    )
    .await;
    secrets.push(issued["api_key"].as_str().unwrap().to_owned());
    // The revoked key, presented again.
    let (status, _) = server
        .get(second["api_key"].as_str().unwrap(), "/v1/users")
        .await;
    assert_eq!(status, 401);

    let created = post_json(&server, &key, "/v1/endpoints", Some(json!({"url": hooks}))).await;
    let endpoint = created["id"].as_str().unwrap().to_owned();
    secrets.push(created["secret"].as_str().unwrap().to_owned());
    let rotated = post_json(
        &server,
        &key,
        &format!("/v1/endpoints/{endpoint}/secret/rotate"),
        None,
    )
    .await;
    secrets.push(rotated["secret"].as_str().unwrap().to_owned());
    let (status, shown) = server
        .get(&key, &format!("/v1/endpoints/{endpoint}/secret"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(shown["secret"], rotated["secret"]);
    for i in 0..5 {
        server
            .create_user(&key, &format!("user{i}@example.com"))
            .await;
    }
    let test = server
        .client
        .post(server.url(&format!("/v1/endpoints/{endpoint}/test")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(test.status(), 202);
    // Refused keys: a wrong one shaped like a real one, and the admin token used as an API key.
    for wrong in [format!("{key}x"), ADMIN_TOKEN.to_owned()] {
        assert_eq!(server.get(&wrong, "/v1/users").await.0, 401);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while *got.lock().unwrap() < 6 {
        assert!(
            std::time::Instant::now() < deadline,
            "the receiver got {} of 6 deliveries",
            got.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    secrets.extend(use_the_ui(&server, &key).await);
    let metrics = server.metrics().await;
    server.kill();
    let log = server.log();
    assert!(
        log.contains(" TRACE ") && log.contains(" DEBUG "),
        "trace logging is on:\n{log}"
    );
    for secret in &secrets {
        // The secret whole, and its random part alone (without `acm_` / `whsec_`).
        let bare = secret
            .strip_prefix("whsec_")
            .or_else(|| secret.strip_prefix("acm_"))
            .unwrap_or(secret);
        for (what, text) in [("the log", &log), ("/metrics", &metrics)] {
            if let Some(line) = text.lines().find(|l| l.contains(bare)) {
                panic!("a secret is in {what}: {line}");
            }
        }
    }
}

#[tokio::test]
async fn no_secret_is_logged_at_any_level_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    scenario(&sqlite_url(&dir.path().join("secrets.db")), &[]).await;
}

#[tokio::test]
async fn no_secret_is_logged_at_any_level_on_postgres() {
    let Some(db) = Database::postgres("logsecrets").await else {
        return;
    };
    // A password the local cluster ignores (it trusts its clients), unless the URL has one.
    let mut url = url::Url::parse(&db.url).unwrap();
    if url.password().is_none() {
        url.set_password(Some("log-s3cr3t-db-pw")).unwrap();
    }
    let password = url.password().unwrap().to_owned();
    scenario(url.as_str(), &[password]).await;
    db.drop_pg().await;
}
