//! The delivery-log UI as a browser uses it, over real HTTP: signing in with an API key gives
//! a strict session cookie; every form needs its CSRF token; pages see only the session's
//! organization; sessions expire and end with their key; portal links work once, and
//! read-only sessions change nothing. User-controlled text is always escaped.

use std::time::{Duration, Instant};

use reqwest::redirect::Policy;
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Tenant, TestApp, spawn_app, spawn_app_with};

/// A browser's view of the UI: its cookies, without following redirects.
pub struct Browser {
    pub client: Client,
    pub base: String,
    pub cookies: Vec<(String, String)>,
}

/// The value of `name="csrf"` in a page.
pub fn csrf_in(html: &str) -> String {
    let at = html
        .find(r#"name="csrf" value=""#)
        .expect("a form with a CSRF token");
    let rest = &html[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

impl Browser {
    pub fn new(app: &TestApp) -> Browser {
        Browser {
            client: Client::builder().redirect(Policy::none()).build().unwrap(),
            base: app.url(""),
            cookies: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Keeps the cookies a response sets (a `Max-Age=0` one is removed).
    fn keep(&mut self, r: &Response) {
        for v in r.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let (pair, _) = v.split_once(';').unwrap_or((v, ""));
            let (k, val) = pair.split_once('=').unwrap();
            self.cookies.retain(|(name, _)| name != k);
            if !v.contains("Max-Age=0") {
                self.cookies.push((k.to_owned(), val.to_owned()));
            }
        }
    }

    pub async fn get(&mut self, path: &str) -> Response {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep(&r);
        r
    }

    pub async fn page(&mut self, path: &str) -> (StatusCode, String) {
        let r = self.get(path).await;
        (r.status(), r.text().await.unwrap())
    }

    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Response {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        self.keep(&r);
        r
    }

    /// Presses an action's button (a form with only the CSRF token); returns the status.
    pub async fn act(&mut self, path: &str, csrf: &str) -> StatusCode {
        self.post(path, &[("csrf", csrf)]).await.status()
    }

    /// Signs in with `key` through the sign-in form; returns the POST's response.
    pub async fn sign_in(&mut self, key: &str) -> Response {
        let (status, html) = self.page("/ui/sign-in").await;
        assert_eq!(status, StatusCode::OK);
        let csrf = csrf_in(&html);
        self.post("/ui/sign-in", &[("api_key", key), ("csrf", &csrf)])
            .await
    }

    /// The CSRF token of a signed-in page.
    pub async fn csrf(&mut self) -> String {
        let (status, html) = self.page("/ui/").await;
        assert_eq!(status, StatusCode::OK, "{html}");
        csrf_in(&html)
    }
}

/// The JSON body of an API GET with `t`'s key.
pub async fn api_json(app: &TestApp, t: &Tenant, path: &str) -> Value {
    app.get(t, path).await.json().await.unwrap()
}

fn location(r: &Response) -> &str {
    r.headers()["location"].to_str().unwrap()
}

/// An endpoint nobody listens at, and the ID of one failing delivery to it.
pub async fn failing_delivery(app: &TestApp, t: &Tenant, url: &str) -> (String, String) {
    let r = app.post(t, "/v1/endpoints", &json!({ "url": url })).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let endpoint: Value = r.json().await.unwrap();
    app.create_user(
        t,
        json!({"email": "ada@example.com", "name": "<script>alert(1)</script>"}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = api_json(app, t, "/v1/deliveries").await;
        if let Some(d) = list["data"].as_array().unwrap().first()
            && d["attempt_count"].as_u64() >= Some(1)
        {
            return (
                endpoint["id"].as_str().unwrap().to_owned(),
                d["id"].as_str().unwrap().to_owned(),
            );
        }
        assert!(Instant::now() < deadline, "no attempt was made: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An address where nothing listens (a port bound then released).
pub fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}/hook", l.local_addr().unwrap())
}

#[tokio::test]
async fn signing_in_with_an_api_key_gives_a_strict_session_cookie_and_signing_out_ends_it() {
    let app = spawn_app().await;
    let acme = app.create_org("Acme").await;
    let mut b = Browser::new(&app);

    let r = b.get("/ui/deliveries").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/ui/sign-in");

    let r = b.sign_in("acm_not-a-key").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.unwrap().contains("not valid"));

    let r = b.sign_in(&acme.key).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/ui/");
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with("accommador_session="))
        .unwrap();
    assert!(cookie.contains("; HttpOnly"), "{cookie}");
    assert!(cookie.contains("; SameSite=Strict"), "{cookie}");
    assert!(cookie.contains("; Path=/ui"), "{cookie}");
    assert!(cookie.contains("; Max-Age=43200"), "{cookie}");
    assert!(
        !cookie.contains("Secure"),
        "plain http without a public https URL: {cookie}"
    );
    assert!(!cookie.contains(&acme.key));

    let (status, html) = b.page("/ui/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Overview"));
    assert!(html.contains(&acme.id));

    // Signing out needs the form's token; then the cookie no longer opens anything.
    let stolen = b.cookies.clone();
    let r = b.post("/ui/sign-out", &[("csrf", "forged")]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let csrf = b.csrf().await;
    let r = b.post("/ui/sign-out", &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    b.cookies = stolen;
    let r = b.get("/ui/").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn failed_sign_ins_are_throttled_per_client_address() {
    let app = spawn_app().await;
    let mut b = Browser::new(&app);
    let (_, html) = b.page("/ui/sign-in").await;
    let csrf = csrf_in(&html);
    let mut statuses = Vec::new();
    for i in 0..25 {
        let key = format!("acm_{i:0>43}");
        let r = b
            .post("/ui/sign-in", &[("api_key", &key), ("csrf", &csrf)])
            .await;
        statuses.push(r.status());
    }
    assert_eq!(statuses[0], StatusCode::UNAUTHORIZED);
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn the_sign_in_form_needs_the_token_of_its_own_cookie() {
    let app = spawn_app().await;
    let acme = app.create_org("Acme").await;
    let mut b = Browser::new(&app);
    let (_, html) = b.page("/ui/sign-in").await;
    let csrf = csrf_in(&html);

    // Another site posting the form has neither the cookie's token nor (SameSite) the cookie.
    let mut other = Browser::new(&app);
    let r = other
        .post("/ui/sign-in", &[("api_key", &acme.key), ("csrf", &csrf)])
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(!other.cookies.iter().any(|(k, _)| k == "accommador_session"));
    let r = b.post("/ui/sign-in", &[("api_key", &acme.key)]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn cookies_are_secure_behind_an_https_public_url_or_a_trusted_proxy() {
    let app = spawn_app_with(|s| {
        s.public_url = Some("https://hooks.example.com/".parse().unwrap());
    })
    .await;
    let acme = app.create_org("Acme").await;
    let mut b = Browser::new(&app);
    let r = b.sign_in(&acme.key).await;
    let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
    assert!(
        cookies
            .iter()
            .all(|c| c.to_str().unwrap().ends_with("; Secure"))
    );
    // Portal links are absolute under the public URL.
    let link: Value = app
        .post(&acme, "/v1/portal-links", &json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        link["url"]
            .as_str()
            .unwrap()
            .starts_with("https://hooks.example.com/ui/portal/"),
        "{link}"
    );

    let app = spawn_app_with(|s| s.trust_proxy = true).await;
    let acme = app.create_org("Acme").await;
    let r = app
        .client
        .get(app.url("/ui/sign-in"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let c = r.headers()["set-cookie"].to_str().unwrap();
    assert!(c.ends_with("; Secure"), "{c}");
    let r = app.client.get(app.url("/ui/sign-in")).send().await.unwrap();
    assert!(
        !r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Secure")
    );
    drop(acme);
}

#[tokio::test]
async fn a_failing_delivery_is_shown_explained_and_retried_with_the_csrf_token() {
    let app = spawn_app().await;
    let acme = app.create_org("Acme").await;
    let (endpoint, delivery) = failing_delivery(&app, &acme, &closed_port_url()).await;
    let mut b = Browser::new(&app);
    b.sign_in(&acme.key).await;

    let (status, html) = b.page("/ui/deliveries?status=failed").await;
    assert_eq!(status, StatusCode::OK);
    let (_, pending) = b.page("/ui/deliveries?status=pending").await;
    assert!(html.contains(&delivery) || pending.contains(&delivery));
    let (_, filtered) = b
        .page(&format!("/ui/deliveries?endpoint_id={endpoint}"))
        .await;
    assert!(filtered.contains(&delivery));
    let (status, bad) = b.page("/ui/deliveries?status=lost&since=yesterday").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        bad.contains("must be pending, succeeded or failed"),
        "{bad}"
    );
    assert!(bad.contains("must be an RFC 3339 date-time"));

    let (status, html) = b.page(&format!("/ui/deliveries/{delivery}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("Could not connect"),
        "plain words for the error class"
    );
    let attempts = api_json(&app, &acme, &format!("/v1/deliveries/{delivery}/attempts")).await;
    let started = attempts["data"][0]["started_at"].as_str().unwrap();
    let sent = accommador::domain::Timestamp::parse_rfc3339(started)
        .unwrap()
        .millis()
        / 1000;
    assert!(
        html.contains(&format!("webhook-timestamp: {sent}\n")),
        "the request headers as sent"
    );
    assert!(html.contains("webhook-signature: v1,…"));
    assert!(html.contains("Retry now"));
    assert!(
        html.contains("&quot;type&quot;: &quot;user.created&quot;"),
        "pretty payload"
    );

    let path = format!("/ui/deliveries/{delivery}/retry");
    let r = b.post(&path, &[]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "no CSRF token");
    let r = b.post(&path, &[("csrf", &"0".repeat(64))]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a wrong CSRF token");
    // Once its schedule is used up (no scheduled attempt can then take the next number).
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let d: Value = api_json(&app, &acme, &format!("/v1/deliveries/{delivery}")).await;
        if d["status"] == "failed" {
            break d;
        }
        assert!(Instant::now() < deadline, "the delivery never failed: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let csrf = b.csrf().await;
    let r = b.post(&path, &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        location(&r),
        format!("/ui/deliveries/{delivery}?done=retry")
    );
    // The manual attempt is made and shown.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, html) = b.page(&format!("/ui/deliveries/{delivery}")).await;
        let n = before["attempt_count"].as_u64().unwrap() + 1;
        if html.contains(&format!("Attempt {n}</strong> · manual")) {
            break;
        }
        assert!(Instant::now() < deadline, "no manual attempt shown: {html}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_page_is_scoped_to_the_sessions_organization() {
    let app = spawn_app().await;
    let acme = app.create_org("Acme").await;
    let other = app.create_org("Other").await;
    let (endpoint, delivery) = failing_delivery(&app, &acme, &closed_port_url()).await;
    let user = app
        .get(&acme, "/v1/users")
        .await
        .json::<Value>()
        .await
        .unwrap()["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut b = Browser::new(&app);
    b.sign_in(&other.key).await;
    for path in [
        format!("/ui/deliveries/{delivery}"),
        format!("/ui/endpoints/{endpoint}"),
        format!("/ui/users/{user}"),
    ] {
        let (status, html) = b.page(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(!html.contains("ada@example.com"));
    }
    let csrf = b.csrf().await;
    assert_eq!(
        b.act(&format!("/ui/deliveries/{delivery}/retry"), &csrf)
            .await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        b.act(&format!("/ui/endpoints/{endpoint}/disable"), &csrf)
            .await,
        StatusCode::NOT_FOUND
    );
    for list in [
        "/ui/deliveries",
        "/ui/endpoints",
        "/ui/users",
        "/ui/events",
        "/ui/",
    ] {
        let (status, html) = b.page(list).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!html.contains(&delivery) && !html.contains(&endpoint) && !html.contains(&user));
    }
}

#[tokio::test]
async fn revoking_the_key_ends_its_sessions_and_sessions_expire() {
    let app = spawn_app_with(|s| s.session_ttl = Duration::from_secs(3600)).await;
    let acme = app.create_org("Acme").await;
    let second: Value = app
        .post(&acme, "/v1/api-keys", &json!({"name": "ui"}))
        .await
        .json()
        .await
        .unwrap();
    let mut by_first = Browser::new(&app);
    let r = by_first.sign_in(&acme.key).await;
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("; Max-Age=3600"),
        "ACCOMMADOR_SESSION_TTL: {cookie}"
    );
    assert_eq!(
        app.db
            .scalar("SELECT MAX(expires_at - created_at) FROM ui_sessions")
            .await,
        3_600_000
    );
    let mut by_second = Browser::new(&app);
    by_second.sign_in(second["api_key"].as_str().unwrap()).await;
    assert_eq!(by_second.get("/ui/").await.status(), StatusCode::OK);

    let r = app
        .delete(
            &acme,
            &format!("/v1/api-keys/{}", second["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(by_second.get("/ui/").await.status(), StatusCode::SEE_OTHER);
    assert_eq!(by_first.get("/ui/").await.status(), StatusCode::OK);

    // Its time is up (as if 1 h had passed): the session no longer opens anything.
    app.db
        .execute(
            "UPDATE ui_sessions SET expires_at = 0",
            "UPDATE ui_sessions SET expires_at = 0",
        )
        .await;
    let r = by_first.get("/ui/").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/ui/sign-in");

    // Expired sessions are removed by the background purge, one bounded batch at a time.
    let url = accommador::store::DatabaseUrl::parse(&app.db.url).unwrap();
    let store = accommador::store::Store::open(&url, accommador::store::Ownership::Tool, 2)
        .await
        .unwrap();
    let live = app.db.scalar("SELECT COUNT(*) FROM ui_sessions").await;
    assert!(live >= 2);
    let now = accommador::domain::Timestamp::now();
    assert_eq!(store.purge_ui(now).await.unwrap(), live as usize);
    assert_eq!(store.purge_ui(now).await.unwrap(), 0);
}

#[tokio::test]
async fn deleting_the_organization_ends_its_sessions_and_removes_them() {
    let app = spawn_app().await;
    let acme = app.create_org("Acme").await;
    let mut b = Browser::new(&app);
    b.sign_in(&acme.key).await;
    app.post(&acme, "/v1/portal-links", &json!({})).await;
    assert_eq!(b.get("/ui/").await.status(), StatusCode::OK);
    let r = app
        .client
        .delete(app.url(&format!("/v1/organizations/{}", acme.id)))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(b.get("/ui/").await.status(), StatusCode::SEE_OTHER);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = app
            .db
            .scalar(
                "SELECT (SELECT COUNT(*) FROM ui_sessions) + (SELECT COUNT(*) FROM portal_links)",
            )
            .await;
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} UI rows left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens a portal link like a person: the GET shows "Continue", the POST signs in.
pub async fn open_portal(b: &mut Browser, url: &str) -> Response {
    let (status, html) = b.page(url).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("Continue"));
    let csrf = csrf_in(&html);
    b.post(url, &[("csrf", &csrf)]).await
}

#[tokio::test]
async fn a_portal_link_works_once_and_a_read_only_session_changes_nothing() {
    let app = spawn_app().await;
    let acme = app.create_org("Acme").await;
    let (endpoint, delivery) = failing_delivery(&app, &acme, &closed_port_url()).await;

    let r = app
        .post(
            &acme,
            "/v1/portal-links",
            &json!({"read_only": true, "expires_in": "15m"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let link: Value = r.json().await.unwrap();
    let url = link["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("/ui/portal/"), "{link}");
    assert_eq!(link["read_only"], true);

    // Opening (a link scanner's GET) uses nothing.
    let mut scanner = Browser::new(&app);
    assert_eq!(scanner.get(&url).await.status(), StatusCode::OK);
    let mut b = Browser::new(&app);
    let r = open_portal(&mut b, &url).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/ui/");

    // Used: refused to everyone after.
    let mut late = Browser::new(&app);
    let (status, html) = late.page(&url).await;
    assert_eq!(status, StatusCode::GONE);
    assert!(html.contains("cannot be used"));
    let csrf = csrf_in(&scanner.page("/ui/sign-in").await.1);
    let r = scanner.post(&url, &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::GONE);

    // Read-only: no action is offered and every action is refused.
    let (status, html) = b.page(&format!("/ui/deliveries/{delivery}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!html.contains("Retry now"));
    let (_, html) = b.page(&format!("/ui/endpoints/{endpoint}")).await;
    assert!(!html.contains("Disable") && !html.contains("Rotate secret"));
    assert!(!html.contains("whsec_"));
    let csrf = b.csrf().await;
    for action in [
        format!("/ui/deliveries/{delivery}/retry"),
        format!("/ui/endpoints/{endpoint}/disable"),
        format!("/ui/endpoints/{endpoint}/rotate"),
        "/ui/endpoints".to_owned(),
    ] {
        let r = b
            .post(&action, &[("csrf", &csrf), ("url", "http://127.0.0.1:1/")])
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{action}");
    }
    let ep: Value = api_json(&app, &acme, &format!("/v1/endpoints/{endpoint}")).await;
    assert_eq!(ep["status"], "enabled");

    // The session cookie is no API credential: it makes no keys and no links.
    let cookie = b
        .cookies
        .iter()
        .find(|(k, _)| k == "accommador_session")
        .unwrap()
        .1
        .clone();
    for path in ["/v1/portal-links", "/v1/api-keys"] {
        let r = app
            .client
            .post(app.url(path))
            .header("cookie", format!("accommador_session={cookie}"))
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn a_full_portal_session_acts_but_never_sees_a_secret() {
    let app = spawn_app().await;
    let acme = app.create_org("Acme").await;
    let (endpoint, _) = failing_delivery(&app, &acme, &closed_port_url()).await;
    let link: Value = app
        .post(&acme, "/v1/portal-links", &json!({"read_only": false}))
        .await
        .json()
        .await
        .unwrap();
    let mut b = Browser::new(&app);
    open_portal(&mut b, link["url"].as_str().unwrap()).await;
    let (_, html) = b.page(&format!("/ui/endpoints/{endpoint}")).await;
    assert!(html.contains("Disable"));
    assert!(!html.contains("Rotate secret"));
    let csrf = b.csrf().await;
    assert_eq!(
        b.act(&format!("/ui/endpoints/{endpoint}/rotate"), &csrf)
            .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        b.act(&format!("/ui/endpoints/{endpoint}/disable"), &csrf)
            .await,
        StatusCode::SEE_OTHER
    );
    let ep: Value = api_json(&app, &acme, &format!("/v1/endpoints/{endpoint}")).await;
    assert_eq!(ep["status"], "disabled");
    let r = b
        .post(
            "/ui/endpoints",
            &[("csrf", &csrf), ("url", "http://127.0.0.1:9/new")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, html) = b.page(location(&r)).await;
    assert!(
        !html.contains("whsec_"),
        "a portal session never sees a secret"
    );
}

#[tokio::test]
async fn portal_links_are_validated_and_expire() {
    let app = spawn_app().await;
    let acme = app.create_org("Acme").await;
    for bad in [
        json!({"expires_in": "forever"}),
        json!({"expires_in": "10s"}),
        json!({"expires_in": "8d"}),
        json!({"read_only": "yes"}),
        json!({"scope": "all"}),
    ] {
        let r = app.post(&acme, "/v1/portal-links", &bad).await;
        let p = crate::helpers::problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(
            crate::helpers::error_fields(&p).len(),
            1,
            "{bad} names one field: {p}"
        );
    }
    let r = app
        .client
        .post(app.url("/v1/portal-links"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let link: Value = app
        .post(&acme, "/v1/portal-links", &json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(link["read_only"], true, "read-only unless asked otherwise");
    let mut b = Browser::new(&app);
    let (status, _) = b.page("/ui/portal/not-a-token").await;
    assert_eq!(status, StatusCode::GONE);
    // Expiry: the stored link is past its time.
    app.db
        .execute(
            "UPDATE portal_links SET expires_at = 0",
            "UPDATE portal_links SET expires_at = 0",
        )
        .await;
    let (status, _) = b.page(link["url"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::GONE);
}

#[tokio::test]
async fn user_controlled_text_is_escaped_everywhere() {
    let app = spawn_app().await;
    let acme = app.create_org("Acme").await;
    let r = app
        .post(
            &acme,
            "/v1/endpoints",
            &json!({"url": "http://127.0.0.1:9/x", "description": "<img src=x onerror=alert(2)>"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let user = app
        .create_user(
            &acme,
            json!({"email": "x@example.com", "name": "<script>alert(1)</script>"}),
        )
        .await;
    let mut b = Browser::new(&app);
    b.sign_in(&acme.key).await;
    for path in [
        "/ui/users".to_owned(),
        format!("/ui/users/{}", user["id"].as_str().unwrap()),
        "/ui/endpoints".to_owned(),
        "/ui/events".to_owned(),
    ] {
        let (status, html) = b.page(&path).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!html.contains("<script>alert(1)"), "{path}");
        assert!(!html.contains("<img src=x"), "{path}");
    }
    let (_, events) = b.page("/ui/events?type=user.created").await;
    assert!(events.contains("user.created</code>"));
    let (_, none) = b.page("/ui/events?type=user.deleted").await;
    assert!(none.contains("No events."), "the type filter applies");
    let (_, users) = b.page("/ui/users").await;
    assert!(users.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    let r = b.get("/ui/users").await;
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'"),
        "no script runs even if one got in"
    );
    assert_eq!(r.headers()["cache-control"], "no-store");
}

#[tokio::test]
async fn endpoint_forms_show_the_apis_validation_messages() {
    let app = spawn_app().await;
    let acme = app.create_org("Acme").await;
    let mut b = Browser::new(&app);
    b.sign_in(&acme.key).await;
    let csrf = b.csrf().await;
    let r = b
        .post(
            "/ui/endpoints",
            &[
                ("csrf", &csrf),
                ("url", "ftp://example.com/"),
                ("description", "mine"),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = r.text().await.unwrap();
    assert!(html.contains("<code>url</code>"), "{html}");
    assert!(
        html.contains(r#"value="ftp://example.com/""#),
        "the form keeps what was typed"
    );

    let r = b
        .post(
            "/ui/endpoints",
            &[
                ("csrf", &csrf),
                ("url", "http://127.0.0.1:9/hook"),
                ("event_types", "user.created"),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    assert!(html.contains("whsec_"), "the secret is shown once");
    let list = api_json(&app, &acme, "/v1/endpoints").await;
    assert_eq!(list["data"][0]["event_types"], json!(["user.created"]));
    let id = list["data"][0]["id"].as_str().unwrap();
    let (_, page) = b.page(&format!("/ui/endpoints/{id}")).await;
    assert!(!page.contains("whsec_"), "and never again");
    let r = b
        .post(
            &format!("/ui/endpoints/{id}/recover"),
            &[("csrf", &csrf), ("since", "soon")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("since: must be an RFC 3339 date-time")
    );
    let r = b
        .post(&format!("/ui/endpoints/{id}/rotate"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("whsec_"));
}

/// A receiver on a real local socket: `/ok` answers 200, `/gone` 410 Gone.
async fn ok_and_gone_receiver() -> String {
    use axum::routing::post;
    let app = axum::Router::new()
        .route("/ok", post(|| async { StatusCode::OK }))
        .route("/gone", post(|| async { StatusCode::GONE }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// The numbers in the overview's "Ended …" stat whose label starts with `label`:
/// (ended, succeeded, failed).
fn overview_stat(html: &str, label: &str) -> (u64, u64, u64) {
    let at = html
        .find(label)
        .unwrap_or_else(|| panic!("{label} in {html}"));
    let rest = &html[at..];
    let number_after = |marker: &str, before: bool| -> u64 {
        let i = rest.find(marker).unwrap();
        let s = if before {
            let head = &rest[..i];
            let start = head
                .rfind(|c: char| !c.is_ascii_digit())
                .map_or(0, |p| p + 1);
            &head[start..]
        } else {
            let tail = &rest[i + marker.len()..];
            &tail[..tail.find(|c: char| !c.is_ascii_digit()).unwrap()]
        };
        s.parse().unwrap()
    };
    (
        number_after(r#"<div class="n">"#, false),
        number_after(" succeeded", true),
        number_after(" failed", true),
    )
}

#[tokio::test]
async fn the_overview_counts_endings_by_outcome_from_the_rollups_per_organization() {
    let app = spawn_app().await;
    let acme = app.create_org("Acme").await;
    let globex = app.create_org("Globex").await;
    let receiver = ok_and_gone_receiver().await;
    for (t, path) in [(&acme, "/ok"), (&acme, "/gone"), (&globex, "/ok")] {
        let r = app
            .post(
                t,
                "/v1/endpoints",
                &json!({ "url": format!("{receiver}{path}") }),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    for i in 0..3 {
        app.create_user(&acme, json!({ "email": format!("a{i}@example.com") }))
            .await;
    }
    app.create_user(&globex, json!({ "email": "g@example.com" }))
        .await;
    // Acme: three deliveries succeed at /ok; at /gone the first 410 disables the endpoint and
    // the rest fail with it (a user created after the disable gets no delivery there, so 1 to
    // 3 fail). Wait until none is pending.
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let list = api_json(&app, &acme, "/v1/deliveries?limit=100").await;
        let items = list["data"].as_array().unwrap();
        let count = |s: &str| items.iter().filter(|d| d["status"] == s).count() as u64;
        if count("succeeded") == 3 && count("pending") == 0 && count("failed") >= 1 {
            assert_eq!(items.len() as u64, 3 + count("failed"), "{list}");
            break count("failed");
        }
        assert!(
            Instant::now() < deadline,
            "deliveries still pending: {list}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let mut b = Browser::new(&app);
    b.sign_in(&acme.key).await;
    let (status, html) = b.page("/ui/").await;
    assert_eq!(status, StatusCode::OK);
    // Globex's delivery is not counted in Acme's overview.
    let ended = (3 + failed, 3, failed);
    assert_eq!(overview_stat(&html, "Ended this hour"), ended, "{html}");
    assert_eq!(overview_stat(&html, "Ended in the last 24 hours"), ended);
    let rate = format!("Success rate {} %", 300 / (3 + failed));
    assert!(html.contains(&rate), "{rate}: {html}");
    // The disabled endpoint is listed with why, and its 24-hour outcome.
    assert!(html.contains("Failing and disabled endpoints"));
    assert!(html.contains("410"), "the disable reason: {html}");
    assert!(
        html.contains(&format!("{failed} of {failed} failed")),
        "{html}"
    );
    let (_, endpoints) = b.page("/ui/endpoints").await;
    assert!(
        endpoints.contains("100 %"),
        "the healthy endpoint: {endpoints}"
    );
    assert!(endpoints.contains("0 of 3 failed"));

    // Globex sees only its own.
    let mut g = Browser::new(&app);
    g.sign_in(&globex.key).await;
    let (_, html) = g.page("/ui/").await;
    assert_eq!(overview_stat(&html, "Ended this hour"), (1, 1, 0));
    assert!(html.contains("Success rate 100 %"));
}
