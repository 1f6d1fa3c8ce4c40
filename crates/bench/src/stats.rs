//! The bench's arithmetic: latency percentiles (an HDR histogram in microseconds), rates, and
//! the comparison of a measurement with one of the targets. Pure; unit-tested.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Percentiles of one set of latencies, in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Collects latencies in microseconds; 3 significant digits from 1 µs to 1 hour.
#[derive(Debug, Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            histogram: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds"),
        }
    }
}

impl Latencies {
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.histogram.saturating_record(us);
    }

    /// `None` when nothing was recorded.
    pub fn summary(&self) -> Option<LatencySummary> {
        let h = &self.histogram;
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(LatencySummary {
            count: h.len(),
            min_ms: ms(h.min()),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        })
    }
}

/// Events per second; 0 for an empty interval.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 { count as f64 / s } else { 0.0 }
}

/// Which way a target points.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

/// One of the targets, measured.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub goal: Goal,
    pub unit: &'static str,
    pub measured: Option<f64>,
    pub met: Option<bool>,
    /// `met`, `met (stretch)`, `missed by 23 %`, or why nothing was measured.
    pub verdict: String,
}

/// Compares `measured` with `goal`. `stretch`, for an at-least goal, is the higher mark that
/// earns "met (stretch …)".
pub fn check(
    target: impl Into<String>,
    goal: Goal,
    unit: &'static str,
    measured: Option<f64>,
    stretch: Option<f64>,
) -> TargetCheck {
    let (met, verdict) = match measured {
        None => (None, "not measured".to_owned()),
        Some(m) => match goal {
            Goal::AtLeast(t) if m >= t => match stretch {
                Some(s) if m >= s => (Some(true), format!("met (stretch {} too)", fmt_num(s))),
                _ => (Some(true), "met".to_owned()),
            },
            Goal::AtLeast(t) => (
                Some(false),
                format!(
                    "missed by {:.0} % (reached {:.0} % of the target)",
                    (1.0 - m / t) * 100.0,
                    m / t * 100.0
                ),
            ),
            Goal::AtMost(t) if m <= t => (Some(true), "met".to_owned()),
            Goal::AtMost(t) => (
                Some(false),
                format!(
                    "missed by {:.0} % ({:.1}× the limit)",
                    (m / t - 1.0) * 100.0,
                    m / t
                ),
            ),
        },
    };
    TargetCheck {
        target: target.into(),
        goal,
        unit,
        measured,
        met,
        verdict,
    }
}

/// A number for people: no decimals from 100 up, otherwise up to three significant digits.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance
    }

    #[test]
    fn percentiles_of_one_to_a_hundred_milliseconds() {
        let mut l = Latencies::default();
        for ms in 1..=100u64 {
            l.record(Duration::from_millis(ms));
        }
        let s = l.summary().unwrap();
        assert_eq!(s.count, 100);
        // Three significant digits: within 0.1 % of the exact value.
        assert!(close(s.min_ms, 1.0, 0.001), "{s:?}");
        assert!(close(s.p50_ms, 50.0, 0.05), "{s:?}");
        assert!(close(s.p95_ms, 95.0, 0.1), "{s:?}");
        assert!(close(s.p99_ms, 99.0, 0.1), "{s:?}");
        assert!(close(s.max_ms, 100.0, 0.1), "{s:?}");
        assert!(close(s.mean_ms, 50.5, 0.1), "{s:?}");
    }

    #[test]
    fn one_slow_sample_in_a_hundred_is_the_max_not_the_p99() {
        let mut l = Latencies::default();
        for _ in 0..99 {
            l.record(Duration::from_micros(800));
        }
        l.record(Duration::from_secs(30));
        let s = l.summary().unwrap();
        assert!(close(s.p99_ms, 0.8, 0.001), "{s:?}");
        assert!(close(s.max_ms, 30_000.0, 30.0), "{s:?}");
    }

    #[test]
    fn no_samples_no_summary() {
        assert_eq!(Latencies::default().summary(), None);
    }

    #[test]
    fn rates() {
        assert!(close(
            per_second(5000, Duration::from_millis(500)),
            10_000.0,
            1e-6
        ));
        assert_eq!(per_second(10, Duration::ZERO), 0.0);
    }

    #[test]
    fn target_verdicts() {
        let c = check(
            "sustained",
            Goal::AtLeast(5000.0),
            "events/s",
            Some(3750.0),
            None,
        );
        assert_eq!(c.met, Some(false));
        assert_eq!(c.verdict, "missed by 25 % (reached 75 % of the target)");

        let c = check(
            "sustained",
            Goal::AtLeast(5000.0),
            "events/s",
            Some(8000.0),
            Some(7500.0),
        );
        assert_eq!(c.met, Some(true));
        assert_eq!(c.verdict, "met (stretch 7500 too)");

        let c = check("p99", Goal::AtMost(5.0), "ms", Some(7.5), None);
        assert_eq!(c.met, Some(false));
        assert_eq!(c.verdict, "missed by 50 % (1.5× the limit)");

        let c = check("p99", Goal::AtMost(5.0), "ms", None, None);
        assert_eq!(c.met, None);
    }
}
