//! Database rows into the store's types (errors: `dialect::db_err`).

use crate::db::Row;
use hopper_core::api::{InputError, LogStream, Origin};
use hopper_core::{CallCounts, CallId, CallState, InputState, WorkerId};
use hopper_store::{CallRow, StoreError};

pub use crate::dialect::db_err;
use crate::dialect::DbRow;

pub fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

pub fn state(text: &str) -> Result<InputState, StoreError> {
    text.parse().map_err(|e| corrupt("state", e))
}

pub fn call_id(text: &str) -> Result<CallId, StoreError> {
    text.parse().map_err(|e| corrupt("call id", e))
}

pub fn worker_id(text: Option<String>) -> Result<Option<WorkerId>, StoreError> {
    text.map(|t| t.parse().map_err(|e| corrupt("worker id", e)))
        .transpose()
}

pub fn error_json(text: Option<String>) -> Result<Option<InputError>, StoreError> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt("error", e)))
        .transpose()
}

pub fn error_text(error: &InputError) -> String {
    let mut text = serde_json::json!({"code": error.code, "message": error.message});
    if let Some(module) = &error.module {
        text["module"] = module.as_str().into();
    }
    if let Some(traceback) = &error.traceback {
        text["traceback"] = traceback.as_str().into();
    }
    text.to_string()
}

pub fn stream(text: &str) -> Result<LogStream, StoreError> {
    LogStream::parse(text).ok_or_else(|| corrupt("log stream", text))
}

/// The columns [`call_row`] reads, in a `SELECT` or `RETURNING`.
pub const CALL_COLUMNS: &str = "id, app, function, version, origin, state, idempotency_key, n_total, n_pending, n_running, n_succeeded, n_failed, n_cancelled, accepting_inputs, discard_results, schedule, due_at, rerun_of_call, rerun_of_index, starts_at, priority, key, created_at, finished_at";

pub fn call_row(row: &DbRow) -> Result<CallRow, StoreError> {
    let origin: String = row.try_get("origin").map_err(db_err)?;
    Ok(CallRow {
        id: call_id(&row.try_get::<String, _>("id").map_err(db_err)?)?,
        app: row.try_get("app").map_err(db_err)?,
        function: row.try_get("function").map_err(db_err)?,
        version: row.try_get("version").map_err(db_err)?,
        origin: Origin::parse(&origin).ok_or_else(|| corrupt("origin", &origin))?,
        state: state(&row.try_get::<String, _>("state").map_err(db_err)?)?,
        counts: counts(row)?,
        idempotency_key: row.try_get("idempotency_key").map_err(db_err)?,
        accepting_inputs: row.try_get::<i64, _>("accepting_inputs").map_err(db_err)? != 0,
        discard_results: row.try_get::<i64, _>("discard_results").map_err(db_err)? != 0,
        schedule: match (
            row.try_get::<Option<String>, _>("schedule")
                .map_err(db_err)?,
            row.try_get::<Option<i64>, _>("due_at").map_err(db_err)?,
        ) {
            (Some(s), Some(d)) => Some((s, d)),
            _ => None,
        },
        rerun_of: match (
            row.try_get::<Option<String>, _>("rerun_of_call")
                .map_err(db_err)?,
            row.try_get::<Option<i64>, _>("rerun_of_index")
                .map_err(db_err)?,
        ) {
            (Some(c), Some(i)) => Some((call_id(&c)?, i)),
            _ => None,
        },
        starts_at: row.try_get("starts_at").map_err(db_err)?,
        priority: row.try_get::<i64, _>("priority").map_err(db_err)? as i32,
        key: row.try_get("key").map_err(db_err)?,
        created_at: row.try_get("created_at").map_err(db_err)?,
        finished_at: row.try_get("finished_at").map_err(db_err)?,
    })
}

pub fn counts(row: &DbRow) -> Result<CallCounts, StoreError> {
    Ok(CallCounts {
        total: row.try_get("n_total").map_err(db_err)?,
        pending: row.try_get("n_pending").map_err(db_err)?,
        running: row.try_get("n_running").map_err(db_err)?,
        succeeded: row.try_get("n_succeeded").map_err(db_err)?,
        failed: row.try_get("n_failed").map_err(db_err)?,
        cancelled: row.try_get("n_cancelled").map_err(db_err)?,
    })
}

/// The counter column of a state.
pub fn count_column(state: CallState) -> &'static str {
    match state {
        InputState::Pending => "n_pending",
        InputState::Running => "n_running",
        InputState::Succeeded => "n_succeeded",
        InputState::Failed => "n_failed",
        InputState::Cancelled => "n_cancelled",
    }
}
