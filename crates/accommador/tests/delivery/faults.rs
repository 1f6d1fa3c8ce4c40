//! The receiver fault matrix (issue 14): every way a receiver can misbehave that the sender
//! must survive, each on a real local socket (`fault_receiver.rs`, raw TCP), and what the
//! attempt log and the next attempt then say: status or error class, the kept body, the
//! duration, and when (or whether) the delivery is tried again.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::fault_receiver::{Conn, Fault, FaultReceiver, response};
use crate::helpers::{Tenant, TestApp, spawn_app_with};
use crate::receiver::Receiver;
use crate::{WAIT, attempts, endpoint, json_of};

/// The per-attempt timeout of the server under test.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Its one scheduled retry, an hour after the first attempt (±20 % jitter).
const RETRY: Duration = Duration::from_secs(3600);
const HOUR: u64 = 3600;
const MB: usize = 1024 * 1024;

/// The kept response body.
#[derive(Debug)]
enum Body {
    Exactly(String),
    /// Only these bytes, repeated, at most this many (what arrived before the cut).
    RepeatedAtMost(char, usize),
}

/// When the delivery is tried next.
#[derive(Debug)]
enum Next {
    /// On the schedule: the retry delay ±20 % after the attempt ended.
    Schedule,
    /// This long after the attempt ended (a `Retry-After`), within a few seconds.
    After(Duration),
    /// At this time (a `Retry-After` date), within a few seconds.
    At(SystemTime),
    Succeeded,
    /// Never again: the delivery is `failed`.
    Failed,
}

struct Expect {
    status_code: Option<u16>,
    error_class: Option<&'static str>,
    body: Body,
    /// Bounds on `duration_ms`.
    duration: (Duration, Duration),
    next: Next,
}

struct Case {
    name: &'static str,
    url: String,
    expect: Expect,
    /// The receiver, when the case checks what happened on its side too.
    fault: Option<FaultReceiver>,
}

fn quick() -> (Duration, Duration) {
    (Duration::ZERO, TIMEOUT)
}

fn about_the_timeout() -> (Duration, Duration) {
    // The client gives up at the timeout; a loaded machine may add to it, never take away.
    (
        TIMEOUT - Duration::from_millis(50),
        TIMEOUT + Duration::from_secs(3),
    )
}

fn failure(status: Option<u16>, class: &'static str, next: Next) -> Expect {
    Expect {
        status_code: status,
        error_class: Some(class),
        body: Body::Exactly(String::new()),
        duration: quick(),
        next,
    }
}

/// Given up at the timeout, and tried again on the schedule.
fn timed_out() -> Expect {
    Expect {
        duration: about_the_timeout(),
        ..failure(None, "timeout", Next::Schedule)
    }
}

async fn fault(
    cases: &mut Vec<Case>,
    name: &'static str,
    f: Fault,
    expect: Expect,
) -> FaultReceiver {
    let rx = FaultReceiver::start(f).await;
    cases.push(Case {
        name,
        url: rx.url(&format!("/{}", name.replace(' ', "-"))),
        expect,
        fault: Some(rx.clone()),
    });
    rx
}

/// A receiver that answers `status` with `headers` and a text `body`: the attempt is a
/// failure of class `http_status` that keeps the body as sent, tried again as `next` says.
async fn answers(
    cases: &mut Vec<Case>,
    name: &'static str,
    status: u16,
    headers: &[(&str, &str)],
    body: &str,
    next: Next,
) {
    fault(
        cases,
        name,
        Fault::Respond(response(status, headers, body.as_bytes())),
        Expect {
            body: Body::Exactly(body.into()),
            ..failure(Some(status), "http_status", next)
        },
    )
    .await;
}

/// A 127.0.0.1 port whose accept queue is full: the kernel drops further SYNs, so a connection
/// attempt times out as behind a firewall that drops packets, without leaving the machine.
/// Keep the returned value alive as long as the port must stay full.
async fn full_backlog() -> (tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => held.push(stream),
            Ok(Err(e)) => panic!("connecting to fill the backlog: {e}"),
            Err(_) => return (listener, held),
        }
    }
    panic!("the accept queue of {addr} never filled");
}

fn millis_of(rfc3339: &Value) -> i128 {
    OffsetDateTime::parse(rfc3339.as_str().unwrap(), &Rfc3339)
        .unwrap()
        .unix_timestamp_nanos()
        / 1_000_000
}

/// Waits until the delivery of `endpoint_id` has logged its first attempt; the delivery and
/// that attempt.
async fn first_attempt(app: &TestApp, t: &Tenant, endpoint_id: &str) -> (Value, Value) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = json_of(app, t, &format!("/v1/deliveries?endpoint_id={endpoint_id}")).await;
        if let Some(id) = list["data"][0]["id"].as_str() {
            let log = attempts(app, t, id).await;
            if let Some(first) = log.first() {
                let d = json_of(app, t, &format!("/v1/deliveries/{id}")).await;
                return (d, first.clone());
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{endpoint_id} logged no attempt within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn check(case: &Case, delivery: &Value, attempt: &Value) {
    let name = case.name;
    let e = &case.expect;
    let ctx = format!("{name}: attempt {attempt}\ndelivery {delivery}");
    assert_eq!(
        attempt["status_code"].as_u64().map(|s| s as u16),
        e.status_code,
        "{ctx}"
    );
    assert_eq!(attempt["error_class"].as_str(), e.error_class, "{ctx}");
    if e.error_class.is_some() {
        assert!(
            attempt["error"].as_str().is_some_and(|s| !s.is_empty()),
            "{ctx}"
        );
    }
    let body = attempt["response_body"].as_str().unwrap();
    match &e.body {
        Body::Exactly(b) => assert_eq!(body, b, "{ctx}"),
        Body::RepeatedAtMost(c, n) => {
            assert!(body.len() <= *n && body.chars().all(|x| x == *c), "{ctx}")
        }
    }
    let took = Duration::from_millis(attempt["duration_ms"].as_u64().unwrap());
    assert!(
        took >= e.duration.0 && took <= e.duration.1,
        "{name}: took {took:?}, expected {:?}\n{ctx}",
        e.duration
    );
    assert_eq!(delivery["attempt_count"], 1, "{ctx}");
    assert_eq!(
        delivery["last_status_code"].as_u64().map(|s| s as u16),
        e.status_code,
        "{ctx}"
    );
    let ended = millis_of(&attempt["started_at"]) + i128::from(took.as_millis() as u64);
    let after = |d: &Value| millis_of(d) - ended;
    let within = |lo: Duration, hi: Duration| {
        let gap = after(&delivery["next_attempt_at"]);
        assert!(
            gap >= lo.as_millis() as i128 && gap <= hi.as_millis() as i128,
            "{name}: next attempt {gap} ms after the attempt ended, expected {lo:?}..{hi:?}\n{ctx}"
        );
    };
    let slack = Duration::from_secs(5);
    match &e.next {
        Next::Schedule => {
            assert_eq!(delivery["status"], "pending", "{ctx}");
            within(RETRY.mul_f64(0.8) - slack, RETRY.mul_f64(1.2) + slack);
        }
        Next::After(d) => {
            assert_eq!(delivery["status"], "pending", "{ctx}");
            within(d.saturating_sub(slack), *d + slack);
        }
        Next::At(at) => {
            assert_eq!(delivery["status"], "pending", "{ctx}");
            let at = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i128;
            let next = millis_of(&delivery["next_attempt_at"]);
            assert!(
                next >= at - 1000 && next <= at + slack.as_millis() as i128,
                "{name}: next attempt at {next}, expected {at} (the date asked for)\n{ctx}"
            );
        }
        Next::Succeeded => {
            assert_eq!(delivery["status"], "succeeded", "{ctx}");
            assert_eq!(delivery["next_attempt_at"], Value::Null, "{ctx}");
        }
        Next::Failed => {
            assert_eq!(delivery["status"], "failed", "{ctx}");
            assert_eq!(delivery["next_attempt_at"], Value::Null, "{ctx}");
        }
    }
}

#[tokio::test]
async fn every_receiver_fault_is_logged_and_scheduled_as_a_user_would_expect() {
    let app = spawn_app_with(|s| {
        s.retry_schedule = vec![RETRY];
        s.delivery_timeout = TIMEOUT;
    })
    .await;
    let t = app.create_org("Acme").await;
    let mut cases = Vec::new();

    answers(&mut cases, "500", 500, &[], "boom", Next::Schedule).await;
    answers(
        &mut cases,
        "503 retry-after seconds",
        503,
        &[("retry-after", "7200")],
        "",
        Next::After(Duration::from_secs(2 * HOUR)),
    )
    .await;
    let in_three_hours = SystemTime::now() + Duration::from_secs(3 * HOUR);
    answers(
        &mut cases,
        "503 retry-after date",
        503,
        &[("retry-after", &httpdate::fmt_http_date(in_three_hours))],
        "",
        Next::At(in_three_hours),
    )
    .await;
    answers(
        &mut cases,
        "429 retry-after over a day",
        429,
        &[("retry-after", "200000")],
        "",
        Next::After(Duration::from_secs(24 * HOUR)),
    )
    .await;
    answers(
        &mut cases,
        "429 without retry-after",
        429,
        &[],
        "slow down",
        Next::Schedule,
    )
    .await;
    answers(&mut cases, "410", 410, &[], "", Next::Failed).await;
    let hang = fault(
        &mut cases,
        "hang past the timeout",
        Fault::Hang,
        timed_out(),
    )
    .await;
    fault(
        &mut cases,
        "head trickled past the timeout",
        Fault::TrickleHead {
            head: response(200, &[("x-padding", "................")], b"ok"),
            every: Duration::from_millis(100),
        },
        timed_out(),
    )
    .await;
    fault(
        &mut cases,
        "body trickled within the timeout",
        Fault::TrickleBody {
            chunks: 10,
            every: Duration::from_millis(50),
        },
        Expect {
            status_code: Some(200),
            error_class: None,
            body: Body::Exactly("x".repeat(10)),
            duration: (Duration::from_millis(500), TIMEOUT),
            next: Next::Succeeded,
        },
    )
    .await;
    // The status line has said 200: the receiver took the event. A body that never ends is
    // cut at the timeout, and what came of it is kept.
    fault(
        &mut cases,
        "body trickled past the timeout",
        Fault::TrickleBody {
            chunks: 100,
            every: Duration::from_millis(100),
        },
        Expect {
            status_code: Some(200),
            error_class: None,
            body: Body::RepeatedAtMost('x', 40),
            duration: about_the_timeout(),
            next: Next::Succeeded,
        },
    )
    .await;
    let (dropping, _held) = full_backlog().await;
    cases.push(Case {
        name: "connect timeout (SYN dropped)",
        url: format!("http://{}/dropped", dropping.local_addr().unwrap()),
        expect: timed_out(),
        fault: None,
    });
    let refused = Receiver::reserve();
    cases.push(Case {
        name: "connection refused",
        url: refused.url("/refused"),
        expect: failure(None, "connect", Next::Schedule),
        fault: None,
    });
    fault(
        &mut cases,
        "reset mid-head",
        Fault::ResetAfter(b"HTTP/1.1 200 OK\r\ncontent-le".to_vec()),
        failure(None, "connect", Next::Schedule),
    )
    .await;
    let mut cut = b"HTTP/1.1 500 Fault\r\ncontent-length: 1000\r\n\r\n".to_vec();
    cut.extend_from_slice(&[b'z'; 100]);
    fault(
        &mut cases,
        "reset mid-body",
        Fault::ResetAfter(cut),
        Expect {
            body: Body::RepeatedAtMost('z', 100),
            ..failure(Some(500), "http_status", Next::Schedule)
        },
    )
    .await;
    let huge = fault(
        &mut cases,
        "50 MB body",
        Fault::Huge { len: 50 * MB },
        Expect {
            status_code: Some(200),
            error_class: None,
            body: Body::Exactly("y".repeat(4096)),
            duration: quick(),
            next: Next::Succeeded,
        },
    )
    .await;
    let elsewhere = Receiver::start().await;
    answers(
        &mut cases,
        "302",
        302,
        &[("location", &elsewhere.url("/elsewhere"))],
        "",
        Next::Schedule,
    )
    .await;
    // A real plain-HTTP server (hyper) that receives a TLS handshake.
    let plain = Receiver::start().await;
    cases.push(Case {
        name: "https to a plain-HTTP port",
        url: format!("https://{}/tls", plain.addr),
        expect: failure(None, "tls", Next::Schedule),
        fault: None,
    });
    let early = fault(
        &mut cases,
        "answers before reading the body",
        Fault::AnswerBeforeBody(response(200, &[], b"early")),
        Expect {
            status_code: Some(200),
            error_class: None,
            body: Body::Exactly("early".into()),
            duration: quick(),
            next: Next::Succeeded,
        },
    )
    .await;
    // Bytes that are not text, NUL included: kept as text, on both backends.
    fault(
        &mut cases,
        "binary body",
        Fault::Respond(response(
            500,
            &[("content-type", "application/octet-stream")],
            b"\x00bin\xff\xfe\x00ary",
        )),
        Expect {
            body: Body::Exactly("\u{FFFD}bin\u{FFFD}\u{FFFD}\u{FFFD}ary".into()),
            ..failure(Some(500), "http_status", Next::Schedule)
        },
    )
    .await;
    // The first 4 KiB end inside a two-byte character: the log keeps whole characters only.
    let mut split = vec![b'a'; 4095];
    split.extend_from_slice("é and more".as_bytes());
    fault(
        &mut cases,
        "a character across the 4 KiB cut",
        Fault::Respond(response(500, &[], &split)),
        Expect {
            body: Body::Exactly("a".repeat(4095)),
            ..failure(Some(500), "http_status", Next::Schedule)
        },
    )
    .await;

    let mut endpoints = Vec::new();
    for case in &cases {
        endpoints.push(endpoint(&app, &t, &case.url, None).await.id);
    }
    // A payload of about 12 KiB, so that answering before reading the body means something.
    app.create_user(
        &t,
        json!({"email": "fault@example.com", "attributes": {"note": "n".repeat(12_000)}}),
    )
    .await;

    for (case, id) in cases.iter().zip(&endpoints) {
        let (delivery, attempt) = first_attempt(&app, &t, id).await;
        check(case, &delivery, &attempt);
        if let Some(f) = &case.fault {
            // One connection, and the attempt was not made twice.
            let conns = f.wait_finished(1, WAIT).await;
            assert_eq!(conns.len(), 1, "{}: {conns:?}", case.name);
        }
    }

    // What the receivers saw.
    let gone = &endpoints[cases.iter().position(|c| c.name == "410").unwrap()];
    let ep = json_of(&app, &t, &format!("/v1/endpoints/{gone}")).await;
    assert_eq!(ep["status"], "disabled", "{ep}");
    assert!(
        ep["disabled_reason"].as_str().unwrap().contains("410"),
        "{ep}"
    );

    let hung: Vec<Conn> = hang.wait_finished(1, WAIT).await;
    assert!(hung[0].sender_hung_up, "{hung:?}");

    let streamed = huge.wait_finished(1, WAIT).await;
    assert!(
        streamed[0].sender_hung_up && streamed[0].written < 50 * MB,
        "the 50 MB body was read to its end: {streamed:?}"
    );

    let answered = early.wait_finished(1, WAIT).await;
    assert_eq!(answered[0].body_read_before_answer, 0, "{answered:?}");
    assert!(answered[0].content_length > 12_000, "{answered:?}");

    let redirect = &cases.iter().position(|c| c.name == "302").unwrap();
    let (d, a) = first_attempt(&app, &t, &endpoints[*redirect]).await;
    assert_eq!(
        a["response_headers"]["location"],
        elsewhere.url("/elsewhere").as_str(),
        "{d}"
    );
    assert!(elsewhere.all().is_empty(), "the redirect was followed");
    assert!(plain.all().is_empty(), "a plain-HTTP request was made");
}

/// A process's peak resident memory (`VmHWM`), in bytes, from /proc.
fn peak_rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib * 1024
}

#[tokio::test]
async fn fifty_megabyte_answers_leave_the_servers_memory_flat() {
    const RECEIVERS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let server = crate::crash::start(dir.path()).await;
    let key = server.create_org(crate::crash::ADMIN, "Big").await;
    // Warm up first (client, pools, caches) with an ordinary delivery.
    let rx = Receiver::start().await;
    let r = server
        .post(&key, "/v1/endpoints", json!({"url": rx.url("/warm")}))
        .await;
    assert_eq!(r.status(), 201);
    let r = server
        .post(&key, "/v1/users", json!({"email": "warm@example.com"}))
        .await;
    assert_eq!(r.status(), 201);
    rx.wait_for("/warm", 1, WAIT).await;
    let before = peak_rss(server.0.id());

    let huge = FaultReceiver::start(Fault::Huge { len: 50 * MB }).await;
    for i in 0..RECEIVERS {
        let url = huge.url(&format!("/huge{i}"));
        let r = server
            .post(&key, "/v1/endpoints", json!({ "url": url }))
            .await;
        assert_eq!(r.status(), 201);
    }
    let r = server
        .post(&key, "/v1/users", json!({"email": "big@example.com"}))
        .await;
    assert_eq!(r.status(), 201);
    let conns = huge.wait_finished(RECEIVERS, WAIT).await;
    let after = peak_rss(server.0.id());
    for c in &conns {
        assert!(c.sender_hung_up && c.written < 50 * MB, "{c:?}");
    }
    // Four 50 MB bodies read whole would be 200 MB; what is kept is 4 KiB each.
    let grew = after.saturating_sub(before);
    assert!(
        grew < 16 * MB,
        "peak memory grew by {} MiB (from {} MiB) while receiving {RECEIVERS} × 50 MB",
        grew / MB,
        before / MB
    );
    // Each logged as a success keeping 4 KiB (the warm-up endpoint has two deliveries).
    let deadline = tokio::time::Instant::now() + WAIT;
    let done = loop {
        let list = server
            .get_json(&key, "/v1/deliveries?status=succeeded&limit=500")
            .await;
        let data = list["data"].as_array().unwrap().clone();
        if data.len() == RECEIVERS + 2 {
            break data;
        }
        assert!(tokio::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut kept = Vec::new();
    for d in &done {
        let path = format!("/v1/deliveries/{}/attempts", d["id"].as_str().unwrap());
        let log = server.get_json(&key, &path).await;
        kept.push(log["data"][0]["response_body"].as_str().unwrap().len());
    }
    kept.sort();
    assert_eq!(kept, [0, 0, 4096, 4096, 4096, 4096]);
    eprintln!(
        "peak RSS {} KiB before, {} KiB after {RECEIVERS} × 50 MB answers",
        before / 1024,
        after / 1024
    );
}
