//! Instants at microsecond precision, UTC.
//!
//! PostgreSQL's `timestamptz` has microsecond precision, so that is the
//! precision pins are stored and compared at. Finer input is truncated toward
//! the past: for any pin instant `p` (whole microseconds) and query `t`,
//! `p <= t` holds exactly when `p <= floor_us(t)`, so truncation never changes
//! which pin is live at an instant.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// Microseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// 0001-01-01T00:00:00Z: RFC 3339 has four-digit years only.
const MIN_MICROS: i64 = -62_135_596_800_000_000;
/// 9999-12-30T22:00:00Z, the last instant jiff represents in every offset.
const MAX_MICROS: i64 = 253_402_207_200_000_000;

impl Timestamp {
    /// From microseconds since the Unix epoch.
    ///
    /// # Errors
    /// Invalid when the instant is outside the years 0001..=9999.
    pub fn from_micros(micros: i64) -> Result<Self, Error> {
        if !(MIN_MICROS..=MAX_MICROS).contains(&micros) {
            return Err(Error::invalid(format!(
                "time {micros}us is outside 0001-01-01 to 9999-12-30"
            )));
        }
        Ok(Self(micros))
    }

    /// From seconds and nanoseconds (as in `google.protobuf.Timestamp`),
    /// truncated to microseconds.
    ///
    /// # Errors
    /// Invalid when nanos is outside 0..1e9 or the instant is out of range.
    pub fn from_parts(seconds: i64, nanos: i32) -> Result<Self, Error> {
        if !(0..1_000_000_000).contains(&nanos) {
            return Err(Error::invalid(format!(
                "timestamp nanos {nanos} is outside 0..1e9"
            )));
        }
        let micros = seconds
            .checked_mul(1_000_000)
            .and_then(|m| m.checked_add(i64::from(nanos / 1000)))
            .ok_or_else(|| Error::invalid(format!("timestamp {seconds}s is out of range")))?;
        Self::from_micros(micros)
    }

    /// Microseconds since the Unix epoch.
    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// Whole seconds and the nanosecond remainder (non-negative).
    pub fn to_parts(self) -> (i64, i32) {
        let secs = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        // rem_euclid is below 1e6, so the product fits an i32.
        (secs, (micros * 1000) as i32)
    }

    /// Sort key whose byte order equals time order (sign bit flipped).
    pub fn sort_key(self) -> [u8; 8] {
        ((self.0 as u64) ^ (1 << 63)).to_be_bytes()
    }

    /// `self + micros`, saturating at the representable range.
    pub fn saturating_add_micros(self, micros: i64) -> Self {
        Self(self.0.saturating_add(micros))
    }

    /// The current system time.
    pub fn now() -> Self {
        let now = jiff::Timestamp::now();
        Self(now.as_microsecond())
    }

    fn to_jiff(self) -> jiff::Timestamp {
        // Values are range-checked at construction.
        jiff::Timestamp::from_microsecond(self.0).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }
}

impl FromStr for Timestamp {
    type Err = Error;

    /// Parses RFC 3339 with an explicit offset or `Z`.
    fn from_str(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        match text.parse::<jiff::Timestamp>() {
            Ok(ts) => Self::from_micros(ts.as_microsecond()).map_err(|_| {
                Error::invalid(format!(
                    "time {} is outside the years 0001 to 9999 that RFC 3339 allows",
                    crate::error::shown(text)
                ))
            }),
            Err(err) => {
                // A civil date-time without an offset parses on its own; say
                // precisely what is missing rather than echo the parser.
                if let Ok(civil) = text.parse::<jiff::civil::DateTime>() {
                    Err(Error::invalid(format!(
                        "time {} has no UTC offset, and a time without one is never taken as \
                         local time: did you mean {} (UTC)? Write RFC 3339 with Z or an offset",
                        crate::error::shown(text),
                        civil.strftime("%Y-%m-%dT%H:%M:%SZ")
                    )))
                } else {
                    Err(Error::invalid(format!(
                        "time {} is not RFC 3339 (e.g. 2026-05-24T13:00:00Z): {err}",
                        crate::error::shown(text)
                    )))
                }
            }
        }
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with microseconds, e.g. `2026-05-24T13:00:00.000000Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_jiff().strftime("%Y-%m-%dT%H:%M:%S%.6fZ"))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Timestamp {
    /// Parses an instant as a person types it on a command line: RFC 3339
    /// (as [`FromStr`]), or relative to `now`: `now`, `now-2h`, `now+15m`,
    /// `2h ago`, `3d ago`, or Unix seconds as `@1764000000`. Log entries
    /// and settings never take these forms; only people do.
    ///
    /// # Errors
    /// Invalid, naming the forms accepted.
    pub fn parse_typed(text: &str, now: Timestamp) -> Result<Self, Error> {
        let t = text.trim();
        let shift = |span: &str, sign: i64| -> Result<Self, Error> {
            let d = parse_span(span.trim())
                .map_err(|e| Error::invalid(format!("time {}: {e}", crate::error::shown(text))))?;
            let micros = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
            Self::from_micros(now.0.saturating_add(sign.saturating_mul(micros)))
        };
        if t == "now" {
            return Ok(now);
        }
        if let Some(span) = t.strip_prefix("now-") {
            return shift(span, -1);
        }
        if let Some(span) = t.strip_prefix("now+") {
            return shift(span, 1);
        }
        if let Some(span) = t.strip_suffix(" ago") {
            return shift(span, -1);
        }
        if let Some(secs) = t.strip_prefix('@') {
            let secs: i64 = secs.parse().map_err(|_| {
                Error::invalid(format!(
                    "time {}: after @ comes whole Unix seconds, e.g. @1764000000",
                    crate::error::shown(text)
                ))
            })?;
            return Self::from_parts(secs, 0);
        }
        t.parse().map_err(|e: Error| {
            Error::invalid(format!(
                "{}; also accepted: now, now-2h, 2h ago, @<unix seconds>",
                e.message()
            ))
        })
    }
}

/// Parses a span of time: a duration (`90s`, `2h`, `1h30m`) or whole days
/// (`3d`), non-negative.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_span(text: &str) -> Result<std::time::Duration, String> {
    match text.strip_suffix('d').map(str::parse::<u64>) {
        Some(Ok(days)) => days
            .checked_mul(86_400)
            .map(std::time::Duration::from_secs)
            .ok_or_else(|| format!("{text} is too long")),
        _ => parse_duration(text).map_err(|e| format!("{e}, or whole days like 3d")),
    }
}

/// Where the registry reads "now" from; injected so time rules are tested
/// with a fake clock rather than sleeps.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Parses a duration such as `5s`, `1500ms` or `2m` (non-negative).
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let d: jiff::SignedDuration = text.parse().map_err(|e| {
        format!(
            "{} is not a duration like 5s, 1500ms or 2m: {e}",
            crate::error::shown(text)
        )
    })?;
    std::time::Duration::try_from(d)
        .map_err(|_| format!("{} must not be negative", crate::error::shown(text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_offsets_and_normalises_to_utc() {
        let a: Timestamp = "2026-05-24T15:00:00+02:00".parse().unwrap();
        let b: Timestamp = "2026-05-24T13:00:00Z".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(b.to_string(), "2026-05-24T13:00:00.000000Z");
    }

    #[test]
    fn typed_times_are_relative_to_now_and_only_where_people_type() {
        let now: Timestamp = "2026-05-24T13:00:00Z".parse().unwrap();
        let at = |t: &str| Timestamp::parse_typed(t, now).unwrap().to_string();
        assert_eq!(at("now"), "2026-05-24T13:00:00.000000Z");
        assert_eq!(at("now-2h"), "2026-05-24T11:00:00.000000Z");
        assert_eq!(at("now+15m"), "2026-05-24T13:15:00.000000Z");
        assert_eq!(at("2h ago"), "2026-05-24T11:00:00.000000Z");
        assert_eq!(at("3d ago"), "2026-05-21T13:00:00.000000Z");
        assert_eq!(at("@1779627600"), "2026-05-24T13:00:00.000000Z");
        assert_eq!(
            at("2026-05-24T15:00:00+02:00"),
            "2026-05-24T13:00:00.000000Z"
        );
        for bad in ["yesterday", "2h later"] {
            let e = Timestamp::parse_typed(bad, now).unwrap_err();
            assert!(e.message().contains("2h ago"), "{bad}: {e}");
        }
        assert!(Timestamp::parse_typed("now-soon", now).is_err());
        assert!(
            Timestamp::parse_typed("@noon", now)
                .unwrap_err()
                .message()
                .contains("Unix seconds")
        );
        // Never in what is stored or configured.
        assert!("now".parse::<Timestamp>().is_err());
        assert!("@1779627600".parse::<Timestamp>().is_err());
    }

    #[test]
    fn naive_time_is_an_error_that_says_so() {
        let err = "2026-05-24T13:00:00".parse::<Timestamp>().unwrap_err();
        assert!(err.message().contains("no UTC offset"), "{err}");
        let err = "2026-05-26 13:00".parse::<Timestamp>().unwrap_err();
        assert!(
            err.message().contains("did you mean 2026-05-26T13:00:00Z"),
            "{err}"
        );
        let err = "yesterday".parse::<Timestamp>().unwrap_err();
        assert!(err.message().contains("not RFC 3339"), "{err}");
    }

    #[test]
    fn truncates_below_microseconds() {
        let t: Timestamp = "2026-05-24T13:00:00.123456789Z".parse().unwrap();
        assert_eq!(t.to_string(), "2026-05-24T13:00:00.123456Z");
        let p = Timestamp::from_parts(-1, 999_999_999).unwrap();
        assert_eq!(p.as_micros(), -1);
        assert_eq!(p.to_parts(), (-1, 999_999_000));
    }

    #[test]
    fn sort_key_orders_like_time() {
        let times = [-5_000_000i64, -1, 0, 1, 1_700_000_000_000_000];
        for w in times.windows(2) {
            let a = Timestamp::from_micros(w[0]).unwrap();
            let b = Timestamp::from_micros(w[1]).unwrap();
            assert!(a.sort_key() < b.sort_key());
        }
    }

    #[test]
    fn years_outside_rfc3339_are_rejected() {
        // Found by fuzzing: jiff reads extended years, which cannot be printed back.
        assert!("-002026-05-24T02:00:00+00:00".parse::<Timestamp>().is_err());
        assert!("0000-12-31T23:59:59Z".parse::<Timestamp>().is_err());
        let t: Timestamp = "9999-12-30T21:59:59.999999Z".parse().unwrap();
        assert_eq!(t.to_string().parse::<Timestamp>().unwrap(), t);
    }

    #[test]
    fn bad_nanos_are_rejected() {
        assert!(Timestamp::from_parts(0, -1).is_err());
        assert!(Timestamp::from_parts(0, 1_000_000_000).is_err());
        assert!(Timestamp::from_parts(i64::MAX, 0).is_err());
    }
}
