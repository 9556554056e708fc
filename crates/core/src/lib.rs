//! Hopper's domain model: the vocabulary every other crate speaks.
//!
//! Nothing here does I/O, so the rules of the queue (which state may follow which,
//! when a retry may start, what a valid manifest is) are tested once, here.
//!
//! # Layout
//! - [`ids`]: call, worker and lease identifiers (`hc-…`, sortable by time).
//! - [`state`]: the input and call state machine.
//! - [`retry`]: the retry policy and its backoff.
//! - [`duration`]: the `"60s"`, `"1m30s"`, `"7d"` durations used in manifests and flags.
//! - [`function`]: a function's resolved specification (command and policy).
//! - [`limits`]: keys, priorities, and limits on running and starting inputs.
//! - [`manifest`]: parsing `hopper.toml` into an app, with errors that name file, line and key.
//! - [`cron`]: cron expressions in time zones, correct across daylight-saving changes.
//! - [`schedule`]: schedules (cron or period) and their next due times.
//! - [`notify`]: notification rules and secret redaction.
//! - [`stats`]: per-function rates and duration histograms, as the store keeps them.
//! - [`clock`]: injected time, so tests drive components with a manual clock.
//! - [`api`]: the JSON shapes of the HTTP API, shared by the server and the SDK.

pub mod api;
pub mod blob;
pub mod clock;
pub mod cron;
pub mod duration;
pub mod function;
pub mod ids;
pub mod json;
pub mod limits;
pub mod manifest;
pub mod notify;
pub mod resources;
pub mod retry;
pub mod schedule;
pub mod secret;
pub mod state;
pub mod stats;
pub mod suggest;

pub use function::{FunctionName, FunctionSpec};
pub use ids::{CallId, WorkerId};
pub use state::{CallCounts, CallState, InputState};

/// The message of a panic payload (what `catch_unwind` returns).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

/// Milliseconds since the Unix epoch: the one time representation in the store and the engine.
pub type UnixMillis = i64;

/// `n` and the noun, plural unless `n` is 1: `1 attempt`, `3 attempts`.
pub fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
