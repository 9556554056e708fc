//! `/v1/functions/{name}/calls` and `/v1/calls`: spawning, reading, waiting for and cancelling
//! calls.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use hopper_core::api::{
    AttemptView, CallPage, CallView, InputView, LogPage, Origin, RerunRequest, SpawnBatchResponse,
    SpawnedCall, MAX_SPAWN_BATCH,
};
use hopper_core::{CallId, FunctionName, InputState};
use hopper_store::{
    AttemptList, CallCancel, CallInsert, CallInserted, CallList, CallRow, LogList, StoreError,
};
use serde::Deserialize;

use super::apps::resolve;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::views;
use crate::state::AppState;

/// Longest a single `GET /v1/calls/{id}?wait=` may wait; clients wait longer by asking again.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// Longest idempotency key accepted.
const MAX_KEY_LEN: usize = 255;

/// A spawn's body as it came: the input's own text, checked before it is parsed (the SDK's
/// [`hopper_core::api::SpawnRequest`] is what clients send).
/// Unknown fields are refused: a misspelt `idempotency-key` must not spawn a second call.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnBody {
    input: Box<serde_json::value::RawValue>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    delay: Option<String>,
    #[serde(default)]
    start_at: Option<String>,
    #[serde(default)]
    key: Option<serde_json::Value>,
    #[serde(default)]
    priority: Option<serde_json::Value>,
}

/// Sets a call's key and priority as its spawn gives them (`what` names where, e.g.
/// `calls[3].`), checked: 400 `invalid_key` or `invalid_priority`, nothing stored. Without
/// them the call keeps what [`spawned`] gave it (the function's priority, keys from the
/// function's `limits.key`).
pub fn controls(
    insert: &mut CallInsert,
    key: Option<serde_json::Value>,
    priority: Option<serde_json::Value>,
    what: &str,
) -> Result<(), ApiError> {
    use serde_json::Value;
    match key {
        None | Some(Value::Null) => {}
        Some(Value::String(key)) => {
            hopper_core::limits::validate_key(&key)
                .map_err(|e| ApiError::bad_request("invalid_key", format!("{what}key: {e}")))?;
            insert.key = Some(key);
            insert.input_keys.clear();
        }
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_key",
                format!("{what}key: expected a string, not {other}"),
            ))
        }
    }
    match priority {
        None | Some(Value::Null) => {}
        Some(given) => {
            let n = given.as_i64().ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_priority",
                    format!("{what}priority: expected an integer from -1000 to 1000, not {given}"),
                )
            })?;
            insert.priority = hopper_core::limits::validate_priority(n).map_err(|e| {
                ApiError::bad_request("invalid_priority", format!("{what}priority: {e}"))
            })?;
        }
    }
    Ok(())
}

/// Each input's key by the function's `limits.key` pointer (JSON texts in, `""` for an input
/// without one); empty when the function has no pointer or no input a key.
pub fn input_keys(spec: &hopper_core::FunctionSpec, inputs: &[String]) -> Vec<String> {
    if spec.limits.key.is_none() {
        return Vec::new();
    }
    let keys: Vec<String> = inputs
        .iter()
        .map(|text| {
            serde_json::from_str(text)
                .ok()
                .and_then(|v| spec.limits.key_of(&v))
                .unwrap_or_default()
        })
        .collect();
    if keys.iter().all(String::is_empty) {
        Vec::new()
    } else {
        keys
    }
}

/// How far ahead a call may be delayed.
const MAX_DELAY: Duration = Duration::from_secs(366 * 24 * 3600);
/// A `start_at` this far in the past is taken as now (clocks differ); further is refused.
const PAST_SLACK_MS: i64 = 60_000;

/// When a delayed call starts, from its `delay` (a duration) or `start_at` (RFC 3339); `None`
/// when it starts at once. `what` names the request's part (`calls[3]` of a bulk spawn).
pub fn starts_at(
    state: &AppState,
    delay: Option<&str>,
    start_at: Option<&str>,
    what: &str,
) -> Result<Option<i64>, ApiError> {
    let now = state.now();
    let at = match (delay, start_at) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_delay",
                format!("{what}delay and {what}start_at: give one of them, not both"),
            ))
        }
        (Some(delay), None) => {
            let d = hopper_core::duration::parse(delay)
                .map_err(|e| ApiError::bad_request("invalid_delay", format!("{what}delay: {e}")))?;
            if d > MAX_DELAY {
                return Err(ApiError::bad_request(
                    "invalid_delay",
                    format!("{what}delay: {delay:?} is longer than a year, the longest delay"),
                ));
            }
            now + d.as_millis() as i64
        }
        (None, Some(text)) => {
            let t = chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|e| {
                    ApiError::bad_request(
                        "invalid_delay",
                        format!("{what}start_at: {text:?} is not an RFC 3339 time (2026-12-24T18:00:00Z): {e}"),
                    )
                })?
                .timestamp_millis();
            if t < now - PAST_SLACK_MS {
                return Err(ApiError::bad_request(
                    "invalid_delay",
                    format!(
                        "{what}start_at: {text} is in the past (the server's time is {})",
                        views::time(now)
                    ),
                ));
            }
            if t > now + MAX_DELAY.as_millis() as i64 {
                return Err(ApiError::bad_request(
                    "invalid_delay",
                    format!("{what}start_at: {text} is more than a year ahead, the longest delay"),
                ));
            }
            t
        }
    };
    Ok((at > now).then_some(at))
}

/// `POST /v1/functions/{name}/calls?wait=SECONDS`: with `wait`, the answer comes once the
/// call has ended (or after `wait`, up to 300 s): a spawn and a `get` in one round trip.
#[derive(Deserialize)]
pub struct SpawnQuery {
    #[serde(default)]
    wait: Option<f64>,
}

pub async fn spawn(
    State(state): State<AppState>,
    caller: Option<axum::Extension<super::CanRead>>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<SpawnQuery>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<SpawnBody>,
) -> Result<(StatusCode, Json<CallView>), ApiError> {
    let wait = super::extract::wait_seconds(q.wait, MAX_WAIT.min(state.config.max_wait))?;
    let function = resolve(&state, &name).await?;
    let input = super::extract::value(&req.input, "the input")?;
    if input.len() > state.config.max_payload_bytes {
        return Err(ApiError::payload_too_large(
            "the input",
            input.len(),
            state.config.max_payload_bytes,
        ));
    }
    let key = idempotency_key(&headers, req.idempotency_key)?;
    let start = starts_at(&state, req.delay.as_deref(), req.start_at.as_deref(), "")?;
    // Subscribed before the call exists, so its end is heard however soon it comes, and the
    // call as written is the wait's first look.
    let finished = state.events.watch_calls();
    let mut insert = spawned(&function, input, key, state.now());
    insert.starts_at = start;
    controls(&mut insert, req.key, req.priority, "")?;
    super::blobs::claim_refs(&state, &insert.id, &insert.inputs, |_| "the input".into()).await?;
    let inserted = state.store.call_insert(insert).await?;
    let (status, call) = match inserted {
        CallInserted::Created(call) => {
            crate::metrics::call_started(format!("{}.{}", call.app, call.function), "spawn");
            state.events.inputs_for(&call.app, &call.function, 1);
            (StatusCode::CREATED, call)
        }
        CallInserted::Existing(call) => (StatusCode::OK, call),
    };
    if wait.is_zero() && status == StatusCode::CREATED {
        return Ok((status, Json(views::call(&call, None))));
    }
    let id = call.id.clone();
    let call = wait_from(&state, &id, wait, finished, Some(call)).await?;
    // A call this request made has no re-runs yet: the answer costs no read of them.
    let view = if status == StatusCode::CREATED {
        views::call(&call, shown_input(&state, &call).await?.as_ref())
    } else {
        view(&state, &call).await?
    };
    Ok((status, Json(super::CanRead::filter(caller, view))))
}

/// `POST /v1/functions/{name}/calls/batch`: up to 1,000 calls of one function, each with
/// one input and its own optional idempotency key, created in one transaction; the answer
/// lists their ids in order (201 when any was created, 200 when every key named an
/// existing call).
pub async fn spawn_batch(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<SpawnBatchBody>,
) -> Result<(StatusCode, Json<SpawnBatchResponse>), ApiError> {
    if headers.contains_key("idempotency-key") {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "a bulk spawn takes no Idempotency-Key header: give each call its own idempotency_key in the body",
        ));
    }
    if req.calls.is_empty() || req.calls.len() > MAX_SPAWN_BATCH {
        return Err(ApiError::bad_request(
            "invalid_batch",
            format!(
                "a bulk spawn holds 1 to {MAX_SPAWN_BATCH} calls; this one holds {}",
                req.calls.len()
            ),
        ));
    }
    let function = resolve(&state, &name).await?;
    let now = state.now();
    let mut inserts = Vec::with_capacity(req.calls.len());
    let mut claims = Vec::with_capacity(req.calls.len());
    let mut bytes = 0;
    for (i, raw) in req.calls.into_iter().enumerate() {
        // Each entry an object (serde would also take `[input, key]`), its faults named by place.
        if !raw.get().trim_start().starts_with('{') {
            return Err(ApiError::bad_request(
                "invalid_json",
                format!("calls[{i}] is not an object: expected {{\"input\": …}}"),
            ));
        }
        let call: SpawnBody = serde_json::from_str(raw.get())
            .map_err(|e| ApiError::bad_request("invalid_json", format!("calls[{i}]: {e}")))?;
        let what = format!("calls[{i}].input");
        let input = super::extract::value(&call.input, &what)?;
        bytes += input.len();
        if bytes > state.config.max_payload_bytes {
            return Err(ApiError::payload_too_large(
                "the batch (its inputs together)",
                bytes,
                state.config.max_payload_bytes,
            ));
        }
        if let Some(key) = &call.idempotency_key {
            check_key(key, &format!("calls[{i}].idempotency_key"))?;
        }
        let start = starts_at(
            &state,
            call.delay.as_deref(),
            call.start_at.as_deref(),
            &format!("calls[{i}]."),
        )?;
        let mut insert = spawned(&function, input, call.idempotency_key, now);
        insert.starts_at = start;
        controls(
            &mut insert,
            call.key,
            call.priority,
            &format!("calls[{i}]."),
        )?;
        // Checked here, claimed once every entry is: a refused batch claims nothing.
        claims.push(super::blobs::checked_refs(&state, &insert.inputs, |_| what.clone()).await?);
        inserts.push(insert);
    }
    for (insert, digests) in inserts.iter().zip(claims) {
        super::blobs::claim(&state, &insert.id, digests).await?;
    }
    let ids: Vec<CallId> = inserts.iter().map(|c| c.id.clone()).collect();
    let inserted = match state.store.call_insert_many(inserts).await {
        // The key's call is one of this batch's, undone with it: name the entries instead.
        Err(StoreError::IdempotencyConflict { key, call_id, .. })
            if ids.iter().any(|id| id.as_str() == call_id) =>
        {
            let first = ids
                .iter()
                .position(|id| id.as_str() == call_id)
                .unwrap_or(0);
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                format!(
                    "calls[{first}] and a later entry give the idempotency key {key:?} with different inputs; nothing was spawned"
                ),
            ));
        }
        other => other?,
    };
    let label = format!("{}.{}", function.spec.app, function.spec.name);
    let mut calls = Vec::with_capacity(inserted.len());
    for outcome in inserted {
        let (call, created) = match outcome {
            CallInserted::Created(call) => (call, true),
            CallInserted::Existing(call) => (call, false),
        };
        if created {
            crate::metrics::call_started(label.clone(), "spawn");
        }
        calls.push(SpawnedCall {
            id: call.id,
            created,
        });
    }
    let created = calls.iter().filter(|c| c.created).count();
    let status = if created > 0 {
        state
            .events
            .inputs_for(&function.spec.app, &function.spec.name, created);
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(SpawnBatchResponse { calls })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnBatchBody {
    calls: Vec<Box<serde_json::value::RawValue>>,
}

/// A spawned call of `function`'s current version with one input (JSON text), at the
/// function's priority, with the key its `limits.key` takes from the input, if any (the
/// call shows it).
pub fn spawned(
    function: &hopper_store::FunctionRow,
    input: String,
    idempotency_key: Option<String>,
    now: i64,
) -> CallInsert {
    let key = input_keys(&function.spec, std::slice::from_ref(&input))
        .pop()
        .filter(|k| !k.is_empty());
    CallInsert {
        id: CallId::generate(),
        app: function.spec.app.clone(),
        function: function.spec.name.clone(),
        version: function.version,
        origin: Origin::Spawn,
        idempotency_key,
        inputs: vec![input],
        accepting_inputs: false,
        discard_results: false,
        schedule: None,
        rerun_of: None,
        starts_at: None,
        priority: function.spec.priority,
        key,
        input_keys: Vec::new(),
        now,
    }
}

/// The idempotency key from the `Idempotency-Key` header or the body, checked.
pub fn idempotency_key(
    headers: &HeaderMap,
    body: Option<String>,
) -> Result<Option<String>, ApiError> {
    let header = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::bad_request(
                        "invalid_idempotency_key",
                        "the Idempotency-Key header is not visible ASCII",
                    )
                })?
                .to_string(),
        ),
        None => None,
    };
    let key =
        match (header, body) {
            (Some(h), Some(b)) if h != b => return Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                "the Idempotency-Key header and the body's idempotency_key differ: send one key",
            )),
            (h, b) => h.or(b),
        };
    if let Some(k) = &key {
        check_key(k, "the idempotency key")?;
    }
    Ok(key)
}

/// An idempotency key: 1 to 255 visible ASCII characters (what the header can carry, so a
/// key works the same in either); `what` names where it came from.
fn check_key(key: &str, what: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            format!("{what} must be 1 to {MAX_KEY_LEN} characters long"),
        ));
    }
    if let Some(bad) = key.chars().find(|c| !('!'..='~').contains(c)) {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            format!("{what} holds {bad:?}: a key is visible ASCII characters only (no spaces)"),
        ));
    }
    if key.starts_with(OWN_KEYS) {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            format!("{what} starts with {OWN_KEYS:?}, which Hopper keeps for its own keys"),
        ));
    }
    Ok(())
}

/// The prefix of the keys Hopper gives calls itself (re-runs): no client's key has it, so no
/// client can take one.
const OWN_KEYS: &str = "hopper:";

/// The key a re-run of input `index` of `call` takes when its caller gives none, after
/// `earlier` re-runs of it: two requests to re-run it at once make one call.
pub fn rerun_key(call: &CallId, index: i64, earlier: usize) -> String {
    format!("{OWN_KEYS}rerun:{call}:{index}:{earlier}")
}

/// `call` as `GET /v1/calls/{id}` shows it: with its shown input and its re-runs.
pub async fn view(state: &AppState, call: &CallRow) -> Result<CallView, ApiError> {
    let first = shown_input(state, call).await?;
    let mut view = views::call(call, first.as_ref());
    let reruns = state
        .store
        .rerun_list(std::slice::from_ref(&call.id))
        .await?;
    let skip = reruns
        .len()
        .saturating_sub(hopper_core::api::MAX_RERUNS_SHOWN);
    view.reruns = reruns.iter().skip(skip).map(views::rerun).collect();
    view.waiting = waiting(state, call).await?;
    Ok(view)
}

/// The current version of the call's function, unless a deploy removed it.
pub async fn function_of(
    state: &AppState,
    call: &CallRow,
) -> Result<Option<hopper_store::FunctionRow>, ApiError> {
    let found = state
        .store
        .function_find(hopper_store::FunctionFind {
            app: Some(call.app.clone()),
            function: call.function.clone(),
        })
        .await?;
    Ok(found.into_iter().next())
}

/// Why the call's due pending inputs wait, when its function's limits hold them back: the
/// function's own limits at their bound, and those of the keys its pending inputs have.
async fn waiting(state: &AppState, call: &CallRow) -> Result<Option<String>, ApiError> {
    let now = state.now();
    if call.counts.pending == 0 || call.starts_at.is_some_and(|at| at > now) {
        return Ok(None);
    }
    let Some(limits) = function_of(state, call)
        .await?
        .map(|row| row.spec.limits)
        .filter(|limits| limits.any())
    else {
        return Ok(None);
    };
    let held = state
        .store
        .limits_state(hopper_store::LimitsRead {
            function: hopper_store::FunctionKey {
                app: call.app.clone(),
                function: call.function.clone(),
            },
            limits: limits.clone(),
            call: Some(call.id.clone()),
            count: false,
            now,
        })
        .await?;
    // Inputs waiting for their start or a retry's backoff are not held by a limit (yet).
    if held.call_keys.is_empty() {
        return Ok(None);
    }
    let reasons: Vec<String> = held
        .holds
        .iter()
        .filter(|hold| {
            hold.key
                .as_ref()
                .is_none_or(|key| held.call_keys.contains(key))
        })
        .map(|hold| views::hold_reason(&limits, hold))
        .collect();
    Ok((!reasons.is_empty()).then(|| reasons.join("; ")))
}

/// The input a call's view shows: a one-input call's, or the first failed input of a map.
async fn shown_input(
    state: &AppState,
    call: &CallRow,
) -> Result<Option<hopper_store::InputRow>, ApiError> {
    Ok(if call.counts.total == 1 {
        state.store.input_get(&call.id, 0).await?
    } else if call.counts.failed > 0 {
        state.store.input_first_failed(&call.id).await?
    } else {
        None
    })
}

pub fn parse_id(text: &str) -> Result<CallId, ApiError> {
    text.parse().map_err(|e: hopper_core::ids::IdError| {
        ApiError::bad_request("invalid_call_id", e.to_string())
    })
}

pub async fn load(state: &AppState, id: &CallId) -> Result<CallRow, ApiError> {
    state.store.call_get(id).await?.ok_or_else(|| {
        ApiError::not_found(
            "unknown_call",
            format!("no call {id} (it may have been pruned after the retention period)"),
        )
    })
}

#[derive(Deserialize)]
pub struct GetQuery {
    /// Seconds to wait for the call to end before answering.
    #[serde(default)]
    wait: Option<f64>,
}

pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<GetQuery>,
) -> Result<Json<CallView>, ApiError> {
    let id = parse_id(&id)?;
    let wait = super::extract::wait_seconds(q.wait, MAX_WAIT.min(state.config.max_wait))?;
    let call = wait_for(&state, &id, wait).await?;
    state.heard_from_client(&call).await;
    // A long-poll cut short by shutdown says so, so that the client backs off rather than
    // asking again at once.
    if !call.state.is_terminal() && !wait.is_zero() && state.shutdown.is_cancelled() {
        return Err(ApiError::stopping());
    }
    Ok(Json(view(&state, &call).await?))
}

/// The call once it has ended, or as it is after `wait`.
pub async fn wait_for(state: &AppState, id: &CallId, wait: Duration) -> Result<CallRow, ApiError> {
    // Subscribed before the first read, so an end between the two is not missed.
    let finished = state.events.watch_calls();
    wait_from(state, id, wait, finished, None).await
}

/// [`wait_for`] with the subscription to ended calls taken earlier, and the call as it was
/// known since (`seen`, which saves the first read).
async fn wait_from(
    state: &AppState,
    id: &CallId,
    wait: Duration,
    mut finished: tokio::sync::broadcast::Receiver<CallId>,
    mut seen: Option<CallRow>,
) -> Result<CallRow, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let call = match seen.take() {
            Some(call) => call,
            None => load(state, id).await?,
        };
        if call.state.is_terminal() || tokio::time::Instant::now() >= deadline {
            return Ok(call);
        }
        // Wake on this call ending, on shutdown, or after a second (another server may have
        // ended it: the store is the truth, the event only saves waiting).
        let tick = tokio::time::Instant::now() + Duration::from_secs(1);
        let until = deadline.min(tick);
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = state.shutdown.cancelled() => return Ok(call),
            _ = async {
                loop {
                    match finished.recv().await {
                        Ok(done) if &done == id => return,
                        Ok(_) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            } => {}
        }
    }
}

pub async fn cancel(
    State(state): State<AppState>,
    caller: Option<axum::Extension<super::CanRead>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CallView>, ApiError> {
    let id = parse_id(&id)?;
    let call = state
        .store
        .call_cancel(CallCancel {
            id: id.clone(),
            now: state.now(),
        })
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_call", format!("no call {id}")))?;
    state.events.call_cancelled(id.clone());
    if call.state.is_terminal() {
        state.events.call_finished(id);
    }
    let view = view(&state, &call).await?;
    Ok(Json(super::CanRead::filter(caller, view)))
}

#[derive(Deserialize)]
pub struct ListQuery {
    app: Option<String>,
    function: Option<String>,
    state: Option<String>,
    origin: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
    /// Only calls made at or after this time: RFC 3339, or a duration ago (`1h`).
    since: Option<String>,
    /// Only calls made before this time: RFC 3339, or a duration ago.
    until: Option<String>,
}

/// A time bound of the calls list: RFC 3339 (`2026-11-28T17:00:00Z`) or a duration before now.
pub fn time_bound(state: &AppState, name: &str, text: &str) -> Result<i64, ApiError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_millis());
    }
    match hopper_core::duration::parse(text) {
        Ok(ago) => Ok(state.now() - ago.as_millis() as i64),
        Err(_) => Err(ApiError::bad_request(
            "invalid_query",
            format!(
                "{name} must be an RFC 3339 time (2026-11-28T17:00:00Z) or a duration ago (1h), not {text:?}"
            ),
        )),
    }
}

pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<CallPage>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and 1000, not {limit}"),
        ));
    }
    if let Some(app) = &q.app {
        hopper_core::function::validate_name(app, "app")
            .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?;
    }
    let mut app = q.app.clone();
    let function = match &q.function {
        Some(text) => {
            let name = FunctionName::parse(text)
                .map_err(|e| ApiError::bad_request("invalid_function_name", e.to_string()))?;
            if name.app.is_some() {
                app = name.app;
            }
            Some(name.function)
        }
        None => None,
    };
    let call_state = q
        .state
        .as_deref()
        .map(|s| s.parse::<InputState>())
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?;
    let origin = match q.origin.as_deref() {
        None => None,
        Some(o) => Some(Origin::parse(o).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("unknown origin {o:?} (expected spawn, map, schedule or rerun)"),
            )
        })?),
    };
    let cursor = q.cursor.as_deref().map(parse_id).transpose()?;
    let until = q
        .until
        .as_deref()
        .map(|t| time_bound(&state, "until", t).map(CallId::first_at))
        .transpose()?;
    // Ids are ordered by time: a time bound is an id bound, served by the same indexes.
    let before = match (cursor, until) {
        (Some(c), Some(u)) => Some(c.min(u)),
        (c, u) => c.or(u),
    };
    let after = q
        .since
        .as_deref()
        .map(|t| time_bound(&state, "since", t).map(CallId::first_at))
        .transpose()?;
    let rows = state
        .store
        .call_list(CallList {
            app,
            function,
            state: call_state,
            origin,
            before,
            after,
            limit: limit + 1,
        })
        .await?;
    let more = rows.len() > limit as usize;
    let page: Vec<&CallRow> = rows.iter().take(limit as usize).collect();
    // One-input calls show their input's output or error: read them all in one query.
    let single: Vec<CallId> = page
        .iter()
        .filter(|c| c.counts.total == 1)
        .map(|c| c.id.clone())
        .collect();
    let mut firsts: std::collections::HashMap<CallId, hopper_store::InputRow> = state
        .store
        .input_first_many(&single)
        .await?
        .into_iter()
        .map(|i| (i.call_id.clone(), i))
        .collect();
    // Maps with a failed input show the first: one read each (failures are few).
    for call in page
        .iter()
        .filter(|c| c.counts.total > 1 && c.counts.failed > 0)
    {
        if let Some(failed) = shown_input(&state, call).await? {
            firsts.insert(call.id.clone(), failed);
        }
    }
    let calls = page
        .iter()
        .map(|row| views::call(row, firsts.get(&row.id)))
        .collect();
    Ok(Json(CallPage {
        next_cursor: if more {
            page.last().map(|c| c.id.to_string())
        } else {
            None
        },
        calls,
    }))
}

#[derive(Deserialize)]
pub struct AttemptQuery {
    /// Only this input's attempts.
    index: Option<i64>,
    /// Only the attempts of inputs after this index: the page after one whose last attempt
    /// was of input `after`.
    after: Option<i64>,
    /// At most this many, by input and attempt (default 1,000, at most 10,000).
    limit: Option<u32>,
}

pub async fn attempts(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<AttemptQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let id = parse_id(&id)?;
    let limit = q.limit.unwrap_or(1_000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and 10000, not {limit}"),
        ));
    }
    non_negative("index", q.index)?;
    non_negative("after", q.after)?;
    load(&state, &id).await?;
    // One input's attempts (`index`) are bounded by its retries; a page of a call's inputs
    // also by bytes.
    let bound = q.index.is_none();
    let mut rows = state
        .store
        .attempt_list(AttemptList {
            call_id: id.clone(),
            index: q.index,
            after_index: q.after,
            limit,
            max_bytes: bound.then_some(super::PAGE_BYTES),
        })
        .await?;
    // Cut at its byte bound (measured as the store does, by the errors' JSON), the page ends
    // at a whole input and says where the next starts; when one input's attempts fill it, the
    // page holds all of them.
    let mut next = None;
    if bound && super::errors_bytes(rows.iter().map(|r| r.error.as_ref())) >= super::PAGE_BYTES {
        if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
            let (first, last) = (first.index, last.index);
            if first != last {
                rows.retain(|row| row.index != last);
            } else {
                rows = state
                    .store
                    .attempt_list(AttemptList {
                        call_id: id.clone(),
                        index: Some(first),
                        after_index: None,
                        limit: 10_000,
                        max_bytes: None,
                    })
                    .await?;
            }
            let after = rows.last().map_or(last, |row| row.index);
            next = Some(format!(
                "</v1/calls/{id}/attempts?after={after}&limit={limit}>; rel=\"next\""
            ));
        }
    }
    let page = Json(
        rows.iter()
            .map(views::attempt)
            .collect::<Vec<AttemptView>>(),
    );
    Ok(match next {
        Some(link) => ([(axum::http::header::LINK, link)], page).into_response(),
        None => page.into_response(),
    })
}

#[derive(Deserialize)]
pub struct LogQuery {
    /// Only lines after this `seq`.
    #[serde(default)]
    after: i64,
    /// Only lines of this input.
    index: Option<i64>,
    limit: Option<u32>,
}

/// Refuses a negative position or index.
fn non_negative(name: &str, value: Option<i64>) -> Result<(), ApiError> {
    match value {
        Some(v) if v < 0 => Err(ApiError::bad_request(
            "invalid_query",
            format!("{name} must be 0 or more, not {v}"),
        )),
        _ => Ok(()),
    }
}

pub async fn logs(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Json<LogPage>, ApiError> {
    let id = parse_id(&id)?;
    non_negative("after", Some(q.after))?;
    non_negative("index", q.index)?;
    load(&state, &id).await?;
    let rows = state
        .store
        .log_list(LogList {
            call_id: id,
            index: q.index,
            after_seq: q.after,
            limit: match q.limit.unwrap_or(1000) {
                limit @ 1..=10_000 => limit,
                limit => {
                    return Err(ApiError::bad_request(
                        "invalid_query",
                        format!("limit must be between 1 and 10000, not {limit}"),
                    ))
                }
            },
            max_bytes: Some(super::PAGE_BYTES),
        })
        .await?;
    Ok(Json(LogPage {
        lines: rows.iter().map(views::log).collect(),
    }))
}

/// `GET /v1/calls/{id}/logs/stream`: log lines as server-sent events (`line`, data: the line
/// as JSON) as they are written, then one `end` event (data: the call) once the call has ended
/// and every line was sent.
pub async fn log_stream(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<
    axum::response::sse::Sse<
        impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
    >,
    ApiError,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures_util::StreamExt;
    let id = parse_id(&id)?;
    non_negative("after", Some(q.after))?;
    non_negative("index", q.index)?;
    load(&state, &id).await?;
    struct Follow {
        state: AppState,
        id: CallId,
        index: Option<i64>,
        after: i64,
        ended: bool,
    }
    let start = Follow {
        state,
        id,
        index: q.index,
        after: q.after,
        ended: false,
    };
    let stream = futures_util::stream::unfold(start, |mut f| async move {
        if f.ended {
            return None;
        }
        loop {
            // The state first: lines written before the call ended are then in this read.
            let call = f.state.store.call_get(&f.id).await.ok().flatten();
            let ended = call.as_ref().is_none_or(|c| c.state.is_terminal());
            let lines = f
                .state
                .store
                .log_list(LogList {
                    call_id: f.id.clone(),
                    index: f.index,
                    after_seq: f.after,
                    limit: 1_000,
                    max_bytes: Some(super::PAGE_BYTES),
                })
                .await
                .unwrap_or_default();
            if let Some(last) = lines.last() {
                f.after = last.seq;
                let events: Vec<Event> = lines
                    .iter()
                    .map(|l| {
                        Event::default()
                            .event("line")
                            .json_data(views::log(l))
                            .unwrap_or_default()
                    })
                    .collect();
                return Some((events, f));
            }
            if ended {
                f.ended = true;
                let end = match &call {
                    Some(c) => Event::default()
                        .event("end")
                        .json_data(views::call(c, None))
                        .unwrap_or_default(),
                    None => Event::default().event("end").data("{}"),
                };
                return Some((vec![end], f));
            }
            let mut wake = f.state.events.watch_results();
            wake.borrow_and_update();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = wake.changed() => {}
                _ = f.state.shutdown.cancelled() => return None,
            }
        }
    })
    .flat_map(|events| futures_util::stream::iter(events.into_iter().map(Ok)));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// `POST /v1/calls/{id}/rerun` (body optional: `{"index": N, "force": false}`): a new call
/// (origin `rerun`) of the function's current version with the input `index` (default 0) of
/// call `id`; `201` with the new call, or `200` with the one a retry of the same request made.
/// Idempotent: the `Idempotency-Key` header names the re-run; without one, two requests to
/// re-run the same input at once make one call. An input whose earlier re-run has not failed
/// (pending, running or succeeded) is refused (409 `already_rerun`, naming it) unless
/// `force`, as is one that has not ended (409 `input_not_ended`).
pub async fn rerun(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    req: axum::extract::Request,
) -> Result<(StatusCode, Json<CallView>), ApiError> {
    let id = parse_id(&id)?;
    let key = idempotency_key(req.headers(), None)?;
    let empty = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .is_none_or(|n| n.as_bytes() == b"0");
    let ask = if empty && !req.headers().contains_key(axum::http::header::CONTENT_TYPE) {
        RerunRequest::default()
    } else {
        use axum::extract::FromRequest;
        super::extract::ApiJson::<RerunRequest>::from_request(req, &state)
            .await?
            .0
    };
    let call = load(&state, &id).await?;
    let index = match ask.index {
        Some(index) => index,
        None if call.counts.total == 1 && !call.accepting_inputs => 0,
        None => {
            return Err(ApiError::bad_request(
                "invalid_input",
                format!(
                    "{id} has {}: say which to re-run ({{\"index\": N}}), or re-run its failed ones with POST /v1/inputs/rerun {{\"call\": \"{id}\"}}",
                    hopper_core::plural(call.counts.total.max(0) as u64, "input")
                ),
            ))
        }
    };
    let earlier = reruns_of(&state, std::slice::from_ref(&call.id)).await?;
    let (new, created) = rerun_input(&state, &call, index, ask.force, key, &earlier).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(&state, &new).await?)))
}

/// The re-runs of inputs of `calls`, by call and input index, oldest first.
pub async fn reruns_of(
    state: &AppState,
    calls: &[CallId],
) -> Result<std::collections::HashMap<(CallId, i64), Vec<hopper_store::RerunRow>>, ApiError> {
    let mut by_input: std::collections::HashMap<_, Vec<_>> = std::collections::HashMap::new();
    for row in state.store.rerun_list(calls).await? {
        by_input
            .entry((row.of_call.clone(), row.of_index))
            .or_default()
            .push(row);
    }
    Ok(by_input)
}

/// Re-runs input `index` of `call` (see [`rerun`]), given its earlier re-runs; returns the
/// call that re-runs it and whether this request made it.
pub async fn rerun_input(
    state: &AppState,
    call: &CallRow,
    index: i64,
    force: bool,
    key: Option<String>,
    earlier: &std::collections::HashMap<(CallId, i64), Vec<hopper_store::RerunRow>>,
) -> Result<(CallRow, bool), ApiError> {
    let earlier = earlier
        .get(&(call.id.clone(), index))
        .map_or(&[][..], Vec::as_slice);
    // A retry of the request that made a re-run answers with it.
    if let Some(done) = key.as_deref().and_then(|k| {
        earlier
            .iter()
            .find(|r| r.idempotency_key.as_deref() == Some(k))
    }) {
        let again = load(state, &done.call_id).await?;
        return Ok((again, false));
    }
    let input = state
        .store
        .input_get(&call.id, index)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                "unknown_input",
                format!(
                    "{} has no input {index} (it has {}, or it was pruned)",
                    call.id,
                    hopper_core::plural(call.counts.total.max(0) as u64, "input")
                ),
            )
        })?;
    if !force && !input.state.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "input_not_ended",
            format!(
                "input {index} of {} is {}: re-run it once it has ended (or cancel it first), or pass force",
                call.id, input.state
            ),
        ));
    }
    let live = earlier
        .iter()
        .rev()
        .find(|r| !matches!(r.state, InputState::Failed | InputState::Cancelled));
    if let (false, Some(live)) = (force, live) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_rerun",
            format!(
                "input {index} of {} was re-run already, as {} ({}); pass force to run it once more",
                call.id, live.call_id, live.state
            ),
        ));
    }
    let function = resolve(state, &format!("{}.{}", call.app, call.function)).await?;
    // Without a key of the caller's, one of the input and its re-runs so far: two requests to
    // re-run it at once make one call.
    let given = key.clone();
    let key = key.unwrap_or_else(|| rerun_key(&call.id, index, earlier.len()));
    let mut insert = spawned(&function, input.input, Some(key), state.now());
    insert.origin = Origin::Rerun;
    insert.rerun_of = Some((call.id.clone(), index));
    // A re-run keeps the key and priority its call was given.
    if call.key.is_some() {
        insert.key = call.key.clone();
        insert.input_keys.clear();
    }
    insert.priority = call.priority;
    super::blobs::claim_refs(state, &insert.id, &insert.inputs, |_| {
        format!("input {index}")
    })
    .await?;
    match state.store.call_insert(insert).await? {
        CallInserted::Created(new) => {
            crate::metrics::call_started(format!("{}.{}", new.app, new.function), "rerun");
            state.events.inputs_for(&new.app, &new.function, 1);
            Ok((new, true))
        }
        // The key named a call already: the same re-run (made at once by another request), or
        // else a call that is not a re-run of this input, which the key cannot name too.
        CallInserted::Existing(new) if new.rerun_of == Some((call.id.clone(), index)) => {
            Ok((new, false))
        }
        CallInserted::Existing(other) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_conflict",
            format!(
                "the idempotency key {:?} names call {}, which is not a re-run of input {index} of {}; give another key",
                given.unwrap_or_default(),
                other.id,
                call.id
            ),
        )),
    }
}

/// `GET /v1/calls/{id}/inputs/{index}`: one input with its payload and result.
pub async fn input(
    State(state): State<AppState>,
    ApiPath((id, index)): ApiPath<(String, i64)>,
) -> Result<Json<InputView>, ApiError> {
    let id = parse_id(&id)?;
    load(&state, &id).await?;
    let row = state.store.input_get(&id, index).await?.ok_or_else(|| {
        ApiError::not_found("unknown_input", format!("{id} has no input {index}"))
    })?;
    let json = |text: &str| serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
    Ok(Json(InputView {
        index: row.index,
        state: row.state,
        input: json(&row.input),
        output: row.output.as_deref().map(json),
        error: row.error,
        attempts: row.attempts,
        reruns: reruns_of(&state, std::slice::from_ref(&id))
            .await?
            .remove(&(id.clone(), index))
            .unwrap_or_default()
            .iter()
            .map(views::rerun)
            .collect(),
    }))
}
