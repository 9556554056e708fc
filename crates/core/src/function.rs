//! A function's resolved specification, and the names that point at functions.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::retry::RetryPolicy;

/// Default attempt timeout: 5 minutes.
pub const DEFAULT_TIMEOUT_MS: u64 = 300_000;
/// The longest timeout an attempt may have: 7 days.
pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);
/// Default inputs run at once per worker.
pub const DEFAULT_CONCURRENCY: u32 = 1;

/// What a deployed function is: how to run it and its policy. Stored as JSON with each app
/// version, handed to workers with every lease, so a worker always runs the version an input
/// was spawned on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionSpec {
    pub app: String,
    pub name: String,
    /// Program and arguments, run without a shell; one process per input.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Program and arguments of a long-lived process fed inputs as newline-delimited JSON
    /// (see docs/SERVE_PROTOCOL.md). Exactly one of `command` and `serve` is set for a
    /// function run by `hopper worker`; neither for one served by an in-process SDK handler.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serve: Vec<String>,
    /// Absolute working directory of the command: a folder on the worker's machine, or with
    /// `snapshot` a path inside the snapshot (`/` is its root).
    pub workdir: String,
    /// The code snapshot this version runs in (`sha256:…`), if its deploy shipped one: the
    /// worker unpacks it once per machine and runs the command there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// The Python environment the command runs in, built by the worker once per machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<PythonEnv>,
    /// Extra environment variables for the command. Plain values: anyone with a `read` token
    /// sees them; a value that must stay hidden is a secret (`secrets`, `secret_env`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Named secrets whose every key becomes an environment variable of the command. Only
    /// the names are stored here; the values reach a worker inside the leases it holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Environment variables set from one key of a named secret each, by variable name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, SecretRef>,
    /// An attempt running longer is killed and counts as failed. Default 5 minutes.
    pub timeout_ms: u64,
    #[serde(default)]
    pub retries: RetryPolicy,
    /// Inputs one worker runs at once (batches at once, for a batched function). Default 1.
    pub concurrency: u32,
    /// Dynamic batching; none means one input at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchPolicy>,
    #[serde(default)]
    pub scaling: ScalingPolicy,
    /// Limits on running and starting its inputs, in total and per key.
    #[serde(default, skip_serializing_if = "crate::limits::Limits::is_none")]
    pub limits: crate::limits::Limits,
    /// The priority of a call that gives none (`MIN_PRIORITY..=MAX_PRIORITY`; higher runs
    /// first). Default 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// What each of its workers needs of a machine: GPUs, cores, memory, labels. Its inputs
    /// go only to workers whose machine fits (see [`crate::resources`]).
    #[serde(default, skip_serializing_if = "crate::resources::Resources::is_none")]
    pub resources: crate::resources::Resources,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// A Python environment: a virtual environment a worker builds with the machine's `python3`
/// (`HOPPER_PYTHON` names another), once per machine and set of requirements, and puts first
/// on the command's `PATH` (so `python3` and `python` are its interpreter).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonEnv {
    /// A requirements file in pip's format: absolute on the workers' machines, or with a
    /// snapshot a path inside it (`/` its root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirements_file: Option<String>,
    /// Requirements given inline, one per item, in pip's format (`six==1.16.0`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<String>,
}

/// One key of a named secret: `env = { API_KEY = { secret = "stripe", key = "API_KEY" } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    pub secret: String,
    pub key: String,
}

/// Dynamic batching: a batch closes when it holds `max_size` inputs or `wait_ms` has passed
/// since its first input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchPolicy {
    pub max_size: u32,
    pub wait_ms: u64,
}

/// How many local workers the provisioner runs for a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScalingPolicy {
    /// Workers kept running with no work. Default 0: an idle function has no process.
    pub min_workers: u32,
    /// Most workers at once. Default in a manifest: the server's cores (at most 16), and at
    /// least `min_workers`.
    pub max_workers: u32,
    /// Idle workers kept warm beyond current demand. Default 0.
    pub buffer_workers: u32,
    /// A worker not needed for this long is stopped. Default 60 s.
    pub scaledown_window_ms: u64,
}

impl Default for ScalingPolicy {
    fn default() -> Self {
        Self {
            min_workers: 0,
            max_workers: 1,
            buffer_workers: 0,
            scaledown_window_ms: 60_000,
        }
    }
}

/// How a function's inputs are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner<'a> {
    /// One process per input.
    Command(&'a [String]),
    /// One long-lived process per worker, fed newline-delimited JSON.
    Serve(&'a [String]),
    /// An in-process handler in a program built on the Rust SDK; no local worker is started.
    External,
}

impl FunctionSpec {
    /// `app.function`, the name users type.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.app, self.name)
    }

    pub fn runner(&self) -> Runner<'_> {
        if !self.serve.is_empty() {
            Runner::Serve(&self.serve)
        } else if !self.command.is_empty() {
            Runner::Command(&self.command)
        } else {
            Runner::External
        }
    }

    /// Every secret the function reads, by name, each once.
    pub fn secret_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        names.extend(self.secret_env.values().map(|r| r.secret.as_str()));
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Inputs one worker holds at once: `concurrency`, times the batch size when batched.
    pub fn slots(&self) -> u32 {
        self.concurrency
            .saturating_mul(self.batch.map_or(1, |b| b.max_size.max(1)))
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

/// Checks a function name: one or more parts joined by `.` (`resize`, `Model.predict` for a
/// method of a class), each starting with a letter or `_`, then letters, digits, `_` or `-`;
/// at most 128 characters. (Apps keep the stricter [`validate_name`].)
pub fn validate_function_name(text: &str) -> Result<(), NameError> {
    let err = |reason| NameError {
        text: text.to_string(),
        what: "function",
        reason,
    };
    if text.is_empty() {
        return Err(err("it is empty"));
    }
    if text.len() > 128 {
        return Err(err("it is longer than 128 characters"));
    }
    for part in text.split('.') {
        let mut chars = part.chars();
        match chars.next() {
            None => return Err(err("a part between dots is empty")),
            Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
                return Err(err("each part must start with a letter or '_'"))
            }
            Some(_) => {}
        }
        if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(err("use only letters, digits, '_', '-' and '.'"));
        }
    }
    Ok(())
}

impl FunctionName {
    /// Parses `app.function` or `function`; the app is the part before the first dot, so a
    /// function whose name has dots (`Model.predict`) is always named with its app.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        match text.split_once('.') {
            Some((app, function)) => {
                validate_name(app, "app")?;
                validate_function_name(function)?;
                Ok(Self {
                    app: Some(app.to_string()),
                    function: function.to_string(),
                })
            }
            None => {
                validate_function_name(text)?;
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
    fn methods_of_classes_are_named_with_their_app() {
        let m = FunctionName::parse("shop.Model.predict").unwrap();
        assert_eq!(m.app.as_deref(), Some("shop"));
        assert_eq!(m.function, "Model.predict");
        assert_eq!(
            FunctionName::parse("shop._private").unwrap().function,
            "_private"
        );
    }

    #[test]
    fn bad_names_say_why() {
        let err = FunctionName::parse("Quickstart.greet").unwrap_err();
        assert!(err.to_string().contains("lowercase"), "{err}");
        assert!(FunctionName::parse("a.b..c").is_err());
        assert!(FunctionName::parse(".greet").is_err());
        assert!(FunctionName::parse("9lives").is_err());
        assert!(FunctionName::parse("a.Model.9").is_err());
        assert!(FunctionName::parse("a.b c").is_err());
    }
}
