//! `/v1/workers`: the worker protocol. Register, lease a batch (long-poll), heartbeat,
//! complete a batch, append logs, deregister. Leases and completions carry lists so a worker
//! moves many inputs per round trip.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use hopper_core::api::{
    CompleteResponse, HeartbeatRequest, HeartbeatResponse, LeaseRequest, LogBatch, Outcome,
    WorkerRegister, WorkerRegistered, WorkerView,
};
use hopper_core::{FunctionName, WorkerId};
use hopper_store::{
    FunctionKey, InputCompleteMany, LeaseHeartbeat, LogAppend, LogInsert, WorkerDeregister,
    WorkerRegisterParams,
};

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::views;
use crate::dispatcher;
use crate::state::{AppState, KnownWorker};

/// A worker's `last_seen` is written at most this often by its requests (leases, heartbeats),
/// and at most a quarter of a lease apart, so a worker that heartbeats is never shown `lost`.
const TOUCH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Most inputs one lease request may ask for.
pub const MAX_LEASE_BATCH: u32 = 1_000;
/// Longest line kept in a log; longer ones are cut, with a marker.
const MAX_LOG_LINE: usize = 16 * 1024;

pub(super) fn parse_worker(text: &str) -> Result<WorkerId, ApiError> {
    text.parse().map_err(|e: hopper_core::ids::IdError| {
        ApiError::bad_request("invalid_worker_id", e.to_string())
    })
}

pub async fn register(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<WorkerRegister>,
) -> Result<(StatusCode, Json<WorkerRegistered>), ApiError> {
    if req.functions.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_worker",
            "a worker must serve at least one function",
        ));
    }
    let mut keys = Vec::new();
    for f in &req.functions {
        let name = FunctionName::parse(f)
            .map_err(|e| ApiError::bad_request("invalid_function_name", e.to_string()))?;
        let app = name.app.ok_or_else(|| {
            ApiError::bad_request(
                "invalid_function_name",
                format!("a worker names its functions as app.function, not {f:?}"),
            )
        })?;
        keys.push(FunctionKey {
            app,
            function: name.function,
        });
    }
    if req.concurrency == 0 {
        return Err(ApiError::bad_request(
            "invalid_worker",
            "concurrency must be at least 1",
        ));
    }
    if let Some(machine) = &req.machine {
        check_machine(machine).map_err(|e| ApiError::bad_request("invalid_worker", e))?;
    }
    // The current spec of each function, so the worker can start its processes at once, and
    // those its machine cannot run, so it can say so.
    let mut specs = std::collections::BTreeMap::new();
    let mut unfit = std::collections::BTreeMap::new();
    let machine = req.machine.clone().unwrap_or_default();
    for key in &keys {
        let found = deployed(&state, key).await?;
        for row in found {
            if let Err(why) = machine.fits(&row.spec.resources) {
                unfit.insert(row.spec.qualified_name(), why.to_string());
            }
            specs.insert(
                format!("{}@{}", row.spec.qualified_name(), row.version),
                row.spec,
            );
        }
    }
    let id = WorkerId::generate();
    let secret = hopper_core::ids::random_hex();
    state
        .store
        .worker_register(WorkerRegisterParams {
            secret_hash: secret_hash(&secret),
            id: id.clone(),
            host: req.host,
            pid: req.pid,
            functions: req.functions,
            concurrency: req.concurrency,
            now: state.now(),
            machine: req.machine.clone(),
        })
        .await?;
    state
        .worker_functions
        .lock()
        .map_err(|_| poisoned())?
        .insert(
            id.clone(),
            Arc::new(KnownWorker::new(
                keys,
                Some(secret_hash(&secret)),
                req.machine.clone(),
            )),
        );
    Ok((
        StatusCode::CREATED,
        Json(WorkerRegistered {
            worker_id: id,
            lease_ms: state.config.lease_ms() as u64,
            heartbeat_ms: state.config.heartbeat_ms(),
            max_payload_bytes: Some(state.config.max_payload_bytes as u64),
            max_request_bytes: Some(
                (state.config.max_payload_bytes + super::extract::ENVELOPE_BYTES) as u64,
            ),
            max_log_lines_per_attempt: Some(state.config.max_log_lines),
            call_token: state.config.call_token.clone(),
            functions: specs,
            worker_secret: Some(secret.into()),
            unfit,
        }),
    ))
}

/// Most GPUs a worker may say its machine has.
const MAX_MACHINE_GPUS: usize = 1_024;

/// Checks what a worker says its machine has: cores and memory more than zero, GPUs each
/// named once, labels as `hopper worker --label` takes them.
fn check_machine(m: &hopper_core::resources::Machine) -> Result<(), String> {
    if m.cpus.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
        return Err("machine.cpus: more than 0 cores, or none when unknown".into());
    }
    if m.memory_bytes == Some(0) {
        return Err("machine.memory_bytes: more than 0, or none when unknown".into());
    }
    if m.gpus.len() > MAX_MACHINE_GPUS {
        return Err(format!("machine.gpus: at most {MAX_MACHINE_GPUS}"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for g in &m.gpus {
        if !seen.insert(g.index) {
            return Err(format!("machine.gpus: GPU {} is named twice", g.index));
        }
        if g.kind.len() > 128 || g.kind.chars().any(char::is_control) {
            return Err(format!(
                "machine.gpus: GPU {}'s kind is longer than 128 or has control characters",
                g.index
            ));
        }
    }
    for (name, value) in &m.labels {
        hopper_core::resources::check_label(name, value)
            .map_err(|e| format!("machine.labels: {e}"))?;
    }
    Ok(())
}

/// The function `key` as deployed now (none if no deploy has it).
async fn deployed(
    state: &AppState,
    key: &FunctionKey,
) -> Result<Vec<hopper_store::FunctionRow>, ApiError> {
    Ok(state
        .store
        .function_find(hopper_store::FunctionFind {
            app: Some(key.app.clone()),
            function: key.function.clone(),
        })
        .await?)
}

fn poisoned() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; see the server's log",
    )
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<WorkerView>>, ApiError> {
    let now = state.now();
    let rows = state.store.worker_list(now - 3_600_000).await?;
    Ok(Json(
        rows.iter()
            .map(|w| views::worker(w, now, state.config.lease_ms()))
            .collect(),
    ))
}

/// The header a worker proves itself with: the secret it got at registration.
pub const WORKER_SECRET_HEADER: &str = "x-hopper-worker-secret";

fn secret_hash(secret: &str) -> String {
    hopper_core::ids::derived_hex("hopper worker secret", secret)
}

/// A worker the server knows, checked: the request must carry the worker's secret, so a
/// token that may work (any worker's) cannot act as another worker. An unknown or stopped
/// worker must register again.
pub(super) async fn known_worker(
    state: &AppState,
    id: &WorkerId,
    headers: &HeaderMap,
) -> Result<Arc<KnownWorker>, ApiError> {
    let cached = state
        .worker_functions
        .lock()
        .map_err(|_| poisoned())?
        .get(id)
        .cloned();
    let known = match cached {
        Some(known) => known,
        None => {
            // Registered through another server (or before a restart): read it from the store.
            let rows = state.store.worker_list(0).await?;
            let row = rows
                .into_iter()
                .find(|w| &w.id == id && w.stopped_at.is_none())
                .ok_or_else(|| {
                    ApiError::not_found(
                        "unknown_worker",
                        format!("no active worker {id}: register again"),
                    )
                })?;
            let known = Arc::new(KnownWorker::new(
                function_keys(&row.functions),
                row.secret_hash.filter(|h| !h.is_empty()),
                row.machine,
            ));
            state
                .worker_functions
                .lock()
                .map_err(|_| poisoned())?
                .insert(id.clone(), known.clone());
            known
        }
    };
    if let Some(expected) = &known.secret_hash {
        let given = headers
            .get(WORKER_SECRET_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(secret_hash);
        if given.as_deref() != Some(expected.as_str()) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this request does not come from worker {id}: send the worker's secret from its registration in the {WORKER_SECRET_HEADER} header"
                ),
            ));
        }
    }
    Ok(known)
}

fn function_keys(names: &[String]) -> Vec<FunctionKey> {
    names
        .iter()
        .filter_map(|f| FunctionName::parse(f).ok())
        .filter_map(|n| {
            n.app.map(|app| FunctionKey {
                app,
                function: n.function,
            })
        })
        .collect()
}

/// Records that the worker was seen (at most every second), refusing one that was stopped.
async fn touch(state: &AppState, id: &WorkerId) -> Result<(), ApiError> {
    let recently = state
        .worker_touched
        .lock()
        .map_err(|_| poisoned())?
        .get(id)
        .is_some_and(|t| {
            let every = std::time::Duration::from_millis(state.config.lease_ms().max(0) as u64 / 4)
                .min(TOUCH_EVERY);
            t.elapsed() < every
        });
    if recently {
        return Ok(());
    }
    if !state.store.worker_touch(id, state.now()).await? {
        return Err(ApiError::not_found(
            "unknown_worker",
            format!("no active worker {id}: register again"),
        ));
    }
    state
        .worker_touched
        .lock()
        .map_err(|_| poisoned())?
        .insert(id.clone(), std::time::Instant::now());
    Ok(())
}

pub async fn lease(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<LeaseRequest>,
) -> Result<axum::response::Response, ApiError> {
    let id = parse_worker(&id)?;
    if req.max == 0 || req.max > MAX_LEASE_BATCH {
        return Err(ApiError::bad_request(
            "invalid_lease",
            format!(
                "max must be between 1 and {MAX_LEASE_BATCH}, not {}",
                req.max
            ),
        ));
    }
    let known = known_worker(&state, &id, &headers).await?;
    touch(&state, &id).await?;
    // A long-poll holds a connection: past `max_waiting` the worker is told to come back,
    // and its connection closed, so waiting workers never crowd out other requests.
    let _permit = if req.wait_ms > 0 {
        match state.waiting.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => return Ok(too_many_waiting(&state)),
        }
    } else {
        None
    };
    let functions = placed(&state, &known).await?;
    if functions.is_empty() {
        // Nothing this worker can run (a GPU function on a machine without one): it waits, as
        // for an empty queue, and asks again.
        let wait = std::time::Duration::from_millis(req.wait_ms)
            .min(dispatcher::MAX_WAIT)
            .min(state.config.max_wait);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = state.shutdown.cancelled() => {}
        }
        return Ok(Json(hopper_core::api::LeaseResponse::default()).into_response());
    }
    Ok(Json(dispatcher::lease(&state, &id, &functions, req).await?).into_response())
}

/// How long a worker's placement is trusted before it is worked out again: a deploy through
/// another server of a cluster is seen within this.
const PLACED_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// The functions of `known` whose deployed `gpu`, `cpu`, `memory` and `labels` its machine
/// fits: the only ones it is handed inputs of. A function not deployed now (a deploy removed
/// it; its app is not deployed yet) stays: its queued inputs run on the version they were
/// spawned on.
async fn placed(state: &AppState, known: &KnownWorker) -> Result<Vec<FunctionKey>, ApiError> {
    let deploys = state.events.deploys();
    if let Some(p) = known.placed.lock().map_err(|_| poisoned())?.as_ref() {
        if p.deploys == deploys && p.at.elapsed() < PLACED_FOR {
            return Ok(p.functions.clone());
        }
    }
    let none = hopper_core::resources::Machine::default();
    let machine = known.machine.as_ref().unwrap_or(&none);
    let mut functions = Vec::with_capacity(known.functions.len());
    for key in &known.functions {
        let found = deployed(state, key).await?;
        if found
            .iter()
            .all(|row| machine.fits(&row.spec.resources).is_ok())
        {
            functions.push(key.clone());
        }
    }
    *known.placed.lock().map_err(|_| poisoned())? = Some(crate::state::Placed {
        at: std::time::Instant::now(),
        deploys,
        functions: functions.clone(),
    });
    Ok(functions)
}

/// Longest error line kept from a process that failed at start.
const MAX_START_ERROR: usize = 1_000;

/// `POST /v1/workers/{id}/starts`: a worker says how a process of one of its functions
/// started; the function's view shows it (`startup`), and `/metrics` the time it took.
pub async fn starts(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<hopper_core::api::ProcessStart>,
) -> Result<StatusCode, ApiError> {
    let id = parse_worker(&id)?;
    let known = known_worker(&state, &id, &headers).await?;
    let serves = known
        .functions
        .iter()
        .any(|k| format!("{}.{}", k.app, k.function) == req.function);
    if !serves {
        return Err(ApiError::bad_request(
            "invalid_start",
            format!("worker {id} does not serve {:?}", req.function),
        ));
    }
    let failed = req.failed.map(|f| {
        let line: String = f
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_START_ERROR)
            .collect();
        line
    });
    if req.ready_ms.is_none() && failed.is_none() {
        return Err(ApiError::bad_request(
            "invalid_start",
            "give ready_ms (the process is ready) or failed (it failed at start)",
        ));
    }
    if let Some(ms) = req.ready_ms {
        crate::metrics::startup(&req.function, ms);
    }
    if let Some(why) = &failed {
        tracing::warn!(function = %req.function, worker = %id, "a worker's process failed at start: {why}");
    }
    let mut startups = state.startups.lock().map_err(|_| poisoned())?;
    let entry = startups
        .entry(req.function)
        .or_insert_with(|| hopper_core::api::StartupView {
            last_ms: None,
            failed: None,
            at: String::new(),
        });
    entry.at = views::time(state.now());
    match req.ready_ms {
        Some(ms) => {
            entry.last_ms = Some(ms);
            entry.failed = None;
        }
        None => entry.failed = failed,
    }
    Ok(StatusCode::NO_CONTENT)
}

/// 503 `too_many_waiting` with `Connection: close` and `Retry-After: 1`; logged once a
/// minute.
fn too_many_waiting(state: &AppState) -> axum::response::Response {
    let limit = state.config.max_waiting;
    if let Ok(mut warned) = state.waiting_warned.lock() {
        if warned.is_none_or(|at| at.elapsed() > std::time::Duration::from_secs(60)) {
            *warned = Some(std::time::Instant::now());
            tracing::warn!(limit, "more workers are long-polling than --max-waiting allows; the others are told to retry");
        }
    }
    let mut response = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_waiting",
        format!("{limit} workers are already waiting for work on this server (hopper serve --max-waiting); try again shortly, or through another server"),
    )
    .into_response();
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    headers.insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    response
}

/// `GET /v1/workers/{id}/snapshots/{hash}`: a code snapshot's bytes, for a registered worker.
pub async fn snapshot(
    State(state): State<AppState>,
    ApiPath((id, hash)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    let id = parse_worker(&id)?;
    let known = known_worker(&state, &id, &headers).await?;
    // Only the code of functions the worker serves: a work token is not a key to every app.
    let mut serves_it = false;
    for key in &known.functions {
        let versions = state.store.function_versions(key, 50).await?;
        if versions
            .iter()
            .any(|v| v.function.spec.snapshot.as_deref() == Some(hash.as_str()))
        {
            serves_it = true;
            break;
        }
    }
    if !serves_it {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("worker {id} serves no function whose versions run snapshot {hash}"),
        ));
    }
    super::snapshots::bytes(&state, &hash).await
}

/// Longest a heartbeat is held open waiting for a cancel.
const MAX_HEARTBEAT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn heartbeat(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let id = parse_worker(&id)?;
    known_worker(&state, &id, &headers).await?;
    touch(&state, &id).await?;
    // Subscribed before the renewal, so a cancel between the two is not missed.
    let mut cancels = state.events.watch_cancels();
    let renew = |state: AppState, id: WorkerId, leases: Vec<hopper_core::api::Lease>| async move {
        state
            .store
            .lease_heartbeat(LeaseHeartbeat {
                worker_id: id,
                leases,
                now: state.now(),
                lease_ms: state.config.lease_ms(),
            })
            .await
    };
    let lost = renew(state.clone(), id.clone(), req.leases.clone()).await?;
    if !lost.is_empty() || req.wait_ms == 0 || req.calls.is_empty() {
        return Ok(Json(HeartbeatResponse { lost }));
    }
    let wait = std::time::Duration::from_millis(req.wait_ms)
        .min(MAX_HEARTBEAT_WAIT)
        .min(state.config.max_wait);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let cancelled = tokio::select! {
            c = cancels.recv() => match c {
                Ok(call) => req.calls.contains(&call),
                // Missed some: check anyway.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => false,
            },
            _ = tokio::time::sleep_until(deadline) => break,
            _ = state.shutdown.cancelled() => break,
        };
        if cancelled {
            let lost = renew(state.clone(), id.clone(), req.leases.clone()).await?;
            if !lost.is_empty() {
                return Ok(Json(HeartbeatResponse { lost }));
            }
        }
    }
    Ok(Json(HeartbeatResponse { lost: Vec::new() }))
}

/// A completion batch as it came: each result's own text, checked before it is parsed, so
/// one result that cannot be kept exactly fails alone instead of refusing the batch.
#[derive(serde::Deserialize)]
pub struct CompleteBody {
    results: Vec<Box<serde_json::value::RawValue>>,
}

/// The lease of a result, read when the rest of it is refused.
#[derive(serde::Deserialize)]
struct LeaseOnly {
    lease: hopper_core::api::Lease,
}

/// A result's status, by name (serde would also take a variant's number).
#[derive(serde::Deserialize)]
struct StatusOnly {
    status: String,
}

fn bad_output(message: String) -> Outcome {
    Outcome::Failed {
        retry: false,
        error: hopper_core::api::InputError::new("bad_output", message),
    }
}

/// One result: refused outputs (too deep, an integer beyond 64 bits, over the payload limit)
/// become failures of their input, not of the batch.
fn read_result(
    raw: &serde_json::value::RawValue,
    n: usize,
    limit: usize,
) -> Result<hopper_core::api::InputResult, ApiError> {
    let invalid = |e: serde_json::Error| {
        ApiError::bad_request("invalid_json", format!("results[{n}] is not a result: {e}"))
    };
    let StatusOnly { status } = serde_json::from_str(raw.get()).map_err(invalid)?;
    if !matches!(status.as_str(), "succeeded" | "failed" | "returned") {
        return Err(ApiError::bad_request(
            "invalid_json",
            format!("results[{n}].status is {status:?}; expected succeeded, failed or returned"),
        ));
    }
    if let Err(why) =
        hopper_core::json::check_text(raw.get().as_bytes(), hopper_core::json::MAX_DEPTH + 2)
    {
        let LeaseOnly { lease } = serde_json::from_str(raw.get()).map_err(invalid)?;
        return Ok(hopper_core::api::InputResult {
            lease,
            outcome: bad_output(format!("the output is refused: {why}")),
            batch_size: None,
        });
    }
    let mut result: hopper_core::api::InputResult =
        serde_json::from_str(raw.get()).map_err(invalid)?;
    // A worker's module and traceback are kept within their bounds.
    if let Outcome::Failed { error, .. } | Outcome::Returned { error } = &mut result.outcome {
        *error = std::mem::take(error).bounded();
    }
    if let Outcome::Succeeded { output } = &result.outcome {
        let depth = hopper_core::json::depth(output);
        let size = output.to_string().len();
        if depth > hopper_core::json::MAX_DEPTH {
            result.outcome = bad_output(format!(
                "the output nests {depth} levels deep; outputs may nest at most {} levels",
                hopper_core::json::MAX_DEPTH
            ));
        } else if size > limit {
            result.outcome = Outcome::Failed {
                retry: false,
                error: hopper_core::api::InputError::new("output_too_large", format!(
                        "the output is {size} bytes, over the inline limit of {limit} bytes (hopper serve --max-payload)"
                    )),
            };
        }
    }
    Ok(result)
}

pub async fn complete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CompleteBody>,
) -> Result<Json<CompleteResponse>, ApiError> {
    let id = parse_worker(&id)?;
    known_worker(&state, &id, &headers).await?;
    let limit = state.config.max_payload_bytes;
    let parsed = req
        .results
        .iter()
        .enumerate()
        .map(|(n, raw)| read_result(raw, n, limit))
        .collect::<Result<Vec<_>, _>>()?;
    let reported: Vec<Option<u32>> = parsed.iter().map(|r| r.batch_size).collect();
    let batch_sizes = reported.iter().map(|b| b.unwrap_or(1).max(1)).collect();
    let mut results: Vec<_> = parsed.into_iter().map(|r| (r.lease, r.outcome)).collect();
    for (_, outcome) in &mut results {
        if let Some(fault) = output_blobs(&state, outcome).await? {
            *outcome = fault;
        }
    }
    let rows = state
        .store
        .input_complete_many(InputCompleteMany {
            worker_id: id,
            results,
            batch_sizes,
            now: state.now(),
        })
        .await?;
    crate::metrics::completions(&rows, &reported);
    let mut requeued = false;
    if rows.iter().any(|r| r.recorded) {
        state.events.results_recorded();
    }
    for row in &rows {
        if let Some((call, _)) = &row.call_finished {
            state.events.call_finished(call.clone());
        } else if row.recorded {
            requeued = true;
        }
    }
    if requeued {
        state.events.inputs_available();
    }
    wake_limited(&state, &rows).await?;
    Ok(Json(CompleteResponse {
        recorded: rows.iter().map(|r| r.recorded).collect(),
    }))
}

/// What becomes of an output that refers to blobs which are not stored as it says (the
/// worker uploads them first, `POST /v1/workers/{id}/blobs`): a failure of its input, so no
/// client is given a reference it cannot read.
async fn output_blobs(state: &AppState, outcome: &Outcome) -> Result<Option<Outcome>, ApiError> {
    let Outcome::Succeeded { output } = outcome else {
        return Ok(None);
    };
    let refs = match hopper_core::blob::refs(output, "the output") {
        Ok(refs) => refs,
        Err(why) => return Ok(Some(bad_output(why))),
    };
    for r in refs {
        match state.store.blob_info(&r.digest).await? {
            Some(info) if info.size == r.size => {}
            Some(info) => {
                return Ok(Some(bad_output(format!(
                    "the output gives blob {} a size of {} bytes; it holds {}",
                    r.digest, r.size, info.size
                ))))
            }
            None => {
                return Ok(Some(Outcome::Failed {
                    retry: true,
                    error: hopper_core::api::InputError::new(
                        "blob_missing",
                        format!(
                            "{} refers to blob {} which is not stored (the worker did not store it first, or it was pruned)",
                            r.at, r.digest
                        ),
                    ),
                }))
            }
        }
    }
    Ok(None)
}

/// Inputs that ended free places under their function's limits: as many of its waiting
/// workers are woken, so inputs held back by `max_running` start at once.
async fn wake_limited(
    state: &AppState,
    rows: &[hopper_store::CompletionRow],
) -> Result<(), ApiError> {
    let mut ended: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for row in rows.iter().filter(|r| r.recorded) {
        if let Some(function) = &row.function {
            *ended.entry(function.as_str()).or_default() += 1;
        }
    }
    for (function, n) in ended {
        let Some((app, name)) = function.split_once('.') else {
            continue;
        };
        let found = state
            .store
            .function_find(hopper_store::FunctionFind {
                app: Some(app.to_string()),
                function: name.to_string(),
            })
            .await?;
        if found.iter().any(|f| f.spec.limits.any()) {
            state.events.inputs_for(app, name, n);
        }
    }
    Ok(())
}

pub async fn logs(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<LogBatch>,
) -> Result<StatusCode, ApiError> {
    let worker_id = parse_worker(&id)?;
    known_worker(&state, &worker_id, &headers).await?;
    let lines = req
        .lines
        .into_iter()
        .map(|l| LogInsert {
            lease: l.lease,
            stream: l.stream,
            ts: l.ts_ms,
            line: cut(l.line),
        })
        .collect();
    state
        .store
        .log_append_many(LogAppend {
            worker_id,
            lines,
            max_lines_per_attempt: state.config.max_log_lines,
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn cut(mut line: String) -> String {
    if line.len() > MAX_LOG_LINE {
        let mut end = MAX_LOG_LINE;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push_str(" …[line cut]");
    }
    line
}

pub async fn deregister(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let id = parse_worker(&id)?;
    known_worker(&state, &id, &headers).await?;
    let handed_back = state
        .store
        .worker_deregister(WorkerDeregister {
            id: id.clone(),
            now: state.now(),
            died: false,
        })
        .await?;
    if let Ok(mut cache) = state.worker_functions.lock() {
        cache.remove(&id);
    }
    if let Ok(mut touched) = state.worker_touched.lock() {
        touched.remove(&id);
    }
    if handed_back > 0 {
        state.events.inputs_available();
    }
    Ok(StatusCode::NO_CONTENT)
}
