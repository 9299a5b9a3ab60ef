//! The `DataImportCron` schedule: standard five-field cron expressions, evaluated in UTC.
//!
//! CDI checks schedules with `robfig/cron`'s `ParseStandard`; this parser accepts the same
//! language so that a schedule valid on a cluster is valid here:
//!
//! * five fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or `jan`-`dec`),
//!   day of week (0-6 or `sun`-`sat`, 0 is Sunday; 7 is refused as robfig refuses it);
//! * in each field `*` (or `?`), a value, a range `a-b`, a step `*/n`, `a-b/n` or `a/n`
//!   (from `a` to the field's maximum), and comma-separated lists of these;
//! * the descriptors `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`,
//!   `@hourly`;
//! * when both day of month and day of week are restricted, a day matches if either matches
//!   (classic cron and robfig behaviour); if either is `*`, both must match.
//!
//! Not supported, and refused with a message saying so: `@every <duration>` (an interval from
//! whenever the scheduler started, not a calendar schedule) and `TZ=`/`CRON_TZ=` prefixes naming
//! any zone other than UTC (there is no time-zone database here).

use std::fmt;
use std::str::FromStr;

use virt_core::api::time::{civil_from_days, days_in_month, MAX_UNIX, MIN_UNIX};

/// Why a cron schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron schedule {input:?}: {reason}")]
pub struct CronError {
    /// The schedule text.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A parsed cron schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    text: String,
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    dom_star: bool,
    dow_star: bool,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Field = Field { name: "minute", min: 0, max: 59, names: &[] };
const HOUR: Field = Field { name: "hour", min: 0, max: 23, names: &[] };
const DOM: Field = Field { name: "day of month", min: 1, max: 31, names: &[] };
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
};
const DOW: Field =
    Field { name: "day of week", min: 0, max: 6, names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"] };

impl Field {
    fn value(&self, s: &str, input: &str) -> Result<u32, CronError> {
        let err = |reason: String| CronError { input: input.to_string(), reason };
        if let Some(i) = self.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            // Names are listed from the field's minimum upwards.
            return Ok(self.min + u32::try_from(i).map_err(|_| err("name index".to_string()))?);
        }
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 4 {
            return Err(err(format!("{}: {s:?} is not a number", self.name)));
        }
        let v: u32 = s.parse().map_err(|_| err(format!("{}: {s:?} is not a number", self.name)))?;
        if v < self.min || v > self.max {
            return Err(err(format!("{}: {v} is out of range {}-{}", self.name, self.min, self.max)));
        }
        Ok(v)
    }

    /// Bits set for every value the field matches, and whether it was an unrestricted `*`/`?`.
    fn parse(&self, expr: &str, input: &str) -> Result<(u64, bool), CronError> {
        let err = |reason: String| CronError { input: input.to_string(), reason };
        let mut bits = 0u64;
        let mut star = false;
        for part in expr.split(',') {
            if part.is_empty() {
                return Err(err(format!("{}: empty list element in {expr:?}", self.name)));
            }
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => {
                    if s.contains('/') {
                        return Err(err(format!("{}: too many slashes in {part:?}", self.name)));
                    }
                    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 4 {
                        return Err(err(format!("{}: step {s:?} is not a number", self.name)));
                    }
                    let step: u32 =
                        s.parse().map_err(|_| err(format!("{}: step {s:?} is not a number", self.name)))?;
                    if step == 0 {
                        return Err(err(format!("{}: step must be at least 1", self.name)));
                    }
                    (r, Some(step))
                }
                None => (part, None),
            };
            let (lo, hi, part_star) = if range == "*" || range == "?" {
                (self.min, self.max, true)
            } else if let Some((a, b)) = range.split_once('-') {
                let (lo, hi) = (self.value(a, input)?, self.value(b, input)?);
                if lo > hi {
                    return Err(err(format!("{}: range {range:?} goes backwards ({lo} > {hi})", self.name)));
                }
                (lo, hi, false)
            } else {
                let v = self.value(range, input)?;
                // robfig: "a/n" runs from a to the field's maximum.
                let hi = if step.is_some() { self.max } else { v };
                (v, hi, false)
            };
            let step = step.unwrap_or(1);
            // A stepped star (`*/15`) restricts the field, as in robfig.
            if part_star && step == 1 {
                star = true;
            }
            let mut v = lo;
            while v <= hi {
                bits |= 1u64 << v;
                v += step;
            }
        }
        Ok((bits, star))
    }
}

impl Schedule {
    /// Parses a schedule; see the module documentation for the accepted language.
    pub fn parse(input: &str) -> Result<Self, CronError> {
        let err = |reason: String| CronError { input: input.to_string(), reason };
        let mut spec = input.trim();
        if spec.is_empty() {
            return Err(err("empty schedule".into()));
        }
        for prefix in ["CRON_TZ=", "TZ="] {
            if let Some(rest) = spec.strip_prefix(prefix) {
                let (zone, body) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                if !matches!(zone, "UTC" | "Etc/UTC") {
                    return Err(err(format!(
                        "time zone {zone:?} is not supported: schedules are evaluated in UTC"
                    )));
                }
                spec = body.trim();
            }
        }
        let expanded = match spec {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s if s.starts_with("@every") => {
                return Err(err(
                    "@every intervals are not supported: use a five-field calendar schedule".into()
                ))
            }
            s if s.starts_with('@') => {
                return Err(err(format!("unknown descriptor {s:?}")));
            }
            s => s,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            )));
        }
        let (minutes, _) = MINUTE.parse(fields[0], input)?;
        let (hours, _) = HOUR.parse(fields[1], input)?;
        let (days_of_month, dom_star) = DOM.parse(fields[2], input)?;
        let (months, _) = MONTH.parse(fields[3], input)?;
        let (days_of_week, dow_star) = DOW.parse(fields[4], input)?;
        Ok(Self {
            text: input.to_string(),
            minutes,
            hours,
            days_of_month,
            months,
            days_of_week,
            dom_star,
            dow_star,
        })
    }

    /// The schedule text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn day_matches(&self, days: i64) -> bool {
        let (_, m, d) = civil_from_days(days);
        if self.months & (1 << m) == 0 {
            return false;
        }
        // 1970-01-01 was a Thursday (4).
        let dow = (days + 4).rem_euclid(7);
        let dom_ok = self.days_of_month & (1 << d) != 0;
        let dow_ok = self.days_of_week & (1 << dow) != 0;
        if self.dom_star || self.dow_star {
            dom_ok && dow_ok
        } else {
            dom_ok || dow_ok
        }
    }

    /// Whether the minute containing `unix` (seconds since the epoch, UTC) is scheduled.
    pub fn matches(&self, unix: i64) -> bool {
        let days = unix.div_euclid(86_400);
        let secs = unix.rem_euclid(86_400);
        self.day_matches(days)
            && self.hours & (1 << (secs / 3600)) != 0
            && self.minutes & (1 << (secs / 60 % 60)) != 0
    }

    /// The first scheduled instant strictly after `unix` (seconds since the epoch, UTC), on a
    /// whole minute. `None` if the schedule never fires within the following eight years (for
    /// example `0 0 30 2 *`) or the answer would lie beyond year 9999.
    pub fn next_after(&self, unix: i64) -> Option<i64> {
        if !(MIN_UNIX..=MAX_UNIX).contains(&unix) {
            return None;
        }
        let start = (unix.div_euclid(60) + 1) * 60;
        let mut days = start.div_euclid(86_400);
        let secs = start.rem_euclid(86_400);
        let (mut first_hour, mut first_minute) = (secs / 3600, secs / 60 % 60);
        // Eight years cover every Feb 29 that can match (2100 is not a leap year).
        for _ in 0..(366 * 8) {
            if self.day_matches(days) {
                for h in first_hour..24 {
                    if self.hours & (1 << h) == 0 {
                        continue;
                    }
                    let m0 = if h == first_hour { first_minute } else { 0 };
                    for m in m0..60 {
                        if self.minutes & (1 << m) != 0 {
                            let t = days * 86_400 + h * 3600 + m * 60;
                            return (t <= MAX_UNIX).then_some(t);
                        }
                    }
                }
            }
            days += 1;
            first_hour = 0;
            first_minute = 0;
        }
        None
    }

    /// Whether some calendar day could ever match (rules out e.g. `0 0 31 4 *`, April 31st).
    pub fn can_fire(&self) -> bool {
        if !(self.dom_star || self.dow_star) && self.days_of_week != 0 {
            return true;
        }
        (1..=12).any(|m| {
            self.months & (1 << m) != 0
                && (1..=days_in_month(2024, m)).any(|d| self.days_of_month & (1 << d) != 0)
        })
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Schedule {
    type Err = CronError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virt_core::api::Timestamp;

    fn t(s: &str) -> i64 {
        Timestamp::parse(s).unwrap().unix_seconds()
    }

    fn next(sched: &str, after: &str) -> String {
        let s = Schedule::parse(sched).unwrap();
        let n = s.next_after(t(after)).unwrap();
        Timestamp::from_unix(n).unwrap().as_str().to_string()
    }

    #[test]
    fn golden_image_schedule_is_weekly_on_monday() {
        // "30 1 * * 1" from the DataImportCron conformance file: 01:30 every Monday.
        assert_eq!(next("30 1 * * 1", "2024-01-01T00:00:00Z"), "2024-01-01T01:30:00Z");
        assert_eq!(next("30 1 * * 1", "2024-01-01T01:30:00Z"), "2024-01-08T01:30:00Z");
        assert_eq!(next("30 1 * * 1", "2024-01-01T01:29:59Z"), "2024-01-01T01:30:00Z");
    }

    #[test]
    fn steps_ranges_lists_and_names() {
        assert_eq!(next("*/15 * * * *", "2024-01-01T00:07:00Z"), "2024-01-01T00:15:00Z");
        assert_eq!(next("*/15 * * * *", "2024-01-01T23:50:00Z"), "2024-01-02T00:00:00Z");
        assert_eq!(next("0 9-17/4 * * *", "2024-01-01T09:00:00Z"), "2024-01-01T13:00:00Z");
        assert_eq!(next("0 9-17/4 * * *", "2024-01-01T17:00:00Z"), "2024-01-02T09:00:00Z");
        assert_eq!(next("5,10,50 * * * *", "2024-01-01T00:10:00Z"), "2024-01-01T00:50:00Z");
        assert_eq!(next("0 0 1 jan,JUL *", "2024-02-01T00:00:00Z"), "2024-07-01T00:00:00Z");
        assert_eq!(next("0 12 * * sat,SUN", "2024-01-01T00:00:00Z"), "2024-01-06T12:00:00Z");
        assert_eq!(next("10/20 * * * *", "2024-01-01T00:31:00Z"), "2024-01-01T00:50:00Z");
        assert_eq!(next("0 0 29 2 *", "2024-03-01T00:00:00Z"), "2028-02-29T00:00:00Z");
        assert_eq!(next("@daily", "2024-12-31T23:59:00Z"), "2025-01-01T00:00:00Z");
        assert_eq!(next("@hourly", "2024-12-31T23:59:00Z"), "2025-01-01T00:00:00Z");
        assert_eq!(next("@weekly", "2024-01-01T00:00:00Z"), "2024-01-07T00:00:00Z");
        assert_eq!(next("@yearly", "2024-01-01T00:00:00Z"), "2025-01-01T00:00:00Z");
        assert_eq!(next("TZ=UTC 0 6 * * *", "2024-01-01T07:00:00Z"), "2024-01-02T06:00:00Z");
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // Both restricted: the 13th or any Friday.
        assert_eq!(next("0 0 13 * 5", "2024-01-01T00:00:00Z"), "2024-01-05T00:00:00Z");
        assert_eq!(next("0 0 13 * 5", "2024-01-12T00:00:00Z"), "2024-01-13T00:00:00Z");
        // Day of week is '*': only the 13th.
        assert_eq!(next("0 0 13 * *", "2024-01-01T00:00:00Z"), "2024-01-13T00:00:00Z");
        // A stepped star restricts the field, so this is odd days of the month OR Mondays.
        assert_eq!(next("0 0 */2 * 1", "2024-01-01T00:00:00Z"), "2024-01-03T00:00:00Z");
        assert_eq!(next("0 0 */2 * 1", "2024-01-05T00:00:00Z"), "2024-01-07T00:00:00Z");
        assert_eq!(next("0 0 */2 * 1", "2024-01-29T00:00:00Z"), "2024-01-31T00:00:00Z");
        let s = Schedule::parse("30 1 * * 1").unwrap();
        assert!(s.matches(t("2024-01-01T01:30:59Z")));
        assert!(!s.matches(t("2024-01-02T01:30:00Z")));
    }

    #[test]
    fn impossible_schedules_never_fire() {
        let s = Schedule::parse("0 0 30 2 *").unwrap();
        assert_eq!(s.next_after(t("2024-01-01T00:00:00Z")), None);
        assert!(!s.can_fire());
        assert!(Schedule::parse("0 0 31 4 *").map(|s| !s.can_fire()).unwrap());
        assert!(Schedule::parse("30 1 * * 1").unwrap().can_fire());
        // Out of range inputs give None rather than overflowing.
        let s = Schedule::parse("* * * * *").unwrap();
        assert_eq!(s.next_after(i64::MAX), None);
        assert_eq!(s.next_after(i64::MIN), None);
        assert_eq!(s.next_after(MAX_UNIX), None);
    }

    #[test]
    fn bad_schedules_are_errors_naming_the_input() {
        for bad in [
            "",
            "* * * *",
            "* * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * 32 * *",
            "* * * 13 *",
            "* * * * 7",
            "*/0 * * * *",
            "5-1 * * * *",
            "1- * * * *",
            "*/x * * * *",
            "1/2/3 * * * *",
            ",1 * * * *",
            "* * * foo *",
            "* * * * sat-sun",
            "@every 1h",
            "@reboot",
            "TZ=Europe/Paris 0 0 * * *",
            "99999 * * * *",
        ] {
            let err = Schedule::parse(bad).unwrap_err();
            assert_eq!(err.input, bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
