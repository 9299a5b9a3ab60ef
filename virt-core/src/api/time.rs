//! `metav1.Time`: RFC 3339 timestamps (`2024-05-01T12:00:00Z`) as written by the API server, the
//! UTC calendar arithmetic schedulers need, and `metav1.Duration` (Go durations such as `1m30s`).

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid timestamp {input:?}: {reason} (expected RFC 3339, e.g. 2024-05-01T12:00:00Z)")]
pub struct TimestampError {
    /// The text that was parsed.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// An RFC 3339 instant: the text as written (kept for round trips) and seconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Timestamp {
    text: String,
    unix: i64,
}

/// Earliest supported instant: 0001-01-01T00:00:00Z.
pub const MIN_UNIX: i64 = -62_135_596_800;
/// Latest supported instant: 9999-12-31T23:59:59Z.
pub const MAX_UNIX: i64 = 253_402_300_799;

impl Timestamp {
    /// Parses an RFC 3339 timestamp (`Z` or a `±hh:mm` offset, optional fractional seconds).
    pub fn parse(input: &str) -> Result<Self, TimestampError> {
        let unix =
            parse_rfc3339(input).map_err(|reason| TimestampError { input: input.to_string(), reason })?;
        Ok(Self { text: input.to_string(), unix })
    }

    /// The instant `unix` seconds after the epoch, written as `YYYY-MM-DDTHH:MM:SSZ`.
    /// Returns `None` outside years 1..=9999.
    pub fn from_unix(unix: i64) -> Option<Self> {
        if !(MIN_UNIX..=MAX_UNIX).contains(&unix) {
            return None;
        }
        let days = unix.div_euclid(86_400);
        let secs = unix.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let text = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60);
        Some(Self { text, unix })
    }

    /// The current time, to the second (clamped into years 1..=9999).
    pub fn now() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(MAX_UNIX))
            .unwrap_or(0)
            .clamp(MIN_UNIX, MAX_UNIX);
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let text = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60);
        Self { text, unix: secs }
    }

    /// Seconds since the Unix epoch (fractional seconds dropped).
    pub fn unix_seconds(&self) -> i64 {
        self.unix
    }

    /// The text as it was written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

struct TimestampVisitor;

impl Visitor<'_> for TimestampVisitor {
    type Value = Timestamp;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 timestamp string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
        Timestamp::parse(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(TimestampVisitor)
    }
}

fn digits(s: &[u8], what: &'static str) -> Result<i64, &'static str> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return Err(what);
    }
    Ok(s.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
}

fn parse_rfc3339(input: &str) -> Result<i64, &'static str> {
    let s = input.as_bytes();
    if s.len() < 20 {
        return Err("too short");
    }
    if s[4] != b'-' || s[7] != b'-' || !matches!(s[10], b'T' | b't') || s[13] != b':' || s[16] != b':' {
        return Err("bad separators");
    }
    let year = digits(&s[0..4], "bad year")?;
    let month = digits(&s[5..7], "bad month")?;
    let day = digits(&s[8..10], "bad day")?;
    let hour = digits(&s[11..13], "bad hour")?;
    let minute = digits(&s[14..16], "bad minute")?;
    let second = digits(&s[17..19], "bad second")?;
    if year < 1 {
        return Err("year out of range");
    }
    if !(1..=12).contains(&month) {
        return Err("month out of range");
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err("day out of range");
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err("time of day out of range");
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return Err("empty fractional seconds");
        }
        rest = &frac[n..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let oh = digits(&[*h1, *h2], "bad offset")?;
            let om = digits(&[*m1, *m2], "bad offset")?;
            if oh > 23 || om > 59 {
                return Err("offset out of range");
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return Err("missing or malformed zone (Z or ±hh:mm)"),
    };
    let days = days_from_civil(year, month, day);
    Ok(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// Whether `y` is a leap year of the proleptic Gregorian calendar.
pub fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Days in month `m` (1-12) of year `y`.
pub fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date `days` after 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (expected a Go duration such as 90s, 1m30s or 1.5h)")]
pub struct DurationError {
    /// The text that was parsed.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// `metav1.Duration`: a Go duration string (`300ms`, `1m`, `1h30m`, `-1.5h`), kept as written and
/// read as nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Duration {
    text: String,
    nanos: i64,
}

impl Duration {
    /// Parses a Go duration: an optional sign, then one or more decimal numbers each followed by a
    /// unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`); `0` alone needs no unit.
    pub fn parse(input: &str) -> Result<Self, DurationError> {
        let nanos =
            parse_go_duration(input).map_err(|reason| DurationError { input: input.to_string(), reason })?;
        Ok(Self { text: input.to_string(), nanos })
    }

    /// The duration in nanoseconds (negative for a negative duration).
    pub fn as_nanos(&self) -> i64 {
        self.nanos
    }

    /// The duration as a `std::time::Duration`, or `None` if it is negative.
    pub fn to_std(&self) -> Option<std::time::Duration> {
        u64::try_from(self.nanos).ok().map(std::time::Duration::from_nanos)
    }

    /// The text as it was written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string such as 1m30s")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        Duration::parse(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(DurationVisitor)
    }
}

/// Go's `time.ParseDuration`, to whole nanoseconds (fractions of a nanosecond are dropped).
fn parse_go_duration(input: &str) -> Result<i64, &'static str> {
    let (negative, mut rest) = match input.as_bytes().first() {
        Some(b'-') => (true, &input[1..]),
        Some(b'+') => (false, &input[1..]),
        _ => (false, input),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err("empty");
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(f) => {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                f.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err("a number is missing");
        }
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err("a unit is missing"),
            _ => return Err("unknown unit"),
        };
        if int_part.len() > 20 {
            return Err("out of range");
        }
        let int: i128 = if int_part.is_empty() { 0 } else { int_part.parse().map_err(|_| "out of range")? };
        let mut value = int.checked_mul(scale).ok_or("out of range")?;
        // Fractions: at most 18 significant digits matter at nanosecond resolution.
        let mut frac_scale = scale;
        for d in frac_part.bytes().take(18) {
            frac_scale /= 10;
            value += i128::from(d - b'0') * frac_scale;
        }
        total = total.checked_add(value).ok_or("out of range")?;
        if total > i128::from(i64::MAX) + 1 {
            return Err("out of range");
        }
        rest = after;
    }
    let signed = if negative { -total } else { total };
    i64::try_from(signed).map_err(|_| "out of range")
}

/// An RFC 3339 time, a string on the wire.
impl schemars::JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "format": "date-time" })
    }
}

/// A Go duration (`1h30m`), a string on the wire.
impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339() {
        assert_eq!(Timestamp::parse("1970-01-01T00:00:00Z").unwrap().unix_seconds(), 0);
        assert_eq!(Timestamp::parse("2024-02-29T12:30:15Z").unwrap().unix_seconds(), 1_709_209_815);
        assert_eq!(Timestamp::parse("2024-02-29T14:30:15.123+02:00").unwrap().unix_seconds(), 1_709_209_815);
        for bad in [
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01 00:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00.Z",
            "yesterday",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn civil_round_trip() {
        for days in [-719_162, -1, 0, 59, 365, 11_016, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        let t = Timestamp::from_unix(1_709_209_815).unwrap();
        assert_eq!(t.as_str(), "2024-02-29T12:30:15Z");
        assert_eq!(Timestamp::parse(t.as_str()).unwrap(), t);
        assert_eq!(Timestamp::from_unix(MAX_UNIX).unwrap().as_str(), "9999-12-31T23:59:59Z");
        assert_eq!(Timestamp::from_unix(MIN_UNIX).unwrap().as_str(), "0001-01-01T00:00:00Z");
        assert!(Timestamp::from_unix(MAX_UNIX + 1).is_none());
    }

    #[test]
    fn go_durations() {
        let n = |s: &str| Duration::parse(s).map(|d| d.as_nanos());
        assert_eq!(n("1m"), Ok(60_000_000_000));
        assert_eq!(n("1h30m"), Ok(5_400_000_000_000));
        assert_eq!(n("300ms"), Ok(300_000_000));
        assert_eq!(n("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(n("-2s"), Ok(-2_000_000_000));
        assert_eq!(n(".5s"), Ok(500_000_000));
        assert_eq!(n("1us"), Ok(1000));
        assert_eq!(n("1\u{b5}s"), Ok(1000));
        assert_eq!(n("0"), Ok(0));
        assert_eq!(n("2562047h"), Ok(2_562_047 * 3_600_000_000_000));
        for bad in ["", "1", "m", "1x", "1.s.", "-", "9999999999999999999999h", "3000000h", "1m 2s"] {
            assert!(Duration::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Duration::parse("1m").unwrap().to_std(), Some(std::time::Duration::from_secs(60)));
        assert_eq!(Duration::parse("-1m").unwrap().to_std(), None);
    }
}
