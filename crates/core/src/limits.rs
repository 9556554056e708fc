//! Queue controls: a call's key and priority, and a function's limits on how many of its
//! inputs run at once and start per period, in total and per key.
//!
//! The store enforces them when it leases inputs (`hopper_store::Store::input_lease_available`),
//! so they hold across every worker and server.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;

/// Priorities run from `MIN_PRIORITY` to `MAX_PRIORITY`; higher runs first.
pub const MIN_PRIORITY: i32 = -1000;
pub const MAX_PRIORITY: i32 = 1000;
/// The longest key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 200;
/// The highest `max_running` and `max_running_per_key`.
pub const MAX_RUNNING: u32 = 1_000_000;
/// The most starts a rate may allow in its period.
pub const MAX_RATE_COUNT: u32 = 1_000_000;
/// The shortest and longest period of a rate.
pub const MIN_RATE_PERIOD: Duration = Duration::from_secs(1);
pub const MAX_RATE_PERIOD: Duration = Duration::from_secs(86_400);

/// A function's limits (`[functions.f.limits]` in a manifest). Every field is optional; a
/// function with none of them leases as fast as it did without.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// A JSON pointer (RFC 6901, e.g. `/tenant`) into each input naming its key, when the
    /// spawn gives none. An input without that value has no key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Inputs of the function running at once, across every worker and server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u32>,
    /// Inputs of one key running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running_per_key: Option<u32>,
    /// Attempts of the function started per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// Attempts of one key started per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_key: Option<Rate>,
}

impl Limits {
    /// Whether the function has any limit at all (a `key` pointer alone counts: keys take turns).
    pub fn any(&self) -> bool {
        self != &Limits::default()
    }

    /// No limits at all (for serde's `skip_serializing_if`).
    pub fn is_none(&self) -> bool {
        !self.any()
    }

    /// The key of `input` by the `key` pointer, if the function has one and the input a value
    /// there other than null or `""`: a string as it is, any other value (and a string with
    /// control characters) as its JSON text (so `5` and `"5"` are one key). A key over
    /// [`MAX_KEY_BYTES`] is its first bytes and a hash of the whole, so that long keys stay
    /// apart.
    pub fn key_of(&self, input: &serde_json::Value) -> Option<String> {
        let found = input.pointer(self.key.as_deref()?)?;
        let text = match found {
            serde_json::Value::Null => return None,
            serde_json::Value::String(s) if s.is_empty() => return None,
            // A key is text without control characters: a string holding some (a newline,
            // NUL) is its JSON text, quotes and escapes included.
            serde_json::Value::String(s) if s.chars().any(char::is_control) => found.to_string(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Some(fit(text))
    }
}

/// `text` within [`MAX_KEY_BYTES`]: as it is, or cut with `#` and 16 hex digits of its SHA-256.
fn fit(mut text: String) -> String {
    use sha2::Digest;
    if text.len() <= MAX_KEY_BYTES {
        return text;
    }
    let digest = sha2::Sha256::digest(text.as_bytes());
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let mut end = MAX_KEY_BYTES - 17;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('#');
    text.push_str(&hash);
    text
}

/// Checks a JSON pointer (RFC 6901) for `limits.key`: empty (the whole input) or `/`-separated
/// tokens, where `~` is only `~0` or `~1`.
pub fn validate_pointer(pointer: &str) -> Result<(), String> {
    if !pointer.starts_with('/') {
        return Err(format!(
            "the key is a JSON pointer into the input, such as \"/tenant\", not {pointer:?}"
        ));
    }
    let bad_escape = pointer
        .split('~')
        .skip(1)
        .any(|rest| !(rest.starts_with('0') || rest.starts_with('1')));
    if bad_escape {
        return Err(format!(
            "{pointer:?} is not a JSON pointer: `~` is written ~0 and `/` inside a name ~1"
        ));
    }
    Ok(())
}

/// Checks a key given with a spawn: at most [`MAX_KEY_BYTES`], not empty, no control characters.
pub fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a key is not empty; leave it out for no key".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "a key is at most {MAX_KEY_BYTES} bytes, not {}",
            key.len()
        ));
    }
    if key.chars().any(char::is_control) {
        return Err("a key has no control characters".into());
    }
    Ok(())
}

/// Checks a priority given with a spawn or in a manifest.
pub fn validate_priority(priority: i64) -> Result<i32, String> {
    if (i64::from(MIN_PRIORITY)..=i64::from(MAX_PRIORITY)).contains(&priority) {
        Ok(priority as i32)
    } else {
        Err(format!(
            "a priority is between {MIN_PRIORITY} and {MAX_PRIORITY}, not {priority}"
        ))
    }
}

/// At most `count` starts in any window of `period`: `"50/s"`, `"3000/m"`, `"10/5m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period_ms: u64,
}

impl Rate {
    /// Parses `COUNT/PERIOD`, where the period is a unit (`s`, `m`, `h`, `d`) or a duration
    /// (`10s`, `5m`), between 1 second and 1 day.
    pub fn parse(text: &str) -> Result<Rate, String> {
        let (count, period) = text.split_once('/').ok_or_else(|| {
            format!("a rate is a count per period, such as \"50/s\" or \"3000/m\", not {text:?}")
        })?;
        let count: u32 = count
            .trim()
            .parse()
            .ok()
            .filter(|n| (1..=MAX_RATE_COUNT).contains(n))
            .ok_or_else(|| {
                format!("rate {text:?}: the count is a whole number from 1 to {MAX_RATE_COUNT}")
            })?;
        let period = period.trim();
        let unit = if period.starts_with(|c: char| c.is_ascii_digit()) {
            period.to_string()
        } else {
            format!("1{period}")
        };
        let period = duration::parse(&unit)
            .ok()
            .filter(|d| (MIN_RATE_PERIOD..=MAX_RATE_PERIOD).contains(d))
            .ok_or_else(|| {
                format!(
                    "rate {text:?}: the period is s, m, h, d or a duration from 1s to 1d such as 10s"
                )
            })?;
        Ok(Rate {
            count,
            period_ms: period.as_millis() as u64,
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period_ms {
            1_000 => "s".to_string(),
            60_000 => "m".to_string(),
            3_600_000 => "h".to_string(),
            86_400_000 => "d".to_string(),
            ms => duration::format(Duration::from_millis(ms)),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Rate::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_a_unit_or_a_duration() {
        assert_eq!(
            Rate::parse("50/s").unwrap(),
            Rate {
                count: 50,
                period_ms: 1000
            }
        );
        assert_eq!(Rate::parse("3000/m").unwrap().period_ms, 60_000);
        assert_eq!(Rate::parse("10/5m").unwrap().period_ms, 300_000);
        assert_eq!(Rate::parse("3000/m").unwrap().to_string(), "3000/m");
        assert_eq!(Rate::parse("10/5m").unwrap().to_string(), "10/5m");
        for bad in ["5/fortnight", "0/s", "-1/s", "x/s", "50", "5/100ms", "5/2d"] {
            let err = Rate::parse(bad).unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn a_key_comes_from_the_pointer_as_text() {
        let limits = Limits {
            key: Some("/tenant".into()),
            ..Limits::default()
        };
        let input = serde_json::json!({"tenant": "acme", "n": 1});
        assert_eq!(limits.key_of(&input).as_deref(), Some("acme"));
        let input = serde_json::json!({"tenant": 42});
        assert_eq!(limits.key_of(&input).as_deref(), Some("42"));
        assert_eq!(limits.key_of(&serde_json::json!({"x": 1})), None);
        assert_eq!(limits.key_of(&serde_json::json!({"tenant": null})), None);
        // Long keys stay apart: cut, with a hash of the whole.
        let a = limits.key_of(&serde_json::json!({"tenant": format!("{}A", "é".repeat(150))}));
        let b = limits.key_of(&serde_json::json!({"tenant": format!("{}B", "é".repeat(150))}));
        assert!(a.as_ref().unwrap().len() <= 200 && a != b, "{a:?} {b:?}");
        assert_eq!(limits.key_of(&serde_json::json!({"tenant": ""})), None);
        assert!(validate_pointer("/a~2b").is_err());
        assert!(validate_pointer("/a~1b/~0").is_ok());
        assert!(validate_pointer("tenant").is_err());
        assert!(validate_key(&"k".repeat(201)).is_err());
        assert!(validate_key("").is_err());
        assert!(validate_priority(1001).is_err());
        assert_eq!(validate_priority(-1000), Ok(-1000));
    }
}
