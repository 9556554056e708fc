//! Identifiers. A call id is `hc-` followed by a UUIDv7 in Crockford base32: 26 characters
//! that sort by creation time, so "newest first" is an index scan on the id alone.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

fn encode(value: u128) -> String {
    let mut out = [0u8; 26];
    for (i, slot) in out.iter_mut().enumerate() {
        // Like ULID: 26 characters hold 130 bits, so the first one carries the top 3.
        let shift = 125 - 5 * i;
        *slot = ALPHABET[((value >> shift) & 0x1f) as usize];
    }
    out.iter().map(|b| *b as char).collect()
}

fn decode(text: &str) -> Option<u128> {
    if text.len() != 26 {
        return None;
    }
    let mut value: u128 = 0;
    for (i, c) in text.bytes().enumerate() {
        let digit = ALPHABET.iter().position(|a| *a == c.to_ascii_uppercase())? as u128;
        if i == 0 && digit > 7 {
            return None;
        }
        value = (value << 5) | digit;
    }
    Some(value)
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// A new id, ordered after every id made earlier on this machine's clock.
            pub fn generate() -> Self {
                Self(format!(concat!($prefix, "{}"), encode(uuid::Uuid::now_v7().as_u128())))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The smallest id made at `at` (milliseconds since the epoch): ids are ordered by
            /// time, so "made before `at`" is "less than this id".
            pub fn first_at(at: crate::UnixMillis) -> Self {
                let ms = (at.max(0) as u128) & ((1u128 << 48) - 1);
                Self(format!(concat!($prefix, "{}"), encode(ms << 80)))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(text: &str) -> Result<Self, IdError> {
                let body = text.strip_prefix($prefix).ok_or_else(|| IdError {
                    text: text.to_string(),
                    what: $what,
                    prefix: $prefix,
                })?;
                decode(body).ok_or_else(|| IdError {
                    text: text.to_string(),
                    what: $what,
                    prefix: $prefix,
                })?;
                Ok(Self(format!(concat!($prefix, "{}"), body.to_ascii_uppercase())))
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;

            fn try_from(text: String) -> Result<Self, IdError> {
                text.parse()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

/// 32 random hex characters (a v4 UUID's bits), for secrets such as tokens.
pub fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A hex string derived from `secret` by SHA-1 (a name-based UUID): the same secret gives the
/// same string on every server, and the string does not give the secret away.
pub fn derived_hex(purpose: &str, secret: &str) -> String {
    let namespace = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, purpose.as_bytes());
    uuid::Uuid::new_v5(&namespace, secret.as_bytes())
        .simple()
        .to_string()
}

/// Why a string is not an id.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{text:?} is not a {what} id (expected {prefix} followed by 26 base32 characters)")]
pub struct IdError {
    pub text: String,
    pub what: &'static str,
    pub prefix: &'static str,
}

prefixed_id!(
    /// Identifies a call: `hc-…`.
    CallId,
    "hc-",
    "call"
);
prefixed_id!(
    /// Identifies a registered worker: `hw-…`.
    WorkerId,
    "hw-",
    "worker"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_sort_by_creation_time() {
        let ids: Vec<CallId> = (0..50).map(|_| CallId::generate()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert!(ids[0].as_str().starts_with("hc-"));
        assert_eq!(ids[0].as_str().len(), 29);
    }

    #[test]
    fn the_first_id_at_a_time_bounds_ids_made_around_it() {
        let before = CallId::first_at(hopper_now());
        std::thread::sleep(std::time::Duration::from_millis(2));
        let made = CallId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let after = CallId::first_at(hopper_now());
        assert!(before < made && made < after, "{before} {made} {after}");
        assert_eq!(before.as_str().parse::<CallId>().unwrap(), before);
    }

    fn hopper_now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    #[test]
    fn call_ids_parse_back_and_reject_garbage() {
        let id = CallId::generate();
        assert_eq!(id.as_str().parse::<CallId>().unwrap(), id);
        assert_eq!(
            id.as_str()
                .to_lowercase()
                .replace("HC-", "hc-")
                .parse::<CallId>()
                .unwrap(),
            id
        );
        for bad in [
            "",
            "hc-",
            "hw-01JD0000000000000000000000",
            "hc-!!",
            "hc-ZZZZZZZZZZZZZZZZZZZZZZZZZZ",
        ] {
            assert!(bad.parse::<CallId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn encoding_round_trips() {
        for v in [
            0u128,
            1,
            u128::MAX,
            0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
        ] {
            assert_eq!(decode(&encode(v)), Some(v));
        }
    }
}
