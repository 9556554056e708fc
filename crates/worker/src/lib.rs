//! Hopper's process executors for `hopper worker`: a command function runs one process per
//! input; a `serve` function runs one long-lived process per worker, fed newline-delimited
//! JSON. Both plug into the SDK's worker runtime (leasing, batching, heartbeats, outbox).
//!
//! # Layout
//! - [`cache`]: the machine's unpacked code snapshots.
//! - [`command`]: one input as a command process.
//! - [`serve`]: the long-lived `serve` process and its protocol (docs/SERVE_PROTOCOL.md).
//! - [`machine`]: what this machine has (GPUs, cores, memory, labels), for placement.
//! - [`process`]: process groups and parent-death signals.
//! - [`pyenv`]: Python environments built from a function's requirements.
//! - [`snapshot`]: code snapshots: building, checking and unpacking them.

pub mod blobs;
pub mod cache;
pub mod cgroup;
pub mod command;
pub mod guard;
pub mod machine;
pub mod process;
pub mod pyenv;
pub mod serve;
pub mod snapshot;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use hopper_core::api::{InputError, LogStream, Outcome};
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
    snapshots: Arc<cache::SnapshotCache>,
    envs: Arc<pyenv::PythonEnvs>,
    /// Set for every function's processes unless the function sets it: the GPUs this worker
    /// may use (`CUDA_VISIBLE_DEVICES`).
    machine_env: Arc<std::collections::BTreeMap<String, String>>,
    /// `serve` processes still being prepared (their code unpacked, their environment built)
    /// before they start: the worker leases nothing meanwhile.
    preparing: Arc<tokio::sync::watch::Sender<usize>>,
}

impl ProcessExecutor {
    /// `kill_grace` is the time between SIGTERM and SIGKILL of a command over its timeout, and
    /// of a `serve` process when the worker stops; `snapshots` is where functions' code is
    /// unpacked.
    pub fn new(kill_grace: Duration, snapshots: cache::SnapshotCache) -> Self {
        Self {
            kill_grace,
            serve: Arc::default(),
            env: Arc::default(),
            envs: Arc::new(pyenv::PythonEnvs::new(snapshots.envs_dir())),
            snapshots: Arc::new(snapshots),
            machine_env: Arc::default(),
            preparing: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// Gives every function's processes the GPUs of `machine` (`CUDA_VISIBLE_DEVICES` and
    /// `NVIDIA_VISIBLE_DEVICES`, unless a function sets them itself); none for a machine
    /// without GPUs.
    pub fn with_machine(mut self, machine: &hopper_core::resources::Machine) -> Self {
        let mut env = std::collections::BTreeMap::new();
        if !machine.gpus.is_empty() {
            let visible = machine::visible_devices(&machine.gpus);
            env.insert("CUDA_VISIBLE_DEVICES".to_string(), visible.clone());
            env.insert("NVIDIA_VISIBLE_DEVICES".to_string(), visible);
        }
        self.machine_env = Arc::new(env);
        self
    }
}

/// Why a function cannot run on this machine yet.
struct Unready {
    code: &'static str,
    message: String,
    retry: bool,
}

/// `spec` as it runs on this machine: a function shipped as a snapshot runs in the snapshot's
/// folder in the cache (unpacked first if need be), one with Python requirements in its
/// environment (built first if need be).
async fn resolve(
    snapshots: &cache::SnapshotCache,
    envs: &pyenv::PythonEnvs,
    machine_env: &std::collections::BTreeMap<String, String>,
    spec: Arc<FunctionSpec>,
) -> Result<Arc<FunctionSpec>, Unready> {
    let adds_env = machine_env.keys().any(|k| !spec.env.contains_key(k));
    if spec.snapshot.is_none() && spec.python.is_none() && !adds_env {
        return Ok(spec);
    }
    let mut local = (*spec).clone();
    for (k, v) in machine_env {
        local.env.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let mut root = None;
    if let Some(hash) = &spec.snapshot {
        let folder = snapshots
            .materialize(hash)
            .await
            .map_err(|message| Unready {
                code: "snapshot_unavailable",
                message,
                retry: true,
            })?;
        local.workdir = folder
            .join(spec.workdir.trim_start_matches('/'))
            .to_string_lossy()
            .into_owned();
        root = Some(folder);
    }
    if let Some(python) = &spec.python {
        let failed = |message: String| Unready {
            code: "environment_failed",
            message,
            retry: false,
        };
        let mut text = python.requirements.join("\n");
        if let Some(file) = &python.requirements_file {
            let path = match &root {
                Some(root) => root.join(file.trim_start_matches('/')),
                None => std::path::PathBuf::from(file),
            };
            text = tokio::fs::read_to_string(&path)
                .await
                .map_err(|e| failed(format!("cannot read the requirements file {file}: {e}")))?;
        }
        let env = envs.ensure(&text).await.map_err(|e| Unready {
            code: "environment_failed",
            message: e.message,
            retry: e.retry,
        })?;
        let path = local
            .env
            .get("PATH")
            .cloned()
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_default();
        local.env.insert(
            "PATH".into(),
            format!("{}:{path}", env.join("bin").display()),
        );
        local
            .env
            .insert("VIRTUAL_ENV".into(), env.to_string_lossy().into_owned());
    }
    Ok(Arc::new(local))
}

impl Executor for ProcessExecutor {
    fn registered(&self, registration: &Registration) {
        let env = serve::WorkerEnv::from_registration(
            registration,
            self.kill_grace,
            self.snapshots.blobs_dir(),
        );
        if let Some(blobs) = &env.blobs {
            blobs.sweep();
        }
        self.serve.set_env(env.clone());
        let _ = self.env.set(env);
        self.snapshots
            .set_source(registration.client.clone(), registration.worker_id.clone());
    }

    fn prepare(&self, spec: Arc<FunctionSpec>, logs: LogSink) {
        if let Runner::Serve(_) = spec.runner() {
            if spec.snapshot.is_none() && spec.python.is_none() && self.machine_env.is_empty() {
                self.serve.prepare(&spec, logs);
                return;
            }
            let (serve, snapshots, envs, machine_env, preparing) = (
                self.serve.clone(),
                self.snapshots.clone(),
                self.envs.clone(),
                self.machine_env.clone(),
                self.preparing.clone(),
            );
            preparing.send_modify(|n| *n += 1);
            tokio::spawn(async move {
                match resolve(&snapshots, &envs, &machine_env, spec.clone()).await {
                    Ok(local) => serve.prepare(&local, logs),
                    Err(e) => {
                        tracing::warn!(function = %spec.qualified_name(), error = %e.message, "cannot get the function's code or environment yet")
                    }
                }
                preparing.send_modify(|n| *n = n.saturating_sub(1));
            });
        }
    }

    fn ready(&self) -> BoxFuture<'static, ()> {
        let serve = self.serve.clone();
        let mut preparing = self.preparing.subscribe();
        async move {
            let _ = preparing.wait_for(|n| *n == 0).await;
            serve.ready().await
        }
        .boxed()
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
        let kill_grace = self.kill_grace;
        let env = self.env.get().cloned().unwrap_or_default();
        let (serve, snapshots, envs, machine_env) = (
            self.serve.clone(),
            self.snapshots.clone(),
            self.envs.clone(),
            self.machine_env.clone(),
        );
        async move {
            let spec = match resolve(&snapshots, &envs, &machine_env, spec).await {
                Ok(spec) => spec,
                Err(unready) => {
                    for job in &jobs {
                        logs.line(job.lease, LogStream::System, unready.message.clone());
                    }
                    return jobs
                        .iter()
                        .map(|_| {
                            Some(Outcome::Failed {
                                error: InputError::new(unready.code, unready.message.clone()),
                                retry: unready.retry,
                            })
                        })
                        .collect();
                }
            };
            // Blobs the inputs refer to, fetched first; an input whose blob cannot be had
            // fails alone, and the others run.
            let mut jobs = jobs;
            let mut early: Vec<Option<Option<Outcome>>> = Vec::with_capacity(jobs.len());
            let mut fetched = Vec::new();
            let command = matches!(spec.runner(), Runner::Command(_));
            if let Some(blobs) = &env.blobs {
                for job in &mut jobs {
                    let attempt = format!("{}-{}", job.lease.input_id, job.lease.attempt);
                    if command {
                        fetched.extend(blobs.make_attempt_out(&attempt));
                    }
                    match blobs.fetch(&mut job.input, &attempt).await {
                        Ok(folder) => {
                            fetched.extend(folder);
                            early.push(None);
                        }
                        Err(outcome) => {
                            if let Outcome::Failed { error, .. } | Outcome::Returned { error } =
                                &outcome
                            {
                                logs.line(job.lease, LogStream::System, error.message.clone());
                            }
                            early.push(Some(Some(outcome)));
                        }
                    }
                }
            } else {
                early.resize(jobs.len(), None);
            }
            let calls: Vec<_> = jobs.iter().map(|j| j.call_id.clone()).collect();
            let runnable: Vec<Job> = jobs
                .into_iter()
                .zip(&early)
                .filter(|(_, e)| e.is_none())
                .map(|(j, _)| j)
                .collect();
            let workdir = std::path::PathBuf::from(&spec.workdir);
            let ran = match spec.runner() {
                _ if runnable.is_empty() => Vec::new(),
                Runner::Command(_) => {
                    let mut out = Vec::with_capacity(runnable.len());
                    for job in runnable {
                        out.push(command::run(&spec, &job, kill_grace, &env, &logs).await);
                    }
                    out
                }
                Runner::Serve(_) => serve.run(spec, runnable, logs).await,
                Runner::External => {
                    let message = format!(
                        "{} is external: it is served by its own workers, not by `hopper worker`",
                        spec.qualified_name()
                    );
                    runnable
                        .iter()
                        .map(|_| {
                            Some(Outcome::Returned {
                                error: InputError::new("not_served_here", message.clone()),
                            })
                        })
                        .collect()
                }
            };
            // In input order again, the outputs' files stored as blobs of their calls (an
            // output may name an input's own file: the attempts' folders go after this).
            let mut ran = ran.into_iter();
            let mut out = Vec::with_capacity(early.len());
            for (early, call) in early.into_iter().zip(calls) {
                let mut outcome = match early {
                    Some(outcome) => outcome,
                    None => ran.next().flatten(),
                };
                if let (Some(Outcome::Succeeded { output }), Some(blobs)) =
                    (outcome.as_mut(), &env.blobs)
                {
                    if let Err(failed) = blobs.store(&call, output, &workdir).await {
                        outcome = Some(failed);
                    }
                }
                out.push(outcome);
            }
            drop(fetched);
            out
        }
        .boxed()
    }
}

/// Runs `hopper worker` until `shutdown`: the SDK runtime with the process executors, code
/// snapshots unpacked in `snapshots`.
pub async fn run(
    config: WorkerConfig,
    kill_grace: Duration,
    snapshots: cache::SnapshotCache,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let mut executor = ProcessExecutor::new(kill_grace, snapshots);
    if let Some(machine) = &config.machine {
        executor = executor.with_machine(machine);
    }
    hopper_sdk::runtime::run(config, Arc::new(executor), shutdown).await
}
