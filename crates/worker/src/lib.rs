//! Hopper's process executors for `hopper worker`: a command function runs one process per
//! input; a `serve` function runs one long-lived process per worker, fed newline-delimited
//! JSON. Both plug into the SDK's worker runtime (leasing, batching, heartbeats, outbox).
//!
//! # Layout
//! - [`command`]: one input as a command process.
//! - [`serve`]: the long-lived `serve` process and its protocol (docs/SERVE_PROTOCOL.md).
//! - [`process`]: process groups and parent-death signals.

pub mod command;
pub mod process;
pub mod serve;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use hopper_core::api::{InputError, Outcome};
use hopper_core::function::Runner;
use hopper_core::FunctionSpec;
use hopper_sdk::runtime::{Executor, Job, LogSink};
pub use hopper_sdk::runtime::{WorkerConfig, WorkerError};
use tokio_util::sync::CancellationToken;

/// Runs command and `serve` functions.
pub struct ProcessExecutor {
    kill_grace: Duration,
    serve: serve::ServePool,
}

impl ProcessExecutor {
    /// `kill_grace` is the time between SIGTERM and SIGKILL of a command over its timeout.
    pub fn new(kill_grace: Duration) -> Self {
        Self {
            kill_grace,
            serve: serve::ServePool::default(),
        }
    }
}

impl Executor for ProcessExecutor {
    fn run(
        &self,
        spec: Arc<FunctionSpec>,
        jobs: Vec<Job>,
        logs: LogSink,
    ) -> BoxFuture<'static, Vec<Option<Outcome>>> {
        match spec.runner() {
            Runner::Command(_) => {
                let kill_grace = self.kill_grace;
                async move {
                    let mut out = Vec::with_capacity(jobs.len());
                    for job in jobs {
                        out.push(command::run(&spec, &job, kill_grace, &logs).await);
                    }
                    out
                }
                .boxed()
            }
            Runner::Serve(_) => self.serve.run(spec, jobs, logs).boxed(),
            Runner::External => {
                let message = format!(
                    "{} is external: it is served by its own workers, not by `hopper worker`",
                    spec.qualified_name()
                );
                let n = jobs.len();
                async move {
                    (0..n)
                        .map(|_| {
                            Some(Outcome::Returned {
                                error: InputError {
                                    code: "not_served_here".into(),
                                    message: message.clone(),
                                },
                            })
                        })
                        .collect()
                }
                .boxed()
            }
        }
    }
}

/// Runs `hopper worker` until `shutdown`: the SDK runtime with the process executors.
pub async fn run(
    config: WorkerConfig,
    kill_grace: Duration,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    hopper_sdk::runtime::run(config, Arc::new(ProcessExecutor::new(kill_grace)), shutdown).await
}
