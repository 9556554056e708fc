//! The provisioner starts, scales and supervises local workers: `hopper worker` processes for
//! each deployed command or `serve` function, as many as its backlog needs within
//! `min_workers..=max_workers` plus `buffer_workers` kept warm, stopping surplus workers once
//! they have not been needed for `scaledown_window`. A worker that exits is replaced; a deploy
//! that changes a function replaces its workers; the server's stop stops them all (SIGTERM,
//! then SIGKILL).
//!
//! Workers are packed into the server's machine (`ServerConfig::machine`): a function that asks
//! for GPUs gets a worker only while enough GPUs of a kind it accepts are free, each GPU to one
//! worker (named to it in `CUDA_VISIBLE_DEVICES`), and the `cpu` and `memory` the workers of
//! all functions ask for stay within the machine's. A function with work that no worker can
//! take, here or registered from elsewhere, is recorded with why in `AppState::unplaced`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use hopper_core::function::Runner;
use hopper_core::resources::{self, Gpu, Machine, Misfit};
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
    /// Its process id, kept: the child forgets it once it has exited.
    pid: Option<u32>,
    started: Instant,
    /// What it was given of the machine: its GPUs, and the cores and memory its function asks.
    gpus: Vec<Gpu>,
    cpu: f64,
    memory: u64,
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
    /// The functions this server runs local workers for, as of the last pass.
    local: std::collections::HashSet<String>,
    /// Workers told to stop and not gone yet: they hold their GPUs, cores and memory until
    /// they exit.
    stopping: Vec<Local>,
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
            local: Default::default(),
            stopping: Vec::new(),
        }
    }

    /// Supervises workers until `shutdown`, then stops them all.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut deploys = self.state.events.watch_deploys();
        let mut inputs = self.state.events.watch_inputs();
        let mut work = self.state.events.watch_work();
        'passes: loop {
            deploys.borrow_and_update();
            inputs.borrow_and_update();
            work.borrow_and_update();
            if let Err(e) = self.reconcile().await {
                tracing::warn!(error = %e, "provisioner pass failed; retrying");
            }
            tokio::time::sleep(MIN_PASS_GAP).await;
            let tick = Instant::now() + Duration::from_secs(1);
            loop {
                tokio::select! {
                    _ = deploys.changed() => break,
                    _ = inputs.changed() => break,
                    // A spawn for a function with no worker is a cold start: at once. Others
                    // wait for the next tick, so a stream of spawns costs no pass each.
                    _ = work.changed() => if self.cold_work() { break },
                    _ = tokio::time::sleep_until(tick) => break,
                    _ = shutdown.cancelled() => break 'passes,
                }
            }
        }
        self.stop_all().await;
    }

    /// Whether inputs arrived for a local function that has no worker.
    fn cold_work(&self) -> bool {
        self.state.events.take_fresh().iter().any(|name| {
            self.local.contains(name) && self.pools.get(name).is_none_or(|p| p.workers.is_empty())
        })
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
            .retain_mut(|w| !matches!(w.child.try_wait(), Ok(Some(_))));

        // Functions removed or changed by a deploy: their workers go.
        let names: Vec<String> = self.pools.keys().cloned().collect();
        for name in names {
            if specs.get(&name) != self.pools.get(&name).map(|p| &p.spec) {
                if let Some(pool) = self.pools.remove(&name) {
                    tracing::info!(function = %name, workers = pool.workers.len(), "replacing local workers after a deploy");
                    for w in pool.workers {
                        self.terminate(w);
                    }
                }
            }
        }

        let now = Instant::now();
        let mut room = Room::new(
            &self.state.config.machine,
            self.pools
                .values()
                .flat_map(|p| p.workers.iter())
                .chain(&self.stopping),
        );
        let mut unplaced = Vec::new();
        let mut died = Vec::new();
        let names: Vec<String> = specs.keys().cloned().collect();
        self.local = names.iter().cloned().collect();
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
            let mut gone = Vec::new();
            pool.workers.retain_mut(|w| match w.child.try_wait() {
                Ok(Some(status)) => {
                    tracing::warn!(function = %name, %status, "local worker exited");
                    exited_young |= w.started.elapsed() < RESTART_BACKOFF;
                    died.extend(w.pid.map(|pid| (pid, name.clone())));
                    gone.push(Share {
                        gpus: std::mem::take(&mut w.gpus),
                        cpu: w.cpu,
                        memory: w.memory,
                    });
                    false
                }
                _ => true,
            });
            if exited_young {
                pool.not_before = Some(now + RESTART_BACKOFF);
            }
            // What exited is free again (the room was counted before).
            for w in gone.drain(..) {
                room.give_back(w);
            }
            let have = pool.workers.len();
            if have > want {
                let since = *pool.surplus_since.get_or_insert(now);
                if now.duration_since(since) >= window {
                    let surplus: Vec<Local> = pool.workers.drain(want..).collect();
                    tracing::info!(function = %name, stopping = surplus.len(), left = want, "scaling down idle workers");
                    pool.surplus_since = None;
                    // Their GPUs, cores and memory stay taken until they have exited.
                    for w in surplus {
                        terminate(&mut self.stopping, w);
                    }
                }
                continue;
            }
            pool.surplus_since = None;
            if have == want || pool.not_before.is_some_and(|t| now < t) {
                continue;
            }
            let starting = have;
            for _ in have..want {
                let share = match room.take(&spec) {
                    Ok(share) => share,
                    Err(why) => {
                        if pool.workers.is_empty() {
                            unplaced.push((name.clone(), spec.clone(), why));
                        }
                        break;
                    }
                };
                match start(&self.state, &self.program, &self.server_url, &spec, &share) {
                    Ok(child) => pool.workers.push(Local {
                        pid: child.id(),
                        child,
                        started: now,
                        gpus: share.gpus,
                        cpu: share.cpu,
                        memory: share.memory,
                    }),
                    Err(e) => {
                        tracing::error!(function = %name, error = %e, program = %self.program.display(), "cannot start local worker");
                        room.give_back(share);
                        pool.not_before = Some(now + RESTART_BACKOFF);
                        break;
                    }
                }
            }
            if pool.workers.len() > starting {
                tracing::info!(function = %name, from = starting, to = pool.workers.len(), "scaling up workers");
            }
        }
        self.hand_back(died).await?;
        self.record_unplaced(&names, unplaced).await
    }

    /// Deregisters the local workers that died (`(pid, function)`), handing their leases back
    /// at once: a worker killed (by the OOM killer, an operator) cannot say goodbye, and its
    /// inputs would otherwise wait out their lease.
    async fn hand_back(&self, died: Vec<(u32, String)>) -> Result<(), hopper_store::StoreError> {
        if died.is_empty() {
            return Ok(());
        }
        let host = hopper_worker::machine::host_name();
        // Seen after now: only workers not stopped.
        for w in self.state.store.worker_list(self.state.now()).await? {
            let ours = w.stopped_at.is_none()
                && w.host == host
                && died
                    .iter()
                    .any(|(pid, name)| w.pid == *pid && w.functions.contains(name));
            if ours {
                let handed = self
                    .state
                    .store
                    .worker_deregister(hopper_store::WorkerDeregister {
                        id: w.id.clone(),
                        now: self.state.now(),
                        died: true,
                    })
                    .await?;
                tracing::info!(worker = %w.id, leases = handed, "a local worker died: its leases go back to the queue");
            }
        }
        Ok(())
    }

    /// Records why each function in `unplaced` (no local worker could be started for its work)
    /// waits, unless a worker registered from elsewhere fits it; and logs each change.
    async fn record_unplaced(
        &self,
        names: &[String],
        unplaced: Vec<(String, FunctionSpec, Misfit)>,
    ) -> Result<(), hopper_store::StoreError> {
        let mut now = std::collections::BTreeMap::new();
        if !unplaced.is_empty() {
            let seen_after = self.state.now() - self.state.config.lease_ms();
            let workers = self.state.store.worker_list(seen_after).await?;
            for (name, spec, why) in unplaced {
                let served = workers.iter().any(|w| {
                    w.stopped_at.is_none()
                        && w.last_seen_at > seen_after
                        && w.functions.contains(&name)
                        && w.machine
                            .as_ref()
                            .unwrap_or(&Machine::default())
                            .fits(&spec.resources)
                            .is_ok()
                });
                if !served {
                    now.insert(name, waiting_for(&why));
                }
            }
        }
        if let Ok(mut shown) = self.state.unplaced.lock() {
            for (name, why) in &now {
                if shown.get(name) != Some(why) {
                    tracing::warn!(function = %name, "{why}");
                }
            }
            // Every local function has the series (0 while it can run), for alerts on it.
            for name in names.iter().chain(shown.keys()) {
                crate::metrics::unplaced(name, now.contains_key(name));
            }
            *shown = now;
        }
        Ok(())
    }

    fn terminate(&mut self, worker: Local) {
        terminate(&mut self.stopping, worker);
    }

    async fn stop_all(&mut self) {
        let pools: Vec<Pool> = self.pools.drain().map(|(_, p)| p).collect();
        for pool in pools {
            for w in pool.workers {
                self.terminate(w);
            }
        }
        let deadline = Instant::now()
            + self.state.config.worker_drain
            + self.state.config.kill_grace
            + STOP_SLACK;
        for Local { mut child, .. } in self.stopping.drain(..) {
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

fn terminate(stopping: &mut Vec<Local>, worker: Local) {
    if let Some(pid) = worker.child.id() {
        let _ = process::signal_process(pid, process::SIGTERM);
    }
    stopping.push(worker);
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

/// What one local worker is given of the machine.
struct Share {
    gpus: Vec<Gpu>,
    cpu: f64,
    memory: u64,
}

/// What is left of the machine for more workers: GPUs no worker holds, and the cores and
/// memory that workers' functions have not asked for.
struct Room {
    machine: Machine,
    free_gpus: Vec<Gpu>,
    cpu_used: f64,
    memory_used: u64,
}

impl Room {
    fn new<'a>(machine: &Machine, workers: impl Iterator<Item = &'a Local>) -> Self {
        let mut room = Self {
            machine: machine.clone(),
            free_gpus: machine.gpus.clone(),
            cpu_used: 0.0,
            memory_used: 0,
        };
        for w in workers {
            room.free_gpus
                .retain(|g| !w.gpus.iter().any(|h| h.index == g.index));
            room.cpu_used += w.cpu;
            room.memory_used += w.memory;
        }
        room
    }

    /// Takes what one worker of `spec` needs, or says what is missing now: `needs` (what it
    /// waits for) and why this server cannot give it.
    fn take(&mut self, spec: &FunctionSpec) -> Result<Share, Misfit> {
        let want = &spec.resources;
        // Labels and sizes first against the whole machine: what it can never run.
        self.machine.fits(want).map_err(|m| Misfit {
            has: format!("this server has {}", m.has),
            ..m
        })?;
        let gpus = match &want.gpu {
            None => Vec::new(),
            Some(gpu) => resources::pick_gpus(&self.free_gpus, gpu).ok_or_else(|| Misfit {
                needs: resources::describe_gpu(gpu),
                has: format!(
                    "none free on this server (its {} are held by other workers)",
                    self.machine.describe_gpus()
                ),
            })?,
        };
        let cpu = want.cpu.unwrap_or(0.0);
        if let Some(have) = self.machine.cpus {
            if cpu > 0.0 && self.cpu_used + cpu > have + 1e-9 {
                return Err(Misfit {
                    needs: format!("{cpu} cores"),
                    has: format!(
                        "{} of this server's {have} are taken by other workers",
                        self.cpu_used
                    ),
                });
            }
        }
        let memory = want.memory_bytes.unwrap_or(0);
        if let Some(have) = self.machine.memory_bytes {
            if memory > 0 && self.memory_used + memory > have {
                return Err(Misfit {
                    needs: format!("{} of memory", resources::format_bytes(memory)),
                    has: format!(
                        "{} of this server's {} are taken by other workers",
                        resources::format_bytes(self.memory_used),
                        resources::format_bytes(have)
                    ),
                });
            }
        }
        self.free_gpus
            .retain(|g| !gpus.iter().any(|h| h.index == g.index));
        self.cpu_used += cpu;
        self.memory_used += memory;
        Ok(Share { gpus, cpu, memory })
    }

    fn give_back(&mut self, share: Share) {
        self.free_gpus.extend(share.gpus);
        self.cpu_used = (self.cpu_used - share.cpu).max(0.0);
        self.memory_used = self.memory_used.saturating_sub(share.memory);
    }
}

/// `waiting for a GPU of kind H100: this server has 2 × L4, and no worker serving it
/// elsewhere fits`, from what no local worker could be given.
fn waiting_for(why: &Misfit) -> String {
    format!(
        "waiting for {}: {}, and no worker serving it elsewhere fits",
        why.needs, why.has
    )
}

fn start(
    state: &AppState,
    program: &PathBuf,
    server_url: &str,
    spec: &FunctionSpec,
    share: &Share,
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
    // The worker registers what it was given, and its processes see only its GPUs.
    let machine = &state.config.machine;
    if share.gpus.is_empty() {
        cmd.arg("--gpus").arg("none");
        cmd.env("CUDA_VISIBLE_DEVICES", "")
            .env("NVIDIA_VISIBLE_DEVICES", "void");
    } else {
        let list: Vec<String> = share
            .gpus
            .iter()
            .map(|g| format!("{}={}", g.index, g.kind))
            .collect();
        let visible = hopper_worker::machine::visible_devices(&share.gpus);
        cmd.arg("--gpus").arg(list.join(","));
        cmd.env("CUDA_VISIBLE_DEVICES", &visible)
            .env("NVIDIA_VISIBLE_DEVICES", &visible);
    }
    cmd.env_remove("HOPPER_GPU_KIND");
    match (share.cpu, machine.cpus) {
        (c, _) if c > 0.0 => cmd.arg("--cpus").arg(c.to_string()),
        (_, Some(c)) => cmd.arg("--cpus").arg(c.to_string()),
        _ => &mut cmd,
    };
    match (share.memory, machine.memory_bytes) {
        (m, _) if m > 0 => cmd.arg("--memory").arg(m.to_string()),
        (_, Some(m)) => cmd.arg("--memory").arg(m.to_string()),
        _ => &mut cmd,
    };
    cmd.env_remove("HOPPER_LABELS");
    for (k, v) in &machine.labels {
        cmd.arg("--label").arg(format!("{k}={v}"));
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
