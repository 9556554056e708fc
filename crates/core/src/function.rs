//! A function's resolved specification, and the names that point at functions.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::retry::RetryPolicy;

/// Default attempt timeout: 5 minutes.
pub const DEFAULT_TIMEOUT_MS: u64 = 300_000;
/// Default inputs run at once per worker.
pub const DEFAULT_CONCURRENCY: u32 = 1;

/// What a deployed function is: how to run it and its policy. Stored as JSON with each app
/// version, handed to workers with every lease, so a worker always runs the version an input
/// was spawned on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionSpec {
    pub app: String,
    pub name: String,
    /// Program and arguments, run without a shell; one process per input.
    pub command: Vec<String>,
    /// Absolute working directory of the command.
    pub workdir: String,
    /// Extra environment variables for the command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// An attempt running longer is killed and counts as failed. Default 5 minutes.
    pub timeout_ms: u64,
    #[serde(default)]
    pub retries: RetryPolicy,
    /// Inputs one worker runs at once. Default 1.
    pub concurrency: u32,
}

impl FunctionSpec {
    /// `app.function`, the name users type.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.app, self.name)
    }
}

/// A function as a user names it: `app.function`, or the bare `function` where it is unique.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FunctionName {
    pub app: Option<String>,
    pub function: String,
}

/// Why a name is not a valid app, function or `app.function` name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} name {text:?}: {reason}")]
pub struct NameError {
    pub text: String,
    pub what: &'static str,
    pub reason: &'static str,
}

/// Checks an app or function name: a lowercase letter, then lowercase letters, digits, `_` or
/// `-`, at most 64 characters. Names appear in URLs, metrics and file names, so they stay plain.
pub fn validate_name(text: &str, what: &'static str) -> Result<(), NameError> {
    let err = |reason| NameError {
        text: text.to_string(),
        what,
        reason,
    };
    let mut chars = text.chars();
    match chars.next() {
        None => return Err(err("it is empty")),
        Some(c) if !c.is_ascii_lowercase() => {
            return Err(err("it must start with a lowercase letter"))
        }
        Some(_) => {}
    }
    if text.len() > 64 {
        return Err(err("it is longer than 64 characters"));
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-') {
        return Err(err("use only lowercase letters, digits, '_' and '-'"));
    }
    Ok(())
}

impl FunctionName {
    /// Parses `app.function` or `function`.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        match text.split_once('.') {
            Some((app, function)) => {
                validate_name(app, "app")?;
                validate_name(function, "function")?;
                Ok(Self {
                    app: Some(app.to_string()),
                    function: function.to_string(),
                })
            }
            None => {
                validate_name(text, "function")?;
                Ok(Self {
                    app: None,
                    function: text.to_string(),
                })
            }
        }
    }
}

impl fmt::Display for FunctionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.app {
            Some(app) => write!(f, "{app}.{}", self.function),
            None => f.write_str(&self.function),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_and_bare_names_parse() {
        let q = FunctionName::parse("quickstart.greet").unwrap();
        assert_eq!(q.app.as_deref(), Some("quickstart"));
        assert_eq!(q.function, "greet");
        assert_eq!(FunctionName::parse("greet").unwrap().app, None);
    }

    #[test]
    fn bad_names_say_why() {
        let err = FunctionName::parse("quickstart.Greet").unwrap_err();
        assert!(err.to_string().contains("lowercase"), "{err}");
        assert!(FunctionName::parse("a.b.c").is_err());
        assert!(FunctionName::parse(".greet").is_err());
        assert!(FunctionName::parse("9lives").is_err());
    }
}
