//! The provisioner starts and supervises local workers: one `hopper worker` process per
//! deployed command function, restarted if it exits, replaced when a deploy changes its
//! concurrency, and stopped (SIGTERM, then SIGKILL) when the server stops.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use hopper_worker::process;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// How long stopping workers get to hand back or finish their inputs before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// A worker that exits sooner than this after starting is restarted only after this delay,
/// so a broken setup does not spin.
const RESTART_BACKOFF: Duration = Duration::from_secs(2);

struct Local {
    child: Child,
    concurrency: u32,
    started: Instant,
}

pub struct Provisioner {
    state: AppState,
    program: PathBuf,
    server_url: String,
    running: HashMap<String, Local>,
    stopping: Vec<Child>,
    not_before: HashMap<String, Instant>,
}

impl Provisioner {
    pub fn new(state: AppState, program: PathBuf, server_url: String) -> Self {
        Self {
            state,
            program,
            server_url,
            running: HashMap::new(),
            stopping: Vec::new(),
            not_before: HashMap::new(),
        }
    }

    /// Supervises workers until `shutdown`, then stops them all.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut deploys = self.state.events.watch_deploys();
        loop {
            deploys.borrow_and_update();
            if let Err(e) = self.reconcile().await {
                tracing::warn!(error = %e, "provisioner pass failed; retrying");
            }
            tokio::select! {
                _ = deploys.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        self.stop_all().await;
    }

    /// Brings the running workers in line with the deployed functions.
    pub async fn reconcile(&mut self) -> Result<(), hopper_store::StoreError> {
        let mut desired: HashMap<String, u32> = HashMap::new();
        for app in self.state.store.app_list().await? {
            for f in app.functions {
                desired.insert(f.spec.qualified_name(), f.spec.concurrency);
            }
        }
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            let Some(local) = self.running.get_mut(&name) else {
                continue;
            };
            if let Ok(Some(status)) = local.child.try_wait() {
                tracing::warn!(function = %name, %status, "local worker exited; restarting it");
                if local.started.elapsed() < RESTART_BACKOFF {
                    self.not_before
                        .insert(name.clone(), Instant::now() + RESTART_BACKOFF);
                }
                self.running.remove(&name);
                continue;
            }
            if desired.get(&name) != Some(&local.concurrency) {
                if let Some(local) = self.running.remove(&name) {
                    tracing::info!(function = %name, "replacing local worker after a deploy");
                    self.terminate(local.child);
                }
            }
        }
        self.stopping
            .retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        for (name, concurrency) in desired {
            if self.running.contains_key(&name) {
                continue;
            }
            if self
                .not_before
                .get(&name)
                .is_some_and(|t| Instant::now() < *t)
            {
                continue;
            }
            match self.start(&name, concurrency) {
                Ok(child) => {
                    tracing::info!(function = %name, pid = child.id(), "started local worker");
                    self.running.insert(
                        name,
                        Local {
                            child,
                            concurrency,
                            started: Instant::now(),
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(function = %name, error = %e, program = %self.program.display(), "cannot start local worker");
                    self.not_before
                        .insert(name, Instant::now() + RESTART_BACKOFF);
                }
            }
        }
        Ok(())
    }

    fn start(&self, function: &str, concurrency: u32) -> std::io::Result<Child> {
        let mut cmd = Command::new(&self.program);
        cmd.arg("worker")
            .arg("--server")
            .arg(&self.server_url)
            .arg("--function")
            .arg(function)
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        if let Some(filter) = &self.state.config.worker_log {
            cmd.env("RUST_LOG", filter);
        }
        match &self.state.config.token {
            Some(token) => cmd.env("HOPPER_TOKEN", token),
            None => cmd.env_remove("HOPPER_TOKEN"),
        };
        // A local worker must not outlive its server, even one killed with SIGKILL.
        process::isolate(&mut cmd, process::SIGKILL);
        cmd.spawn()
    }

    fn terminate(&mut self, child: Child) {
        if let Some(pid) = child.id() {
            let _ = process::signal_process(pid, process::SIGTERM);
        }
        self.stopping.push(child);
    }

    async fn stop_all(&mut self) {
        let running: Vec<Local> = self.running.drain().map(|(_, l)| l).collect();
        for local in running {
            self.terminate(local.child);
        }
        let deadline = Instant::now() + STOP_GRACE;
        for mut child in self.stopping.drain(..) {
            match tokio::time::timeout_at(deadline, child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    if let Some(pid) = child.id() {
                        let _ = process::signal_group(pid, process::SIGKILL);
                    }
                    let _ = child.wait().await;
                }
            }
        }
    }
}
