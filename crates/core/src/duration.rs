//! Human durations: `"500ms"`, `"60s"`, `"1m30s"`, `"2h"`, `"7d"`.
//!
//! Manifests and CLI flags use the same parser, so a duration that works in one works in the other.

use std::fmt;
use std::time::Duration;

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {text:?}: {reason} (expected e.g. \"500ms\", \"60s\", \"1m30s\", \"2h\", \"7d\")")]
pub struct DurationError {
    pub text: String,
    pub reason: &'static str,
}

/// The longest duration anything takes: 3650 days (ten years). Longer ones are refused, so
/// adding one to a time can never overflow.
pub const MAX: Duration = Duration::from_secs(3650 * 86_400);

/// Parses a duration made of one or more `<number><unit>` parts, units `ms`, `s`, `m`, `h`, `d`.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        text: text.to_string(),
        reason,
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    let mut total_ms: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(err("each part must start with a whole number"));
        }
        let number: u128 = rest[..digits]
            .parse()
            .map_err(|_| err("the number is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
        let unit_ms: u128 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(err("a unit is missing")),
            _ => return Err(err("unknown unit")),
        };
        rest = &rest[unit_len..];
        total_ms = number
            .checked_mul(unit_ms)
            .and_then(|ms| ms.checked_add(total_ms))
            .ok_or_else(|| err("the number is too large"))?;
    }
    if total_ms > MAX.as_millis() {
        return Err(err("it is longer than the longest duration, 3650d"));
    }
    Ok(Duration::from_millis(total_ms as u64))
}

/// Formats a duration the way [`parse`] reads it, in the largest exact units.
pub fn format(d: Duration) -> String {
    Human(d).to_string()
}

/// Display adapter for [`format`].
pub struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return write!(f, "0s");
        }
        for (unit, size) in [
            ("d", 86_400_000u128),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
            ("ms", 1),
        ] {
            if ms >= size {
                write!(f, "{}{}", ms / size, unit)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_compound_units() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(parse(" 2h ").unwrap(), Duration::from_secs(7_200));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in [
            "",
            "60",
            "s",
            "1.5s",
            "10x",
            "-1s",
            "99999999999999999999999999d",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
        assert!(parse("10x")
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
    }

    #[test]
    fn format_round_trips() {
        for text in ["500ms", "1m30s", "7d", "1h1ms"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }
}
