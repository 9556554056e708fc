//! Schedules: a cron expression in a time zone, or a fixed period, that starts calls of a
//! function.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cron::{self, Cron};
use crate::UnixMillis;

/// When a schedule fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    /// A cron expression, in the schedule's time zone.
    Cron(String),
    /// Every this many milliseconds, from the schedule's anchor (when it was deployed).
    EveryMs(u64),
}

/// What happens to a firing while the schedule's previous call is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Run them side by side (the default).
    Allow,
    /// Skip the firing (recorded as `skipped`).
    Skip,
}

/// A schedule as deployed: `app.name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    pub app: String,
    pub name: String,
    /// The function's name within the app.
    pub function: String,
    pub when: When,
    /// IANA zone of a cron expression. Default `UTC`.
    pub timezone: String,
    /// The input of every call it starts. Default `null`.
    pub input: Value,
    pub overlap: Overlap,
}

impl ScheduleSpec {
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.app, self.name)
    }

    /// The first due time strictly after `after`; `anchor` is where an `every` period counts
    /// from. None if the expression never matches again (or cannot be read).
    pub fn next_after(&self, after: UnixMillis, anchor: UnixMillis) -> Option<UnixMillis> {
        match &self.when {
            When::EveryMs(period) => {
                let period = (*period).max(1) as i64;
                if after < anchor {
                    return Some(anchor);
                }
                Some(anchor + ((after - anchor) / period + 1) * period)
            }
            When::Cron(expr) => {
                let cron = Cron::parse(expr).ok()?;
                let tz = cron::zone(&self.timezone).ok()?;
                let after = DateTime::<Utc>::from_timestamp_millis(after)?;
                cron.next_after(after, tz).map(|t| t.timestamp_millis())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(ms: u64) -> ScheduleSpec {
        ScheduleSpec {
            app: "a".into(),
            name: "s".into(),
            function: "f".into(),
            when: When::EveryMs(ms),
            timezone: "UTC".into(),
            input: Value::Null,
            overlap: Overlap::Allow,
        }
    }

    #[test]
    fn a_period_counts_from_its_anchor() {
        let s = every(1_000);
        assert_eq!(s.next_after(5_000, 5_000), Some(6_000));
        assert_eq!(s.next_after(5_999, 5_000), Some(6_000));
        assert_eq!(s.next_after(6_000, 5_000), Some(7_000));
        assert_eq!(s.next_after(100, 5_000), Some(5_000));
    }
}
