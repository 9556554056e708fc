//! Limits on the JSON values Hopper carries: how deep they nest, and that their integers fit
//! in 64 bits. Checked where a value enters (a request body, a command's output), on the
//! text, so an integer too large is refused rather than silently rounded to a float, and a
//! value too deep to pass through a lease and back is refused up front.

use serde_json::Value;

/// The deepest an input or output may nest (`[[1]]` is 2 deep).
pub const MAX_DEPTH: usize = 64;

/// Why a JSON text is refused, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonLimit {
    #[error("it nests deeper than {limit} levels (line {line}, column {column})")]
    TooDeep {
        limit: usize,
        line: usize,
        column: usize,
    },
    #[error("the integer {digits} (line {line}, column {column}) does not fit in 64 bits: send it as a string")]
    BigInteger {
        digits: String,
        line: usize,
        column: usize,
    },
}

/// Checks JSON `text` for nesting deeper than `max_depth` and for integers beyond 64 bits;
/// the error names the line and column. The text is assumed to be otherwise valid JSON
/// (parse it too).
pub fn check_text(text: &[u8], max_depth: usize) -> Result<(), JsonLimit> {
    let (mut line, mut column) = (1usize, 0usize);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        column += 1;
        if b == b'\n' {
            line += 1;
            column = 0;
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(JsonLimit::TooDeep {
                        limit: max_depth,
                        line,
                        column,
                    });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i + 1 < text.len()
                    && matches!(text[i + 1], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                let number = &text[start..=i];
                let integer = !number.iter().any(|c| matches!(c, b'.' | b'e' | b'E'));
                if integer {
                    let digits = String::from_utf8_lossy(number);
                    if digits.parse::<i64>().is_err() && digits.parse::<u64>().is_err() {
                        return Err(JsonLimit::BigInteger {
                            digits: digits.into_owned(),
                            line,
                            column,
                        });
                    }
                }
                column += i - start;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// How deep a value nests: 0 for a scalar, 1 for `[]` or `{}`, and so on.
pub fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_values_and_big_integers_are_found_with_their_place() {
        assert!(check_text(
            br#"{"a": [1, -2, 3.5e300, "[[[[", 18446744073709551615]}"#,
            3
        )
        .is_ok());
        let deep = "[".repeat(65) + &"]".repeat(65);
        let err = check_text(deep.as_bytes(), MAX_DEPTH)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("deeper than 64 levels (line 1, column 65)"),
            "{err}"
        );
        let err = check_text(b"{\n  \"n\": 123456789012345678901234567890123456789}", 8)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("123456789012345678901234567890123456789 (line 2, column 8)"),
            "{err}"
        );
        assert!(check_text(b"-9223372036854775809", 8).is_err());
    }

    #[test]
    fn depth_counts_levels() {
        assert_eq!(depth(&serde_json::json!(1)), 0);
        assert_eq!(depth(&serde_json::json!([[1], {"a": {}}])), 3);
    }
}
