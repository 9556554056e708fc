//! Failure notifications: which events of which functions go to which channels.

use serde::{Deserialize, Serialize};

/// What a rule is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOn {
    /// A call failed (after its retries).
    Failed,
    /// A call failed because an attempt ran past its timeout.
    TimedOut,
    /// A schedule's due time passed while the server was down.
    ScheduleMissed,
    /// The first success of a function after failures.
    Recovered,
}

impl NotifyOn {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyOn::Failed => "failed",
            NotifyOn::TimedOut => "timed_out",
            NotifyOn::ScheduleMissed => "schedule_missed",
            NotifyOn::Recovered => "recovered",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            NotifyOn::Failed,
            NotifyOn::TimedOut,
            NotifyOn::ScheduleMissed,
            NotifyOn::Recovered,
        ]
        .into_iter()
        .find(|o| o.as_str() == text)
    }
}

/// One `[[notify]]` rule of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyRule {
    pub on: Vec<NotifyOn>,
    /// Function names within the app; empty means every function.
    #[serde(default)]
    pub functions: Vec<String>,
    /// A secret (its path is a credential): never shown in logs or the API.
    #[serde(default)]
    pub webhook: Option<crate::secret::Redacted<String>>,
    #[serde(default)]
    pub email: Vec<String>,
    /// At most one message per function and channel per this period. Default 5 minutes.
    pub quiet_ms: u64,
}

/// Default quiet period: 5 minutes.
pub const DEFAULT_QUIET_MS: u64 = 300_000;

impl NotifyRule {
    pub fn covers(&self, function: &str, event: NotifyOn) -> bool {
        self.on.contains(&event)
            && (self.functions.is_empty() || self.functions.iter().any(|f| f == function))
    }
}

/// A URL with everything after the host hidden, for logs and the API.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host);
    if scheme.is_empty() {
        "…".to_string()
    } else {
        format!("{scheme}://{host}/…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_to_their_host() {
        assert_eq!(
            redact_url("https://hooks.example.com/T000/B000/secret"),
            "https://hooks.example.com/…"
        );
        assert_eq!(
            redact_url("smtp://user:pass@mail.example.com:25"),
            "smtp://mail.example.com:25/…"
        );
        assert_eq!(redact_url("nonsense"), "…");
    }

    #[test]
    fn a_rule_covers_its_events_and_functions() {
        let rule = NotifyRule {
            on: vec![NotifyOn::Failed],
            functions: vec!["report".into()],
            webhook: None,
            email: vec![],
            quiet_ms: 1,
        };
        assert!(rule.covers("report", NotifyOn::Failed));
        assert!(!rule.covers("report", NotifyOn::Recovered));
        assert!(!rule.covers("other", NotifyOn::Failed));
    }
}
