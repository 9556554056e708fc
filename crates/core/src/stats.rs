//! Per-function statistics as the store keeps them: attempts ended per 10-second slot, and a
//! histogram of their durations with fixed bounds, so rates and percentiles over any window are
//! sums of a few rows, not scans of the inputs.

use crate::UnixMillis;

/// The width of one statistics slot.
pub const SLOT_MS: i64 = 10_000;

/// Upper bounds (exclusive, milliseconds) of the duration histogram's buckets; the last bucket
/// (index `BUCKETS - 1`) holds everything at or above the last bound.
pub const DURATION_BOUNDS_MS: [i64; 15] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000,
];

/// Buckets in the duration histogram.
pub const BUCKETS: usize = DURATION_BOUNDS_MS.len() + 1;

/// The slot a time falls in (its start).
pub fn slot_of(at: UnixMillis) -> i64 {
    at.div_euclid(SLOT_MS) * SLOT_MS
}

/// The histogram bucket of a duration.
pub fn bucket_of(duration_ms: i64) -> usize {
    DURATION_BOUNDS_MS
        .iter()
        .position(|bound| duration_ms < *bound)
        .unwrap_or(BUCKETS - 1)
}

/// Attempts ended, by outcome, with their durations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Inputs that succeeded.
    pub succeeded: i64,
    /// Inputs that failed for good (no retries left).
    pub failed: i64,
    /// Attempts that failed and were retried.
    pub retried: i64,
    /// Durations of all of the above, by [`bucket_of`].
    pub durations: [i64; BUCKETS],
    /// The longest of those durations: no percentile is above it.
    pub max_ms: i64,
}

impl Tally {
    /// Counts one ended attempt: `effect` is `succeeded`, `failed` or `retried` (others are not
    /// counted).
    pub fn add(&mut self, effect: &str, duration_ms: i64) {
        match effect {
            "succeeded" => self.succeeded += 1,
            "failed" => self.failed += 1,
            "retried" => self.retried += 1,
            _ => return,
        }
        self.durations[bucket_of(duration_ms.max(0))] += 1;
        self.max_ms = self.max_ms.max(duration_ms);
    }

    pub fn merge(&mut self, other: &Tally) {
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.retried += other.retried;
        self.max_ms = self.max_ms.max(other.max_ms);
        for (a, b) in self.durations.iter_mut().zip(other.durations) {
            *a += b;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.succeeded + self.failed + self.retried == 0
    }

    /// The duration below which a fraction `q` (0..=1) of the attempts ended, interpolated
    /// within its bucket and never above the longest attempt; `None` without attempts.
    /// Open-ended top bucket: its lower bound.
    pub fn percentile_ms(&self, q: f64) -> Option<f64> {
        let p = self.interpolated_ms(q)?;
        Some(if self.max_ms > 0 {
            p.min(self.max_ms as f64)
        } else {
            p
        })
    }

    fn interpolated_ms(&self, q: f64) -> Option<f64> {
        let total: i64 = self.durations.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0i64;
        for (i, count) in self.durations.iter().enumerate() {
            if *count == 0 {
                continue;
            }
            if (seen + count) as f64 >= rank {
                let low = if i == 0 { 0 } else { DURATION_BOUNDS_MS[i - 1] } as f64;
                let Some(high) = DURATION_BOUNDS_MS.get(i) else {
                    return Some(low);
                };
                let within = (rank - seen as f64) / *count as f64;
                return Some(low + (*high as f64 - low) * within);
            }
            seen += count;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fall_in_the_bucket_below_their_bound() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 1);
        assert_eq!(bucket_of(4), 2);
        assert_eq!(bucket_of(999), 9);
        assert_eq!(bucket_of(1_000), 10);
        assert_eq!(bucket_of(3_600_000), BUCKETS - 1);
    }

    #[test]
    fn percentiles_interpolate_within_a_bucket() {
        let mut t = Tally::default();
        for _ in 0..90 {
            t.add("succeeded", 30); // bucket [25, 50)
        }
        for _ in 0..10 {
            t.add("failed", 700); // bucket [500, 1000)
        }
        t.add("cancelled", 5); // not counted
        assert_eq!((t.succeeded, t.failed), (90, 10));
        let p50 = t.percentile_ms(0.5).unwrap();
        assert!((25.0..50.0).contains(&p50), "{p50}");
        let p95 = t.percentile_ms(0.95).unwrap();
        assert!((500.0..1000.0).contains(&p95), "{p95}");
        assert_eq!(Tally::default().percentile_ms(0.5), None);
    }

    #[test]
    fn percentiles_never_exceed_the_longest_attempt() {
        let mut t = Tally::default();
        t.add("failed", 30_000); // bucket [30 s, 60 s)
        assert_eq!(t.percentile_ms(0.5), Some(30_000.0));
        assert_eq!(t.percentile_ms(0.99), Some(30_000.0));
        let mut other = Tally::default();
        other.add("succeeded", 45_000);
        t.merge(&other);
        assert!(t.percentile_ms(0.99).unwrap() <= 45_000.0);
    }

    #[test]
    fn slots_start_on_a_multiple_of_the_width() {
        assert_eq!(slot_of(1_700_000_012_345), 1_700_000_010_000);
        assert_eq!(slot_of(-1), -SLOT_MS);
    }
}
