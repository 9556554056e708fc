//! Cron expressions with time zones.
//!
//! Five fields (`minute hour day-of-month month day-of-week`) or six (seconds first), with
//! lists, ranges, steps and names (`JAN`, `MON`), or `@hourly`, `@daily`, `@weekly`,
//! `@monthly`, `@yearly`. As in Vixie cron, when both day fields are restricted a day matching
//! either runs. Times are wall-clock times in the schedule's zone, and across daylight-saving
//! changes a time that does not exist that night is skipped (never invented) and one that
//! happens twice fires once, at its first occurrence.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    seconds: u64,
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_restricted: bool,
    weekdays_restricted: bool,
    /// The hour field is `*` or a step (`*/2`, `1-23/2`): a schedule that runs through the
    /// hours fires at every matching instant, both passes of an hour that repeats included.
    hours_repeat: bool,
}

/// Why an expression is not a valid cron expression, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CronError {
    /// The 1-based position of the faulty field, if one is at fault.
    pub field: Option<usize>,
    pub message: String,
}

const NAMES: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day of month",
    "month",
    "day of week",
];
const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Parses one field into a bit set over `min..=max`.
fn field(
    text: &str,
    min: u32,
    max: u32,
    names: &[&str],
    name_base: u32,
) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let restricted = text != "*" && text != "?";
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| format!("{s:?} is not a step"))?;
                if step == 0 {
                    return Err("a step of 0 never matches".into());
                }
                (r, step)
            }
            None => (part, 1),
        };
        let value = |v: &str| -> Result<u32, String> {
            if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(v)) {
                return Ok(i as u32 + name_base);
            }
            let n: u32 = v.parse().map_err(|_| format!("{v:?} is not a number"))?;
            if n < min || n > max {
                return Err(format!("{n} is out of range {min}-{max}"));
            }
            Ok(n)
        };
        let (from, to) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(format!("the range {a}-{b} runs backwards"));
            }
            (a, b)
        } else {
            let a = value(range)?;
            // `5/15` means from 5 to the end, every 15.
            (a, if part.contains('/') { max } else { a })
        };
        let mut v = from;
        while v <= to {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, restricted))
}

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, CronError> {
        let text = text.trim();
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            t if t.starts_with('@') => {
                return Err(CronError {
                    field: None,
                    message: format!("unknown shorthand {t:?} (expected @hourly, @daily, @weekly, @monthly or @yearly)"),
                })
            }
            t => t,
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        let (parts, offset) = match parts.len() {
            5 => ([&["0"][..], &parts[..]].concat(), 1),
            6 => (parts, 0),
            n => {
                return Err(CronError {
                    field: None,
                    message: format!("{n} fields; a cron expression has 5 (minute hour day month weekday) or 6 (with seconds first)"),
                })
            }
        };
        let at = |i: usize, r: Result<(u64, bool), String>| {
            r.map_err(|m| CronError {
                field: Some(i + 1 - offset),
                message: format!(
                    "field {} ({}) {:?}: {m}",
                    i + 1 - offset,
                    NAMES[i],
                    parts[i]
                ),
            })
        };
        let seconds = at(0, field(parts[0], 0, 59, &[], 0))?.0;
        let minutes = at(1, field(parts[1], 0, 59, &[], 0))?.0;
        let hours = at(2, field(parts[2], 0, 23, &[], 0))?.0 as u32;
        let hours_repeat = parts[2].contains('*') || parts[2].contains('/');
        let (days, days_restricted) = at(3, field(parts[3], 1, 31, &[], 0))?;
        let months = at(4, field(parts[4], 1, 12, &MONTHS, 1))?.0 as u16;
        let (mut weekdays, weekdays_restricted) = at(5, field(parts[5], 0, 7, &WEEKDAYS, 0))?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1; // 7 is Sunday too
        }
        Ok(Cron {
            seconds,
            minutes,
            hours,
            days: days as u32,
            months,
            weekdays: (weekdays & 0x7f) as u8,
            days_restricted,
            weekdays_restricted,
            hours_repeat,
        })
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let dom = self.days & (1 << date.day()) != 0;
        let dow = self.weekdays & (1 << date.weekday().num_days_from_sunday()) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        }
    }

    /// The first time strictly after `after` that matches, in zone `tz`; none within 5 years.
    ///
    /// Times are wall-clock times in `tz`. A time that does not exist (clocks go forward) is
    /// skipped. A time that happens twice (clocks go back) fires once, at its first pass, when
    /// the hour field names fixed hours (`30 1 * * *`); when the hour field is `*` or a step
    /// (`*/30 * * * *`), the schedule runs through the hours and fires at both passes, as at
    /// every other distinct instant that matches.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&tz).naive_local();
        // The repeated hour starts over a little before `after`'s local time; look from an
        // hour earlier so its second pass is not skipped.
        let from = local - Duration::hours(1);
        let start_date = from.date();
        for day in 0..(366 * 5) {
            let date = start_date + Duration::days(day);
            if !self.day_matches(date) {
                continue;
            }
            for h in (0..24).filter(|h| self.hours & (1 << h) != 0) {
                if day == 0 && h < from.hour() {
                    continue;
                }
                // An hour's second pass comes after all of its first pass.
                let mut second_pass = Vec::new();
                for m in (0..60).filter(|m| self.minutes & (1u64 << m) != 0) {
                    for s in (0..60).filter(|s| self.seconds & (1u64 << s) != 0) {
                        let Some(naive) = date.and_hms_opt(h, m, s) else {
                            continue;
                        };
                        let candidate = match tz.from_local_datetime(&naive) {
                            LocalResult::Single(t) => t,
                            LocalResult::Ambiguous(first, second) => {
                                if self.hours_repeat {
                                    second_pass.push(second.with_timezone(&Utc));
                                }
                                first
                            }
                            // Does not exist (clocks go forward): skipped, not invented.
                            LocalResult::None => continue,
                        };
                        let candidate = candidate.with_timezone(&Utc);
                        if candidate > after {
                            return Some(candidate);
                        }
                    }
                }
                if let Some(t) = second_pass.into_iter().find(|t| *t > after) {
                    return Some(t);
                }
            }
        }
        None
    }
}

/// Parses an IANA zone name (`Europe/Berlin`, `UTC`).
pub fn zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("unknown time zone {name:?} (expected an IANA name such as \"Europe/Berlin\" or \"UTC\")"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(expr: &str, tz: &str, after: &str) -> String {
        Cron::parse(expr)
            .unwrap()
            .next_after(utc(after), zone(tz).unwrap())
            .unwrap()
            .to_rfc3339()
    }

    #[test]
    fn fields_lists_ranges_steps_and_names() {
        assert_eq!(
            next("*/15 * * * *", "UTC", "2026-01-01T00:07:00Z"),
            "2026-01-01T00:15:00+00:00"
        );
        assert_eq!(
            next("0 9-17/4 * * MON-FRI", "UTC", "2026-01-03T00:00:00Z"),
            "2026-01-05T09:00:00+00:00"
        );
        assert_eq!(
            next("0 0 1 JAN,JUL *", "UTC", "2026-02-01T00:00:00Z"),
            "2026-07-01T00:00:00+00:00"
        );
        assert_eq!(
            next("30 * * * * *", "UTC", "2026-01-01T00:00:30Z"),
            "2026-01-01T00:01:30+00:00",
            "six fields: seconds"
        );
        assert_eq!(
            next("@daily", "UTC", "2026-01-01T00:00:00Z"),
            "2026-01-02T00:00:00+00:00"
        );
        assert_eq!(
            next("0 0 * * 7", "UTC", "2026-01-01T00:00:00Z"),
            "2026-01-04T00:00:00+00:00",
            "7 is Sunday"
        );
        // Both day fields restricted: either matches (Vixie cron).
        assert_eq!(
            next("0 0 13 * FRI", "UTC", "2026-02-01T00:00:00Z"),
            "2026-02-06T00:00:00+00:00"
        );
    }

    #[test]
    fn times_are_wall_clock_times_in_the_zone() {
        assert_eq!(
            next("0 3 * * *", "Europe/Berlin", "2026-01-10T12:00:00Z"),
            "2026-01-11T02:00:00+00:00"
        );
        assert_eq!(
            next("0 3 * * *", "Europe/Berlin", "2026-07-10T12:00:00Z"),
            "2026-07-11T01:00:00+00:00"
        );
    }

    #[test]
    fn a_time_that_does_not_exist_is_skipped_and_one_that_repeats_fires_once() {
        // 2026-03-29: Berlin jumps from 02:00 to 03:00; there is no 02:30 that night.
        assert_eq!(
            next("30 2 * * *", "Europe/Berlin", "2026-03-28T02:00:00Z"),
            "2026-03-30T00:30:00+00:00"
        );
        // 2026-10-25: Berlin goes from 03:00 back to 02:00; 02:30 happens twice, fires once.
        let first = next("30 2 * * *", "Europe/Berlin", "2026-10-24T02:00:00Z");
        assert_eq!(
            first, "2026-10-25T00:30:00+00:00",
            "the first 02:30 (summer time)"
        );
        assert_eq!(
            next("30 2 * * *", "Europe/Berlin", &first),
            "2026-10-26T01:30:00+00:00",
            "not the second 02:30"
        );
    }

    #[test]
    fn a_schedule_through_the_hours_fires_at_both_passes_of_a_repeated_hour() {
        // 2027-11-07: New York goes from 02:00 EDT back to 01:00 EST.
        let mut at = utc("2027-11-07T05:00:00Z");
        let mut fired = Vec::new();
        for _ in 0..5 {
            at = Cron::parse("*/30 * * * *")
                .unwrap()
                .next_after(at, zone("America/New_York").unwrap())
                .unwrap();
            fired.push(at.to_rfc3339());
        }
        assert_eq!(
            fired,
            [
                "2027-11-07T05:30:00+00:00", // 01:30 EDT
                "2027-11-07T06:00:00+00:00", // 01:00 EST, the second pass
                "2027-11-07T06:30:00+00:00", // 01:30 EST
                "2027-11-07T07:00:00+00:00", // 02:00 EST
                "2027-11-07T07:30:00+00:00",
            ]
        );
        // A fixed hour fires once.
        let first = next("30 1 * * *", "America/New_York", "2027-11-07T00:00:00Z");
        assert_eq!(first, "2027-11-07T05:30:00+00:00");
        assert_eq!(
            next("30 1 * * *", "America/New_York", &first),
            "2027-11-08T06:30:00+00:00"
        );
    }

    #[test]
    fn faults_name_their_field() {
        let e = Cron::parse("0 25 * * *").unwrap_err();
        assert_eq!(e.field, Some(2));
        assert!(
            e.message
                .contains("field 2 (hour) \"25\": 25 is out of range 0-23"),
            "{e}"
        );
        let e = Cron::parse("0 0 * FOO *").unwrap_err();
        assert_eq!(e.field, Some(4));
        assert!(Cron::parse("* * *")
            .unwrap_err()
            .message
            .contains("3 fields"));
        assert!(Cron::parse("@sometimes").is_err());
        assert!(Cron::parse("*/0 * * * *")
            .unwrap_err()
            .message
            .contains("step of 0"));
        assert!(zone("Mars/Olympus").is_err());
    }
}
