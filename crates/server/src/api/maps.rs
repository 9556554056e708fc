//! `/v1/functions/{name}/map`, `/v1/calls/{id}/inputs` and `/v1/calls/{id}/results`: maps
//! whose inputs stream in by chunks and whose results stream out by cursor, so neither the
//! client nor the server ever holds them all.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use hopper_core::api::{CallView, InputResultView, Origin, ResultPage};
use hopper_core::{CallId, InputState};
use hopper_store::{CallInsert, CallInserted, InputAppend, InputResults, ResultOrder};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::apps::resolve;
use super::calls::{idempotency_key, load, parse_id, view};
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::views;
use crate::state::AppState;

/// Most inputs in one request; send more in further chunks.
pub const MAX_CHUNK: usize = 10_000;
/// Longest a results request waits for new results.
const MAX_RESULTS_WAIT: Duration = Duration::from_secs(60);

/// A map's body as it came: each input's own text, checked before it is parsed. Unknown
/// fields are refused (a misspelt `done` would leave a map open).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapBody {
    #[serde(default)]
    inputs: Vec<Box<RawValue>>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    starmap: bool,
    #[serde(default)]
    discard_results: bool,
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

/// A chunk of a map's inputs as it came.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkBody {
    start: i64,
    #[serde(default)]
    inputs: Vec<Box<RawValue>>,
    #[serde(default)]
    done: bool,
}

fn encode_inputs(
    state: &AppState,
    inputs: &[Box<RawValue>],
    starmap: bool,
    start: i64,
) -> Result<Vec<String>, ApiError> {
    if inputs.len() > MAX_CHUNK {
        return Err(ApiError::bad_request(
            "too_many_inputs",
            format!(
                "{} inputs in one request; send at most {MAX_CHUNK} per chunk",
                inputs.len()
            ),
        ));
    }
    let limit = state.config.max_payload_bytes;
    inputs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let index = start.saturating_add(i as i64);
            let text = super::extract::value(v, &format!("input {index}"))?;
            if starmap && !text.starts_with('[') {
                return Err(ApiError::bad_request(
                    "invalid_input",
                    format!("input {index} is not a list of arguments, as starmap needs"),
                ));
            }
            if text.len() > limit {
                return Err(ApiError::payload_too_large(
                    &format!("input {index}"),
                    text.len(),
                    limit,
                ));
            }
            Ok(text)
        })
        .collect()
}

pub async fn map(
    State(state): State<AppState>,
    caller: Option<axum::Extension<super::CanRead>>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<MapBody>,
) -> Result<(StatusCode, Json<CallView>), ApiError> {
    let function = resolve(&state, &name).await?;
    let key = idempotency_key(&headers, req.idempotency_key)?;
    let starts_at =
        super::calls::starts_at(&state, req.delay.as_deref(), req.start_at.as_deref(), "")?;
    let inputs = encode_inputs(&state, &req.inputs, req.starmap, 0)?;
    let added = inputs.len();
    let input_keys = super::calls::input_keys(&function.spec, &inputs);
    let mut insert = CallInsert {
        id: CallId::generate(),
        app: function.spec.app.clone(),
        function: function.spec.name.clone(),
        version: function.version,
        origin: Origin::Map,
        idempotency_key: key,
        inputs,
        accepting_inputs: !req.done,
        discard_results: req.discard_results,
        schedule: None,
        rerun_of: None,
        starts_at,
        priority: function.spec.priority,
        key: None,
        input_keys,
        now: state.now(),
    };
    super::calls::controls(&mut insert, req.key, req.priority, "")?;
    super::blobs::claim_refs(&state, &insert.id, &insert.inputs, |i| format!("input {i}")).await?;
    let inserted = state.store.call_insert(insert).await?;
    match inserted {
        CallInserted::Created(call) => {
            crate::metrics::call_started(format!("{}.{}", call.app, call.function), "map");
            if added > 0 {
                state.events.inputs_for(&call.app, &call.function, added);
            }
            if call.state.is_terminal() {
                state.events.call_finished(call.id.clone());
            }
            Ok((StatusCode::CREATED, Json(views::call(&call, None))))
        }
        CallInserted::Existing(call) => {
            let view = view(&state, &call).await?;
            Ok((StatusCode::OK, Json(super::CanRead::filter(caller, view))))
        }
    }
}

/// The keys of a chunk's inputs by the map's function's `limits.key`, unless the map has a
/// key of its own (then the store gives every input that one).
async fn chunk_keys(
    state: &AppState,
    id: &CallId,
    inputs: &[String],
) -> Result<Vec<String>, ApiError> {
    let Some(call) = state.store.call_get(id).await? else {
        return Ok(Vec::new());
    };
    if call.key.is_some() {
        return Ok(Vec::new());
    }
    Ok(super::calls::function_of(state, &call)
        .await?
        .map(|f| super::calls::input_keys(&f.spec, inputs))
        .unwrap_or_default())
}

pub async fn append(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(chunk): ApiJson<ChunkBody>,
) -> Result<Json<CallView>, ApiError> {
    let id = parse_id(&id)?;
    if chunk.start < 0 {
        return Err(ApiError::bad_request(
            "invalid_input",
            "start must be 0 or more",
        ));
    }
    let inputs = encode_inputs(&state, &chunk.inputs, false, chunk.start)?;
    let start = chunk.start;
    super::blobs::claim_refs(&state, &id, &inputs, |i| {
        format!("input {}", start.saturating_add(i as i64))
    })
    .await?;
    let added = inputs.len();
    let input_keys = chunk_keys(&state, &id, &inputs).await?;
    let call = state
        .store
        .input_append(InputAppend {
            call_id: id.clone(),
            start: chunk.start,
            inputs,
            input_keys,
            done: chunk.done,
            now: state.now(),
        })
        .await?;
    if added > 0 {
        state.events.inputs_for(&call.app, &call.function, added);
    }
    if call.state.is_terminal() {
        state.events.call_finished(id);
        state.events.results_recorded();
    }
    Ok(Json(views::call(&call, None)))
}

#[derive(Deserialize)]
pub struct ResultsQuery {
    /// `index` (default): results in input order, stopping at the first input not ended yet;
    /// `completion`: results as inputs end.
    order: Option<String>,
    /// Cursor: the `next` of the previous page (default: the start).
    after: Option<i64>,
    limit: Option<u32>,
    /// Seconds to wait for at least one result (default 0).
    wait: Option<f64>,
}

pub async fn results(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ResultsQuery>,
) -> Result<Json<ResultPage>, ApiError> {
    let id = parse_id(&id)?;
    let order = match q.order.as_deref() {
        None | Some("index") => ResultOrder::Index,
        Some("completion") => ResultOrder::Completion,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("order must be index or completion, not {other:?}"),
            ))
        }
    };
    if q.after.is_some_and(|a| a < -1) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "after must be -1 or more (the `next` of a previous page)",
        ));
    }
    let after = q.after.unwrap_or(match order {
        ResultOrder::Index => -1,
        ResultOrder::Completion => 0,
    });
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and 10000, not {limit}"),
        ));
    }
    let wait = super::extract::wait_seconds(q.wait, MAX_RESULTS_WAIT.min(state.config.max_wait))?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut wake = state.events.watch_results();
    loop {
        wake.borrow_and_update();
        // The call is read first: if it had ended, every result is already in the rows below.
        let call = load(&state, &id).await?;
        state.heard_from_client(&call).await;
        let rows = state
            .store
            .input_results(InputResults {
                call_id: id.clone(),
                order,
                after,
                limit,
                max_bytes: super::PAGE_BYTES,
            })
            .await?;
        let mut results = Vec::with_capacity(rows.len());
        let mut next = after;
        for row in rows {
            let ended = row.state.is_terminal();
            if !ended {
                // In index order, a result waits for every input before it.
                break;
            }
            next = match order {
                ResultOrder::Index => row.index,
                ResultOrder::Completion => row.done_seq.unwrap_or(next),
            };
            results.push(InputResultView {
                index: row.index,
                state: row.state,
                output: if row.state == InputState::Succeeded {
                    row.output
                        .as_deref()
                        .and_then(|o| serde_json::from_str(o).ok())
                } else {
                    None
                },
                error: if row.state == InputState::Succeeded {
                    None
                } else {
                    row.error
                },
            });
        }
        let read_all = match order {
            ResultOrder::Index => next.saturating_add(1) >= call.counts.total,
            ResultOrder::Completion => next >= call.counts.ended(),
        };
        let done = call.state.is_terminal() && read_all;
        if !results.is_empty() || done || tokio::time::Instant::now() >= deadline {
            return Ok(Json(ResultPage {
                results,
                next,
                done,
                call: views::call(&call, None),
            }));
        }
        let tick = tokio::time::Instant::now() + Duration::from_secs(1);
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.min(tick)) => {}
            _ = wake.changed() => {}
            // A stopping server does not hold the client (it asks again, with backoff).
            _ = state.shutdown.cancelled() => return Err(ApiError::stopping()),
        }
    }
}
