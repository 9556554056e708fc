//! `call_*`: calls and their per-state input counters.

use std::collections::BTreeMap;

use crate::db::{Connection, QueryBuilder, Row};
use hopper_core::{CallCounts, CallId, CallState, InputState, UnixMillis};
use hopper_store::{
    CallCancel, CallInsert, CallInserted, CallList, CallPrune, CallRow, FunctionBacklog,
    InputAppend, InputResultRow, InputResults, Missing, ResultOrder, StoreError,
};

use crate::dialect::{Conn, Db, DbPool, LOCK_ROWS, SUM_AS_BIGINT};

use crate::map::{call_row, count_column, db_err, error_json, error_text, state, CALL_COLUMNS};

/// Inputs per multi-row `INSERT`; 9 parameters each stays far below SQLite's 32,766.
const INSERT_CHUNK: usize = 500;

pub async fn insert(conn: &mut Conn, p: CallInsert) -> Result<CallInserted, StoreError> {
    let mut tx = conn.begin().await.map_err(db_err)?;
    if let Some(key) = &p.idempotency_key {
        if let Some(call) = by_key(&mut tx, key).await? {
            return existing(&mut tx, key, call, &p).await;
        }
    }
    let total = p.inputs.len() as i64;
    // A concurrent insert of the same key makes this one do nothing (PostgreSQL waits for the
    // other to commit first), and the call it made is read back below.
    let row = crate::db::query(&format!(
        "INSERT INTO calls (id, app, function, version, origin, state, idempotency_key, n_total, n_pending,
                            accepting_inputs, discard_results, created_at, schedule, due_at,
                            rerun_of_call, rerun_of_index, starts_at, priority, key)
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                 $16, $17)
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING {CALL_COLUMNS}"
    ))
    .bind(p.id.as_str())
    .bind(&p.app)
    .bind(&p.function)
    .bind(p.version)
    .bind(p.origin.as_str())
    .bind(&p.idempotency_key)
    .bind(total)
    .bind(p.accepting_inputs as i64)
    .bind(p.discard_results as i64)
    .bind(p.now)
    .bind(p.schedule.as_ref().map(|(s, _)| s.clone()))
    .bind(p.schedule.as_ref().map(|(_, d)| *d))
    .bind(p.rerun_of.as_ref().map(|(c, _)| c.as_str().to_string()))
    .bind(p.rerun_of.as_ref().map(|(_, i)| *i))
    .bind(p.starts_at)
    .bind(i64::from(p.priority))
    .bind(&p.key)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err)?;
    let Some(row) = row else {
        let key = p.idempotency_key.as_deref().unwrap_or_default();
        let call = by_key(&mut tx, key).await?.ok_or_else(|| {
            StoreError::Conflict(format!(
                "idempotency key {key:?} was taken and released at once; try again"
            ))
        })?;
        return existing(&mut tx, key, call, &p).await;
    };
    let mut call = call_row(&row)?;
    insert_inputs(&mut tx, &call, 0, &p.inputs, &p.input_keys, p.now).await?;
    // An empty map that takes no more inputs has ended already.
    if settle(&mut tx, &p.id, &call, p.now).await?.is_some() {
        call = reload(&mut tx, &p.id).await?;
    }
    if !p.inputs.is_empty() {
        let notice = inputs_notice(&call.app, &call.function, p.inputs.len());
        crate::dialect::notify(&mut tx, &notice).await?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(CallInserted::Created(call))
}

/// The wake-up for `n` new inputs of `app.function`: `inputs:N:APP:FUNCTION`, which another
/// server turns into [`hopper_store::Wakeup::InputsOf`] (app and function names hold no `:`).
pub fn inputs_notice(app: &str, function: &str, n: usize) -> String {
    format!("inputs:{n}:{app}:{function}")
}

/// Calls per multi-row `INSERT` of a bulk spawn: 9 parameters each.
const CALL_CHUNK: usize = 500;

/// Creates many calls in one transaction (see `Store::call_insert_many`). Calls of one input
/// without an idempotency key — a bulk spawn's usual calls — are written by multi-row
/// statements; the others one at a time, as [`insert`] writes them.
pub async fn insert_many(
    conn: &mut Conn,
    calls: Vec<CallInsert>,
) -> Result<Vec<CallInserted>, StoreError> {
    let mut tx = conn.begin().await.map_err(db_err)?;
    let mut out: Vec<Option<CallInserted>> = Vec::with_capacity(calls.len());
    let mut plain = Vec::new();
    for (i, p) in calls.into_iter().enumerate() {
        let plain_one = p.idempotency_key.is_none()
            && p.rerun_of.is_none()
            && p.starts_at.is_none()
            && p.priority == 0
            && p.key.is_none()
            && p.input_keys.iter().all(String::is_empty);
        if plain_one && p.inputs.len() == 1 && !p.accepting_inputs {
            out.push(None);
            plain.push((i, p));
        } else {
            out.push(Some(insert(&mut tx, p).await?));
        }
    }
    for chunk in plain.chunks(CALL_CHUNK) {
        let mut q: QueryBuilder<Db> = QueryBuilder::new(
            "INSERT INTO calls (id, app, function, version, origin, state, n_total, n_pending,
                                accepting_inputs, discard_results, created_at, schedule, due_at) ",
        );
        q.push_values(chunk, |mut b, (_, p)| {
            b.push_bind(p.id.as_str())
                .push_bind(&p.app)
                .push_bind(&p.function)
                .push_bind(p.version)
                .push_bind(p.origin.as_str())
                .push("'pending'")
                .push("1")
                .push("1")
                .push("0")
                .push_bind(p.discard_results as i64)
                .push_bind(p.now)
                .push_bind(p.schedule.as_ref().map(|(s, _)| s.clone()))
                .push_bind(p.schedule.as_ref().map(|(_, d)| *d));
        });
        q.build().execute(&mut *tx).await.map_err(db_err)?;
        let mut q: QueryBuilder<Db> = QueryBuilder::new(
            "INSERT INTO inputs (call_id, idx, app, function, version, state, input, not_before) ",
        );
        q.push_values(chunk, |mut b, (_, p)| {
            b.push_bind(p.id.as_str())
                .push("0")
                .push_bind(&p.app)
                .push_bind(&p.function)
                .push_bind(p.version)
                .push("'pending'")
                .push_bind(p.inputs.first())
                .push_bind(p.now);
        });
        q.build().execute(&mut *tx).await.map_err(db_err)?;
    }
    let mut per_function: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (_, p) in &plain {
        *per_function.entry((&p.app, &p.function)).or_default() += 1;
    }
    for ((app, function), n) in per_function {
        crate::dialect::notify(&mut tx, &inputs_notice(app, function, n)).await?;
    }
    tx.commit().await.map_err(db_err)?;
    for (i, p) in plain {
        if let Some(slot) = out.get_mut(i) {
            *slot = Some(CallInserted::Created(CallRow {
                id: p.id,
                app: p.app,
                function: p.function,
                version: p.version,
                origin: p.origin,
                state: CallState::Pending,
                counts: CallCounts {
                    total: 1,
                    pending: 1,
                    ..Default::default()
                },
                idempotency_key: None,
                accepting_inputs: false,
                discard_results: p.discard_results,
                schedule: p.schedule,
                rerun_of: None,
                starts_at: None,
                priority: 0,
                key: None,
                created_at: p.now,
                finished_at: None,
            }));
        }
    }
    out.into_iter()
        .map(|c| c.ok_or_else(|| StoreError::Database("a bulk spawn lost a call".into())))
        .collect()
}

async fn by_key(conn: &mut Conn, key: &str) -> Result<Option<CallRow>, StoreError> {
    let row = crate::db::query(&format!(
        "SELECT {CALL_COLUMNS} FROM calls WHERE idempotency_key = $1"
    ))
    .bind(key)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?;
    row.as_ref().map(call_row).transpose()
}

/// The call an idempotency key already names: the same call if the request is the same (same
/// function, same first input), else a conflict.
async fn existing(
    conn: &mut Conn,
    key: &str,
    call: CallRow,
    p: &CallInsert,
) -> Result<CallInserted, StoreError> {
    let conflict = |differs: String| StoreError::IdempotencyConflict {
        key: key.to_string(),
        call_id: call.id.to_string(),
        differs,
    };
    if call.app != p.app || call.function != p.function {
        return Err(conflict(format!("of {}.{}", call.app, call.function)));
    }
    if let Some(first) = p.inputs.first() {
        let stored: Option<String> =
            crate::db::query_scalar("SELECT input FROM inputs WHERE call_id = $1 AND idx = 0")
                .bind(call.id.as_str())
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_err)?;
        // The same JSON value is the same input, whatever its keys' order or spacing.
        let same = |a: &str, b: &str| {
            a == b
                || serde_json::from_str::<serde_json::Value>(a).ok()
                    == serde_json::from_str::<serde_json::Value>(b).ok()
        };
        if stored.as_ref().is_some_and(|s| !same(s, first)) {
            return Err(conflict("with a different input".into()));
        }
    }
    Ok(CallInserted::Existing(call))
}

/// Writes a call's inputs from `start` on; `keys` are their keys from the function's
/// `limits.key` (see [`CallInsert::input_keys`]), unless the call has its own.
async fn insert_inputs(
    conn: &mut Conn,
    call: &CallRow,
    start: i64,
    inputs: &[String],
    keys: &[String],
    now: UnixMillis,
) -> Result<(), StoreError> {
    // A delayed call's inputs, a map's later chunks too, are due when it starts.
    let due = call.starts_at.map_or(now, |at| at.max(now));
    let key_of = |i: usize| -> &str {
        match &call.key {
            Some(key) => key,
            None => keys.get(i).map_or("", String::as_str),
        }
    };
    // Inputs without a key or priority take the columns' defaults: two binds a row fewer.
    let plain = call.priority == 0 && call.key.is_none() && keys.iter().all(String::is_empty);
    let columns = if plain {
        "INSERT INTO inputs (call_id, idx, app, function, version, state, input, not_before) "
    } else {
        "INSERT INTO inputs (call_id, idx, app, function, version, state, input, not_before, priority, key) "
    };
    for (chunk_no, chunk) in inputs.chunks(INSERT_CHUNK).enumerate() {
        let mut q: QueryBuilder<Db> = QueryBuilder::new(columns);
        q.push_values(chunk.iter().enumerate(), |mut b, (i, input)| {
            let n = chunk_no * INSERT_CHUNK + i;
            b.push_bind(call.id.as_str())
                .push_bind(start + n as i64)
                .push_bind(&call.app)
                .push_bind(&call.function)
                .push_bind(call.version)
                .push("'pending'")
                .push_bind(input)
                .push_bind(due);
            if !plain {
                b.push_bind(i64::from(call.priority))
                    .push_bind(key_of(n).to_string());
            }
        });
        q.build().execute(&mut *conn).await.map_err(db_err)?;
    }
    Ok(())
}

async fn reload(conn: &mut Conn, id: &CallId) -> Result<CallRow, StoreError> {
    let row = crate::db::query(&format!("SELECT {CALL_COLUMNS} FROM calls WHERE id = $1"))
        .bind(id.as_str())
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err)?;
    call_row(&row)
}

pub async fn append(conn: &mut Conn, p: InputAppend) -> Result<CallRow, StoreError> {
    let mut tx = conn.begin().await.map_err(db_err)?;
    // Locked, so a cancel committing meanwhile cannot be undone by this chunk reopening the
    // call (the chunk's inputs are new rows: nobody else holds them).
    let row = crate::db::query(&format!(
        "SELECT {CALL_COLUMNS} FROM calls WHERE id = $1{LOCK_ROWS}"
    ))
    .bind(p.call_id.as_str())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err)?;
    let Some(row) = row else {
        return Err(StoreError::not_found(
            Missing::Call,
            format!("no call {}", p.call_id),
        ));
    };
    let call = call_row(&row)?;
    let total = call.counts.total;
    let end = p.start.saturating_add(p.inputs.len() as i64);
    if p.start < total && end <= total {
        // A chunk we already have: the client retried a request whose answer it lost.
        if p.done && call.accepting_inputs {
            crate::db::query("UPDATE calls SET accepting_inputs = 0 WHERE id = $1")
                .bind(p.call_id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            let closed = reload(&mut tx, &p.call_id).await?;
            settle(&mut tx, &p.call_id, &closed, p.now).await?;
        }
        let call = reload(&mut tx, &p.call_id).await?;
        tx.commit().await.map_err(db_err)?;
        return Ok(call);
    }
    if !call.accepting_inputs {
        return Err(StoreError::Conflict(format!(
            "call {} takes no more inputs (it is {} with {total} inputs)",
            p.call_id, call.state
        )));
    }
    if p.start != total {
        return Err(StoreError::Conflict(format!(
            "the chunk starts at index {} but call {} has {total} inputs: send start = {total}",
            p.start, p.call_id
        )));
    }
    insert_inputs(&mut tx, &call, p.start, &p.inputs, &p.input_keys, p.now).await?;
    let n = p.inputs.len() as i64;
    crate::db::query(
        "UPDATE calls SET n_total = n_total + $2, n_pending = n_pending + $2, accepting_inputs = $3,
                          client_seen_at = $4 WHERE id = $1",
    )
    .bind(p.call_id.as_str())
    .bind(n)
    .bind((!p.done) as i64)
    .bind(p.now)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    let after = reload(&mut tx, &p.call_id).await?;
    settle(&mut tx, &p.call_id, &after, p.now).await?;
    let call = reload(&mut tx, &p.call_id).await?;
    let notice = inputs_notice(&call.app, &call.function, p.inputs.len());
    crate::dialect::notify(&mut tx, &notice).await?;
    if call.state.is_terminal() {
        crate::dialect::notify(&mut tx, &format!("call:{}", call.id)).await?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(call)
}

pub async fn results(pool: &DbPool, p: InputResults) -> Result<Vec<InputResultRow>, StoreError> {
    let sql = match p.order {
        ResultOrder::Index => {
            "SELECT idx, state, output, error, done_seq FROM inputs WHERE call_id = $1 AND idx > $2 ORDER BY idx LIMIT $3"
        }
        ResultOrder::Completion => {
            "SELECT idx, state, output, error, done_seq FROM inputs WHERE call_id = $1 AND done_seq > $2 ORDER BY done_seq LIMIT $3"
        }
    };
    // Read a row at a time, so a page of large outputs stops at its byte bound instead of
    // holding `limit` of them.
    let mut bytes = 0usize;
    let rows = crate::db::fetch_until(
        crate::db::query(sql)
            .bind(p.call_id.as_str())
            .bind(p.after)
            .bind(p.limit as i64),
        pool,
        |row| {
            for column in ["output", "error"] {
                let size = row
                    .try_get::<Option<String>, _>(column)
                    .ok()
                    .flatten()
                    .map_or(0, |t| t.len());
                bytes = bytes.saturating_add(size);
            }
            bytes >= p.max_bytes
        },
    )
    .await
    .map_err(db_err)?;
    rows.iter()
        .map(|row| {
            Ok(InputResultRow {
                index: row.try_get("idx").map_err(db_err)?,
                state: state(&row.try_get::<String, _>("state").map_err(db_err)?)?,
                output: row.try_get("output").map_err(db_err)?,
                error: error_json(row.try_get("error").map_err(db_err)?)?,
                done_seq: row.try_get("done_seq").map_err(db_err)?,
            })
        })
        .collect()
}

pub async fn backlog(pool: &DbPool, now: UnixMillis) -> Result<Vec<FunctionBacklog>, StoreError> {
    let rows = crate::db::query(&backlog_sql())
        .bind(now)
        .fetch_all(pool)
        .await
        .map_err(db_err)?;
    rows.iter()
        .map(|row| {
            Ok(FunctionBacklog {
                app: row.try_get("app").map_err(db_err)?,
                function: row.try_get("function").map_err(db_err)?,
                pending: row.try_get("pending").map_err(db_err)?,
                delayed: row.try_get("delayed").map_err(db_err)?,
                running: row.try_get("running").map_err(db_err)?,
            })
        })
        .collect()
}

/// Open calls' pending and running inputs per function (the `calls_open` partial index).
/// Unfinished inputs per function: `pending` (due, or due when their retry's wait ends),
/// `delayed` (of calls that have not started yet: `starts_at` after `$1`, now) and `running`.
pub fn backlog_sql() -> String {
    format!(
        "SELECT app, function,
                SUM(CASE WHEN starts_at > $1 THEN 0 ELSE n_pending END){SUM_AS_BIGINT} AS pending,
                SUM(CASE WHEN starts_at > $1 THEN n_pending ELSE 0 END){SUM_AS_BIGINT} AS delayed,
                SUM(n_running){SUM_AS_BIGINT} AS running
         FROM calls WHERE state IN ('pending', 'running') GROUP BY app, function"
    )
}

pub fn get_sql() -> String {
    format!("SELECT {CALL_COLUMNS} FROM calls WHERE id = $1")
}

pub async fn get(pool: &DbPool, id: &CallId) -> Result<Option<CallRow>, StoreError> {
    let row = crate::db::query(&get_sql())
        .bind(id.as_str())
        .fetch_optional(pool)
        .await
        .map_err(db_err)?;
    row.as_ref().map(call_row).transpose()
}

pub async fn list(pool: &DbPool, p: CallList) -> Result<Vec<CallRow>, StoreError> {
    let mut q = QueryBuilder::new("");
    push_list_query(&mut q, &p);
    let rows = q.build().fetch_all(pool).await.map_err(db_err)?;
    rows.iter().map(call_row).collect()
}

/// The calls list's query: every filter is an equality on an indexed column, and time bounds
/// and the cursor are id bounds (ids are ordered by time), so each page is an index range.
pub fn push_list_query<'a>(q: &mut QueryBuilder<'a, Db>, p: &'a CallList) {
    q.push(format!("SELECT {CALL_COLUMNS} FROM calls WHERE 1 = 1"));
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
    if let Some(after) = &p.after {
        q.push(" AND id >= ").push_bind(after.as_str());
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(p.limit as i64);
}

/// See `Store::call_touch`.
pub async fn touch(conn: &mut Conn, ids: Vec<CallId>, now: UnixMillis) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut q: QueryBuilder<Db> = QueryBuilder::new("UPDATE calls SET client_seen_at = ");
    q.push_bind(now)
        .push(" WHERE accepting_inputs = 1 AND id IN (");
    let mut list = q.separated(", ");
    for id in &ids {
        list.push_bind(id.as_str().to_string());
    }
    q.push(")");
    q.build().execute(&mut *conn).await.map_err(db_err)?;
    Ok(())
}

/// See `Store::call_list_abandoned`: open maps are few, found by their partial index.
pub async fn abandoned(
    pool: &DbPool,
    before: UnixMillis,
    limit: u32,
) -> Result<Vec<CallId>, StoreError> {
    let rows = crate::db::query(
        "SELECT id FROM calls WHERE accepting_inputs = 1 AND COALESCE(client_seen_at, created_at) < $1
         ORDER BY created_at LIMIT $2",
    )
    .bind(before)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    rows.iter()
        .map(|r| {
            let id: String = r.try_get("id").map_err(db_err)?;
            crate::map::call_id(&id)
        })
        .collect()
}

pub async fn cancel(conn: &mut Conn, p: CallCancel) -> Result<Option<CallRow>, StoreError> {
    // First the map takes no more inputs (a chunk locks the call before it adds rows, and is
    // refused once it is closed), in a transaction of its own: so the inputs locked below are
    // all the inputs the call will ever have, and none can appear between the lock and the
    // update for a lease to take while this waits for it.
    let mut tx = conn.begin().await.map_err(db_err)?;
    crate::db::query(
        "UPDATE calls SET accepting_inputs = 0 WHERE id = $1 AND accepting_inputs = 1",
    )
    .bind(p.id.as_str())
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    let mut tx = conn.begin().await.map_err(db_err)?;
    // The call's open inputs first, locked in id order (the order every transaction locks
    // inputs in), so a completion batch holding some of them finishes first; then the call.
    if !LOCK_ROWS.is_empty() {
        crate::db::query(&format!(
            "SELECT id FROM inputs WHERE call_id = $1 AND state IN ('pending', 'running') ORDER BY id{LOCK_ROWS}"
        ))
        .bind(p.id.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
    }
    let row = crate::db::query(&format!(
        "SELECT {CALL_COLUMNS} FROM calls WHERE id = $1{LOCK_ROWS}"
    ))
    .bind(p.id.as_str())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let before = call_row(&row)?;
    // A running input's attempt ends here (its worker hears of it at once, or at its next
    // heartbeat); a result that comes later is kept as late. An attempt row a completion
    // already wrote is left as it is.
    crate::db::query(
        "INSERT INTO attempts (input_id, attempt, call_id, idx, worker_id, outcome, started_at, finished_at, error)
         SELECT id, attempt, call_id, idx, worker_id, 'cancelled', started_at, $2, $3 FROM inputs
         WHERE call_id = $1 AND state = 'running'
         ON CONFLICT (input_id, attempt) DO NOTHING",
    )
    .bind(p.id.as_str())
    .bind(p.now)
    .bind(error_text(&cancelled_error()))
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    // Cancelled inputs join the call's completion order after everything that ended before,
    // in index order: the same rule as every other way an input ends (`inputs::end_many`).
    let moved = crate::db::query(
        "UPDATE inputs SET state = 'cancelled', finished_at = $2, error = $3, worker_id = NULL,
           lease_expires_at = NULL, done_seq = $4 + r.rn
         FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY idx) AS rn FROM inputs
               WHERE call_id = $1 AND state IN ('pending', 'running')) r
         WHERE inputs.id = r.id",
    )
    .bind(p.id.as_str())
    .bind(p.now)
    .bind(error_text(&cancelled_error()))
    .bind(before.counts.ended())
    .execute(&mut *tx)
    .await
    .map_err(db_err)?
    .rows_affected();
    if moved > 0 {
        let row = crate::db::query(&format!(
            "UPDATE calls SET n_cancelled = n_cancelled + n_pending + n_running, n_pending = 0, n_running = 0,
             accepting_inputs = 0 WHERE id = $1 RETURNING {CALL_COLUMNS}"
        ))
        .bind(p.id.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        settle(&mut tx, &p.id, &call_row(&row)?, p.now).await?;
    } else if !before.state.is_terminal() {
        // A map that was taking inputs, whose inputs so far have all ended: it ends cancelled.
        crate::db::query("UPDATE calls SET accepting_inputs = 0, state = 'cancelled', finished_at = $2 WHERE id = $1")
            .bind(p.id.as_str())
            .bind(p.now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
    }
    let row = crate::db::query(&format!("SELECT {CALL_COLUMNS} FROM calls WHERE id = $1"))
        .bind(p.id.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
    crate::dialect::notify(&mut tx, &format!("call:{}", p.id)).await?;
    crate::dialect::notify(&mut tx, &format!("cancel:{}", p.id)).await?;
    crate::dialect::notify(&mut tx, "results").await?;
    tx.commit().await.map_err(db_err)?;
    Ok(Some(call_row(&row)?))
}

pub fn cancelled_error() -> hopper_core::api::InputError {
    hopper_core::api::InputError::new("cancelled", "the call was cancelled")
}

pub async fn prune(conn: &mut Conn, p: CallPrune) -> Result<u64, StoreError> {
    let mut tx = conn.begin().await.map_err(db_err)?;
    let doomed = "SELECT id FROM calls WHERE finished_at IS NOT NULL AND finished_at < $1 ORDER BY finished_at LIMIT $2";
    crate::db::query(&format!("DELETE FROM log_counts WHERE input_id IN (SELECT id FROM inputs WHERE call_id IN ({doomed}))"))
        .bind(p.finished_before)
        .bind(p.limit as i64)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    for table in ["logs", "attempts", "inputs"] {
        crate::db::query(&format!("DELETE FROM {table} WHERE call_id IN ({doomed})"))
            .bind(p.finished_before)
            .bind(p.limit as i64)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
    }
    let deleted = crate::db::query(&format!("DELETE FROM calls WHERE id IN ({doomed})"))
        .bind(p.finished_before)
        .bind(p.limit as i64)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?
        .rows_affected();
    crate::stats::prune(&mut tx, p.finished_before).await?;
    crate::db::query("DELETE FROM workers WHERE stopped_at IS NOT NULL AND stopped_at < $1")
        .bind(p.finished_before)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    // A key's rate window not written for a day longer than the retention: every start in it
    // is older than the longest period (a day).
    crate::db::query("DELETE FROM limiters WHERE key <> '' AND changed_at < $1")
        .bind(p.finished_before - 86_400_000)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(deleted)
}

/// What moving inputs between states did to their call.
pub struct Shifted {
    /// Set when the move ended the call.
    pub finished: Option<(CallId, CallState)>,
    /// The call after the move; none if the call is gone.
    pub call: Option<CallRow>,
}

/// Moves `n` of a call's inputs from one state's counter to another's, and updates the call's
/// derived state.
pub async fn shift(
    conn: &mut Conn,
    id: &CallId,
    from: InputState,
    to: InputState,
    n: i64,
    now: UnixMillis,
) -> Result<Shifted, StoreError> {
    let (from_col, to_col) = (count_column(from), count_column(to));
    let row = crate::db::query(&format!(
        "UPDATE calls SET {from_col} = {from_col} - $1, {to_col} = {to_col} + $1 WHERE id = $2 RETURNING {CALL_COLUMNS}"
    ))
    .bind(n)
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?;
    match row {
        Some(row) => {
            let call = call_row(&row)?;
            let finished = settle(conn, id, &call, now).await?;
            Ok(Shifted {
                finished,
                call: Some(call),
            })
        }
        None => Ok(Shifted {
            finished: None,
            call: None,
        }),
    }
}

/// Calls per statement of [`shift_moves`].
const SHIFT_CHUNK: usize = 400;

/// How many of a call's inputs move into (positive) or out of (negative) each state.
pub type Moves = hopper_core::CallCounts;

/// Locks calls' rows, in id order, until the transaction ends (PostgreSQL; SQLite has one
/// writer and needs no locks). Every transaction that changes several inputs and calls locks
/// the inputs first (in id order), then every call it will touch (in id order), before it
/// changes any call: one global order, so two transactions cannot deadlock. A single call
/// needs no lock of its own here: the `UPDATE` that changes it locks it, still after the
/// inputs, and with one row there is no order to keep.
pub async fn lock_many<'a>(
    conn: &mut Conn,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<(), StoreError> {
    if LOCK_ROWS.is_empty() {
        return Ok(());
    }
    let mut ids: Vec<&str> = ids.into_iter().collect();
    ids.sort_unstable();
    ids.dedup();
    // One call is locked in order by whatever statement changes it first: no read needed.
    if ids.len() < 2 {
        return Ok(());
    }
    for chunk in ids.chunks(SHIFT_CHUNK) {
        let mut q: QueryBuilder<Db> = QueryBuilder::new("SELECT id FROM calls WHERE id IN (");
        let mut list = q.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        q.push(format!(") ORDER BY id{LOCK_ROWS}"));
        q.build().fetch_all(&mut *conn).await.map_err(db_err)?;
    }
    Ok(())
}

/// [`shift`] for many calls at once (`(call, n)`, sorted by call id): a statement per
/// [`SHIFT_CHUNK`] calls instead of two per call, so a batch of one-input calls costs about
/// what a batch of one map's inputs does.
pub async fn shift_many(
    conn: &mut Conn,
    groups: &[(CallId, i64)],
    from: InputState,
    to: InputState,
    now: UnixMillis,
) -> Result<std::collections::HashMap<CallId, Shifted>, StoreError> {
    let moves: Vec<(CallId, Moves)> = groups
        .iter()
        .map(|(id, n)| {
            let mut m = Moves::default();
            m.shift_by(from, to, *n);
            (id.clone(), m)
        })
        .collect();
    shift_moves(conn, &moves, now).await
}

/// Moves each call's inputs between states' counters as `groups` says (one entry per call,
/// sorted by call id), and writes the calls' derived states. On PostgreSQL the calls are
/// locked first, in id order, so concurrent batches cannot deadlock.
pub async fn shift_moves(
    conn: &mut Conn,
    groups: &[(CallId, Moves)],
    now: UnixMillis,
) -> Result<std::collections::HashMap<CallId, Shifted>, StoreError> {
    let mut out = std::collections::HashMap::with_capacity(groups.len());
    let mut settles: Vec<(CallId, CallState, Option<UnixMillis>)> = Vec::new();
    lock_many(conn, groups.iter().map(|(id, _)| id.as_str())).await?;
    for chunk in groups.chunks(SHIFT_CHUNK) {
        let mut q: QueryBuilder<Db> = QueryBuilder::new("WITH r(cid, dp, dr, ds, df, dc) AS (");
        q.push_values(chunk, |mut b, (id, m)| {
            b.push_bind(id.as_str())
                .push_bind(m.pending)
                .push_bind(m.running)
                .push_bind(m.succeeded)
                .push_bind(m.failed)
                .push_bind(m.cancelled);
        });
        q.push(format!(
            ") UPDATE calls SET n_pending = n_pending + r.dp, n_running = n_running + r.dr,
               n_succeeded = n_succeeded + r.ds, n_failed = n_failed + r.df,
               n_cancelled = n_cancelled + r.dc
             FROM r WHERE calls.id = r.cid RETURNING {CALL_COLUMNS}"
        ));
        for row in q.build().fetch_all(&mut *conn).await.map_err(db_err)? {
            let call = call_row(&row)?;
            let derived = call.counts.state_while(call.accepting_inputs);
            let finished = if derived == call.state {
                None
            } else {
                settles.push((
                    call.id.clone(),
                    derived,
                    derived.is_terminal().then_some(now),
                ));
                derived.is_terminal().then(|| (call.id.clone(), derived))
            };
            out.insert(
                call.id.clone(),
                Shifted {
                    finished,
                    call: Some(call),
                },
            );
        }
    }
    for chunk in settles.chunks(SHIFT_CHUNK) {
        let mut q: QueryBuilder<Db> = QueryBuilder::new("WITH r(cid, state, finished_at) AS (");
        q.push_values(chunk, |mut b, (id, state, finished_at)| {
            b.push_bind(id.as_str())
                .push_bind(state.as_str())
                .push_bind(*finished_at);
        });
        q.push(
            ") UPDATE calls SET state = r.state, finished_at = r.finished_at FROM r WHERE calls.id = r.cid",
        );
        q.build().execute(&mut *conn).await.map_err(db_err)?;
    }
    Ok(out)
}

/// Writes the state derived from the call's counters, if it changed.
async fn settle(
    conn: &mut Conn,
    id: &CallId,
    call: &CallRow,
    now: UnixMillis,
) -> Result<Option<(CallId, CallState)>, StoreError> {
    let derived = call.counts.state_while(call.accepting_inputs);
    if derived == call.state {
        return Ok(None);
    }
    let finished_at = derived.is_terminal().then_some(now);
    crate::db::query("UPDATE calls SET state = $1, finished_at = $2 WHERE id = $3")
        .bind(derived.as_str())
        .bind(finished_at)
        .bind(id.as_str())
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(derived.is_terminal().then(|| (id.clone(), derived)))
}

pub async fn finished_since(
    pool: &DbPool,
    p: hopper_store::CallsFinished,
) -> Result<Vec<CallRow>, StoreError> {
    let after_id = p
        .after_id
        .as_ref()
        .map(|i| i.to_string())
        .unwrap_or_default();
    let rows = crate::db::query(&format!(
        "SELECT {CALL_COLUMNS} FROM calls WHERE finished_at IS NOT NULL
           AND (finished_at > $1 OR (finished_at = $1 AND id > $2))
         ORDER BY finished_at, id LIMIT $3"
    ))
    .bind(p.after_at)
    .bind(after_id)
    .bind(p.limit as i64)
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    rows.iter().map(call_row).collect()
}

pub async fn setting_get(pool: &DbPool, key: &str) -> Result<Option<String>, StoreError> {
    crate::db::query_scalar("SELECT value FROM settings WHERE key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await
        .map_err(db_err)
}

/// The newest migration applied to the database, and its name (`0` and `""` before any).
pub async fn schema_applied(pool: &DbPool) -> Result<(i64, String), StoreError> {
    let row = crate::db::query(
        "SELECT version, name FROM hopper_migrations ORDER BY version DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .map_err(db_err)?;
    match row {
        Some(row) => Ok((
            row.try_get("version").map_err(db_err)?,
            row.try_get("name").map_err(db_err)?,
        )),
        None => Ok((0, String::new())),
    }
}

pub async fn setting_put(conn: &mut Conn, key: String, value: String) -> Result<(), StoreError> {
    crate::db::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .bind(key)
        .bind(value)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(())
}
