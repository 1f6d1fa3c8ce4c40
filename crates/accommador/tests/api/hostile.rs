//! Hostile input: what an attacker or a broken client sends, byte for byte. Every case gets a
//! clear 4xx (problem+json whenever our code writes the answer; hyper's own 431 for a head
//! too large has no body) and leaves every list exactly as it was.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{ADMIN_TOKEN, Tenant, TestApp, error_fields, problem, spawn_api_only};

/// Everything an organization (and the operator) can list, to compare before and after.
async fn snapshot(app: &TestApp, t: &Tenant) -> Value {
    let mut lists = serde_json::Map::new();
    for path in [
        "/v1/users?limit=500",
        "/v1/endpoints?limit=500",
        "/v1/api-keys?limit=500",
        "/v1/deliveries?limit=500",
    ] {
        let r = app.get(t, path).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        lists.insert(
            path.into(),
            r.json::<Value>().await.unwrap()["data"].clone(),
        );
    }
    lists.insert("events".into(), Value::Array(app.all_events(t, "").await));
    let orgs: Value = app
        .client
        .get(app.url("/v1/organizations?limit=500"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    lists.insert("organizations".into(), orgs["data"].clone());
    Value::Object(lists)
}

/// A response read off a raw connection.
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn json(&self) -> Value {
        assert!(
            self.head
                .to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "not problem+json:\n{}",
            self.head
        );
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Sends `head` and then `body` on a connection of its own (`Connection: close` is up to the
/// caller) and reads the answer while the body is still being written, as a client that keeps
/// sending would. Write errors after the server has answered are expected and ignored.
async fn raw(app: &TestApp, head: impl Into<Vec<u8>>, body: Vec<u8>) -> Raw {
    let head: Vec<u8> = head.into();
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        write.write_all(&head).await?;
        for chunk in body.chunks(16 * 1024) {
            write.write_all(chunk).await?;
        }
        write.flush().await?;
        // Keep the write half open until the test is done reading.
        Ok::<_, std::io::Error>(write)
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => 0, // reset after the answer
            Err(_) => panic!(
                "no complete answer within 30 s: {:?}",
                String::from_utf8_lossy(&got)
            ),
        };
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = find(&got, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                writer.abort();
                return Raw {
                    status,
                    body: got[end + 4..end + 4 + length].to_vec(),
                    head,
                };
            }
        }
        assert!(
            n > 0,
            "connection closed before an answer: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn head(app: &TestApp, method: &str, target: &str, key: &str, extra: &str) -> String {
    format!(
        "{method} {target} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {key}\r\n{extra}connection: close\r\n\r\n",
        app.addr
    )
}

/// Sends `body` as JSON with its length declared (then the `extra` header lines) on a raw
/// connection of its own.
async fn send_json(
    app: &TestApp,
    method: &str,
    target: &str,
    key: &str,
    extra: &str,
    body: &str,
) -> Raw {
    let head = head(
        app,
        method,
        target,
        key,
        &format!(
            "content-type: application/json\r\ncontent-length: {}\r\n{extra}",
            body.len()
        ),
    );
    raw(app, head, body.as_bytes().to_vec()).await
}

/// The ID filters of the delivery log, documented to match nothing for a value that is no ID
/// of theirs, list nothing for `value` (already URL-encoded).
async fn id_filters_match_nothing(app: &TestApp, t: &Tenant, value: &str) {
    for path in [
        format!("/v1/deliveries?endpoint_id={value}"),
        format!("/v1/deliveries?event_id={value}"),
    ] {
        let r = app.get(t, &path).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["data"],
            json!([]),
            "{path}"
        );
    }
}

async fn setup() -> (TestApp, Tenant, Value) {
    // No workers: nothing fans out, so every list stays as the requests left it.
    let app = spawn_api_only().await;
    let t = app.create_org("Acme").await;
    app.create_user(&t, json!({"email": "ada@example.com", "name": "Ada"}))
        .await;
    app.create_endpoint(&t, json!({"url": "https://hooks.example.com/in"}))
        .await;
    let before = snapshot(&app, &t).await;
    (app, t, before)
}

#[tokio::test]
async fn bodies_over_one_mebibyte_are_413_with_a_length_or_chunked_without_one() {
    let (app, t, before) = setup().await;
    let big = format!(
        r#"{{"email":"big@example.com","name":"{}"}}"#,
        "x".repeat(1024 * 1024 + 10)
    );
    for (method, path) in [("POST", "/v1/users"), ("POST", "/v1/endpoints")] {
        // Declared length.
        let r = send_json(&app, method, path, &t.key, "", &big).await;
        assert_eq!(r.status, 413, "{method} {path} with a length");
        assert_eq!(r.json()["status"], 413);
        // Chunked, no length: the limit is found while reading.
        let mut chunked = Vec::new();
        for chunk in big.as_bytes().chunks(8 * 1024) {
            chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            chunked.extend_from_slice(chunk);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let r = raw(
            &app,
            head(
                &app,
                method,
                path,
                &t.key,
                "content-type: application/json\r\ntransfer-encoding: chunked\r\n",
            ),
            chunked,
        )
        .await;
        assert_eq!(r.status, 413, "{method} {path} chunked");
        assert_eq!(r.json()["status"], 413);
    }
    assert_eq!(snapshot(&app, &t).await, before);
}

#[tokio::test]
async fn json_nested_ten_thousand_deep_and_invalid_utf8_are_400() {
    let (app, t, before) = setup().await;
    let deep_attributes = format!(
        r#"{{"email":"deep@example.com","attributes":{}1{}}}"#,
        r#"{"a":"#.repeat(10_000),
        "}".repeat(10_000)
    );
    let deep_array = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let mut invalid_utf8 = br#"{"email":"bad@example.com","name":"A"#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    invalid_utf8.extend_from_slice(br#""}"#);
    let mut overlong = br#"{"email":"bad@example.com","name":""#.to_vec();
    overlong.extend_from_slice(&[0xc0, 0xaf]); // an overlong '/'
    overlong.extend_from_slice(br#""}"#);
    for body in [
        deep_attributes.into_bytes(),
        deep_array.into_bytes(),
        invalid_utf8,
        overlong,
    ] {
        for path in ["/v1/users", "/v1/endpoints"] {
            let r = app
                .client
                .post(app.url(path))
                .bearer_auth(&t.key)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let p = problem(r, StatusCode::BAD_REQUEST).await;
            assert!(
                p["detail"].as_str().unwrap().contains("not valid JSON"),
                "{p}"
            );
        }
    }
    // Invalid UTF-8 in a path ID or a query value is no ID and no filter of ours.
    let r = app.get(&t, "/v1/users/usr_%FF%FE").await;
    problem(r, StatusCode::NOT_FOUND).await;
    let r = app.get(&t, "/v1/events?type=%FF").await;
    let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(error_fields(&p), ["type"]);
    // And in a header: no key at all.
    let mut bad_header = b"GET /v1/users HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ".to_vec();
    bad_header.extend_from_slice(&[0xff, 0xfe, 0x80]);
    bad_header.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    let r = raw(&app, bad_header, Vec::new()).await;
    assert_eq!(r.status, 401);
    assert_eq!(snapshot(&app, &t).await, before);
}

#[tokio::test]
async fn a_head_of_64_kib_is_431_and_ten_thousand_query_parameters_are_refused() {
    let (app, t, before) = setup().await;
    let body = json!({"email": "head@example.com"}).to_string();
    // One header of 64 KiB, and 1,000 headers of 64 bytes.
    let one_big = format!("x-pad: {}\r\n", "a".repeat(64 * 1024));
    let many: String = (0..1000)
        .map(|i| format!("x-pad-{i}: {}\r\n", "b".repeat(50)))
        .collect();
    for extra in [one_big, many] {
        let r = send_json(&app, "POST", "/v1/users", &t.key, &extra, &body).await;
        assert_eq!(r.status, 431, "{}", r.head);
    }
    // 10,000 distinct parameters make a head larger than the limit: 431 too.
    let long: Vec<String> = (0..10_000).map(|i| format!("p{i}=v")).collect();
    let r = raw(
        &app,
        head(
            &app,
            "GET",
            &format!("/v1/users?{}", long.join("&")),
            &t.key,
            "",
        ),
        Vec::new(),
    )
    .await;
    assert_eq!(r.status, 431);
    // 10,000 short ones fit in the head and are refused by count, on every route, before
    // anything is parsed or written.
    let short = vec!["a"; 10_000].join("&");
    for (method, path) in [
        ("GET", "/v1/users"),
        ("GET", "/v1/events"),
        ("GET", "/v1/deliveries"),
        ("POST", "/v1/users"),
    ] {
        let target = format!("{path}?{short}");
        let r = send_json(&app, method, &target, &t.key, "", &body).await;
        assert_eq!(r.status, 422, "{method} {path}");
        let p = r.json();
        assert_eq!(p["errors"][0]["field"], "query", "{p}");
        assert_eq!(p["errors"].as_array().unwrap().len(), 1);
    }
    // 100 are still fine where the route knows them... and named one by one where it does not.
    let mut hundred = vec!["limit=5"];
    hundred.extend(["zz=1"; 99]);
    let p = problem(
        app.get(&t, &format!("/v1/users?{}", hundred.join("&")))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(error_fields(&p), ["zz"]);
    assert_eq!(snapshot(&app, &t).await, before);
}

#[tokio::test]
async fn path_traversal_and_nul_in_ids_are_404_and_touch_nothing() {
    let (app, t, before) = setup().await;
    let user = app
        .get(&t, "/v1/users")
        .await
        .json::<Value>()
        .await
        .unwrap()["data"][0]
        .clone();
    let uid = user["id"].as_str().unwrap().to_owned();
    let ids = [
        format!("{uid}%00"),
        format!("%00{uid}"),
        "usr_%00".to_owned(),
        "..%2F..%2Fv1%2Forganizations".to_owned(),
        "%2e%2e".to_owned(),
        "..%5C..%5Cetc%5Cpasswd".to_owned(),
        format!("{uid}%2F..%2F{uid}"),
        format!("{uid}%0d%0aX-Injected:%201"),
        "usr_%C0%AE%C0%AE".to_owned(),
    ];
    for id in &ids {
        for base in [
            "/v1/users",
            "/v1/endpoints",
            "/v1/events",
            "/v1/deliveries",
            "/v1/deliveries/{id}/attempts",
            "/v1/endpoints/{id}/secret",
        ] {
            let path = if base.contains("{id}") {
                base.replace("{id}", id)
            } else {
                format!("{base}/{id}")
            };
            problem(app.get(&t, &path).await, StatusCode::NOT_FOUND).await;
        }
        for (path, body) in [
            (format!("/v1/users/{id}"), json!({"name": "x"})),
            (format!("/v1/endpoints/{id}"), json!({"description": "x"})),
        ] {
            problem(app.patch(&t, &path, &body).await, StatusCode::NOT_FOUND).await;
        }
        for path in [
            format!("/v1/users/{id}"),
            format!("/v1/endpoints/{id}"),
            format!("/v1/api-keys/{id}"),
        ] {
            problem(app.delete(&t, &path).await, StatusCode::NOT_FOUND).await;
        }
        for path in [
            format!("/v1/users/{id}/erase"),
            format!("/v1/endpoints/{id}/test"),
            format!("/v1/endpoints/{id}/secret/rotate"),
            format!("/v1/deliveries/{id}/retry"),
        ] {
            problem(app.post(&t, &path, &json!({})).await, StatusCode::NOT_FOUND).await;
        }
        // As a filter it matches nothing (`endpoint_id`, `event_id`: documented "any other
        // value matches none"), or is refused where the filter must name a user or a cursor.
        // (with U+0000 it is refused: see below)
        if !id.contains("%00") {
            id_filters_match_nothing(&app, &t, id).await;
        }
        for path in [
            format!("/v1/deliveries?user_id={id}"),
            format!("/v1/events?user_id={id}"),
            format!("/v1/users?after={id}"),
        ] {
            let r = app.get(&t, &path).await;
            assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{path}");
            problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        }
    }
    // U+0000 in a query value is refused, naming the parameter.
    for (path, field) in [
        ("/v1/deliveries?endpoint_id=ep_%00", "endpoint_id"),
        ("/v1/deliveries?event_id=%00", "event_id"),
        ("/v1/events?user_id=usr_%00", "user_id"),
        ("/v1/users?after=usr_%00", "after"),
        ("/v1/events?type=user.created%00", "type"),
    ] {
        let r = app.get(&t, path).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{path}");
        let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&p), [field], "{path}");
    }
    // Dot segments sent as they are (no client normalising them) reach no other route.
    for target in [
        "/v1/users/../organizations".to_owned(),
        format!("/v1/users/{uid}/../../organizations"),
        "/v1/../../etc/passwd".to_owned(),
    ] {
        let r = raw(&app, head(&app, "GET", &target, &t.key, ""), Vec::new()).await;
        assert_eq!(r.status, 404, "{target}: {}", r.head);
        assert_eq!(r.json()["status"], 404);
    }
    assert_eq!(snapshot(&app, &t).await, before);
}

/// Strings that break naive SQL, stored and read back byte for byte in every string field
/// that keeps text, and refused where a field only takes known values; another
/// organization's data is untouched.
#[tokio::test]
async fn sql_metacharacters_in_every_string_field_are_only_text() {
    let app = spawn_api_only().await;
    let t = app.create_org("Acme").await;
    let other = app.create_org("Globex").await;
    app.create_user(&other, json!({"email": "g@globex.test"}))
        .await;
    let other_before = snapshot(&app, &other).await;
    let nasty = [
        "'; DROP TABLE users; --",
        "\" OR \"1\"=\"1",
        "' OR '1'='1' /*",
        "%' AND 1=0 UNION SELECT api_key_hash FROM api_keys --",
        "\\'; SELECT pg_sleep(10); --",
        "`backtick` $1 ? :name @p",
        "]; DELETE FROM events WHERE 1=1; [",
    ];
    for (i, s) in nasty.iter().enumerate() {
        // Email: the local part may legally carry quotes and other characters.
        let email = format!("o'brien+{i}@example.com");
        let user = app
            .create_user(
                &t,
                json!({"email": email, "name": s, "attributes": {(*s): s, "nested": [s]}}),
            )
            .await;
        assert_eq!(user["name"], *s);
        assert_eq!(user["email"], email);
        assert_eq!(user["attributes"][*s], *s);
        let path = format!("/v1/users/{}", user["id"].as_str().unwrap());
        let patched: Value = app
            .patch(&t, &path, &json!({"name": format!("{s}!")}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(patched["name"], format!("{s}!"));
        let read: Value = app.get(&t, &path).await.json().await.unwrap();
        assert_eq!(read, patched);

        let r = app
            .post(
                &t,
                "/v1/endpoints",
                &json!({
                    "url": format!("https://hooks.example.com/in?q={}", urlencode(s)),
                    "description": s,
                }),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED, "endpoint with {s}");
        let ep: Value = r.json().await.unwrap();
        assert_eq!(ep["description"], *s);

        let r = app.post(&t, "/v1/api-keys", &json!({"name": s})).await;
        assert_eq!(r.status(), StatusCode::CREATED, "key named {s}");
        assert_eq!(r.json::<Value>().await.unwrap()["name"], *s);

        let r = app
            .client
            .post(app.url("/v1/organizations"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"name": s}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "organization named {s}");
        assert_eq!(r.json::<Value>().await.unwrap()["name"], *s);
    }
    let before = snapshot(&app, &t).await;
    assert_eq!(
        before["/v1/users?limit=500"].as_array().unwrap().len(),
        nasty.len()
    );
    // Fields that take known values, IDs or times refuse them, naming the field.
    for s in nasty {
        let q = urlencode(s);
        for (path, field) in [
            (format!("/v1/events?type={q}"), "type"),
            (format!("/v1/events?user_id={q}"), "user_id"),
            (format!("/v1/events?after={q}"), "after"),
            (format!("/v1/deliveries?status={q}"), "status"),
            (format!("/v1/deliveries?event_type={q}"), "event_type"),
            (format!("/v1/deliveries?since={q}"), "since"),
            (format!("/v1/users?after={q}"), "after"),
            (format!("/v1/users?limit={q}"), "limit"),
        ] {
            let r = app.get(&t, &path).await;
            assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{path}");
            let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
            assert_eq!(error_fields(&p), [field], "{path}");
        }
        id_filters_match_nothing(&app, &t, &q).await;
        for (body, field) in [
            (json!({"email": s}), "email"),
            (json!({"email": "a@b.co", "name": "n", (s): 1}), s),
        ] {
            let p = problem(
                app.post(&t, "/v1/users", &body).await,
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await;
            assert_eq!(error_fields(&p), [field], "{body}");
        }
        for (body, field) in [
            (json!({"url": s}), "url"),
            (
                json!({"url": "https://h.example.com/", "event_types": [s]}),
                "event_types",
            ),
        ] {
            let p = problem(
                app.post(&t, "/v1/endpoints", &body).await,
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await;
            assert_eq!(error_fields(&p), [field], "{body}");
        }
    }
    assert_eq!(snapshot(&app, &t).await, before);
    // Globex saw none of it.
    let mut other_after = snapshot(&app, &other).await;
    // (the operator's organization list is shared, and grew by the organizations made above)
    other_after["organizations"] = other_before["organizations"].clone();
    assert_eq!(other_after, other_before);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
