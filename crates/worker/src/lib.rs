//! Hopper's worker runtime.
//!
//! A worker registers the functions it serves, leases as many inputs as it has free slots
//! (long-polling when the queue is empty), runs each as a command in its own process group,
//! heartbeats its leases, and ships log lines and results back in batches. It talks to the
//! server only through the public HTTP API, so it can run on any machine.
//!
//! # Layout
//! - [`runtime`]: the lease loop, heartbeats and graceful shutdown.
//! - [`command`]: running one input as a command process.
//! - [`outbox`]: batching of log lines and results on their way to the server.
//! - [`process`]: process groups and parent-death signals.

pub mod command;
pub mod outbox;
pub mod process;
pub mod runtime;

pub use runtime::{run, WorkerConfig};
