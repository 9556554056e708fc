//! `call_*`: calls and their per-state input counters.

use hopper_core::{CallId, CallState, InputState, UnixMillis};
use hopper_store::{
    CallCancel, CallInsert, CallInserted, CallList, CallPrune, CallRow, StoreError,
};
use sqlx::sqlite::SqliteConnection;
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use crate::map::{call_row, count_column, db_err, error_text, CALL_COLUMNS};

/// Inputs per multi-row `INSERT`; 7 parameters each stays far below SQLite's 32,766.
const INSERT_CHUNK: usize = 500;

pub async fn insert(pool: &SqlitePool, p: CallInsert) -> Result<CallInserted, StoreError> {
    let mut tx = pool.begin().await.map_err(db_err)?;
    if let Some(key) = &p.idempotency_key {
        let existing = sqlx::query(&format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE idempotency_key = $1"
        ))
        .bind(key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        if let Some(row) = existing {
            let call = call_row(&row)?;
            if call.app != p.app || call.function != p.function {
                return Err(StoreError::IdempotencyConflict {
                    key: key.clone(),
                    call_id: call.id.to_string(),
                    function: format!("{}.{}", call.app, call.function),
                });
            }
            return Ok(CallInserted::Existing(call));
        }
    }
    let total = p.inputs.len() as i64;
    let row = sqlx::query(&format!(
        "INSERT INTO calls (id, app, function, version, origin, state, idempotency_key, n_total, n_pending, created_at)
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $7, $8) RETURNING {CALL_COLUMNS}"
    ))
    .bind(p.id.as_str())
    .bind(&p.app)
    .bind(&p.function)
    .bind(p.version)
    .bind(p.origin.as_str())
    .bind(&p.idempotency_key)
    .bind(total)
    .bind(p.now)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_err)?;
    let call = call_row(&row)?;
    for (chunk_no, chunk) in p.inputs.chunks(INSERT_CHUNK).enumerate() {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO inputs (call_id, idx, app, function, version, state, input, not_before) ",
        );
        q.push_values(chunk.iter().enumerate(), |mut b, (i, input)| {
            b.push_bind(p.id.as_str())
                .push_bind((chunk_no * INSERT_CHUNK + i) as i64)
                .push_bind(&p.app)
                .push_bind(&p.function)
                .push_bind(p.version)
                .push("'pending'")
                .push_bind(input)
                .push_bind(p.now);
        });
        q.build().execute(&mut *tx).await.map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(CallInserted::Created(call))
}

pub async fn get(pool: &SqlitePool, id: &CallId) -> Result<Option<CallRow>, StoreError> {
    let row = sqlx::query(&format!("SELECT {CALL_COLUMNS} FROM calls WHERE id = $1"))
        .bind(id.as_str())
        .fetch_optional(pool)
        .await
        .map_err(db_err)?;
    row.as_ref().map(call_row).transpose()
}

pub async fn list(pool: &SqlitePool, p: CallList) -> Result<Vec<CallRow>, StoreError> {
    let mut q: QueryBuilder<Sqlite> =
        QueryBuilder::new(format!("SELECT {CALL_COLUMNS} FROM calls WHERE 1 = 1"));
    if let Some(app) = &p.app {
        q.push(" AND app = ").push_bind(app);
    }
    if let Some(function) = &p.function {
        q.push(" AND function = ").push_bind(function);
    }
    if let Some(state) = p.state {
        q.push(" AND state = ").push_bind(state.as_str());
    }
    if let Some(origin) = p.origin {
        q.push(" AND origin = ").push_bind(origin.as_str());
    }
    if let Some(before) = &p.before {
        q.push(" AND id < ").push_bind(before.as_str());
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(p.limit as i64);
    let rows = q.build().fetch_all(pool).await.map_err(db_err)?;
    rows.iter().map(call_row).collect()
}

pub async fn cancel(pool: &SqlitePool, p: CallCancel) -> Result<Option<CallRow>, StoreError> {
    let mut tx = pool.begin().await.map_err(db_err)?;
    let exists: Option<String> = sqlx::query_scalar("SELECT state FROM calls WHERE id = $1")
        .bind(p.id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
    if exists.is_none() {
        return Ok(None);
    }
    // A running input's attempt ends here; its worker learns at its next heartbeat.
    sqlx::query(
        "INSERT INTO attempts (input_id, attempt, call_id, idx, worker_id, outcome, started_at, finished_at, error)
         SELECT id, attempt, call_id, idx, worker_id, 'cancelled', started_at, $2, $3 FROM inputs
         WHERE call_id = $1 AND state = 'running'",
    )
    .bind(p.id.as_str())
    .bind(p.now)
    .bind(error_text(&cancelled_error()))
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    let moved = sqlx::query(
        "UPDATE inputs SET state = 'cancelled', finished_at = $2, error = $3, worker_id = NULL, lease_expires_at = NULL
         WHERE call_id = $1 AND state IN ('pending', 'running')",
    )
    .bind(p.id.as_str())
    .bind(p.now)
    .bind(error_text(&cancelled_error()))
    .execute(&mut *tx)
    .await
    .map_err(db_err)?
    .rows_affected();
    if moved > 0 {
        let row = sqlx::query(&format!(
            "UPDATE calls SET n_cancelled = n_cancelled + n_pending + n_running, n_pending = 0, n_running = 0
             WHERE id = $1 RETURNING {CALL_COLUMNS}"
        ))
        .bind(p.id.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        settle(&mut tx, &p.id, &call_row(&row)?, p.now).await?;
    }
    let row = sqlx::query(&format!("SELECT {CALL_COLUMNS} FROM calls WHERE id = $1"))
        .bind(p.id.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(Some(call_row(&row)?))
}

pub fn cancelled_error() -> hopper_core::api::InputError {
    hopper_core::api::InputError {
        code: "cancelled".into(),
        message: "the call was cancelled".into(),
    }
}

pub async fn prune(pool: &SqlitePool, p: CallPrune) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await.map_err(db_err)?;
    let doomed = "SELECT id FROM calls WHERE finished_at IS NOT NULL AND finished_at < $1 ORDER BY finished_at LIMIT $2";
    for table in ["logs", "attempts", "inputs"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE call_id IN ({doomed})"))
            .bind(p.finished_before)
            .bind(p.limit as i64)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
    }
    let deleted = sqlx::query(&format!("DELETE FROM calls WHERE id IN ({doomed})"))
        .bind(p.finished_before)
        .bind(p.limit as i64)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?
        .rows_affected();
    sqlx::query("DELETE FROM workers WHERE stopped_at IS NOT NULL AND stopped_at < $1")
        .bind(p.finished_before)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(deleted)
}

/// Moves `n` of a call's inputs from one state's counter to another's, and updates the call's
/// derived state. Returns the call's new state when this move ended the call.
pub async fn shift(
    conn: &mut SqliteConnection,
    id: &CallId,
    from: InputState,
    to: InputState,
    n: i64,
    now: UnixMillis,
) -> Result<Option<(CallId, CallState)>, StoreError> {
    let (from_col, to_col) = (count_column(from), count_column(to));
    let row = sqlx::query(&format!(
        "UPDATE calls SET {from_col} = {from_col} - $1, {to_col} = {to_col} + $1 WHERE id = $2 RETURNING {CALL_COLUMNS}"
    ))
    .bind(n)
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?;
    match row {
        Some(row) => settle(conn, id, &call_row(&row)?, now).await,
        None => Ok(None),
    }
}

/// Writes the state derived from the call's counters, if it changed.
async fn settle(
    conn: &mut SqliteConnection,
    id: &CallId,
    call: &CallRow,
    now: UnixMillis,
) -> Result<Option<(CallId, CallState)>, StoreError> {
    let derived = call.counts.state();
    if derived == call.state {
        return Ok(None);
    }
    let finished_at = derived.is_terminal().then_some(now);
    sqlx::query("UPDATE calls SET state = $1, finished_at = $2 WHERE id = $3")
        .bind(derived.as_str())
        .bind(finished_at)
        .bind(id.as_str())
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(derived.is_terminal().then(|| (id.clone(), derived)))
}
