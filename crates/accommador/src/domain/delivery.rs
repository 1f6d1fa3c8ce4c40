//! Deliveries (one per event × endpoint) and their attempts: the state machine, the error
//! classes of the delivery log, and the retry policy that decides what follows an attempt.
//! Pure: the store calls [`RetryPolicy::decide`] inside the transaction that records an attempt.

use std::time::Duration;

use super::Timestamp;

/// Longest delay a receiver's `Retry-After` may impose.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
/// How much of a response body the delivery log keeps.
pub const MAX_LOGGED_BODY: usize = 4 * 1024;
/// Fraction of each scheduled delay added or removed at random.
pub const JITTER: f64 = 0.2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "succeeded" => Some(DeliveryStatus::Succeeded),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// Why an attempt failed, as the delivery log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    Timeout,
    Connect,
    Dns,
    Tls,
    BlockedAddress,
    HttpStatus,
    EndpointDisabled,
    /// The event's user was erased while the delivery was pending (DESIGN §10).
    Erased,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Timeout => "timeout",
            ErrorClass::Connect => "connect",
            ErrorClass::Dns => "dns",
            ErrorClass::Tls => "tls",
            ErrorClass::BlockedAddress => "blocked_address",
            ErrorClass::HttpStatus => "http_status",
            ErrorClass::EndpointDisabled => "endpoint_disabled",
            ErrorClass::Erased => "erased",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Scheduled,
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Scheduled => "scheduled",
            Trigger::Manual => "manual",
        }
    }
}

/// What one attempt observed.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptResult {
    pub trigger: Trigger,
    pub started_at: Timestamp,
    pub duration_ms: u64,
    pub status_code: Option<u16>,
    pub error_class: Option<ErrorClass>,
    pub error: Option<String>,
    /// Response headers, lower-case names, as a JSON object.
    pub response_headers: serde_json::Map<String, serde_json::Value>,
    /// The first 4 KiB of the response body, lossily decoded.
    pub response_body: String,
    /// A `Retry-After` on 429 or 503, already parsed.
    pub retry_after: Option<Duration>,
}

/// The `webhook-timestamp` an attempt that started at `started_at` carries (unix seconds):
/// the log shows it as sent without storing it twice.
pub fn webhook_timestamp(started_at: Timestamp) -> i64 {
    started_at.millis().div_euclid(1000)
}

impl AttemptResult {
    /// Whether a request was sent (or its sending begun): not for an address refused before
    /// connecting, a name that did not resolve, or a delivery ended without an attempt.
    pub fn request_sent(&self) -> bool {
        !matches!(
            self.error_class,
            Some(
                ErrorClass::BlockedAddress
                    | ErrorClass::Dns
                    | ErrorClass::EndpointDisabled
                    | ErrorClass::Erased
            )
        )
    }

    pub fn succeeded(&self) -> bool {
        self.error_class.is_none() && self.status_code.is_some_and(|s| (200..300).contains(&s))
    }

    pub fn gone(&self) -> bool {
        self.status_code == Some(410)
    }
}

/// What the store knows of a delivery when its attempt is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryFacts {
    /// Scheduled retries already spent.
    pub retries_used: u32,
    /// For a manual attempt on a delivery that was still retrying: when its schedule resumes.
    pub resume_at: Option<Timestamp>,
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Succeeded,
    /// Try again at this time; `spends_retry` when it uses one step of the schedule.
    RetryAt {
        at: Timestamp,
        spends_retry: bool,
    },
    Failed,
}

/// The schedule of delays after the first attempt and the continuous-failure limit.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub schedule: Vec<Duration>,
    pub disable_after: Duration,
}

impl RetryPolicy {
    /// Decides the next step after an attempt that ended at `now`. `jitter` is a number in
    /// [-1, 1] (random in production) scaling the ±20 % jitter.
    pub fn decide(
        &self,
        facts: DeliveryFacts,
        result: &AttemptResult,
        now: Timestamp,
        jitter: f64,
    ) -> Next {
        if result.succeeded() {
            return Next::Succeeded;
        }
        if result.gone() {
            return Next::Failed;
        }
        if result.trigger == Trigger::Manual {
            // A failed manual attempt is not retried; a schedule it interrupted resumes.
            return match facts.resume_at {
                Some(at) => Next::RetryAt {
                    at: at.max(now),
                    spends_retry: false,
                },
                None => Next::Failed,
            };
        }
        let Some(delay) = self.schedule.get(facts.retries_used as usize) else {
            return Next::Failed;
        };
        let factor = 1.0 + JITTER * jitter.clamp(-1.0, 1.0);
        let mut delay_ms = (delay.as_millis() as f64 * factor).round() as i64;
        if let Some(retry_after) = result.retry_after {
            let asked = retry_after.min(MAX_RETRY_AFTER).as_millis() as i64;
            delay_ms = delay_ms.max(asked);
        }
        Next::RetryAt {
            at: Timestamp(now.millis() + delay_ms),
            spends_retry: true,
        }
    }

    /// Whether an endpoint failing since `since` has failed long enough to be disabled.
    pub fn should_disable(&self, since: Timestamp, now: Timestamp) -> bool {
        now.millis() - since.millis() >= self.disable_after.as_millis() as i64
    }
}

/// What recording an attempt writes into its delivery's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub status: DeliveryStatus,
    pub next_attempt_at: Option<Timestamp>,
    /// Whether the attempt used one step of the schedule (`retries_used` + 1).
    pub spends_retry: bool,
    /// Whether the attempt decided anything: `false` for a delivery that had already ended
    /// (its attempt is logged, but its status, last status code and its endpoint's failure
    /// clock are left as they are).
    pub applies: bool,
    /// A scheduled attempt failed with no step of the schedule left: the delivery ends
    /// `failed` because its retries are used up (not for a 410, nor a failed manual attempt).
    pub exhausted: bool,
}

/// The one rule, for both backends, for what an attempt does to its delivery. A delivery that
/// is still pending follows `policy`. One that is no longer pending was ended while its
/// attempt was in flight (its endpoint was disabled or deleted, or another holder of an
/// expired lease finished it): the attempt is logged, since it happened, but nothing else
/// changes (`applies` is false).
pub fn settle(
    current: DeliveryStatus,
    facts: DeliveryFacts,
    result: &AttemptResult,
    policy: &RetryPolicy,
    now: Timestamp,
    jitter: f64,
) -> Settled {
    if current != DeliveryStatus::Pending {
        return Settled {
            status: current,
            next_attempt_at: None,
            spends_retry: false,
            applies: false,
            exhausted: false,
        };
    }
    match policy.decide(facts, result, now, jitter) {
        Next::Succeeded => Settled {
            status: DeliveryStatus::Succeeded,
            next_attempt_at: None,
            spends_retry: false,
            applies: true,
            exhausted: false,
        },
        Next::Failed => Settled {
            status: DeliveryStatus::Failed,
            next_attempt_at: None,
            spends_retry: false,
            applies: true,
            exhausted: result.trigger == Trigger::Scheduled
                && !result.gone()
                && facts.retries_used as usize >= policy.schedule.len(),
        },
        Next::RetryAt { at, spends_retry } => Settled {
            status: DeliveryStatus::Pending,
            next_attempt_at: Some(at),
            spends_retry,
            applies: true,
            exhausted: false,
        },
    }
}

/// The continuous-failure clock of an endpoint after some attempts, given as (started at,
/// succeeded) in the order they started: a success stops it, the first failure after that
/// starts it at that failure's start.
pub fn failing_since(
    before: Option<Timestamp>,
    attempts: &[(Timestamp, bool)],
) -> Option<Timestamp> {
    attempts.iter().fold(
        before,
        |since, &(started, ok)| {
            if ok { None } else { since.or(Some(started)) }
        },
    )
}

/// The reason to disable an enabled endpoint after its attempts, if any: an answer of 410 Gone,
/// or failing continuously (since `since`) for the policy's limit.
pub fn disable_reason(
    gone: bool,
    since: Option<Timestamp>,
    policy: &RetryPolicy,
    now: Timestamp,
) -> Option<String> {
    if gone {
        return Some(DISABLED_GONE.to_owned());
    }
    since
        .filter(|s| policy.should_disable(*s, now))
        .map(|s| format!("failing continuously since {}", s.to_rfc3339()))
}

/// Why an endpoint that answered 410 was disabled.
pub const DISABLED_GONE: &str = "the endpoint answered 410 Gone";

/// `Retry-After` as seconds or an HTTP date, relative to `now`; `None` if unreadable.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// What the delivery log keeps of a response body: its first [`MAX_LOGGED_BODY`] bytes, cut
/// back to a whole character when the cut splits one, as text. Bytes that are not UTF-8 become
/// U+FFFD, and so does NUL, which PostgreSQL's `text` cannot hold (a receiver answering
/// binary must not make its attempt impossible to record).
pub fn logged_body(body: &[u8]) -> String {
    let mut kept = &body[..body.len().min(MAX_LOGGED_BODY)];
    if kept.len() < body.len()
        && let Some(lead) = (kept.len().saturating_sub(4)..kept.len())
            .rev()
            .find(|&i| kept[i] & 0xC0 != 0x80)
    {
        let width = match kept[lead] {
            b if b >= 0xF0 => 4,
            b if b >= 0xE0 => 3,
            b if b >= 0xC0 => 2,
            _ => 1,
        };
        if lead + width > kept.len() {
            kept = &kept[..lead];
        }
    }
    String::from_utf8_lossy(kept).replace('\0', "\u{FFFD}")
}

#[cfg(test)]
mod logged_body_tests {
    use super::*;

    #[test]
    fn the_log_keeps_4_kib_of_whole_characters_and_no_nul() {
        assert_eq!(logged_body(b"ok"), "ok");
        assert_eq!(logged_body(&[b'y'; 50_000]), "y".repeat(MAX_LOGGED_BODY));
        let mut split = vec![b'a'; MAX_LOGGED_BODY - 1];
        split.extend_from_slice("é…".as_bytes());
        assert_eq!(logged_body(&split), "a".repeat(MAX_LOGGED_BODY - 1));
        let mut three = vec![b'a'; MAX_LOGGED_BODY - 2];
        three.extend_from_slice("…".as_bytes());
        assert_eq!(logged_body(&three), "a".repeat(MAX_LOGGED_BODY - 2));
        let mut whole = vec![b'a'; MAX_LOGGED_BODY - 2];
        whole.extend_from_slice("é and more".as_bytes());
        assert_eq!(
            logged_body(&whole),
            format!("{}é", "a".repeat(MAX_LOGGED_BODY - 2))
        );
        assert_eq!(
            logged_body(b"\x00bin\xff\xfe\x00ary"),
            "\u{FFFD}bin\u{FFFD}\u{FFFD}\u{FFFD}ary"
        );
    }
}

#[cfg(test)]
mod webhook_timestamp_tests {
    use super::*;

    #[test]
    fn the_webhook_timestamp_is_the_attempts_start_in_whole_seconds() {
        assert_eq!(
            webhook_timestamp(Timestamp(1_614_265_330_999)),
            1_614_265_330
        );
        assert_eq!(
            webhook_timestamp(Timestamp(1_614_265_330_000)),
            1_614_265_330
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            schedule: vec![Duration::from_secs(5), Duration::from_secs(300)],
            disable_after: Duration::from_secs(3600),
        }
    }

    fn failed(status: Option<u16>) -> AttemptResult {
        AttemptResult {
            trigger: Trigger::Scheduled,
            started_at: Timestamp(0),
            duration_ms: 1,
            status_code: status,
            error_class: Some(if status.is_some() {
                ErrorClass::HttpStatus
            } else {
                ErrorClass::Connect
            }),
            error: None,
            response_headers: Default::default(),
            response_body: String::new(),
            retry_after: None,
        }
    }

    const NOW: Timestamp = Timestamp(1_000_000);
    const FRESH: DeliveryFacts = DeliveryFacts {
        retries_used: 0,
        resume_at: None,
    };

    #[test]
    fn an_ended_delivery_keeps_its_status_whatever_its_late_attempt_found() {
        let mut ok = failed(Some(200));
        ok.error_class = None;
        for current in [DeliveryStatus::Failed, DeliveryStatus::Succeeded] {
            for result in [&ok, &failed(Some(500)), &failed(None)] {
                let s = settle(current, FRESH, result, &policy(), NOW, 0.0);
                assert_eq!(s.status, current);
                assert_eq!(s.next_attempt_at, None);
                assert!(!s.spends_retry);
                assert!(!s.applies);
            }
        }
        let s = settle(DeliveryStatus::Pending, FRESH, &ok, &policy(), NOW, 0.0);
        assert_eq!(s.status, DeliveryStatus::Succeeded);
        let s = settle(
            DeliveryStatus::Pending,
            FRESH,
            &failed(Some(500)),
            &policy(),
            NOW,
            0.0,
        );
        assert_eq!(
            (s.status, s.next_attempt_at, s.spends_retry),
            (
                DeliveryStatus::Pending,
                Some(Timestamp(NOW.0 + 5_000)),
                true
            )
        );
    }

    #[test]
    fn only_a_scheduled_failure_past_the_last_step_exhausts_the_schedule() {
        let spent = DeliveryFacts {
            retries_used: 2,
            resume_at: None,
        };
        let s = settle(
            DeliveryStatus::Pending,
            spent,
            &failed(Some(500)),
            &policy(),
            NOW,
            0.0,
        );
        assert_eq!(s.status, DeliveryStatus::Failed);
        assert!(s.exhausted);
        // Retries left, a 410, a failed manual attempt, or an already ended delivery: no.
        let s = settle(
            DeliveryStatus::Pending,
            FRESH,
            &failed(Some(500)),
            &policy(),
            NOW,
            0.0,
        );
        assert!(!s.exhausted);
        let s = settle(
            DeliveryStatus::Pending,
            FRESH,
            &failed(Some(410)),
            &policy(),
            NOW,
            0.0,
        );
        assert_eq!(s.status, DeliveryStatus::Failed);
        assert!(!s.exhausted);
        let mut manual = failed(Some(500));
        manual.trigger = Trigger::Manual;
        let s = settle(DeliveryStatus::Pending, spent, &manual, &policy(), NOW, 0.0);
        assert_eq!(s.status, DeliveryStatus::Failed);
        assert!(!s.exhausted);
        let s = settle(
            DeliveryStatus::Failed,
            spent,
            &failed(Some(500)),
            &policy(),
            NOW,
            0.0,
        );
        assert!(!s.exhausted);
    }

    #[test]
    fn the_failure_clock_starts_at_the_first_failure_and_stops_at_a_success() {
        let t = Timestamp;
        assert_eq!(failing_since(None, &[]), None);
        assert_eq!(
            failing_since(None, &[(t(5), false), (t(9), false)]),
            Some(t(5))
        );
        assert_eq!(failing_since(Some(t(1)), &[(t(5), false)]), Some(t(1)));
        assert_eq!(failing_since(Some(t(1)), &[(t(5), true)]), None);
        assert_eq!(
            failing_since(Some(t(1)), &[(t(5), true), (t(7), false)]),
            Some(t(7))
        );
    }

    #[test]
    fn an_endpoint_is_disabled_for_410_or_for_failing_past_the_limit() {
        let p = policy();
        let hour = 3_600_000;
        assert_eq!(
            disable_reason(true, None, &p, NOW).as_deref(),
            Some(DISABLED_GONE)
        );
        assert_eq!(disable_reason(false, None, &p, NOW), None);
        assert_eq!(
            disable_reason(false, Some(Timestamp(NOW.0 - hour + 1)), &p, NOW),
            None
        );
        let reason = disable_reason(false, Some(Timestamp(NOW.0 - hour)), &p, NOW).unwrap();
        assert!(
            reason.starts_with("failing continuously since "),
            "{reason}"
        );
    }

    #[test]
    fn failures_follow_the_schedule_then_fail() {
        let p = policy();
        assert_eq!(
            p.decide(FRESH, &failed(Some(500)), NOW, 0.0),
            Next::RetryAt {
                at: Timestamp(1_005_000),
                spends_retry: true
            }
        );
        let second = DeliveryFacts {
            retries_used: 1,
            ..FRESH
        };
        assert_eq!(
            p.decide(second, &failed(None), NOW, 0.0),
            Next::RetryAt {
                at: Timestamp(1_300_000),
                spends_retry: true
            }
        );
        let spent = DeliveryFacts {
            retries_used: 2,
            ..FRESH
        };
        assert_eq!(p.decide(spent, &failed(Some(500)), NOW, 0.0), Next::Failed);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let p = policy();
        let at = |j| match p.decide(FRESH, &failed(Some(500)), NOW, j) {
            Next::RetryAt { at, .. } => at.millis() - NOW.millis(),
            other => panic!("{other:?}"),
        };
        assert_eq!(at(-1.0), 4_000);
        assert_eq!(at(1.0), 6_000);
        assert_eq!(at(7.0), 6_000, "out-of-range jitter is clamped");
    }

    #[test]
    fn success_and_gone_end_the_delivery() {
        let mut ok = failed(Some(204));
        ok.error_class = None;
        assert_eq!(policy().decide(FRESH, &ok, NOW, 0.0), Next::Succeeded);
        assert_eq!(
            policy().decide(FRESH, &failed(Some(410)), NOW, 0.0),
            Next::Failed
        );
        // A 3xx is a failure, never followed.
        assert!(!failed(Some(301)).succeeded());
    }

    #[test]
    fn retry_after_lengthens_but_never_shortens_and_is_capped() {
        let p = policy();
        let mut r = failed(Some(429));
        r.retry_after = Some(Duration::from_secs(60));
        assert_eq!(
            p.decide(FRESH, &r, NOW, 0.0),
            Next::RetryAt {
                at: Timestamp(1_060_000),
                spends_retry: true
            }
        );
        r.retry_after = Some(Duration::from_secs(1));
        assert_eq!(
            p.decide(FRESH, &r, NOW, 0.0),
            Next::RetryAt {
                at: Timestamp(1_005_000),
                spends_retry: true
            }
        );
        r.retry_after = Some(Duration::from_secs(10 * 86_400));
        assert_eq!(
            p.decide(FRESH, &r, NOW, 0.0),
            Next::RetryAt {
                at: Timestamp(NOW.millis() + 86_400_000),
                spends_retry: true
            }
        );
    }

    #[test]
    fn a_failed_manual_attempt_is_not_retried_but_resumes_an_interrupted_schedule() {
        let mut r = failed(Some(500));
        r.trigger = Trigger::Manual;
        assert_eq!(policy().decide(FRESH, &r, NOW, 0.0), Next::Failed);
        let resuming = DeliveryFacts {
            retries_used: 1,
            resume_at: Some(Timestamp(2_000_000)),
        };
        assert_eq!(
            policy().decide(resuming, &r, NOW, 0.0),
            Next::RetryAt {
                at: Timestamp(2_000_000),
                spends_retry: false
            }
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(0))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn endpoints_are_disabled_after_continuous_failure() {
        let p = policy();
        assert!(!p.should_disable(Timestamp(0), Timestamp(3_599_999)));
        assert!(p.should_disable(Timestamp(0), Timestamp(3_600_000)));
    }
}

/// A delivery as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRecord {
    pub id: String,
    pub event_id: String,
    pub event_type: String,
    pub endpoint_id: String,
    pub status: DeliveryStatus,
    pub attempt_count: u32,
    pub next_attempt_at: Option<Timestamp>,
    pub last_status_code: Option<u16>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl DeliveryRecord {
    /// The API shape, which is also the `delivery` of a `delivery.failed` event.
    pub fn to_wire(&self) -> accommador_webhooks::Delivery {
        accommador_webhooks::Delivery {
            id: self.id.clone(),
            event_id: self.event_id.clone(),
            event_type: self.event_type.clone(),
            endpoint_id: self.endpoint_id.clone(),
            status: self.status.as_str().to_owned(),
            attempt_count: self.attempt_count,
            next_attempt_at: self.next_attempt_at.map(Timestamp::to_rfc3339),
            last_status_code: self.last_status_code,
            created_at: self.created_at.to_rfc3339(),
            updated_at: self.updated_at.to_rfc3339(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.to_wire()).expect("deliveries serialise")
    }
}

/// One attempt of the delivery log.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    pub number: u32,
    pub result: AttemptResult,
    /// Sent after a later delivery of the same user to the same endpoint had already been
    /// sent (a manual retry or `recover` of an overtaken delivery on a `per_user` endpoint).
    pub out_of_order: bool,
}

impl AttemptRecord {
    pub fn to_json(&self) -> serde_json::Value {
        let r = &self.result;
        serde_json::json!({
            "number": self.number,
            "trigger": r.trigger.as_str(),
            "started_at": r.started_at.to_rfc3339(),
            "duration_ms": r.duration_ms,
            "status_code": r.status_code,
            "error_class": r.error_class.map(ErrorClass::as_str),
            "error": r.error,
            "response_headers": r.response_headers,
            "response_body": r.response_body,
            "out_of_order": self.out_of_order,
        })
    }
}

impl ErrorClass {
    pub fn parse(s: &str) -> Option<ErrorClass> {
        [
            ErrorClass::Timeout,
            ErrorClass::Connect,
            ErrorClass::Dns,
            ErrorClass::Tls,
            ErrorClass::BlockedAddress,
            ErrorClass::HttpStatus,
            ErrorClass::EndpointDisabled,
            ErrorClass::Erased,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}
