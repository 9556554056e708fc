//! Failed inputs across calls: `GET /v1/inputs` finds them (a map's failed input among
//! thousands, every failure of a function in the last hour), and `POST /v1/inputs/rerun`
//! runs a selection of them again, one new call each, so that the same selection re-run twice
//! makes no call the second time.

use std::collections::HashMap;

use axum::extract::State;
use axum::Json;
use hopper_core::api::Origin;
use hopper_core::api::{
    FailedInputPage, FailedInputView, InputsRerunRequest, InputsRerunResponse, RerunDone,
    RerunRefused,
};
use hopper_core::{CallId, FunctionName};
use hopper_store::{CallInserted, FailedInputList, FailedInputRow};
use serde::Deserialize;

use super::apps::resolve;
use super::calls::{rerun_key, reruns_of, spawned, time_bound};
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::views;
use crate::state::AppState;

/// Inputs a page lists, and a bulk re-run runs, at most.
const MAX_PAGE: u32 = 1_000;
/// Re-runs written in one transaction, at most, and bytes of their inputs.
const RERUN_GROUP: usize = 100;
const RERUN_GROUP_BYTES: usize = 8 << 20;

#[derive(Deserialize)]
pub struct ListQuery {
    state: Option<String>,
    call: Option<String>,
    app: Option<String>,
    function: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// What a listing or a bulk re-run selects, checked.
struct Selection {
    list: FailedInputList,
}

fn select(
    state: &AppState,
    call: Option<&str>,
    wanted_state: Option<&str>,
    app: Option<&str>,
    function: Option<&str>,
    (since, until): (Option<&str>, Option<&str>),
    limit: u32,
) -> Result<Selection, ApiError> {
    match wanted_state {
        None | Some("failed") => {}
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("state {other:?} is not listed here: failed inputs only (state=failed)"),
            ))
        }
    }
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {MAX_PAGE}, not {limit}"),
        ));
    }
    if let Some(app) = app {
        hopper_core::function::validate_name(app, "app")
            .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?;
    }
    let mut app = app.map(str::to_string);
    let function = match function {
        Some(text) => {
            // As the calls list takes it: app.function, or a bare name in any app.
            let name = FunctionName::parse(text)
                .map_err(|e| ApiError::bad_request("invalid_function_name", e.to_string()))?;
            app = name.app.or(app);
            Some(name.function)
        }
        None => None,
    };
    Ok(Selection {
        list: FailedInputList {
            call: call.map(super::calls::parse_id).transpose()?,
            app,
            function,
            since: since.map(|t| time_bound(state, "since", t)).transpose()?,
            until: until.map(|t| time_bound(state, "until", t)).transpose()?,
            before: None,
            limit,
            max_bytes: Some(super::PAGE_BYTES),
        },
    })
}

/// Whether a page of failed inputs has more after it: it holds more than `limit` rows, or
/// the store cut it at its byte bound.
fn more_after(rows: &[FailedInputRow], limit: u32) -> bool {
    rows.len() > limit as usize
        || super::errors_bytes(rows.iter().map(|r| r.error.as_ref())) >= super::PAGE_BYTES
}

/// A page's cursor: the last input's failure time and row id.
fn cursor(row: &FailedInputRow) -> String {
    format!("{}.{}", row.finished_at, row.id)
}

fn parse_cursor(text: &str) -> Result<(i64, i64), ApiError> {
    text.split_once('.')
        .and_then(|(at, id)| Some((at.parse().ok()?, id.parse().ok()?)))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("cursor {text:?} is not one this server gave (next_cursor)"),
            )
        })
}

/// `GET /v1/inputs?state=failed&call=&app=&function=&since=&until=&limit=100&cursor=`: failed inputs
/// across calls, newest failure first, each with its error, attempts and re-runs.
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<FailedInputPage>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    let mut selection = select(
        &state,
        q.call.as_deref(),
        q.state.as_deref(),
        q.app.as_deref(),
        q.function.as_deref(),
        (q.since.as_deref(), q.until.as_deref()),
        limit,
    )?;
    selection.list.before = q.cursor.as_deref().map(parse_cursor).transpose()?;
    selection.list.limit = limit + 1;
    let mut rows = state.store.input_failed_list(selection.list).await?;
    let more = more_after(&rows, limit);
    rows.truncate(limit as usize);
    let reruns = reruns_of(&state, &call_ids(&rows)).await?;
    let inputs = rows
        .iter()
        .map(|row| FailedInputView {
            call_id: row.call_id.clone(),
            index: row.index,
            function: format!("{}.{}", row.app, row.function),
            error: row.error.clone(),
            attempts: row.attempts,
            finished_at: views::time(row.finished_at),
            reruns: reruns
                .get(&(row.call_id.clone(), row.index))
                .map(|r| r.iter().map(views::rerun).collect())
                .unwrap_or_default(),
        })
        .collect();
    Ok(Json(FailedInputPage {
        inputs,
        next_cursor: rows.last().filter(|_| more).map(cursor),
    }))
}

/// Writes a group of re-runs in one transaction; returns each with the call that re-runs it
/// (an existing one when its key was taken: a concurrent re-run of the same input).
async fn write_reruns(
    state: &AppState,
    group: Vec<(RerunDone, hopper_store::CallInsert)>,
) -> Result<Vec<RerunDone>, ApiError> {
    if group.is_empty() {
        return Ok(Vec::new());
    }
    let (mut done, inserts): (Vec<RerunDone>, Vec<_>) = group.into_iter().unzip();
    for (insert, d) in inserts.iter().zip(&done) {
        super::blobs::claim_refs(state, &insert.id, &insert.inputs, |_| {
            format!("input {} of {}", d.index, d.call_id)
        })
        .await?;
    }
    let made = state.store.call_insert_many(inserts).await?;
    let mut woken: HashMap<(String, String), usize> = HashMap::new();
    for (done, made) in done.iter_mut().zip(made) {
        let call = match made {
            CallInserted::Created(call) => {
                crate::metrics::call_started(format!("{}.{}", call.app, call.function), "rerun");
                *woken
                    .entry((call.app.clone(), call.function.clone()))
                    .or_default() += 1;
                call
            }
            CallInserted::Existing(call) => call,
        };
        done.rerun_id = call.id;
    }
    for ((app, function), n) in woken {
        state.events.inputs_for(&app, &function, n);
    }
    Ok(done)
}

fn call_ids(rows: &[FailedInputRow]) -> Vec<CallId> {
    let mut ids: Vec<CallId> = rows.iter().map(|r| r.call_id.clone()).collect();
    ids.sort();
    ids.dedup();
    ids
}

/// `POST /v1/inputs/rerun`: re-runs the failed inputs a filter selects (see
/// [`InputsRerunRequest`]), newest failure first, at most `limit` (default and most 1,000).
pub async fn rerun(
    State(state): State<AppState>,
    ApiJson(ask): ApiJson<InputsRerunRequest>,
) -> Result<Json<InputsRerunResponse>, ApiError> {
    // As `hopper rerun --failed`: a selection is needed, not every failure the server has.
    let chosen = [&ask.since, &ask.function, &ask.app];
    if ask.call.is_none() && chosen.iter().all(|c| c.is_none()) {
        return Err(ApiError::bad_request(
            "invalid_input",
            "say which failed inputs to re-run: since (e.g. \"1h\"), call, function or app",
        ));
    }
    let limit = ask.limit.unwrap_or(MAX_PAGE);
    let mut selection = select(
        &state,
        ask.call.as_ref().map(CallId::as_str),
        ask.state.as_deref(),
        ask.app.as_deref(),
        ask.function.as_deref(),
        (ask.since.as_deref(), ask.until.as_deref()),
        limit,
    )?;
    selection.list.before = ask.cursor.as_deref().map(parse_cursor).transpose()?;
    selection.list.limit = limit + 1;
    let mut rows = state.store.input_failed_list(selection.list).await?;
    let more = more_after(&rows, limit);
    rows.truncate(limit as usize);
    let earlier = reruns_of(&state, &call_ids(&rows)).await?;
    // A failed input that is itself a re-run stands for its original input only while it is
    // that input's latest re-run: one command re-runs an input at most once.
    let mut rerun_of = HashMap::new();
    for id in call_ids(&rows) {
        if let Some(of) = state.store.call_get(&id).await?.and_then(|c| c.rerun_of) {
            rerun_of.insert(id, of);
        }
    }
    let originals: Vec<CallId> = rerun_of.values().map(|(c, _)| c.clone()).collect();
    let latest = reruns_of(&state, &originals).await?;
    let now = state.now();
    let mut functions: HashMap<String, Option<hopper_store::FunctionRow>> = HashMap::new();
    let (mut rerun, mut skipped, mut refused) = (Vec::new(), Vec::new(), Vec::new());
    // Written in groups (one transaction each), bounded in calls and in bytes of inputs.
    let mut group: Vec<(RerunDone, hopper_store::CallInsert)> = Vec::new();
    let mut bytes = 0;
    for row in &rows {
        let done = |rerun_id: CallId| RerunDone {
            call_id: row.call_id.clone(),
            index: row.index,
            rerun_id,
        };
        let before = earlier
            .get(&(row.call_id.clone(), row.index))
            .map_or(&[][..], Vec::as_slice);
        // An input re-run before is represented by its re-run (listed itself if it failed).
        if let Some(last) = before.last().filter(|_| !ask.force) {
            skipped.push(done(last.call_id.clone()));
            continue;
        }
        let newer = rerun_of
            .get(&row.call_id)
            .and_then(|of| latest.get(of))
            .and_then(|r| r.last())
            .filter(|last| last.call_id != row.call_id);
        if let Some(newer) = newer.filter(|_| !ask.force) {
            skipped.push(done(newer.call_id.clone()));
            continue;
        }
        let Some(input) = state.store.input_get(&row.call_id, row.index).await? else {
            continue; // pruned since it was listed
        };
        let name = format!("{}.{}", row.app, row.function);
        if !functions.contains_key(&name) {
            let found = match resolve(&state, &name).await {
                Ok(f) => Some(f),
                Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => None,
                Err(e) => return Err(e),
            };
            functions.insert(name.clone(), found);
        }
        let Some(Some(function)) = functions.get(&name) else {
            refused.push(RerunRefused {
                call_id: row.call_id.clone(),
                index: row.index,
                reason: format!("{name} is no longer deployed"),
            });
            continue;
        };
        // The key a single re-run of this input would take: the two never both run.
        let key = rerun_key(&row.call_id, row.index, before.len());
        bytes += input.input.len();
        let mut insert = spawned(function, input.input, Some(key), now);
        insert.origin = Origin::Rerun;
        insert.rerun_of = Some((row.call_id.clone(), row.index));
        group.push((done(insert.id.clone()), insert));
        if group.len() >= RERUN_GROUP || bytes >= RERUN_GROUP_BYTES {
            rerun.extend(write_reruns(&state, std::mem::take(&mut group)).await?);
            bytes = 0;
        }
    }
    rerun.extend(write_reruns(&state, group).await?);
    Ok(Json(InputsRerunResponse {
        rerun,
        skipped,
        refused,
        next_cursor: rows.last().filter(|_| more).map(cursor),
    }))
}
