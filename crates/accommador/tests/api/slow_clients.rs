//! Slow and idle clients cannot lock the others out: beside 2,000 connections that send
//! nothing, or trickle a head or a body, the API still answers; and the listener's deadlines
//! close what never completes (see `src/http/serve.rs`). The p99 beside slow clients is
//! measured by `accommador-bench --scenario slow-clients`, not here.

use std::time::Duration;

use accommador::http::serve::ConnectionLimits;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::helpers::{TestApp, spawn_app, spawn_app_limited};

/// How long a normal request may take on a loaded machine before the test gives up.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// Opens `n` connections that each do one hostile thing, and keeps them busy in the
/// background until the returned handle is dropped.
async fn slow_crowd(
    app: &TestApp,
    key: &str,
    n: usize,
) -> (Vec<TcpStream>, tokio::task::JoinHandle<()>) {
    let mut idle = Vec::new();
    let mut trickling = Vec::new();
    for i in 0..n {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        match i % 3 {
            // Connected, silent.
            0 => idle.push(s),
            // A head that never ends.
            1 => {
                s.write_all(b"GET /v1/users HTTP/1.1\r\nhost: x\r\n")
                    .await
                    .unwrap();
                trickling.push(s);
            }
            // A whole head (with a valid key, so the body is read), then a body that never
            // ends.
            _ => {
                s.write_all(
                    format!(
                        "POST /v1/users HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n\
                         content-type: application/json\r\ncontent-length: 100000\r\n\r\n\
                         {{\"email\":\""
                    )
                    .as_bytes(),
                )
                .await
                .unwrap();
                trickling.push(s);
            }
        }
    }
    // One more byte to every trickling connection every 200 ms (header bytes are valid in a
    // header value, body bytes in a JSON string).
    let task = tokio::spawn(async move {
        loop {
            for s in &mut trickling {
                let _ = s.write_all(b"a").await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (idle, task)
}

#[tokio::test]
async fn the_api_answers_beside_two_thousand_slow_clients() {
    let app = spawn_app().await;
    let t = app.create_org("Acme").await;
    let (_idle, trickle) = slow_crowd(&app, &t.key, 2000).await;

    // A fresh client (new connections) is served, reads and writes alike.
    let fresh = reqwest::Client::builder()
        .timeout(ANSWER_WITHIN)
        .build()
        .unwrap();
    for i in 0..20 {
        let r = fresh
            .post(app.url("/v1/users"))
            .bearer_auth(&t.key)
            .json(&json!({"email": format!("u{i}@example.com")}))
            .send()
            .await
            .expect("a write beside the slow clients");
        assert_eq!(r.status(), StatusCode::CREATED);
        let r = fresh
            .get(app.url("/healthz"))
            .send()
            .await
            .expect("a health check beside the slow clients");
        assert_eq!(r.status(), StatusCode::OK);
    }
    let list: Value = fresh
        .get(app.url("/v1/users?limit=500"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 20);
    trickle.abort();
}

/// Reads until the server closes the connection (or resets it), at most `limit`; how long
/// that took.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(start + limit, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the server kept the connection open for {limit:?}"),
        }
    }
}

fn short_limits() -> ConnectionLimits {
    ConnectionLimits {
        header_read_timeout: Duration::from_secs(1),
        body_read_timeout: Duration::from_secs(1),
        max_header_bytes: 32 * 1024,
        max_connections: 40,
    }
}

#[tokio::test]
async fn idle_and_trickling_connections_are_closed_at_their_deadlines() {
    let app = spawn_app_limited(short_limits()).await;
    let t = app.create_org("Acme").await;

    // Silent: closed after the head deadline.
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    closed_within(&mut silent, ANSWER_WITHIN).await;

    // A head trickled one byte every 100 ms keeps arriving, and is still cut at its deadline.
    let mut head = TcpStream::connect(app.addr).await.unwrap();
    head.write_all(b"GET /healthz HTTP/1.1\r\nx-slow: ")
        .await
        .unwrap();
    let (mut read, mut write) = head.into_split();
    let trickle = tokio::spawn(async move {
        while write.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let start = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout_at(start + ANSWER_WITHIN, read.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => panic!("a trickled head was never cut off"),
        }
    }
    trickle.abort();

    // A body trickled past its deadline is answered 408 problem+json, and nothing is stored.
    let mut body = TcpStream::connect(app.addr).await.unwrap();
    body.write_all(
        format!(
            "POST /v1/users HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"email\":\"",
            t.key
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (mut read, mut write) = body.into_split();
    let trickle = tokio::spawn(async move {
        while write.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut got = Vec::new();
    let start = Instant::now();
    loop {
        match tokio::time::timeout_at(start + ANSWER_WITHIN, read.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("a trickled body was never answered"),
        }
        if got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"}") {
            break;
        }
    }
    trickle.abort();
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("\"status\":408"), "{answer}");
    let list: Value = app.get(&t, "/v1/users").await.json().await.unwrap();
    assert_eq!(list["data"], json!([]));
}

#[tokio::test]
async fn a_full_house_of_silent_connections_delays_others_only_until_the_deadline() {
    let app = spawn_app_limited(short_limits()).await;
    let t = app.create_org("Acme").await;
    // Every slot taken by a connection that sends nothing.
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(TcpStream::connect(app.addr).await.unwrap());
    }
    // A normal client still gets its answer: the silent ones are closed at the head
    // deadline, and it waits in the backlog meanwhile instead of being refused.
    let client = reqwest::Client::builder()
        .timeout(ANSWER_WITHIN)
        .build()
        .unwrap();
    let r = client
        .get(app.url("/v1/users"))
        .bearer_auth(&t.key)
        .send()
        .await
        .expect("answered once the silent connections are gone");
    assert_eq!(r.status(), StatusCode::OK);
    drop(silent);
}
