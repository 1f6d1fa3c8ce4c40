//! `cargo bench -p accommador-webhooks`: the cost of Standard Webhooks signing and verifying,
//! per message, over body sizes from a small event to a large one.
//!
//! A plain `harness = false` benchmark (no extra dependencies, so `cargo clippy --all-targets`
//! stays cheap): each case runs for about half a second in batches, and the median batch gives
//! nanoseconds per operation. `Secret::parse` is measured too, because a signer that parses the
//! stored `whsec_…` string for every attempt pays it on every delivery.
//!
//! `cargo bench -p accommador-webhooks -- verify` runs only the cases whose name contains
//! `verify`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use accommador_webhooks::{Secret, Verifier, WebhookHeaders};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const MSG_ID: &str = "evt_01JDZQ8X4V6Y2T9K3M5N7P8Q0R";
const TIMESTAMP: i64 = 1_764_201_600;

/// Runs `op` in batches for about `budget` and returns the median nanoseconds per call.
fn measure(mut op: impl FnMut(), budget: Duration) -> f64 {
    // Size a batch to about 5 ms.
    let mut batch: u32 = 1;
    loop {
        let t = Instant::now();
        for _ in 0..batch {
            op();
        }
        if t.elapsed() >= Duration::from_millis(5) || batch >= 1 << 24 {
            break;
        }
        batch *= 2;
    }
    let mut per_op = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || per_op.len() < 5 {
        let t = Instant::now();
        for _ in 0..batch {
            op();
        }
        per_op.push(t.elapsed().as_nanos() as f64 / f64::from(batch));
    }
    per_op.sort_by(f64::total_cmp);
    per_op[per_op.len() / 2]
}

fn body_of(len: usize) -> Vec<u8> {
    let mut body =
        br#"{"id":"evt_01JDZQ8X4V6Y2T9K3M5N7P8Q0R","type":"user.created","data":{"pad":""#.to_vec();
    body.resize(len.saturating_sub(4).max(body.len()), b'x');
    body.extend_from_slice(br#""}}"#);
    body
}

fn report(name: &str, filter: Option<&str>, bytes: usize, op: impl FnMut()) {
    if filter.is_some_and(|f| !name.contains(f)) {
        return;
    }
    let ns = measure(op, Duration::from_millis(500));
    let throughput = if bytes > 0 {
        format!("{:>9.1} MiB/s", bytes as f64 / ns * 1e9 / (1024.0 * 1024.0))
    } else {
        String::new()
    };
    println!(
        "{name:<32} {ns:>10.0} ns/op {:>12.0} ops/s {throughput}",
        1e9 / ns
    );
}

fn main() {
    // `cargo bench` passes `--bench`; anything else not starting with `-` filters by name.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let filter = filter.as_deref();
    let secret = Secret::parse(SECRET).expect("the published test secret");
    let verifier = Verifier::new(secret.clone());
    let other = Secret::generate();
    let rotating = Verifier::new(other).with_secret(secret.clone());

    report("secret/parse", filter, 0, || {
        black_box(Secret::parse(black_box(SECRET)).expect("valid"));
    });
    for len in [256usize, 1024, 4096, 65_536] {
        let body = body_of(len);
        let signature = secret.sign(MSG_ID, TIMESTAMP, &body);
        let ts = TIMESTAMP.to_string();
        let headers = WebhookHeaders {
            id: MSG_ID,
            timestamp: &ts,
            signature: &signature,
        };
        report(&format!("sign/{len}B"), filter, len, || {
            black_box(secret.sign(black_box(MSG_ID), black_box(TIMESTAMP), black_box(&body)));
        });
        report(&format!("parse+sign/{len}B"), filter, len, || {
            let s = Secret::parse(black_box(SECRET)).expect("valid");
            black_box(s.sign(black_box(MSG_ID), black_box(TIMESTAMP), black_box(&body)));
        });
        report(&format!("verify/{len}B"), filter, len, || {
            let r = verifier.verify_at(black_box(TIMESTAMP), black_box(&headers), black_box(&body));
            assert!(r.is_ok());
        });
        report(&format!("verify-2-secrets/{len}B"), filter, len, || {
            let r = rotating.verify_at(black_box(TIMESTAMP), black_box(&headers), black_box(&body));
            assert!(r.is_ok());
        });
    }
}
