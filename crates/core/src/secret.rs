//! Values that must never reach a log or an error message: tokens, a worker's secret, a
//! password in an SMTP URL, a webhook URL (its path is a credential), a secret's value.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value that `Debug` prints as `***`, so a struct holding one can derive `Debug` and be
/// logged (or shown in a panic) without leaking it. It has no `Display`: a `format!` of it
/// does not compile, so no message takes it by mistake; the code that sends it reads it with
/// [`Redacted::expose`]. Serialized as the value itself: it crosses the wire where it must,
/// and only there.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The value, for the one place that needs it (a header, a connection, a comparison).
    pub fn expose(&self) -> &T {
        &self.0
    }

    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> From<T> for Redacted<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

/// So that a command-line flag can be one (clap parses through `FromStr`).
impl std::str::FromStr for Redacted<String> {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_string()))
    }
}

impl<T: Serialize> Serialize for Redacted<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Redacted<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::Redacted;

    #[test]
    fn debug_never_shows_the_value_and_serde_carries_it() {
        let token = Some(Redacted::new("s3cret-token".to_string()));
        assert_eq!(format!("{token:?}"), "Some(***)");
        assert_eq!(format!("{:#?}", Redacted::new("s3cret")), "***");
        assert_eq!(serde_json::to_string(&token).unwrap(), "\"s3cret-token\"");
        let back: Redacted<String> = serde_json::from_str("\"x\"").unwrap();
        assert_eq!(back.expose(), "x");
    }

    /// The API's types that carry a credential show none of it in `{:?}`.
    #[test]
    fn api_types_holding_credentials_redact_them() {
        let registered: crate::api::WorkerRegistered = serde_json::from_value(serde_json::json!({
            "worker_id": "hw-01M8PERSKJEZZTZMQFWHBBZRXN", "lease_ms": 1, "heartbeat_ms": 1,
            "call_token": "hc-c4ll-t0ken", "worker_secret": "w0rker-secret"
        }))
        .unwrap();
        let put: crate::api::SecretPut = serde_json::from_value(
            serde_json::json!({"values": [{"key": "PASSWORD", "value": "hunter2-value"}]}),
        )
        .unwrap();
        let rule = crate::notify::NotifyRule {
            on: vec![crate::notify::NotifyOn::Failed],
            functions: Vec::new(),
            webhook: Some(
                "https://hooks.example.com/T0/B1/s3cretpath"
                    .to_string()
                    .into(),
            ),
            email: Vec::new(),
            quiet_ms: 1,
        };
        let shown = format!("{registered:?} {put:?} {rule:?}");
        for secret in ["c4ll-t0ken", "w0rker-secret", "hunter2-value", "s3cretpath"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert_eq!(
            serde_json::to_value(&rule).unwrap()["webhook"],
            "https://hooks.example.com/T0/B1/s3cretpath"
        );
    }
}
