//! The Rust SDK for Hopper.
//!
//! - [`Client`]: the HTTP API, typed: deploy, spawn, get (with wait), cancel, list calls, logs,
//!   and `map` as an async [`Stream`](futures_util::Stream) of results.
//! - [`Worker`]: serve an app's functions with in-process async handlers (one input at a time
//!   or batched), with the same lease, heartbeat, retry and concurrency semantics as the
//!   command workers.
//! - [`runtime`]: the worker runtime both are built on: leasing, dynamic batching,
//!   heartbeats, and an [`outbox`] that batches logs and results. `hopper worker` plugs its
//!   command and `serve` processes into it through [`runtime::Executor`].
//!
//! The SDK talks to the server only through the public API.

pub mod client;
pub mod handlers;
pub mod map;
pub mod outbox;
pub mod runtime;

pub use client::{CallFilter, Client, Error, InputFilter};
pub use handlers::{FunctionOptions, HandlerError, Worker};
pub use map::{MapError, MapItem, MapOptions, MapRun};
pub use runtime::{Executor, Job, LogSink, WorkerConfig, WorkerError};
