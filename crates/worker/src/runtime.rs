//! The worker's lease loop: register, lease as many inputs as there are free slots, run them,
//! heartbeat the leases, and on shutdown stop leasing, let running inputs finish for a grace
//! period, hand back the rest and deregister.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hopper_core::api::{InputResult, Lease, LeasedInput, WorkerRegister, WorkerRegistered};
use hopper_core::{FunctionSpec, WorkerId};
use hopper_sdk::{Client, Error};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::command::{self, InputContext};
use crate::outbox::{is_transient, Outbox};

/// How a worker runs. Built once by the CLI.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Base URL of the server, e.g. `http://127.0.0.1:7433`.
    pub server: String,
    pub token: Option<String>,
    /// `app.function` names served.
    pub functions: Vec<String>,
    /// Inputs run at once. Default 1.
    pub concurrency: u32,
    /// Reported to the server; default the machine's host name.
    pub host: String,
    /// After a stop is asked for, running inputs get this long to finish before they are
    /// killed and handed back. Default 30 s.
    pub drain: Duration,
    /// Between SIGTERM and SIGKILL of a timed-out command. Default 5 s.
    pub kill_grace: Duration,
}

/// Why a worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the server refused this worker: {0}")]
    Refused(Error),
    #[error("the server no longer knows this worker (it was deregistered); start it again")]
    Forgotten,
}

/// Long-poll of one lease request.
const LEASE_WAIT: Duration = Duration::from_secs(20);

type InFlight = Arc<Mutex<HashMap<Lease, CancellationToken>>>;

/// Runs the worker until `shutdown` is cancelled, then drains and deregisters.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> Result<(), WorkerError> {
    let client = Client::new(&config.server, config.token.clone()).map_err(WorkerError::Refused)?;
    let Some(registered) = register(&client, &config, &shutdown).await? else {
        return Ok(());
    };
    let worker = registered.worker_id.clone();
    tracing::info!(worker = %worker, functions = ?config.functions, concurrency = config.concurrency, "worker registered");
    let (outbox, outbox_task) = Outbox::start(client.clone(), worker.clone());
    let in_flight: InFlight = Arc::default();
    let slot_freed = Arc::new(Notify::new());
    let kill_all = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let heartbeat_stop = CancellationToken::new();
    let heartbeat = tokio::spawn(heartbeat_loop(
        client.clone(),
        worker.clone(),
        Duration::from_millis(registered.heartbeat_ms),
        in_flight.clone(),
        heartbeat_stop.clone(),
    ));
    let mut specs: BTreeMap<String, Arc<FunctionSpec>> = BTreeMap::new();
    let mut backoff = Duration::from_millis(100);
    let mut result = Ok(());

    while !shutdown.is_cancelled() {
        while tasks.try_join_next().is_some() {}
        let free = config.concurrency.saturating_sub(in_flight_len(&in_flight));
        if free == 0 {
            tokio::select! {
                _ = slot_freed.notified() => {}
                _ = shutdown.cancelled() => break,
            }
            continue;
        }
        let leased = tokio::select! {
            r = client.worker_lease(&worker, free, LEASE_WAIT) => r,
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
        for (key, spec) in response.functions {
            specs.insert(key, Arc::new(spec));
        }
        for input in response.inputs {
            let Some(spec) = specs.get(&input.function).cloned() else {
                tracing::error!(function = %input.function, "leased an input without its function's spec");
                continue;
            };
            let cancel = kill_all.child_token();
            if let Ok(mut map) = in_flight.lock() {
                map.insert(input.lease, cancel.clone());
            }
            tasks.spawn(run_input(
                spec,
                input,
                cancel,
                outbox.clone(),
                in_flight.clone(),
                slot_freed.clone(),
                config.kill_grace,
            ));
        }
    }

    // Drain: running inputs get `drain` to finish; the rest are killed and handed back.
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
            "drain period over: killing running inputs and handing them back"
        );
        kill_all.cancel();
        while tasks.join_next().await.is_some() {}
    }
    heartbeat_stop.cancel();
    let _ = heartbeat.await;
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

async fn run_input(
    spec: Arc<FunctionSpec>,
    input: LeasedInput,
    cancel: CancellationToken,
    outbox: Outbox,
    in_flight: InFlight,
    slot_freed: Arc<Notify>,
    kill_grace: Duration,
) {
    let call_id = input.call_id.to_string();
    let ctx = InputContext {
        lease: input.lease,
        call_id: &call_id,
        index: input.index,
        input: &input.input,
    };
    let outcome = command::run(&spec, ctx, kill_grace, &cancel, &outbox).await;
    if let Ok(mut map) = in_flight.lock() {
        map.remove(&input.lease);
    }
    if let Some(outcome) = outcome {
        outbox.result(InputResult {
            lease: input.lease,
            outcome,
        });
    }
    slot_freed.notify_one();
}

/// Renews every held lease on a timer; leases the server says are gone (cancelled, or lost
/// while this worker was unreachable) are stopped at once.
async fn heartbeat_loop(
    client: Client,
    worker: WorkerId,
    every: Duration,
    in_flight: InFlight,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let leases: Vec<Lease> = match in_flight.lock() {
            Ok(map) => map.keys().copied().collect(),
            Err(_) => return,
        };
        match client.worker_heartbeat(&worker, leases).await {
            Ok(response) => {
                if let Ok(map) = in_flight.lock() {
                    for lease in &response.lost {
                        if let Some(token) = map.get(lease) {
                            tracing::info!(
                                input = lease.input_id,
                                attempt = lease.attempt,
                                "lease lost or call cancelled; stopping the input"
                            );
                            token.cancel();
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}
