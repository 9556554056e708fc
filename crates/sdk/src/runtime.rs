//! The worker runtime: register, lease as many inputs as there are free slots, group them
//! into batches where the function batches, hand them to an [`Executor`], heartbeat the
//! leases, and on shutdown stop leasing, let running inputs finish for a drain period, hand
//! back the rest and deregister.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use hopper_core::api::{
    InputError, InputResult, Lease, LeasedInput, LogLine, LogStream, Outcome, WorkerRegister,
    WorkerRegistered,
};
use hopper_core::{CallId, FunctionSpec, WorkerId};
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, Error};
use crate::outbox::{is_transient, Limits, Outbox};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Base URL of the server, e.g. `http://127.0.0.1:7433`, or of several servers of one
    /// cluster, comma-separated (see [`Client::new`]).
    pub server: String,
    pub token: Option<hopper_core::secret::Redacted<String>>,
    /// `app.function` names served.
    pub functions: Vec<String>,
    /// Inputs held at once (for a batched function, batch size × batches at once).
    pub concurrency: u32,
    /// Reported to the server; the machine's host name.
    pub host: String,
    /// After a stop is asked for, running inputs get this long to finish before they are
    /// stopped and handed back. Default 30 s.
    pub drain: Duration,
    /// What this worker's machine has, registered so that it is handed only inputs of
    /// functions whose `gpu`, `cpu`, `memory` and `labels` it fits. None: no GPU and no label,
    /// cores and memory unknown (such a worker gets no GPU function's inputs).
    pub machine: Option<hopper_core::resources::Machine>,
}

/// Why a worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the server refused this worker: {0}")]
    Refused(Error),
    #[error("the server no longer knows this worker (it was deregistered); start it again")]
    Forgotten,
}

/// One leased input handed to an executor.
pub struct Job {
    pub lease: Lease,
    pub call_id: CallId,
    pub index: i64,
    pub input: Value,
    /// Fires when the lease is lost or the call cancelled: stop, and report nothing.
    pub cancel: CancellationToken,
}

/// Where an executor writes an input's log lines; they travel to the server in batches, with
/// every secret value this worker was given replaced by `***`.
#[derive(Clone)]
pub struct LogSink {
    outbox: Outbox,
    redact: Redactor,
}

impl LogSink {
    pub fn line(&self, lease: Lease, stream: LogStream, line: String) {
        self.outbox.log(LogLine {
            lease,
            stream,
            ts_ms: now_ms(),
            line: self.redact.apply(line),
        });
    }

    /// Waits while the worker holds too many log lines not yet sent (see
    /// [`Outbox::room`]); a reader of a function's output calls it after each line.
    pub async fn room(&self) {
        self.outbox.room().await;
    }
}

/// Secret values a worker was given, to be cut out of what it sends back as logs and errors.
#[derive(Clone, Default)]
pub struct Redactor {
    values: Arc<std::sync::RwLock<Vec<String>>>,
}

impl Redactor {
    /// Values shorter than this are not redacted: a secret of one or two characters would turn
    /// every log line into stars, and hides nothing worth hiding.
    const MIN_LEN: usize = 4;

    fn add<'a>(&self, values: impl IntoIterator<Item = &'a String>) {
        let mut known = self.values.write().unwrap_or_else(|p| p.into_inner());
        for v in values {
            if v.len() >= Self::MIN_LEN && !known.contains(v) {
                known.push(v.clone());
            }
        }
        // Longest first, so a value that contains another is cut out whole.
        known.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }

    /// `text` with each known secret value replaced by `***`.
    pub fn apply(&self, mut text: String) -> String {
        let known = self.values.read().unwrap_or_else(|p| p.into_inner());
        for v in known.iter() {
            if text.contains(v.as_str()) {
                text = text.replace(v.as_str(), "***");
            }
        }
        text
    }
}

/// What a worker learned when it registered, for the processes its executor starts.
#[derive(Debug, Clone)]
pub struct Registration {
    pub worker_id: WorkerId,
    /// The servers' base URLs, as the worker reaches them (comma-separated if several: see
    /// [`Client::new`]).
    pub server: String,
    /// A `read` and `submit` token for functions to call others with (none without tokens).
    pub call_token: Option<hopper_core::secret::Redacted<String>>,
    /// The worker's own client (its token and secret), for what its functions need from the
    /// server besides inputs, such as their code snapshots.
    pub client: Client,
}

/// Runs inputs. A batch has one job unless the function batches.
pub trait Executor: Send + Sync + 'static {
    /// Called once, after the worker registered and before any input runs.
    fn registered(&self, _registration: &Registration) {}

    /// Called for each function the worker serves, before its first input, so what the
    /// function needs (a long-lived process that loads a model) is ready when inputs come.
    fn prepare(&self, _spec: Arc<FunctionSpec>, _logs: LogSink) {}

    /// Resolves when what `prepare` started has loaded: the worker leases nothing before, so
    /// that inputs go to warm workers meanwhile. Default: at once.
    fn ready(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }

    /// Called once at the end, after the drain: stops whatever the executor started.
    fn stop(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }

    /// Runs `jobs` of the function `spec` and returns one outcome per job, in order: `None`
    /// for a job whose `cancel` fired (nothing is reported for it).
    fn run(
        &self,
        spec: Arc<FunctionSpec>,
        jobs: Vec<Job>,
        logs: LogSink,
    ) -> BoxFuture<'static, Vec<Option<Outcome>>>;
}

/// Most inputs one lease request asks for (the server's limit).
const MAX_LEASE: u32 = 1_000;
/// Long-poll of one lease request.
const LEASE_WAIT: Duration = Duration::from_secs(20);

/// Leases held, with their calls and the tokens that stop them.
type InFlight = Arc<Mutex<HashMap<Lease, (CallId, CancellationToken)>>>;

/// A batch being filled for one function version.
struct Pending {
    spec: Arc<FunctionSpec>,
    jobs: Vec<Job>,
    deadline: Instant,
}

/// Runs a worker with `executor` until `shutdown` is cancelled, then drains and deregisters.
pub async fn run(
    config: WorkerConfig,
    executor: Arc<dyn Executor>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let token = config.token.clone().map(|t| t.into_inner());
    let client = Client::new(&config.server, token).map_err(WorkerError::Refused)?;
    let Some(registered) = register(&client, &config, &shutdown).await? else {
        return Ok(());
    };
    let worker = registered.worker_id.clone();
    let client = client.with_worker_secret(registered.worker_secret.clone());
    tracing::info!(worker = %worker, functions = ?config.functions, concurrency = config.concurrency, "worker registered");
    for (function, why) in &registered.unfit {
        tracing::warn!(function = %function, "this worker is handed none of its inputs: it {why}");
    }
    executor.registered(&Registration {
        worker_id: worker.clone(),
        server: client.server_list(),
        call_token: registered.call_token.clone(),
        client: client.clone(),
    });
    let (outbox, outbox_task) =
        Outbox::start(client.clone(), worker.clone(), Limits::from(&registered));
    let redact = Redactor::default();
    let logs = LogSink {
        outbox: outbox.clone(),
        redact: redact.clone(),
    };
    let in_flight: InFlight = Arc::default();
    let slot_freed = Arc::new(Notify::new());
    let kill_all = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let heartbeat_stop = CancellationToken::new();
    let leases_changed = Arc::new(Notify::new());
    let heartbeat = tokio::spawn(heartbeat_loop(
        client.clone(),
        worker.clone(),
        Duration::from_millis(registered.heartbeat_ms),
        in_flight.clone(),
        leases_changed.clone(),
        heartbeat_stop.clone(),
    ));
    let mut specs: BTreeMap<String, Arc<FunctionSpec>> = BTreeMap::new();
    for (key, spec) in &registered.functions {
        // A function that reads secrets starts with its first lease, which carries them.
        if !spec.secret_names().is_empty() {
            continue;
        }
        let spec = Arc::new(spec.clone());
        executor.prepare(spec.clone(), logs.clone());
        specs.insert(key.clone(), spec);
    }
    let mut batches: BTreeMap<String, Pending> = BTreeMap::new();
    let mut backoff = Duration::from_millis(100);
    let mut result = Ok(());
    let shared = Shared {
        executor: executor.clone(),
        logs: logs.clone(),
        outbox: outbox.clone(),
        in_flight: in_flight.clone(),
        slot_freed: slot_freed.clone(),
        stopping: kill_all.clone(),
    };
    let dispatch =
        |tasks: &mut tokio::task::JoinSet<()>, spec: Arc<FunctionSpec>, jobs: Vec<Job>| {
            tasks.spawn(run_batch(shared.clone(), spec, jobs));
        };

    while !shutdown.is_cancelled() {
        while tasks.try_join_next().is_some() {}
        // Batches that are full or waited long enough go now.
        let now = Instant::now();
        let due: Vec<String> = batches
            .iter()
            .filter(|(_, b)| b.deadline <= now || b.jobs.len() >= batch_size(&b.spec))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            if let Some(b) = batches.remove(&key) {
                dispatch(&mut tasks, b.spec, b.jobs);
            }
        }
        let next_flush = batches.values().map(|b| b.deadline).min();
        let free = config.concurrency.saturating_sub(in_flight_len(&in_flight));
        if free == 0 {
            let flush = async {
                match next_flush {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = slot_freed.notified() => {}
                _ = flush => {}
                _ = shutdown.cancelled() => break,
            }
            continue;
        }
        // Nothing is leased while a process is loading: inputs go to warm workers meanwhile.
        let loading = async {
            executor.ready().await;
            false
        };
        let flush = async {
            match next_flush {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
            true
        };
        let flushed = tokio::select! {
            f = loading => f,
            f = flush => f,
            _ = shutdown.cancelled() => break,
        };
        if flushed {
            continue;
        }
        let wait = match next_flush {
            Some(at) => at.saturating_duration_since(Instant::now()).min(LEASE_WAIT),
            None => LEASE_WAIT,
        };
        let leased = tokio::select! {
            r = client.worker_lease(&worker, free.min(MAX_LEASE), wait) => r,
            _ = shutdown.cancelled() => break,
        };
        let response = match leased {
            Ok(response) => {
                backoff = Duration::from_millis(100);
                response
            }
            Err(e) if e.code() == Some("unknown_worker") => {
                result = Err(WorkerError::Forgotten);
                break;
            }
            Err(e) if is_transient(&e) => {
                tracing::warn!(error = %e, "cannot lease; retrying in {backoff:?}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(e) => {
                result = Err(WorkerError::Refused(e));
                break;
            }
        };
        for (key, mut spec) in response.functions {
            if response.secret_errors.contains_key(&key) {
                continue;
            }
            if let std::collections::btree_map::Entry::Vacant(slot) = specs.entry(key) {
                if let Some(env) = response.secret_env.get(slot.key()) {
                    redact.add(env.values());
                    spec.env.extend(env.clone());
                }
                let spec = Arc::new(spec);
                executor.prepare(spec.clone(), logs.clone());
                slot.insert(spec);
            }
        }
        for input in response.inputs {
            if let Some(error) = response.secret_errors.get(&input.function) {
                outbox.result(InputResult {
                    lease: input.lease,
                    batch_size: None,
                    outcome: Outcome::Failed {
                        error: error.clone(),
                        retry: true,
                    },
                });
                continue;
            }
            let Some(spec) = specs.get(&input.function).cloned() else {
                tracing::error!(function = %input.function, "leased an input without its function's spec");
                continue;
            };
            let job = job(input.clone(), &kill_all, &in_flight);
            leases_changed.notify_one();
            match spec.batch {
                None => dispatch(&mut tasks, spec, vec![job]),
                Some(policy) => {
                    let pending =
                        batches
                            .entry(input.function.clone())
                            .or_insert_with(|| Pending {
                                spec: spec.clone(),
                                jobs: Vec::new(),
                                deadline: Instant::now() + Duration::from_millis(policy.wait_ms),
                            });
                    pending.jobs.push(job);
                    if pending.jobs.len() >= batch_size(&spec) {
                        if let Some(b) = batches.remove(&input.function) {
                            dispatch(&mut tasks, b.spec, b.jobs);
                        }
                    }
                }
            }
        }
    }

    // Inputs waiting in unfilled batches go now, then the drain.
    for (_, b) in std::mem::take(&mut batches) {
        dispatch(&mut tasks, b.spec, b.jobs);
    }
    if !tasks.is_empty() {
        tracing::info!(
            running = tasks.len(),
            "stopping: letting running inputs finish"
        );
    }
    let drained = tokio::time::timeout(config.drain, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            running = tasks.len(),
            "drain period over: stopping running inputs and handing them back"
        );
        kill_all.cancel();
        while tasks.join_next().await.is_some() {}
    }
    heartbeat_stop.cancel();
    let _ = heartbeat.await;
    executor.stop().await;
    drop(shared);
    drop(logs);
    outbox.close();
    drop(outbox);
    if tokio::time::timeout(Duration::from_secs(30), outbox_task)
        .await
        .is_err()
    {
        tracing::warn!("could not send every result before stopping; their leases will run out and they run again");
    }
    if let Err(e) = client.worker_deregister(&worker).await {
        tracing::warn!(error = %e, "could not deregister; the server will notice after a lease period");
    }
    tracing::info!(worker = %worker, "worker stopped");
    result
}

fn batch_size(spec: &FunctionSpec) -> usize {
    spec.batch.map_or(1, |b| b.max_size.max(1) as usize)
}

fn job(input: LeasedInput, kill_all: &CancellationToken, in_flight: &InFlight) -> Job {
    let cancel = kill_all.child_token();
    if let Ok(mut map) = in_flight.lock() {
        map.insert(input.lease, (input.call_id.clone(), cancel.clone()));
    }
    Job {
        lease: input.lease,
        call_id: input.call_id,
        index: input.index,
        input: input.input,
        cancel,
    }
}

fn in_flight_len(in_flight: &InFlight) -> u32 {
    in_flight.lock().map(|m| m.len() as u32).unwrap_or(u32::MAX)
}

async fn register(
    client: &Client,
    config: &WorkerConfig,
    shutdown: &CancellationToken,
) -> Result<Option<WorkerRegistered>, WorkerError> {
    let req = WorkerRegister {
        functions: config.functions.clone(),
        host: config.host.clone(),
        pid: std::process::id(),
        concurrency: config.concurrency,
        machine: config.machine.clone(),
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        match client.worker_register(&req).await {
            Ok(r) => return Ok(Some(r)),
            Err(e) if is_transient(&e) => {
                tracing::warn!(error = %e, "cannot register; retrying in {backoff:?}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return Ok(None),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(WorkerError::Refused(e)),
        }
    }
}

/// What every running batch needs from its worker.
#[derive(Clone)]
struct Shared {
    executor: Arc<dyn Executor>,
    logs: LogSink,
    outbox: Outbox,
    in_flight: InFlight,
    slot_freed: Arc<Notify>,
    /// Cancelled when the worker stops inputs at the end of its drain period.
    stopping: CancellationToken,
}

async fn run_batch(shared: Shared, spec: Arc<FunctionSpec>, jobs: Vec<Job>) {
    let Shared {
        executor,
        logs,
        outbox,
        in_flight,
        slot_freed,
        stopping,
    } = shared;
    let leases: Vec<Lease> = jobs.iter().map(|j| j.lease).collect();
    let batch_size = spec.batch.map(|_| leases.len() as u32);
    let redact = logs.redact.clone();
    // The executor runs in its own task, so a panic in it fails the batch instead of the worker.
    let outcomes = match tokio::spawn(executor.run(spec, jobs, logs)).await {
        Ok(outcomes) => outcomes,
        Err(e) => {
            let message = match e.try_into_panic() {
                Ok(panic) => panic_message(panic.as_ref()),
                Err(e) => e.to_string(),
            };
            leases
                .iter()
                .map(|_| {
                    Some(Outcome::Failed {
                        retry: true,
                        error: InputError::new("panic", format!("the handler panicked: {message}")),
                    })
                })
                .collect()
        }
    };
    if let Ok(mut map) = in_flight.lock() {
        for lease in &leases {
            map.remove(lease);
        }
    }
    let mut outcomes = outcomes;
    if outcomes.len() != leases.len() {
        let message = format!(
            "the executor answered {} of {} inputs",
            outcomes.len(),
            leases.len()
        );
        tracing::error!("{message}");
        outcomes.resize_with(leases.len(), || {
            Some(Outcome::Failed {
                retry: true,
                error: InputError::new("no_answer", message.clone()),
            })
        });
    }
    for (lease, outcome) in leases.into_iter().zip(outcomes) {
        match outcome {
            Some(outcome) => outbox.result(InputResult {
                outcome: redacted(outcome, &redact),
                lease,
                batch_size,
            }),
            // Stopped because the worker is stopping: hand the input back rather than letting
            // its lease run out. (Stopped because the lease was lost: there is nothing to say.)
            None if stopping.is_cancelled() => outbox.result(InputResult {
                lease,
                batch_size,
                outcome: Outcome::Returned {
                    error: InputError::new(
                        "worker_stopped",
                        "the worker stopped before the input finished",
                    ),
                },
            }),
            None => outbox.forget(lease),
        }
    }
    slot_freed.notify_one();
}

/// A failure's message and traceback without the secret values they may quote (both are
/// stored, shown and sent in notifications; a traceback's last line repeats the message).
fn redacted(outcome: Outcome, redact: &Redactor) -> Outcome {
    let clean = |mut error: hopper_core::api::InputError| {
        error.message = redact.apply(error.message);
        error.traceback = error.traceback.map(|t| redact.apply(t));
        error.module = error.module.map(|m| redact.apply(m));
        error
    };
    match outcome {
        Outcome::Failed { error, retry } => Outcome::Failed {
            error: clean(error),
            retry,
        },
        Outcome::Returned { error } => Outcome::Returned {
            error: clean(error),
        },
        ok @ Outcome::Succeeded { .. } => ok,
    }
}

pub use hopper_core::panic_message;

/// A heartbeat that is waiting on the server is started over (with the new leases and their
/// calls) at most this often when the worker takes new leases.
const HEARTBEAT_RESTART: Duration = Duration::from_millis(250);

/// Renews every held lease every `every`, and hears of cancels at once: each heartbeat waits
/// on the server (up to `every`) for one of its leases' calls to be cancelled. Leases the server
/// says are gone (cancelled, or lost while this worker was unreachable) are stopped at once. A
/// failed heartbeat is tried again soon, not a whole period later.
async fn heartbeat_loop(
    client: Client,
    worker: WorkerId,
    every: Duration,
    in_flight: InFlight,
    leases_changed: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut retry = Duration::from_millis(250);
    loop {
        let (leases, calls): (Vec<Lease>, Vec<CallId>) = match in_flight.lock() {
            Ok(map) => {
                let mut calls: Vec<CallId> = map.values().map(|(c, _)| c.clone()).collect();
                calls.sort_unstable();
                calls.dedup();
                (map.keys().copied().collect(), calls)
            }
            Err(_) => return,
        };
        let started = Instant::now();
        let request = client.worker_heartbeat(&worker, leases, calls, every);
        tokio::pin!(request);
        let mut changed = Box::pin(leases_changed.notified());
        let answer = tokio::select! {
            r = &mut request => Some(r),
            _ = &mut changed => None,
            _ = stop.cancelled() => return,
        };
        // A waiter left registered would take the next notification meant for the wait below.
        drop(changed);
        // New leases: let this heartbeat renew what it carries, then start over at once.
        let restart = answer.is_none();
        let answer = match answer {
            Some(answer) => answer,
            None => tokio::select! {
                r = &mut request => r,
                _ = tokio::time::sleep_until(started + HEARTBEAT_RESTART) => continue,
                _ = stop.cancelled() => return,
            },
        };
        match answer {
            Ok(response) => {
                retry = Duration::from_millis(250);
                if let Ok(map) = in_flight.lock() {
                    for lease in &response.lost {
                        if let Some((_, token)) = map.get(lease) {
                            tracing::info!(
                                input = lease.input_id,
                                attempt = lease.attempt,
                                "lease lost or call cancelled; stopping the input"
                            );
                            token.cancel();
                        }
                    }
                }
                if response.lost.is_empty() && !restart {
                    // The server did not wait (no leases, or it does not hold heartbeats):
                    // keep to the period, but carry new leases at once.
                    tokio::select! {
                        _ = tokio::time::sleep_until(started + every) => {}
                        _ = leases_changed.notified() => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed; trying again in {retry:?}");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = stop.cancelled() => return,
                }
                retry = (retry * 2).min(every.max(Duration::from_millis(250)));
            }
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
