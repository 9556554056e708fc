//! The provisioner starts, scales and supervises local workers: `hopper worker` processes for
//! each deployed command or `serve` function, as many as its backlog needs within
//! `min_workers..=max_workers` plus `buffer_workers` kept warm, stopping surplus workers once
//! they have not been needed for `scaledown_window`. A worker that exits is replaced; a deploy
//! that changes a function replaces its workers; the server's stop stops them all (SIGTERM,
//! then SIGKILL).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use hopper_core::function::Runner;
use hopper_core::FunctionSpec;
use hopper_worker::process;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// What a stopping worker gets beyond its drain (`worker_drain` in the config) and the kill grace of its processes, to hand
/// back and deregister, before SIGKILL.
const STOP_SLACK: Duration = Duration::from_secs(5);
/// A worker that exits sooner than this after starting is replaced only after this delay,
/// so a broken setup does not spin.
const RESTART_BACKOFF: Duration = Duration::from_secs(2);
/// Fewest time between two passes, however many inputs arrive.
const MIN_PASS_GAP: Duration = Duration::from_millis(50);

struct Local {
    child: Child,
    started: Instant,
}

/// The workers of one function.
struct Pool {
    /// The spec the workers were started with; a deploy that changes it replaces them.
    spec: FunctionSpec,
    workers: Vec<Local>,
    /// Since when fewer workers than run have been needed.
    surplus_since: Option<Instant>,
    not_before: Option<Instant>,
}

pub struct Provisioner {
    state: AppState,
    program: PathBuf,
    server_url: String,
    pools: HashMap<String, Pool>,
    stopping: Vec<Child>,
}

/// Workers a function needs: enough slots for its backlog, plus the buffer, within its bounds.
pub fn wanted(spec: &FunctionSpec, backlog: i64) -> u32 {
    let slots = spec.slots().max(1) as i64;
    let needed = ((backlog.max(0) + slots - 1) / slots) as u32;
    let s = spec.scaling;
    (needed + s.buffer_workers).clamp(s.min_workers, s.max_workers.max(s.min_workers))
}

impl Provisioner {
    pub fn new(state: AppState, program: PathBuf, server_url: String) -> Self {
        Self {
            state,
            program,
            server_url,
            pools: HashMap::new(),
            stopping: Vec::new(),
        }
    }

    /// Supervises workers until `shutdown`, then stops them all.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut deploys = self.state.events.watch_deploys();
        let mut inputs = self.state.events.watch_inputs();
        loop {
            deploys.borrow_and_update();
            inputs.borrow_and_update();
            if let Err(e) = self.reconcile().await {
                tracing::warn!(error = %e, "provisioner pass failed; retrying");
            }
            tokio::time::sleep(MIN_PASS_GAP).await;
            tokio::select! {
                _ = deploys.changed() => {}
                _ = inputs.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        self.stop_all().await;
    }

    /// Brings the running workers in line with the deployed functions and their backlogs.
    pub async fn reconcile(&mut self) -> Result<(), hopper_store::StoreError> {
        let mut specs: HashMap<String, FunctionSpec> = HashMap::new();
        for app in self.state.store.app_list().await? {
            for f in app.functions {
                if f.spec.runner() != Runner::External {
                    specs.insert(f.spec.qualified_name(), f.spec);
                }
            }
        }
        // Delayed calls are not work yet: they start no workers before their time.
        let backlogs = self.state.store.function_backlog(self.state.now()).await?;
        // A function a deploy removed keeps workers (of the last version that had it) while
        // inputs spawned on that version are queued: they finish on the version they were
        // spawned on. Only as many as its backlog needs: none once it is empty.
        for b in &backlogs {
            let name = format!("{}.{}", b.app, b.function);
            if specs.contains_key(&name) || b.pending + b.running == 0 {
                continue;
            }
            let key = hopper_store::FunctionKey {
                app: b.app.clone(),
                function: b.function.clone(),
            };
            let last = self.state.store.function_versions(&key, 1).await?;
            if let Some(v) = last.into_iter().next() {
                if v.function.spec.runner() != Runner::External {
                    let mut spec = v.function.spec;
                    spec.scaling.min_workers = 0;
                    spec.scaling.buffer_workers = 0;
                    specs.insert(name, spec);
                }
            }
        }
        let backlog: HashMap<String, i64> = backlogs
            .into_iter()
            .map(|b| (format!("{}.{}", b.app, b.function), b.pending + b.running))
            .collect();
        self.stopping
            .retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));

        // Functions removed or changed by a deploy: their workers go.
        let names: Vec<String> = self.pools.keys().cloned().collect();
        for name in names {
            if specs.get(&name) != self.pools.get(&name).map(|p| &p.spec) {
                if let Some(pool) = self.pools.remove(&name) {
                    tracing::info!(function = %name, workers = pool.workers.len(), "replacing local workers after a deploy");
                    for w in pool.workers {
                        self.terminate(w.child);
                    }
                }
            }
        }

        let now = Instant::now();
        for (name, spec) in specs {
            let want = wanted(&spec, backlog.get(&name).copied().unwrap_or(0)) as usize;
            let window = Duration::from_millis(spec.scaling.scaledown_window_ms);
            let pool = self.pools.entry(name.clone()).or_insert_with(|| Pool {
                spec: spec.clone(),
                workers: Vec::new(),
                surplus_since: None,
                not_before: None,
            });
            // Workers that exited are replaced (after a pause if they died young).
            let mut exited_young = false;
            pool.workers.retain_mut(|w| match w.child.try_wait() {
                Ok(Some(status)) => {
                    tracing::warn!(function = %name, %status, "local worker exited");
                    exited_young |= w.started.elapsed() < RESTART_BACKOFF;
                    false
                }
                _ => true,
            });
            if exited_young {
                pool.not_before = Some(now + RESTART_BACKOFF);
            }
            let have = pool.workers.len();
            if have > want {
                let since = *pool.surplus_since.get_or_insert(now);
                if now.duration_since(since) >= window {
                    let surplus: Vec<Local> = pool.workers.drain(want..).collect();
                    tracing::info!(function = %name, stopping = surplus.len(), left = want, "scaling down idle workers");
                    pool.surplus_since = None;
                    for w in surplus {
                        terminate(&mut self.stopping, w.child);
                    }
                }
                continue;
            }
            pool.surplus_since = None;
            if have == want || pool.not_before.is_some_and(|t| now < t) {
                continue;
            }
            if want > 0 {
                tracing::info!(function = %name, from = have, to = want, "scaling up workers");
            }
            for _ in have..want {
                match start(&self.state, &self.program, &self.server_url, &spec) {
                    Ok(child) => pool.workers.push(Local {
                        child,
                        started: now,
                    }),
                    Err(e) => {
                        tracing::error!(function = %name, error = %e, program = %self.program.display(), "cannot start local worker");
                        pool.not_before = Some(now + RESTART_BACKOFF);
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn terminate(&mut self, child: Child) {
        terminate(&mut self.stopping, child);
    }

    async fn stop_all(&mut self) {
        let pools: Vec<Pool> = self.pools.drain().map(|(_, p)| p).collect();
        for pool in pools {
            for w in pool.workers {
                self.terminate(w.child);
            }
        }
        let deadline = Instant::now()
            + self.state.config.worker_drain
            + self.state.config.kill_grace
            + STOP_SLACK;
        for mut child in self.stopping.drain(..) {
            if tokio::time::timeout_at(deadline, child.wait())
                .await
                .is_err()
            {
                if let Some(pid) = child.id() {
                    let _ = process::signal_group(pid, process::SIGKILL);
                }
                let _ = child.wait().await;
            }
        }
    }
}

fn terminate(stopping: &mut Vec<Child>, child: Child) {
    if let Some(pid) = child.id() {
        let _ = process::signal_process(pid, process::SIGTERM);
    }
    stopping.push(child);
}

/// Environment variables the server reads that its local workers (and so every function) must
/// not inherit.
pub const SERVER_ONLY_ENV: &[&str] = &[
    "HOPPER_SECRET_KEY",
    "HOPPER_SECRET_KEY_FILE",
    "HOPPER_DATABASE",
    "HOPPER_SMTP",
    "HOPPER_DATA",
];

fn start(
    state: &AppState,
    program: &PathBuf,
    server_url: &str,
    spec: &FunctionSpec,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(program);
    cmd.arg("worker")
        .arg("--server")
        .arg(server_url)
        .arg("--function")
        .arg(spec.qualified_name())
        .arg("--concurrency")
        .arg(spec.slots().to_string())
        .arg("--kill-grace")
        .arg(format!("{}ms", state.config.kill_grace.as_millis()))
        .arg("--drain")
        .arg(format!("{}ms", state.config.worker_drain.as_millis()))
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    if let Some(dir) = &state.config.worker_cache_dir {
        cmd.arg("--cache-dir").arg(dir);
    }
    if let Some(filter) = &state.config.worker_log {
        cmd.env("RUST_LOG", filter);
    }
    match &state.config.worker_token {
        Some(token) => cmd.env("HOPPER_TOKEN", token.expose()),
        None => cmd.env_remove("HOPPER_TOKEN"),
    };
    // The server's own secrets stay with the server: a function's process inherits its
    // worker's environment, and any function could print these.
    for var in SERVER_ONLY_ENV {
        cmd.env_remove(var);
    }
    // A local worker must not outlive its server, even one killed with SIGKILL.
    process::isolate(&mut cmd, process::SIGKILL);
    let child = cmd.spawn()?;
    if let Some(pid) = child.id() {
        process::own(pid);
    }
    Ok(child)
}

#[cfg(test)]
mod tests {
    use super::wanted;
    use hopper_core::function::{BatchPolicy, ScalingPolicy};
    use hopper_core::FunctionSpec;

    fn spec(concurrency: u32, batch: Option<u32>, scaling: ScalingPolicy) -> FunctionSpec {
        FunctionSpec {
            app: "a".into(),
            name: "f".into(),
            command: vec!["true".into()],
            serve: Vec::new(),
            workdir: "/".into(),
            env: Default::default(),
            timeout_ms: 1_000,
            retries: Default::default(),
            concurrency,
            batch: batch.map(|max_size| BatchPolicy {
                max_size,
                wait_ms: 10,
            }),
            scaling,
            ..Default::default()
        }
    }

    #[test]
    fn workers_follow_the_backlog_within_bounds() {
        let s = ScalingPolicy {
            min_workers: 0,
            max_workers: 8,
            buffer_workers: 1,
            scaledown_window_ms: 1_000,
        };
        let f = spec(4, None, s);
        assert_eq!(wanted(&f, 0), 1, "the buffer stays warm");
        assert_eq!(wanted(&f, 4), 2);
        assert_eq!(wanted(&f, 5), 3);
        assert_eq!(wanted(&f, 10_000), 8, "never more than max_workers");
        let no_buffer = spec(
            4,
            None,
            ScalingPolicy {
                buffer_workers: 0,
                ..s
            },
        );
        assert_eq!(wanted(&no_buffer, 0), 0, "scales to zero");
        let batched = spec(
            2,
            Some(64),
            ScalingPolicy {
                buffer_workers: 0,
                ..s
            },
        );
        assert_eq!(
            wanted(&batched, 128),
            1,
            "a worker holds concurrency x batch size inputs"
        );
        assert_eq!(wanted(&batched, 129), 2);
    }
}
