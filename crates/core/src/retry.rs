//! Retry policy: how many times a failed input runs again, and how long it waits first.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A function's retry policy.
///
/// Attempt `n + 1` (after `n` failed attempts) starts no earlier than
/// `min(initial_delay * backoff_coefficient^(n - 1), max_delay)` after the failure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Retries after the first attempt fails. Default 0: a failure is final.
    pub max_retries: u32,
    /// Growth of the delay from one retry to the next. Default 2.0; 1.0 keeps it constant.
    pub backoff_coefficient: f64,
    /// Delay before the first retry, in milliseconds. Default 1 s.
    pub initial_delay_ms: u64,
    /// Upper bound on any delay, in milliseconds. Default 60 s.
    pub max_delay_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 0,
            backoff_coefficient: 2.0,
            initial_delay_ms: 1_000,
            max_delay_ms: 60_000,
        }
    }
}

impl RetryPolicy {
    /// The delay before the next attempt, once `failures` attempts have failed; `None` when no
    /// retries are left.
    pub fn delay_after(&self, failures: u32) -> Option<Duration> {
        if failures == 0 || failures > self.max_retries {
            return None;
        }
        let exponent = (failures - 1).min(1_000) as i32;
        let delay = self.initial_delay_ms as f64 * self.backoff_coefficient.powi(exponent);
        let capped = if delay.is_finite() {
            delay.min(self.max_delay_ms as f64)
        } else {
            self.max_delay_ms as f64
        };
        Some(Duration::from_millis(capped.max(0.0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            backoff_coefficient: 2.0,
            initial_delay_ms: 1_000,
            max_delay_ms: 5_000,
        }
    }

    #[test]
    fn delays_grow_by_the_coefficient_up_to_the_cap() {
        let p = policy(10);
        let delays: Vec<u64> = (1..=5)
            .map(|n| p.delay_after(n).unwrap().as_millis() as u64)
            .collect();
        assert_eq!(delays, [1_000, 2_000, 4_000, 5_000, 5_000]);
    }

    #[test]
    fn no_retry_past_max_retries() {
        let p = policy(3);
        assert!(p.delay_after(3).is_some());
        assert!(p.delay_after(4).is_none());
        assert!(
            RetryPolicy::default().delay_after(1).is_none(),
            "default is no retries"
        );
    }

    #[test]
    fn a_huge_coefficient_is_capped_not_overflowed() {
        let p = RetryPolicy {
            backoff_coefficient: 1e300,
            ..policy(u32::MAX)
        };
        assert_eq!(
            p.delay_after(1_000_000).unwrap(),
            Duration::from_millis(5_000)
        );
    }
}
