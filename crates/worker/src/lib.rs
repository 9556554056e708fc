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

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use hopper_core::api::{InputError, Outcome};
use hopper_core::function::Runner;
use hopper_core::FunctionSpec;
use hopper_sdk::runtime::{Executor, Job, LogSink, Registration};
pub use hopper_sdk::runtime::{WorkerConfig, WorkerError};
use tokio_util::sync::CancellationToken;

/// Runs command and `serve` functions.
pub struct ProcessExecutor {
    kill_grace: Duration,
    serve: Arc<serve::ServePool>,
    env: Arc<OnceLock<serve::WorkerEnv>>,
}

impl ProcessExecutor {
    /// `kill_grace` is the time between SIGTERM and SIGKILL of a command over its timeout, and
    /// of a `serve` process when the worker stops.
    pub fn new(kill_grace: Duration) -> Self {
        Self {
            kill_grace,
            serve: Arc::default(),
            env: Arc::default(),
        }
    }
}

impl Executor for ProcessExecutor {
    fn registered(&self, registration: &Registration) {
        let env = serve::WorkerEnv::from_registration(registration, self.kill_grace);
        self.serve.set_env(env.clone());
        let _ = self.env.set(env);
    }

    fn prepare(&self, spec: Arc<FunctionSpec>, logs: LogSink) {
        if let Runner::Serve(_) = spec.runner() {
            self.serve.prepare(&spec, logs);
        }
    }

    fn stop(&self) -> BoxFuture<'static, ()> {
        let serve = self.serve.clone();
        let grace = self.kill_grace;
        async move { serve.stop(grace).await }.boxed()
    }

    fn run(
        &self,
        spec: Arc<FunctionSpec>,
        jobs: Vec<Job>,
        logs: LogSink,
    ) -> BoxFuture<'static, Vec<Option<Outcome>>> {
        match spec.runner() {
            Runner::Command(_) => {
                let kill_grace = self.kill_grace;
                let env = self.env.get().cloned().unwrap_or_default();
                async move {
                    let mut out = Vec::with_capacity(jobs.len());
                    for job in jobs {
                        out.push(command::run(&spec, &job, kill_grace, &env, &logs).await);
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
