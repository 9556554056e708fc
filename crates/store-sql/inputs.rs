//! `input_*`, `lease_*` and `attempt_*`: the lease protocol. Every transition checks the
//! input's state and attempt in the same statement that changes it, so a stale lease can never
//! write a result.

use std::collections::{BTreeMap, HashMap};

use hopper_core::api::{InputError, Lease, Outcome};
use hopper_core::{CallId, FunctionSpec, InputState, UnixMillis};
use hopper_store::*;
use sqlx::{Connection, QueryBuilder, Row};

use crate::dialect::{Conn, Db, DbPool, DbRow, LEAST, LOCK_ROWS, SKIP_LOCKED, TIMEOUT_MS};

use crate::apps::spec;
use crate::calls::{shift, shift_many, Shifted};
use crate::map::{call_id, db_err, error_json, error_text, state, worker_id};

pub const GET_SQL: &str =
    "SELECT id, call_id, idx, state, input, output, error, attempt, failures, not_before, finished_at
     FROM inputs WHERE call_id = $1 AND idx = $2";

pub async fn get(pool: &DbPool, id: &CallId, index: i64) -> Result<Option<InputRow>, StoreError> {
    let row = sqlx::query(GET_SQL)
        .bind(id.as_str())
        .bind(index)
        .fetch_optional(pool)
        .await
        .map_err(db_err)?;
    row.as_ref().map(input_row).transpose()
}

/// The first input (index 0) of each of `calls`, in one read (a page of the calls list shows
/// one-input calls' outputs and errors).
pub fn push_first_many_query<'a>(q: &mut QueryBuilder<'a, Db>, calls: &'a [CallId]) {
    q.push(
        "SELECT id, call_id, idx, state, input, output, error, attempt, failures, not_before, finished_at
         FROM inputs WHERE idx = 0 AND call_id IN (",
    );
    let mut ids = q.separated(", ");
    for id in calls {
        ids.push_bind(id.as_str());
    }
    q.push(")");
}

pub async fn first_many(pool: &DbPool, calls: &[CallId]) -> Result<Vec<InputRow>, StoreError> {
    let mut out = Vec::with_capacity(calls.len());
    for chunk in calls.chunks(500) {
        let mut q = QueryBuilder::new("");
        push_first_many_query(&mut q, chunk);
        for row in q.build().fetch_all(pool).await.map_err(db_err)? {
            out.push(input_row(&row)?);
        }
    }
    Ok(out)
}

fn input_row(row: &DbRow) -> Result<InputRow, StoreError> {
    Ok(InputRow {
        id: row.try_get("id").map_err(db_err)?,
        call_id: call_id(&row.try_get::<String, _>("call_id").map_err(db_err)?)?,
        index: row.try_get("idx").map_err(db_err)?,
        state: state(&row.try_get::<String, _>("state").map_err(db_err)?)?,
        input: row.try_get("input").map_err(db_err)?,
        output: row.try_get("output").map_err(db_err)?,
        error: error_json(row.try_get("error").map_err(db_err)?)?,
        attempts: row.try_get::<i64, _>("attempt").map_err(db_err)? as u32,
        failures: row.try_get::<i64, _>("failures").map_err(db_err)? as u32,
        not_before: row.try_get("not_before").map_err(db_err)?,
        finished_at: row.try_get("finished_at").map_err(db_err)?,
    })
}

/// Function specs read once per transaction.
#[derive(Default)]
struct Specs(HashMap<(String, String, i64), FunctionSpec>);

impl Specs {
    async fn get(
        &mut self,
        conn: &mut Conn,
        app: &str,
        function: &str,
        version: i64,
    ) -> Result<FunctionSpec, StoreError> {
        let key = (app.to_string(), function.to_string(), version);
        if let Some(spec) = self.0.get(&key) {
            return Ok(spec.clone());
        }
        let text: Option<String> = sqlx::query_scalar(
            "SELECT spec FROM functions WHERE app = $1 AND name = $2 AND version = $3",
        )
        .bind(app)
        .bind(function)
        .bind(version)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
        let text = text.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "function {app}.{function} version {version} is missing"
            ))
        })?;
        let parsed = spec(&text)?;
        self.0.insert(key, parsed.clone());
        Ok(parsed)
    }
}

fn push_function_filter(q: &mut QueryBuilder<'_, Db>, functions: &[FunctionKey]) {
    q.push(" AND (");
    for (i, f) in functions.iter().enumerate() {
        if i > 0 {
            q.push(" OR ");
        }
        q.push("(app = ")
            .push_bind(f.app.clone())
            .push(" AND function = ")
            .push_bind(f.function.clone())
            .push(")");
    }
    q.push(")");
}

pub async fn lease(conn: &mut Conn, p: InputLease) -> Result<Vec<LeasedRow>, StoreError> {
    if p.functions.is_empty() || p.max == 0 {
        return Ok(Vec::new());
    }
    let mut tx = conn.begin().await.map_err(db_err)?;
    // One statement claims the whole batch. The deadline comes from each input's own function
    // version; the lease (`now + lease_ms`) is always shorter, as the slack includes a lease.
    let mut q: QueryBuilder<Db> = QueryBuilder::new(
        "UPDATE inputs SET state = 'running', attempt = attempt + 1, worker_id = ",
    );
    q.push_bind(p.worker_id.as_str())
        .push(", started_at = ")
        .push_bind(p.now)
        .push(", lease_expires_at = ")
        .push_bind(p.now + p.lease_ms)
        .push(", deadline_at = ")
        .push_bind(p.now + p.deadline_slack_ms)
        .push(format!(
            " + COALESCE((SELECT {TIMEOUT_MS} FROM functions f
               WHERE f.app = inputs.app AND f.name = inputs.function AND f.version = inputs.version), 0)
             WHERE id IN (SELECT id FROM inputs WHERE state = 'pending' AND not_before <= "
        ))
        .push_bind(p.now);
    push_function_filter(&mut q, &p.functions);
    q.push(" ORDER BY not_before, id LIMIT ")
        .push_bind(p.max as i64)
        // Several servers lease at once: each skips the rows another is claiming.
        .push(format!(
            "{SKIP_LOCKED}) RETURNING id, call_id, idx, app, function, version, input, attempt"
        ));
    let mut rows = q.build().fetch_all(&mut *tx).await.map_err(db_err)?;
    rows.sort_by_key(|r| r.try_get::<i64, _>("id").unwrap_or(0));
    let mut specs = Specs::default();
    let mut leased = Vec::with_capacity(rows.len());
    let mut per_call: BTreeMap<String, i64> = BTreeMap::new();
    for row in &rows {
        let id: i64 = row.try_get("id").map_err(db_err)?;
        let call: String = row.try_get("call_id").map_err(db_err)?;
        let app: String = row.try_get("app").map_err(db_err)?;
        let function: String = row.try_get("function").map_err(db_err)?;
        let version: i64 = row.try_get("version").map_err(db_err)?;
        let attempt: i64 = row.try_get("attempt").map_err(db_err)?;
        let spec = specs.get(&mut tx, &app, &function, version).await?;
        *per_call.entry(call.clone()).or_default() += 1;
        leased.push(LeasedRow {
            lease: Lease {
                input_id: id,
                attempt: attempt as u32,
            },
            call_id: call_id(&call)?,
            index: row.try_get("idx").map_err(db_err)?,
            version,
            input: row.try_get("input").map_err(db_err)?,
            spec,
        });
    }
    let groups: Vec<(CallId, i64)> = per_call
        .into_iter()
        .map(|(call, n)| Ok((call_id(&call)?, n)))
        .collect::<Result<_, StoreError>>()?;
    shift_many(
        &mut tx,
        &groups,
        InputState::Pending,
        InputState::Running,
        p.now,
    )
    .await?;
    tx.commit().await.map_err(db_err)?;
    Ok(leased)
}

pub async fn next_due(pool: &DbPool, functions: &[FunctionKey]) -> Result<Option<i64>, StoreError> {
    if functions.is_empty() {
        return Ok(None);
    }
    let mut q: QueryBuilder<Db> =
        QueryBuilder::new("SELECT MIN(not_before) FROM inputs WHERE state = 'pending'");
    push_function_filter(&mut q, functions);
    let row = q.build().fetch_one(pool).await.map_err(db_err)?;
    row.try_get::<Option<i64>, _>(0).map_err(db_err)
}

/// A running input, as the transitions out of `running` need it.
struct Running {
    id: i64,
    call_id: CallId,
    index: i64,
    attempt: i64,
    failures: i64,
    lost: i64,
    worker_id: Option<String>,
    started_at: i64,
    app: String,
    function: String,
    version: i64,
}

const RUNNING_COLUMNS: &str =
    "id, call_id, idx, state, attempt, failures, lost, worker_id, started_at, app, function, version, deadline_at";

fn running(row: &DbRow) -> Result<Running, StoreError> {
    Ok(Running {
        id: row.try_get("id").map_err(db_err)?,
        call_id: call_id(&row.try_get::<String, _>("call_id").map_err(db_err)?)?,
        index: row.try_get("idx").map_err(db_err)?,
        attempt: row.try_get("attempt").map_err(db_err)?,
        failures: row.try_get("failures").map_err(db_err)?,
        lost: row.try_get("lost").map_err(db_err)?,
        worker_id: row.try_get("worker_id").map_err(db_err)?,
        started_at: row
            .try_get::<Option<i64>, _>("started_at")
            .map_err(db_err)?
            .unwrap_or(0),
        app: row.try_get("app").map_err(db_err)?,
        function: row.try_get("function").map_err(db_err)?,
        version: row.try_get("version").map_err(db_err)?,
    })
}

/// Records an ended attempt. A second record for the same attempt (a late result after the
/// lease was rescued or cancelled) marks the attempt late and keeps its outcome.
async fn attempt_record(
    conn: &mut Conn,
    input: &Running,
    outcome: &str,
    error: Option<&InputError>,
    now: UnixMillis,
    late: bool,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO attempts (input_id, attempt, call_id, idx, worker_id, outcome, started_at, finished_at, error, late)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (input_id, attempt) DO UPDATE SET late = 1, outcome = excluded.outcome,
           error = COALESCE(excluded.error, attempts.error)",
    )
    .bind(input.id)
    .bind(input.attempt)
    .bind(input.call_id.as_str())
    .bind(input.index)
    .bind(&input.worker_id)
    .bind(outcome)
    .bind(input.started_at)
    .bind(now)
    .bind(error.map(error_text))
    .bind(late as i64)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// A failed attempt: back to pending after the backoff if retries are left, else failed.
async fn fail(
    conn: &mut Conn,
    specs: &mut Specs,
    input: &Running,
    error: &InputError,
    now: UnixMillis,
) -> Result<(Option<(CallId, hopper_core::CallState)>, bool), StoreError> {
    attempt_record(conn, input, "failed", Some(error), now, false).await?;
    let spec = specs
        .get(conn, &input.app, &input.function, input.version)
        .await?;
    let failures = input.failures + 1;
    match spec.retries.delay_after(failures as u32) {
        Some(delay) => {
            sqlx::query(
                "UPDATE inputs SET state = 'pending', failures = $2, error = $3, not_before = $4,
                 worker_id = NULL, lease_expires_at = NULL WHERE id = $1",
            )
            .bind(input.id)
            .bind(failures)
            .bind(error_text(error))
            .bind(now + delay.as_millis() as i64)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
            let shifted = shift(
                conn,
                &input.call_id,
                InputState::Running,
                InputState::Pending,
                1,
                now,
            )
            .await?;
            Ok((shifted.finished, true))
        }
        None => {
            let shifted = shift(
                conn,
                &input.call_id,
                InputState::Running,
                InputState::Failed,
                1,
                now,
            )
            .await?;
            sqlx::query(
                "UPDATE inputs SET state = 'failed', failures = $2, error = $3, finished_at = $4,
                 worker_id = NULL, lease_expires_at = NULL, done_seq = $5 WHERE id = $1",
            )
            .bind(input.id)
            .bind(failures)
            .bind(error_text(error))
            .bind(now)
            .bind(done_seq(&shifted))
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
            Ok((shifted.finished, false))
        }
    }
}

/// The input's position in the order its call's inputs ended.
fn done_seq(shifted: &Shifted) -> Option<i64> {
    shifted
        .call
        .as_ref()
        .map(|c| c.counts.succeeded + c.counts.failed)
}

/// A lost lease: back to the queue at once, unless it was lost too often.
async fn requeue_lost(
    conn: &mut Conn,
    input: &Running,
    error: &InputError,
    now: UnixMillis,
) -> Result<Option<(CallId, hopper_core::CallState)>, StoreError> {
    attempt_record(conn, input, "lost", Some(error), now, false).await?;
    let lost = input.lost + 1;
    if lost >= MAX_LOST_LEASES {
        let final_error = InputError {
            code: "lease_lost".into(),
            message: format!("the input's lease was lost {lost} times (its worker died or stopped each time); last: {}", error.message),
        };
        sqlx::query(
            "UPDATE inputs SET state = 'failed', lost = $2, error = $3, finished_at = $4, worker_id = NULL, lease_expires_at = NULL WHERE id = $1",
        )
        .bind(input.id)
        .bind(lost)
        .bind(error_text(&final_error))
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
        return Ok(shift(
            conn,
            &input.call_id,
            InputState::Running,
            InputState::Failed,
            1,
            now,
        )
        .await?
        .finished);
    }
    sqlx::query(
        "UPDATE inputs SET state = 'pending', lost = $2, not_before = $3, worker_id = NULL, lease_expires_at = NULL WHERE id = $1",
    )
    .bind(input.id)
    .bind(lost)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(shift(
        conn,
        &input.call_id,
        InputState::Running,
        InputState::Pending,
        1,
        now,
    )
    .await?
    .finished)
}

/// Successes recorded per multi-row statement.
const COMPLETE_CHUNK: usize = 300;

pub async fn complete_many(
    conn: &mut Conn,
    p: InputCompleteMany,
) -> Result<Vec<CompletionRow>, StoreError> {
    let mut tx = conn.begin().await.map_err(db_err)?;
    let mut specs = Specs::default();
    // One read for the whole batch.
    let mut current: HashMap<i64, (DbRow, bool)> = HashMap::new();
    // Sorted before chunking, so the whole batch locks in id order, not just each chunk.
    let mut input_ids: Vec<i64> = p.results.iter().map(|(l, _)| l.input_id).collect();
    input_ids.sort_unstable();
    input_ids.dedup();
    for chunk in input_ids.chunks(COMPLETE_CHUNK) {
        let mut q: QueryBuilder<Db> = QueryBuilder::new(format!(
            "SELECT {RUNNING_COLUMNS} FROM inputs WHERE id IN ("
        ));
        let mut ids = q.separated(", ");
        for id in chunk {
            ids.push_bind(*id);
        }
        // Locked until commit, so a rescue or cancel on another server cannot interleave, and
        // in id order, so two batches lock in the same order and cannot deadlock.
        q.push(format!(") ORDER BY id{LOCK_ROWS}"));
        for row in q.build().fetch_all(&mut *tx).await.map_err(db_err)? {
            let id: i64 = row.try_get("id").map_err(db_err)?;
            current.insert(id, (row, false));
        }
    }
    let mut out: Vec<CompletionRow> = (0..p.results.len())
        .map(|_| CompletionRow {
            recorded: false,
            call_finished: None,
            function: None,
            duration_ms: None,
            effect: "late",
        })
        .collect();
    // Successes of current leases, by call, in order: recorded together.
    let mut successes: BTreeMap<String, Vec<(usize, Running, &serde_json::Value)>> =
        BTreeMap::new();
    let mut others: Vec<(usize, Running, bool, &Outcome)> = Vec::new();
    for (n, (lease, outcome)) in p.results.iter().enumerate() {
        let Some((row, taken)) = current.get_mut(&lease.input_id) else {
            continue; // the input is gone (pruned)
        };
        let is_current = !*taken
            && state(&row.try_get::<String, _>("state").map_err(db_err)?)? == InputState::Running
            && row.try_get::<i64, _>("attempt").map_err(db_err)? == lease.attempt as i64;
        let input = running(row)?;
        if is_current {
            // A second result for the same lease in this batch is late.
            *taken = true;
        }
        match outcome {
            Outcome::Succeeded { output } if is_current => {
                successes
                    .entry(input.call_id.to_string())
                    .or_default()
                    .push((n, input, output));
            }
            _ => others.push((n, input, is_current, outcome)),
        }
    }
    // Every call's counters move in one statement per few hundred calls; every attempt and
    // input row in one statement per few hundred inputs, whatever calls they belong to.
    let groups: Vec<(CallId, i64)> = successes
        .iter()
        .map(|(call, group)| Ok((call_id(call)?, group.len() as i64)))
        .collect::<Result<_, StoreError>>()?;
    let shifted = shift_many(
        &mut tx,
        &groups,
        InputState::Running,
        InputState::Succeeded,
        p.now,
    )
    .await?;
    // Attempts ended, per function, for the dashboard's statistics.
    let mut tallies = crate::stats::Tallies::default();
    // (input, output kept, position among ended inputs)
    let mut rows: Vec<(&Running, Option<String>, Option<i64>)> = Vec::new();
    for ((_, group), (id, _)) in successes.iter().zip(&groups) {
        let call_now = shifted.get(id).and_then(|s| s.call.as_ref());
        let keep = !call_now.is_some_and(|c| c.discard_results);
        let base = call_now.map(|c| c.counts.succeeded + c.counts.failed - group.len() as i64);
        for (i, (n, input, output)) in group.iter().enumerate() {
            rows.push((
                input,
                keep.then(|| output.to_string()),
                base.map(|base| base + i as i64 + 1),
            ));
            tallies.add(
                &input.app,
                &input.function,
                "succeeded",
                p.now - input.started_at,
            );
            out[*n].recorded = true;
            out[*n].effect = "succeeded";
            out[*n].function = Some(format!("{}.{}", input.app, input.function));
            out[*n].duration_ms = Some(p.now - input.started_at);
        }
        if let (Some(finished), Some((n, _, _))) = (
            shifted.get(id).and_then(|s| s.finished.clone()),
            group.last(),
        ) {
            out[*n].call_finished = Some(finished);
        }
    }
    for chunk in rows.chunks(COMPLETE_CHUNK) {
        let mut q: QueryBuilder<Db> = QueryBuilder::new(
            "INSERT INTO attempts (input_id, attempt, call_id, idx, worker_id, outcome, started_at, finished_at) ",
        );
        q.push_values(chunk, |mut b, (input, _, _)| {
            b.push_bind(input.id)
                .push_bind(input.attempt)
                .push_bind(input.call_id.as_str())
                .push_bind(input.index)
                .push_bind(input.worker_id.clone())
                .push("'succeeded'")
                .push_bind(input.started_at)
                .push_bind(p.now);
        });
        q.push(" ON CONFLICT (input_id, attempt) DO NOTHING");
        q.build().execute(&mut *tx).await.map_err(db_err)?;
        let mut q: QueryBuilder<Db> = QueryBuilder::new("WITH r(id, output, done_seq) AS (");
        q.push_values(chunk, |mut b, (input, output, done_seq)| {
            b.push_bind(input.id)
                .push_bind(output.clone())
                .push_bind(*done_seq);
        });
        q.push(
            ") UPDATE inputs SET state = 'succeeded', output = r.output, error = NULL, finished_at = ",
        )
        .push_bind(p.now)
        .push(", worker_id = NULL, lease_expires_at = NULL, done_seq = r.done_seq FROM r WHERE inputs.id = r.id");
        q.build().execute(&mut *tx).await.map_err(db_err)?;
    }
    for (n, mut input, is_current, outcome) in others {
        if !is_current {
            // The lease was lost: keep what the attempt said, but not as the input's result.
            let (lease, _) = &p.results[n];
            input.attempt = lease.attempt as i64;
            input.worker_id = Some(p.worker_id.to_string());
            let (name, error) = match outcome {
                Outcome::Succeeded { .. } => ("succeeded", None),
                Outcome::Failed { error } => ("failed", Some(error)),
                Outcome::Returned { error } => ("lost", Some(error)),
            };
            attempt_record(&mut tx, &input, name, error, p.now, true).await?;
            out[n].function = Some(format!("{}.{}", input.app, input.function));
            continue;
        }
        let (call_finished, effect) = match outcome {
            Outcome::Failed { error } => {
                match fail(&mut tx, &mut specs, &input, error, p.now).await? {
                    (finished, true) => (finished, "retried"),
                    (finished, false) => (finished, "failed"),
                }
            }
            Outcome::Returned { error } => (
                requeue_lost(&mut tx, &input, error, p.now).await?,
                "returned",
            ),
            Outcome::Succeeded { .. } => (None, "succeeded"), // recorded above
        };
        tallies.add(
            &input.app,
            &input.function,
            effect,
            p.now - input.started_at,
        );
        out[n] = CompletionRow {
            recorded: true,
            call_finished,
            function: Some(format!("{}.{}", input.app, input.function)),
            duration_ms: Some(p.now - input.started_at),
            effect,
        };
    }
    tallies.record(&mut tx, p.now).await?;
    crate::dialect::notify(&mut tx, "results").await?;
    if out
        .iter()
        .any(|r| matches!(r.effect, "retried" | "returned"))
    {
        crate::dialect::notify(&mut tx, "inputs").await?;
    }
    for row in &out {
        if let Some((call, _)) = &row.call_finished {
            crate::dialect::notify(&mut tx, &format!("call:{call}")).await?;
        }
    }
    tx.commit().await.map_err(db_err)?;
    Ok(out)
}

pub async fn heartbeat(conn: &mut Conn, p: LeaseHeartbeat) -> Result<Vec<Lease>, StoreError> {
    let mut tx = conn.begin().await.map_err(db_err)?;
    let mut lost = Vec::new();
    // In input id order, the order completions lock in, so a heartbeat and a completion of the
    // same worker's leases on PostgreSQL cannot deadlock.
    let mut leases = p.leases.clone();
    leases.sort_by_key(|l| l.input_id);
    for lease in &leases {
        let held = sqlx::query(&format!(
            "UPDATE inputs SET lease_expires_at = {LEAST}($4, deadline_at)
             WHERE id = $1 AND attempt = $2 AND worker_id = $3 AND state = 'running'"
        ))
        .bind(lease.input_id)
        .bind(lease.attempt as i64)
        .bind(p.worker_id.as_str())
        .bind(p.now + p.lease_ms)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?
        .rows_affected();
        if held == 0 {
            lost.push(*lease);
        }
    }
    sqlx::query("UPDATE workers SET last_seen_at = $2 WHERE id = $1")
        .bind(p.worker_id.as_str())
        .bind(p.now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(lost)
}

pub async fn rescue_expired(conn: &mut Conn, p: LeaseRescue) -> Result<RescueReport, StoreError> {
    let mut tx = conn.begin().await.map_err(db_err)?;
    let rows = sqlx::query(&format!(
        "SELECT {RUNNING_COLUMNS} FROM inputs WHERE state = 'running' AND lease_expires_at <= $1
         ORDER BY lease_expires_at LIMIT $2{SKIP_LOCKED}"
    ))
    .bind(p.now)
    .bind(p.limit as i64)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    let mut report = RescueReport::default();
    let mut specs = Specs::default();
    let mut tallies = crate::stats::Tallies::default();
    for row in &rows {
        let input = running(row)?;
        let deadline: Option<i64> = row.try_get("deadline_at").map_err(db_err)?;
        let finished = if deadline.is_some_and(|d| p.now >= d) {
            report.timed_out += 1;
            let error = InputError {
                code: "timeout".into(),
                message: "no result before the attempt's deadline: the worker stopped responding"
                    .into(),
            };
            let (finished, retried) = fail(&mut tx, &mut specs, &input, &error, p.now).await?;
            let effect = if retried { "retried" } else { "failed" };
            tallies.add(
                &input.app,
                &input.function,
                effect,
                p.now - input.started_at,
            );
            finished
        } else {
            report.requeued += 1;
            let error = InputError {
                code: "lease_lost".into(),
                message: "the worker stopped heartbeating; the input runs again".into(),
            };
            requeue_lost(&mut tx, &input, &error, p.now).await?
        };
        report.finished_calls.extend(finished);
    }
    tallies.record(&mut tx, p.now).await?;
    if report.requeued + report.timed_out > 0 {
        crate::dialect::notify(&mut tx, "inputs").await?;
        crate::dialect::notify(&mut tx, "results").await?;
    }
    for (call, _) in &report.finished_calls {
        crate::dialect::notify(&mut tx, &format!("call:{call}")).await?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(report)
}

pub async fn worker_deregister(conn: &mut Conn, p: WorkerDeregister) -> Result<u64, StoreError> {
    let mut tx = conn.begin().await.map_err(db_err)?;
    sqlx::query("UPDATE workers SET stopped_at = $2, last_seen_at = $2 WHERE id = $1")
        .bind(p.id.as_str())
        .bind(p.now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    let rows = sqlx::query(&format!(
        "SELECT {RUNNING_COLUMNS} FROM inputs WHERE state = 'running' AND worker_id = $1 ORDER BY id{LOCK_ROWS}"
    ))
    .bind(p.id.as_str())
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    let error = InputError {
        code: "worker_stopped".into(),
        message: "the worker stopped and handed the input back".into(),
    };
    for row in &rows {
        requeue_lost(&mut tx, &running(row)?, &error, p.now).await?;
    }
    if !rows.is_empty() {
        crate::dialect::notify(&mut tx, "inputs").await?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(rows.len() as u64)
}

/// A call's attempts (ended ones, then running ones) by input and attempt, from
/// `attempts_by_call (call_id, idx, attempt)` and the inputs' `(call_id, idx)` key, merged in
/// order, so a page of a map of millions reads only that page. `$1` the call, `$2` the limit,
/// and with `by_index` `$3` one input.
pub fn attempt_list_sql(by_index: bool) -> String {
    let input = if by_index { " AND idx = $3" } else { "" };
    format!(
        "SELECT idx, attempt, worker_id, outcome, started_at, finished_at, error, late FROM attempts
         WHERE call_id = $1{input}
         UNION ALL
         SELECT idx, attempt, worker_id, 'running', started_at, NULL, NULL, 0 FROM inputs
         WHERE call_id = $1{input} AND state = 'running'
         ORDER BY 1, 2 LIMIT $2"
    )
}

pub async fn attempt_list(pool: &DbPool, p: AttemptList) -> Result<Vec<AttemptRow>, StoreError> {
    let sql = attempt_list_sql(p.index.is_some());
    let mut q = sqlx::query(&sql)
        .bind(p.call_id.as_str())
        .bind(p.limit as i64);
    if let Some(index) = p.index {
        q = q.bind(index);
    }
    let rows = q.fetch_all(pool).await.map_err(db_err)?;
    rows.iter()
        .map(|row| {
            Ok(AttemptRow {
                index: row.try_get("idx").map_err(db_err)?,
                attempt: row.try_get::<i64, _>("attempt").map_err(db_err)? as u32,
                worker_id: worker_id(row.try_get("worker_id").map_err(db_err)?)?,
                outcome: row.try_get("outcome").map_err(db_err)?,
                started_at: row
                    .try_get::<Option<i64>, _>("started_at")
                    .map_err(db_err)?
                    .unwrap_or(0),
                finished_at: row.try_get("finished_at").map_err(db_err)?,
                error: error_json(row.try_get("error").map_err(db_err)?)?,
                late: row.try_get::<i64, _>("late").map_err(db_err)? != 0,
            })
        })
        .collect()
}
