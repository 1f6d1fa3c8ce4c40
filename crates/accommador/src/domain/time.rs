//! Timestamps: milliseconds since the Unix epoch, rendered as RFC 3339 UTC with milliseconds
//! (`2026-11-27T01:02:03.456Z`) everywhere they leave the process.

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// Milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Timestamp {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the clock is after 1970");
        Timestamp(i64::try_from(d.as_millis()).expect("milliseconds fit in i64"))
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    /// RFC 3339, UTC, exactly three fractional digits.
    pub fn to_rfc3339(self) -> String {
        let fmt = format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .expect("timestamp in range")
            .format(&fmt)
            .expect("formatting a valid date")
    }

    /// Parses any RFC 3339 date-time (any offset, any precision; truncated to milliseconds).
    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
        i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .ok()
            .map(Timestamp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_utc_with_milliseconds() {
        assert_eq!(
            Timestamp(1_795_741_323_456).to_rfc3339(),
            "2026-11-27T01:02:03.456Z"
        );
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn parses_offsets_back_to_the_same_instant() {
        let t = Timestamp(1_795_741_323_456);
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t));
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-27T02:02:03.456+01:00"),
            Some(t)
        );
        assert_eq!(Timestamp::parse_rfc3339("yesterday"), None);
    }
}
