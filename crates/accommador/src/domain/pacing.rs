//! Per-endpoint pacing rules (DESIGN §10), as pure functions over plain values:
//!
//! - **Rate limit** (`rate_limit: N` deliveries per second): a generic cell rate algorithm
//!   (GCRA) without burst allowance. One number per endpoint, its *theoretical arrival time*
//!   (TAT), says when the next send may start; reserving `k` sends starts them at
//!   `max(TAT, now)`, then `1/N` apart, and moves the TAT past the last. Sends are therefore
//!   spaced evenly, so every 1 s window holds at most N of them (N + 1 where a window's ends
//!   touch two sends), never a burst. Both backends keep the TAT in microseconds: SQLite in
//!   the one process that owns the database, PostgreSQL on the endpoint row, advanced
//!   atomically by every instance (`store::pacing`).
//! - **Adaptive concurrency**: a `429` or `503` without `Retry-After` halves the attempts an
//!   endpoint may have in flight (never below 1), each success raises it by one back to the
//!   configured bound (`ACCOMMADOR_ENDPOINT_CONCURRENCY`). A `Retry-After` already says when
//!   to come back (the retry schedule honours it), so it does not halve too.

use super::delivery::AttemptResult;

/// Largest `rate_limit` accepted: one send every 100 µs.
pub const MAX_RATE_LIMIT: u32 = 10_000;

/// Microseconds between two sends at `rate` per second, rounded up so the rate is never
/// exceeded.
pub fn interval_us(rate: u32) -> i64 {
    let rate = i64::from(rate.max(1));
    (1_000_000 + rate - 1) / rate
}

/// Reserves `count` sends at `rate` per second, `now_us` being now: returns when the first may
/// start (the others follow one interval apart) and the new theoretical arrival time.
pub fn reserve(tat_us: i64, now_us: i64, rate: u32, count: u32) -> (i64, i64) {
    let first = tat_us.max(now_us);
    (first, first + interval_us(rate) * i64::from(count))
}

/// What an answer says about the endpoint's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// It coped: one more attempt may be in flight (up to the bound).
    Raise,
    /// `429` or `503` without `Retry-After`: half as many.
    Halve,
}

impl Signal {
    /// The signal of an attempt's result, if any: a 2xx raises; a 429 or 503 that carries no
    /// `Retry-After` header (whatever its value) halves; anything else says nothing about load.
    pub fn of(result: &AttemptResult) -> Option<Signal> {
        if result.succeeded() {
            return Some(Signal::Raise);
        }
        let overloaded = matches!(result.status_code, Some(429 | 503));
        (overloaded && !result.response_headers.contains_key("retry-after"))
            .then_some(Signal::Halve)
    }
}

/// The allowed concurrency after `signal`, from `current`, within `1..=bound`.
pub fn adjust(current: u32, signal: Signal, bound: u32) -> u32 {
    let bound = bound.max(1);
    let current = current.clamp(1, bound);
    match signal {
        Signal::Raise => (current + 1).min(bound),
        Signal::Halve => (current / 2).max(1),
    }
}

/// How an allowed concurrency is stored: `None` at the bound (so raising the bound in the
/// configuration raises every endpoint that is not held down), else the value.
pub fn stored(current: u32, bound: u32) -> Option<u32> {
    (current < bound).then_some(current)
}

/// The allowed concurrency a stored value means under `bound`.
pub fn effective(stored: Option<u32>, bound: u32) -> u32 {
    stored.map_or(bound, |n| n.clamp(1, bound.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Timestamp;
    use crate::domain::delivery::Trigger;

    fn result(status: u16, retry_after: Option<&str>) -> AttemptResult {
        let mut headers = serde_json::Map::new();
        if let Some(v) = retry_after {
            headers.insert("retry-after".into(), v.into());
        }
        AttemptResult {
            trigger: Trigger::Scheduled,
            started_at: Timestamp(0),
            duration_ms: 1,
            status_code: Some(status),
            error_class: (!(200..300).contains(&status))
                .then_some(crate::domain::delivery::ErrorClass::HttpStatus),
            error: None,
            response_headers: headers,
            response_body: String::new(),
            retry_after: None,
        }
    }

    #[test]
    fn sends_are_spaced_one_interval_apart_and_never_bunch_after_idling() {
        assert_eq!(interval_us(20), 50_000);
        assert_eq!(
            interval_us(3),
            333_334,
            "rounded up: never faster than asked"
        );
        // Idle endpoint: the first starts now, the TAT moves three intervals on.
        assert_eq!(reserve(0, 1_000_000, 20, 3), (1_000_000, 1_150_000));
        // Busy endpoint: the next reservation continues where the last one ended.
        assert_eq!(reserve(1_150_000, 1_010_000, 20, 2), (1_150_000, 1_250_000));
        // However many reservations, N per second at most in any 1 s window.
        let (mut tat, mut starts) = (0, Vec::new());
        for now in (0..3_000_000).step_by(7_000) {
            let (first, next) = reserve(tat, now, 50, 2);
            if first > now + 200_000 {
                continue;
            }
            starts.extend([first, first + interval_us(50)]);
            tat = next;
        }
        for (i, s) in starts.iter().enumerate() {
            let in_window = starts[i..]
                .iter()
                .take_while(|t| **t < s + 1_000_000)
                .count();
            assert!(in_window <= 50, "{in_window} sends within 1 s of {s}");
        }
    }

    #[test]
    fn only_429_and_503_without_retry_after_halve_and_successes_raise() {
        assert_eq!(Signal::of(&result(204, None)), Some(Signal::Raise));
        assert_eq!(Signal::of(&result(429, None)), Some(Signal::Halve));
        assert_eq!(Signal::of(&result(503, None)), Some(Signal::Halve));
        assert_eq!(Signal::of(&result(429, Some("5"))), None);
        assert_eq!(Signal::of(&result(503, Some("soon"))), None);
        assert_eq!(Signal::of(&result(500, None)), None);
        assert_eq!(Signal::of(&result(404, None)), None);
    }

    #[test]
    fn halving_stops_at_one_and_raising_at_the_bound() {
        let halvings: Vec<u32> = std::iter::successors(Some(16), |c| {
            Some(adjust(*c, Signal::Halve, 16)).filter(|n| n != c)
        })
        .collect();
        assert_eq!(halvings, [16, 8, 4, 2, 1]);
        assert_eq!(adjust(1, Signal::Halve, 16), 1);
        assert_eq!(adjust(15, Signal::Raise, 16), 16);
        assert_eq!(adjust(16, Signal::Raise, 16), 16);
        assert_eq!(adjust(40, Signal::Raise, 16), 16, "a lowered bound wins");
        assert_eq!(stored(16, 16), None);
        assert_eq!(stored(3, 16), Some(3));
        assert_eq!(effective(None, 16), 16);
        assert_eq!(effective(Some(3), 16), 3);
        assert_eq!(effective(Some(12), 8), 8);
    }
}
