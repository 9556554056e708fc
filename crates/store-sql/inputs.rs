//! `input_*`, `lease_*` and `attempt_*`: the lease protocol. Every transition checks the
//! input's state and attempt in the same statement that changes it, so a stale lease can never
//! write a result.

use std::collections::{BTreeMap, HashMap};

use crate::db::{Connection, QueryBuilder, Row};
use hopper_core::api::{InputError, Lease, Outcome};
use hopper_core::{CallId, FunctionSpec, InputState, UnixMillis};
use hopper_store::*;

use crate::dialect::{
    Conn, Db, DbPool, DbRow, GREATEST, LEAST, LOCK_ROWS, SKIP_LOCKED, TIMEOUT_MS,
};

use crate::apps::spec;
use crate::calls::{lock_many, shift, shift_many, shift_moves, Moves, Shifted};
use crate::map::{call_id, db_err, error_json, error_text, state, worker_id};

pub const GET_SQL: &str =
    "SELECT id, call_id, idx, state, input, output, error, attempt, failures, not_before, finished_at
     FROM inputs WHERE call_id = $1 AND idx = $2";

pub async fn get(pool: &DbPool, id: &CallId, index: i64) -> Result<Option<InputRow>, StoreError> {
    let row = crate::db::query(GET_SQL)
        .bind(id.as_str())
        .bind(index)
        .fetch_optional(pool)
        .await
        .map_err(db_err)?;
    row.as_ref().map(input_row).transpose()
}

/// Failed inputs across calls, newest failure first: a walk of the index of failed inputs by
/// time, from the cursor back, with the filters applied to what it finds.
pub fn push_failed_list_query<'a>(q: &mut QueryBuilder<'a, Db>, p: &'a FailedInputList) {
    q.push(
        "SELECT id, call_id, idx, app, function, error, attempt, finished_at FROM inputs
         WHERE state = 'failed' AND finished_at IS NOT NULL",
    );
    if let Some(call) = &p.call {
        q.push(" AND call_id = ").push_bind(call.as_str());
    }
    if let Some(app) = &p.app {
        q.push(" AND app = ").push_bind(app);
    }
    if let Some(function) = &p.function {
        q.push(" AND function = ").push_bind(function);
    }
    if let Some(since) = p.since {
        q.push(" AND finished_at >= ").push_bind(since);
    }
    if let Some(until) = p.until {
        q.push(" AND finished_at < ").push_bind(until);
    }
    if let Some((at, id)) = p.before {
        q.push(" AND (finished_at < ")
            .push_bind(at)
            .push(" OR (finished_at = ")
            .push_bind(at)
            .push(" AND id < ")
            .push_bind(id)
            .push("))");
    }
    q.push(" ORDER BY finished_at DESC, id DESC LIMIT ")
        .push_bind(p.limit as i64);
}

pub async fn failed_list(
    pool: &DbPool,
    p: FailedInputList,
) -> Result<Vec<FailedInputRow>, StoreError> {
    let mut q = QueryBuilder::new("");
    push_failed_list_query(&mut q, &p);
    let rows = crate::db::fetch_until(q.build(), pool, errors_up_to(p.max_bytes))
        .await
        .map_err(db_err)?;
    rows.iter()
        .map(|row| {
            Ok(FailedInputRow {
                id: row.try_get("id").map_err(db_err)?,
                call_id: call_id(&row.try_get::<String, _>("call_id").map_err(db_err)?)?,
                index: row.try_get("idx").map_err(db_err)?,
                app: row.try_get("app").map_err(db_err)?,
                function: row.try_get("function").map_err(db_err)?,
                error: error_json(row.try_get("error").map_err(db_err)?)?,
                attempts: row.try_get::<i64, _>("attempt").map_err(db_err)? as u32,
                finished_at: row.try_get("finished_at").map_err(db_err)?,
            })
        })
        .collect()
}

/// For [`crate::db::fetch_until`]: whether the rows so far hold `max` bytes of errors' JSON
/// (never, without a bound).
fn errors_up_to(max: Option<usize>) -> impl FnMut(&crate::dialect::DbRow) -> bool {
    let mut bytes = 0usize;
    move |row| {
        let Some(max) = max else {
            return false;
        };
        let size = row
            .try_get::<Option<String>, _>("error")
            .ok()
            .flatten()
            .map_or(0, |t| t.len());
        bytes = bytes.saturating_add(size);
        bytes >= max
    }
}

/// The calls that re-run inputs of `calls`, oldest first (the index of re-runs).
pub async fn rerun_list(pool: &DbPool, calls: &[CallId]) -> Result<Vec<RerunRow>, StoreError> {
    let mut out = Vec::new();
    for chunk in calls.chunks(500) {
        let mut q: QueryBuilder<Db> = QueryBuilder::new(
            "SELECT id, rerun_of_call, rerun_of_index, state, idempotency_key FROM calls
             WHERE rerun_of_call IN (",
        );
        let mut ids = q.separated(", ");
        for id in chunk {
            ids.push_bind(id.as_str());
        }
        q.push(") ORDER BY id");
        for row in q.build().fetch_all(pool).await.map_err(db_err)? {
            out.push(RerunRow {
                of_call: call_id(&row.try_get::<String, _>("rerun_of_call").map_err(db_err)?)?,
                of_index: row.try_get("rerun_of_index").map_err(db_err)?,
                call_id: call_id(&row.try_get::<String, _>("id").map_err(db_err)?)?,
                state: state(&row.try_get::<String, _>("state").map_err(db_err)?)?,
                idempotency_key: row.try_get("idempotency_key").map_err(db_err)?,
            });
        }
    }
    Ok(out)
}

/// The failed input of a call with the lowest index (an index walk of the failed ones).
pub const FIRST_FAILED_SQL: &str =
    "SELECT id, call_id, idx, state, input, output, error, attempt, failures, not_before, finished_at
     FROM inputs WHERE call_id = $1 AND state = 'failed' ORDER BY idx LIMIT 1";

pub async fn first_failed(pool: &DbPool, id: &CallId) -> Result<Option<InputRow>, StoreError> {
    let row = crate::db::query(FIRST_FAILED_SQL)
        .bind(id.as_str())
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

/// Function specs read once per transaction, and once per store where one is given.
#[derive(Default)]
struct Specs {
    read: HashMap<(String, String, i64), FunctionSpec>,
    store: Option<std::sync::Arc<VersionSpecs>>,
}

impl Specs {
    async fn get(
        &mut self,
        conn: &mut Conn,
        app: &str,
        function: &str,
        version: i64,
    ) -> Result<FunctionSpec, StoreError> {
        let key = (app.to_string(), function.to_string(), version);
        if let Some(spec) = self.read.get(&key) {
            return Ok(spec.clone());
        }
        if let Some(spec) = self
            .store
            .as_ref()
            .and_then(|s| s.get(app, function, version))
        {
            return Ok(spec);
        }
        let text: Option<String> = crate::db::query_scalar(
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
        if let Some(store) = &self.store {
            store.keep(app, function, version, &parsed);
        }
        self.read.insert(key, parsed.clone());
        Ok(parsed)
    }
}

/// The pending inputs of `functions` the lease may take, as `SELECT id, priority, not_before`:
/// for each function the first `max` due in order, a walk of `inputs_pending` stopped by
/// `LIMIT`, then the union of those. Written per function rather than as one `OR` of them,
/// which both planners answer by finding every pending input of the functions and sorting
/// them all (36.8 ms for a two-function worker over 50,000 pending inputs on PostgreSQL).
/// With each walk goes a probe of `inputs_pending_ranked` for one due input with a key or a
/// priority: finding one (the index is empty for most functions) turns the function over to
/// [`crate::limits::claim`]. On PostgreSQL each walk skips, and locks, the rows another lease
/// is claiming.
fn push_due_per_function(
    q: &mut QueryBuilder<'_, Db>,
    functions: &[FunctionKey],
    now: i64,
    max: i64,
) {
    for (i, f) in functions.iter().enumerate() {
        if i > 0 {
            q.push(" UNION ALL ");
        }
        q.push(
            "SELECT id, priority, not_before FROM (SELECT id, priority, not_before FROM inputs \
             WHERE state = 'pending' AND key = '' AND app = ",
        )
        .push_bind(f.app.clone())
        .push(" AND function = ")
        .push_bind(f.function.clone())
        .push(" AND not_before <= ")
        .push_bind(now)
        .push(" ORDER BY not_before, id LIMIT ")
        .push_bind(max)
        .push(format!("{SKIP_LOCKED}) AS due{i}"));
        q.push(format!(
            " UNION ALL SELECT id, priority, not_before FROM (SELECT id, priority, not_before \
             FROM inputs WHERE state = 'pending' AND {RANKED} AND app = "
        ))
        .push_bind(f.app.clone())
        .push(" AND function = ")
        .push_bind(f.function.clone())
        .push(" AND not_before <= ")
        .push_bind(now)
        .push(format!(
            " ORDER BY key, priority DESC, not_before, id LIMIT 1{SKIP_LOCKED}) AS probe{i}"
        ));
    }
}

/// The predicate of `inputs_pending_ranked`: inputs with a key or a priority. Written the same
/// in every query that walks it, so both planners match the partial index.
pub const RANKED: &str = "(priority <> 0 OR key <> '')";

/// The `UPDATE` that claims the inputs `ids_sql` selects for `p.worker_id` (up to `p.max`),
/// returning them. The deadline comes from each input's own function version; the lease
/// (`now + lease_ms`) is always shorter, as the slack includes a lease.
///
/// `limited`: the inputs are leased under limits and marked so (counted for `max_running`).
pub fn push_claim(q: &mut QueryBuilder<'_, Db>, p: &InputLease, limited: bool) {
    let mark = if limited { "limited = 1, " } else { "" };
    q.push(format!(
        "UPDATE inputs SET {mark}state = 'running', attempt = attempt + 1, worker_id = "
    ))
        .push_bind(p.worker_id.to_string())
        .push(", started_at = ")
        .push_bind(p.now)
        .push(", lease_expires_at = ")
        .push_bind(p.now + p.lease_ms)
        .push(", deadline_at = ")
        .push_bind(p.now + p.deadline_slack_ms)
        .push(format!(
            " + COALESCE((SELECT {TIMEOUT_MS} FROM functions f
               WHERE f.app = inputs.app AND f.name = inputs.function AND f.version = inputs.version), 0)
             WHERE id IN "
        ));
}

/// What a claim returns of each input.
pub const CLAIMED: &str =
    " RETURNING id, call_id, idx, app, function, version, input, attempt, priority, key";

/// The statement that claims a batch of due inputs of `functions` for `p.worker_id`, at most
/// `max`, by the plain walk (see [`push_due_per_function`]).
pub fn push_lease_query(
    q: &mut QueryBuilder<'_, Db>,
    p: &InputLease,
    functions: &[FunctionKey],
    max: i64,
) {
    push_claim(q, p, false);
    q.push("(SELECT id FROM (");
    push_due_per_function(q, functions, p.now, max);
    q.push(") AS due ORDER BY priority DESC, not_before, id LIMIT ")
        .push_bind(max)
        .push(")");
    q.push(CLAIMED);
}

/// A lease request and the limits of its functions (by each function's current version).
pub type LeaseJob = (InputLease, Vec<(FunctionKey, hopper_core::limits::Limits)>);

/// Leases up to `p.max` due inputs of `p.functions`; their specs come from `versions` where
/// the store has read them before. Functions with `limits` (by `function`'s current version),
/// or seen with keyed or prioritized inputs, are claimed by [`crate::limits::claim`] first,
/// the others by the plain walk.
pub async fn lease(
    conn: &mut Conn,
    p: InputLease,
    limits: Vec<(FunctionKey, hopper_core::limits::Limits)>,
    versions: std::sync::Arc<VersionSpecs>,
) -> Result<LeaseBatch, StoreError> {
    let mut batches = lease_many(conn, vec![(p, limits)], versions).await?;
    Ok(batches.pop().unwrap_or_default())
}

/// Several workers' leases in one transaction, a batch for each job in order (see [`lease`]).
/// Each job claims what the ones before it left; the calls whose inputs started are updated
/// once for all, locked in id order, so groups cannot deadlock on them. Jobs whose functions
/// have limits also lock their limiters' rows: the caller groups only jobs without them.
pub async fn lease_many(
    conn: &mut Conn,
    jobs: Vec<LeaseJob>,
    versions: std::sync::Arc<VersionSpecs>,
) -> Result<Vec<LeaseBatch>, StoreError> {
    let asks = |p: &InputLease| !p.functions.is_empty() && p.max > 0;
    if !jobs.iter().any(|(p, _)| asks(p)) {
        return Ok(vec![LeaseBatch::default(); jobs.len()]);
    }
    let mut tx = conn.begin().await.map_err(db_err)?;
    crate::dialect::relaxed_commit(&mut tx).await?;
    let mut specs = Specs {
        store: Some(versions.clone()),
        ..Specs::default()
    };
    let mut per_call: BTreeMap<String, i64> = BTreeMap::new();
    let mut batches = Vec::with_capacity(jobs.len());
    let mut now = 0;
    for (p, limits) in &jobs {
        if !asks(p) {
            batches.push(LeaseBatch::default());
            continue;
        }
        now = now.max(p.now);
        let batch = claim(&mut tx, p, limits, &versions, &mut specs).await?;
        for row in &batch.rows {
            *per_call.entry(row.call_id.to_string()).or_default() += 1;
        }
        batches.push(batch);
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
        now,
    )
    .await?;
    tx.commit().await.map_err(db_err)?;
    Ok(batches)
}

/// Claims one job's inputs inside the lease transaction `tx` (see [`lease_many`]); its
/// calls' counters are left to the caller.
async fn claim(
    tx: &mut Conn,
    p: &InputLease,
    limits: &[(FunctionKey, hopper_core::limits::Limits)],
    versions: &std::sync::Arc<VersionSpecs>,
    specs: &mut Specs,
) -> Result<LeaseBatch, StoreError> {
    let mut left = i64::from(p.max);
    let mut rows = Vec::new();
    let mut limited = None;
    let mut held = Vec::new();
    let mut plain = Vec::new();
    for f in &p.functions {
        let rules = limits.iter().find(|(k, _)| k == f).map(|(_, l)| l);
        if rules.is_none() && !versions.ranked(f) {
            plain.push(f.clone());
            continue;
        }
        if left == 0 {
            continue;
        }
        let claimed =
            crate::limits::claim(tx, p, f, rules.cloned().unwrap_or_default(), left).await?;
        left -= claimed.rows.len() as i64;
        if let Some(until) = claimed.limited {
            crate::limits::sooner(&mut limited, until);
        }
        if !claimed.held.is_empty() {
            let mut kinds = claimed.held;
            kinds.sort();
            kinds.dedup();
            held.push((f.clone(), kinds));
        }
        rows.extend(claimed.rows);
    }
    if left > 0 && !plain.is_empty() {
        let mut q: QueryBuilder<Db> = QueryBuilder::new("");
        push_lease_query(&mut q, p, &plain, left);
        let found = q.build().fetch_all(&mut *tx).await.map_err(db_err)?;
        for row in &found {
            let priority: i64 = row.try_get("priority").map_err(db_err)?;
            let key: String = row.try_get("key").map_err(db_err)?;
            if priority != 0 || !key.is_empty() {
                versions.mark_ranked(&FunctionKey {
                    app: row.try_get("app").map_err(db_err)?,
                    function: row.try_get("function").map_err(db_err)?,
                });
            }
        }
        rows.extend(found);
    }
    rows.sort_by_key(|r| r.try_get::<i64, _>("id").unwrap_or(0));
    let mut leased = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: i64 = row.try_get("id").map_err(db_err)?;
        let call: String = row.try_get("call_id").map_err(db_err)?;
        let app: String = row.try_get("app").map_err(db_err)?;
        let function: String = row.try_get("function").map_err(db_err)?;
        let version: i64 = row.try_get("version").map_err(db_err)?;
        let attempt: i64 = row.try_get("attempt").map_err(db_err)?;
        let spec = specs.get(tx, &app, &function, version).await?;
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
    // Only inputs waiting on a limit with nothing claimed make the caller wait for one.
    Ok(LeaseBatch {
        limited: if leased.is_empty() { limited } else { None },
        held,
        rows: leased,
    })
}

/// The first time an input of `functions` is due: the heads of each function's walks of
/// `inputs_pending` (inputs without a key) and `inputs_pending_keyed`, the earliest of those.
pub fn push_next_due_query(q: &mut QueryBuilder<'_, Db>, functions: &[FunctionKey]) {
    // Each head is an ordered walk stopped at its first row, whatever the planner's
    // statistics say: an aggregate over the walk would read every pending input.
    q.push("SELECT MIN(first) FROM (");
    for (i, f) in functions.iter().enumerate() {
        if i > 0 {
            q.push(" UNION ALL ");
        }
        for (j, key) in ["key = ''", "key <> ''"].into_iter().enumerate() {
            if j > 0 {
                q.push(" UNION ALL ");
            }
            q.push(format!(
                "SELECT * FROM (SELECT not_before AS first FROM inputs WHERE state = 'pending' \
                 AND {key} AND app = "
            ))
            .push_bind(f.app.clone())
            .push(" AND function = ")
            .push_bind(f.function.clone())
            .push(" ORDER BY not_before LIMIT 1) AS head");
        }
    }
    q.push(") AS heads");
}

pub async fn next_due(pool: &DbPool, functions: &[FunctionKey]) -> Result<Option<i64>, StoreError> {
    if functions.is_empty() {
        return Ok(None);
    }
    let mut q: QueryBuilder<Db> = QueryBuilder::new("");
    push_next_due_query(&mut q, functions);
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
    /// The size of the batch the attempt ran in, as its worker reported it.
    batch_size: Option<i64>,
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
        batch_size: None,
    })
}

/// Records an ended attempt. A second record for the same attempt (a result that arrived
/// after the lease was rescued or cancelled) is kept once, as the late outcome of a lost or
/// cancelled attempt; an attempt that recorded a result is never rewritten.
async fn attempt_record(
    conn: &mut Conn,
    input: &Running,
    outcome: &str,
    error: Option<&InputError>,
    now: UnixMillis,
    late: bool,
) -> Result<(), StoreError> {
    crate::db::query(
        "INSERT INTO attempts (input_id, attempt, call_id, idx, worker_id, outcome, started_at, finished_at, error, late, batch_size)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (input_id, attempt) DO UPDATE SET late = 1, outcome = excluded.outcome,
           error = COALESCE(excluded.error, attempts.error)
         WHERE attempts.late = 0 AND (attempts.outcome IN ('lost', 'cancelled')
           OR (attempts.outcome = 'failed' AND attempts.error = $12))",
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
    .bind(input.batch_size)
    .bind(error_text(&deadline_passed()))
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// The error of an attempt the reaper ended at its deadline: the worker may still report what
/// it did, and that is kept as the attempt's late outcome.
fn deadline_passed() -> InputError {
    InputError::new(
        "timeout",
        "no result before the attempt's deadline: the worker stopped responding",
    )
}

/// An input reaching a terminal state, as [`end_many`] writes it.
struct End {
    id: i64,
    call_id: CallId,
    /// The state it leaves: `running`, or `pending` for a cancel.
    from: InputState,
    /// `succeeded`, `failed` or `cancelled`.
    to: InputState,
    output: Option<String>,
    error: Option<String>,
    failures: i64,
    lost: i64,
}

/// Inputs per multi-row statement of [`end_many`] (7 parameters each).
const END_CHUNK: usize = 300;

/// The one place an input ends, whichever way: success, failure, timeout, lost leases. Moves
/// each call's counters to the terminal states, derives the calls' states, and writes every
/// input's state, result and position in its call's completion order (`done_seq`) together,
/// so no way of ending can forget one of them. (Cancel ends a call's open inputs set-wise by
/// the same rule, in `calls::cancel`.)
async fn end_many(
    conn: &mut Conn,
    ends: &[End],
    now: UnixMillis,
) -> Result<HashMap<CallId, Shifted>, StoreError> {
    if ends.is_empty() {
        return Ok(HashMap::new());
    }
    let mut by_call: BTreeMap<&str, (Moves, Vec<&End>)> = BTreeMap::new();
    for end in ends {
        let (moves, group) = by_call.entry(end.call_id.as_str()).or_default();
        moves.shift(end.from, end.to);
        group.push(end);
    }
    let groups: Vec<(CallId, Moves)> = by_call
        .iter()
        .map(|(call, (moves, _))| Ok((call_id(call)?, *moves)))
        .collect::<Result<_, StoreError>>()?;
    let shifted = shift_moves(conn, &groups, now).await?;
    // (end, output kept, done_seq)
    let mut rows: Vec<(&End, Option<&String>, Option<i64>)> = Vec::with_capacity(ends.len());
    for ((_, (_, group)), (id, _)) in by_call.iter().zip(&groups) {
        let call = shifted.get(id).and_then(|s| s.call.as_ref());
        let keep = !call.is_some_and(|c| c.discard_results);
        let base = call.map(|c| c.counts.ended() - group.len() as i64);
        for (i, end) in group.iter().enumerate() {
            let output = end.output.as_ref().filter(|_| keep);
            rows.push((end, output, base.map(|b| b + i as i64 + 1)));
        }
    }
    for chunk in rows.chunks(END_CHUNK) {
        let mut q: QueryBuilder<Db> =
            QueryBuilder::new("WITH r(id, state, output, error, failures, lost, done_seq) AS (");
        q.push_values(chunk, |mut b, (end, output, done_seq)| {
            b.push_bind(end.id)
                .push_bind(end.to.as_str())
                .push_bind(output.cloned())
                .push_bind(end.error.clone())
                .push_bind(end.failures)
                .push_bind(end.lost)
                .push_bind(*done_seq);
        });
        q.push(
            ") UPDATE inputs SET state = r.state, output = r.output, error = r.error,
               failures = r.failures, lost = r.lost, done_seq = r.done_seq, finished_at = ",
        )
        .push_bind(now)
        .push(", worker_id = NULL, lease_expires_at = NULL FROM r WHERE inputs.id = r.id");
        q.build().execute(&mut *conn).await.map_err(db_err)?;
    }
    Ok(shifted)
}

/// A failed attempt: back to pending after the backoff if retries are left (and `retry`
/// allows one), else the input's end, for the caller to write with [`end_many`].
async fn fail(
    conn: &mut Conn,
    specs: &mut Specs,
    input: &Running,
    error: &InputError,
    retry: bool,
    now: UnixMillis,
) -> Result<Option<End>, StoreError> {
    attempt_record(conn, input, "failed", Some(error), now, false).await?;
    let spec = specs
        .get(conn, &input.app, &input.function, input.version)
        .await?;
    let failures = input.failures + 1;
    let delay = retry
        .then(|| spec.retries.delay_after(failures as u32))
        .flatten();
    let Some(delay) = delay else {
        return Ok(Some(End {
            id: input.id,
            call_id: input.call_id.clone(),
            from: InputState::Running,
            to: InputState::Failed,
            output: None,
            error: Some(error_text(error)),
            failures,
            lost: input.lost,
        }));
    };
    crate::db::query(
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
    shift(
        conn,
        &input.call_id,
        InputState::Running,
        InputState::Pending,
        1,
        now,
    )
    .await?;
    Ok(None)
}

/// A lost lease: back to the queue at once, unless it was lost too often; then the input's
/// end, for the caller to write with [`end_many`].
async fn requeue_lost(
    conn: &mut Conn,
    input: &Running,
    error: &InputError,
    now: UnixMillis,
) -> Result<Option<End>, StoreError> {
    attempt_record(conn, input, "lost", Some(error), now, false).await?;
    let lost = input.lost + 1;
    if lost >= MAX_LOST_LEASES {
        let final_error = InputError::new("lease_lost", format!("the input went back to the queue {lost} times without a result (its worker, or its serve process, died or stopped each time); last: {}", error.message));
        return Ok(Some(End {
            id: input.id,
            call_id: input.call_id.clone(),
            from: InputState::Running,
            to: InputState::Failed,
            output: None,
            error: Some(error_text(&final_error)),
            failures: input.failures,
            lost,
        }));
    }
    // Back in its place in the queue: due since it first was, so it runs before what came
    // after it.
    crate::db::query(
        "UPDATE inputs SET state = 'pending', lost = $2, worker_id = NULL, lease_expires_at = NULL WHERE id = $1",
    )
    .bind(input.id)
    .bind(lost)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    shift(
        conn,
        &input.call_id,
        InputState::Running,
        InputState::Pending,
        1,
        now,
    )
    .await?;
    Ok(None)
}

/// Reads `ids` (sorted) with the columns the transitions need, locked until commit on
/// PostgreSQL, in id order, so two transactions lock inputs in the same order.
async fn lock_inputs(conn: &mut Conn, ids: &[i64]) -> Result<HashMap<i64, DbRow>, StoreError> {
    read_inputs(conn, ids, LOCK_ROWS).await
}

/// Reads `ids` with the columns the transitions need, without locking them.
pub async fn read_many(conn: &mut Conn, ids: &[i64]) -> Result<HashMap<i64, DbRow>, StoreError> {
    read_inputs(conn, ids, "").await
}

async fn read_inputs(
    conn: &mut Conn,
    ids: &[i64],
    lock: &str,
) -> Result<HashMap<i64, DbRow>, StoreError> {
    let mut rows = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(COMPLETE_CHUNK) {
        let mut q: QueryBuilder<Db> = QueryBuilder::new(format!(
            "SELECT {RUNNING_COLUMNS} FROM inputs WHERE id IN ("
        ));
        let mut list = q.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        q.push(format!(") ORDER BY id{lock}"));
        for row in q.build().fetch_all(&mut *conn).await.map_err(db_err)? {
            let id: i64 = row.try_get("id").map_err(db_err)?;
            rows.insert(id, row);
        }
    }
    Ok(rows)
}

/// The workers that held `leases` that are no longer current, from their attempt rows.
async fn past_holders(
    conn: &mut Conn,
    leases: &[Lease],
) -> Result<HashMap<(i64, i64), Option<String>>, StoreError> {
    let mut holders = HashMap::with_capacity(leases.len());
    for chunk in leases.chunks(COMPLETE_CHUNK) {
        let mut q: QueryBuilder<Db> =
            QueryBuilder::new("SELECT input_id, attempt, worker_id FROM attempts WHERE TRUE");
        push_leases(&mut q, "input_id", chunk);
        for row in q.build().fetch_all(&mut *conn).await.map_err(db_err)? {
            holders.insert(
                (
                    row.try_get("input_id").map_err(db_err)?,
                    row.try_get("attempt").map_err(db_err)?,
                ),
                row.try_get("worker_id").map_err(db_err)?,
            );
        }
    }
    Ok(holders)
}

/// Refuses results or log lines from a worker for leases it never held: a worker can touch
/// only its own leases. `current` are the inputs' rows, locked.
pub async fn check_holder(
    conn: &mut Conn,
    worker: &str,
    leases: &[Lease],
    current: &HashMap<i64, DbRow>,
) -> Result<(), StoreError> {
    let mut past = Vec::new();
    for lease in leases {
        let Some(row) = current.get(&lease.input_id) else {
            continue; // the input is gone (pruned): nothing to protect
        };
        let attempt: i64 = row.try_get("attempt").map_err(db_err)?;
        let state = state(&row.try_get::<String, _>("state").map_err(db_err)?)?;
        let holder: Option<String> = row.try_get("worker_id").map_err(db_err)?;
        if state == InputState::Running && attempt == lease.attempt as i64 {
            if holder.as_deref() != Some(worker) {
                return Err(not_holder(worker, lease));
            }
        } else if (lease.attempt as i64) > attempt || lease.attempt == 0 {
            return Err(not_holder(worker, lease));
        } else {
            past.push(*lease);
        }
    }
    if past.is_empty() {
        return Ok(());
    }
    let holders = past_holders(conn, &past).await?;
    for lease in &past {
        let held = holders
            .get(&(lease.input_id, lease.attempt as i64))
            .is_some_and(|w| w.as_deref() == Some(worker));
        if !held {
            return Err(not_holder(worker, lease));
        }
    }
    Ok(())
}

fn not_holder(worker: &str, lease: &Lease) -> StoreError {
    StoreError::Conflict(format!(
        "worker {worker} does not hold the lease of input {} attempt {}: nothing was changed",
        lease.input_id, lease.attempt
    ))
}

/// Results (and log lines) per multi-row statement.
const COMPLETE_CHUNK: usize = 300;

/// One result of a worker's batch within a group of batches (see [`complete_groups`]).
struct Reported<'a> {
    /// The batch's place in the group.
    job: usize,
    lease: Lease,
    outcome: &'a Outcome,
    batch_size: Option<u32>,
    worker: &'a str,
    now: UnixMillis,
}

/// Several workers' batches of results in one transaction: the answer to each batch in
/// order, its rows in the order of its results, or the conflict that refused it whole (a
/// result for a lease its worker never held; nothing of that batch is written). All the
/// batches' inputs are locked first, in id order, then their calls, so concurrent groups
/// cannot deadlock. The outer error is one that failed the whole transaction.
pub async fn complete_groups(
    conn: &mut Conn,
    jobs: Vec<InputCompleteMany>,
) -> Result<Vec<Result<Vec<CompletionRow>, StoreError>>, StoreError> {
    let mut tx = conn.begin().await.map_err(db_err)?;
    let mut specs = Specs::default();
    // One read for every batch, locked in id order: inputs first, then their calls.
    let mut input_ids: Vec<i64> = jobs
        .iter()
        .flat_map(|p| p.results.iter().map(|(l, _)| l.input_id))
        .collect();
    input_ids.sort_unstable();
    input_ids.dedup();
    let rows = lock_inputs(&mut tx, &input_ids).await?;
    let mut answers: Vec<Result<Vec<CompletionRow>, StoreError>> = Vec::with_capacity(jobs.len());
    let mut reported: Vec<Reported> = Vec::new();
    for (job, p) in jobs.iter().enumerate() {
        let leases: Vec<Lease> = p.results.iter().map(|(l, _)| *l).collect();
        match check_holder(&mut tx, p.worker_id.as_str(), &leases, &rows).await {
            Err(e @ StoreError::Conflict(_)) => {
                answers.push(Err(e));
                continue;
            }
            Err(e) => return Err(e),
            Ok(()) => answers.push(Ok(Vec::with_capacity(p.results.len()))),
        }
        reported.extend(
            p.results
                .iter()
                .enumerate()
                .map(|(n, (lease, outcome))| Reported {
                    job,
                    lease: *lease,
                    outcome,
                    batch_size: p.batch_sizes.get(n).copied(),
                    worker: p.worker_id.as_str(),
                    now: p.now,
                }),
        );
    }
    let now = jobs.iter().map(|p| p.now).max().unwrap_or_default();
    let mut out: Vec<CompletionRow> = (0..reported.len())
        .map(|_| CompletionRow {
            recorded: false,
            call_finished: None,
            function: None,
            duration_ms: None,
            effect: "late",
        })
        .collect();
    // Which result is each input's current one (a second result for a lease in one group is
    // late), in input id order.
    let mut current: Vec<(usize, Running)> = Vec::new();
    let mut late: Vec<(usize, Running)> = Vec::new();
    let mut taken = std::collections::HashSet::new();
    for (n, r) in reported.iter().enumerate() {
        let Some(row) = rows.get(&r.lease.input_id) else {
            continue; // the input is gone (pruned)
        };
        let mut input = running(row)?;
        input.batch_size = r.batch_size.map(i64::from);
        let is_current = state(&row.try_get::<String, _>("state").map_err(db_err)?)?
            == InputState::Running
            && input.attempt == r.lease.attempt as i64
            && taken.insert(r.lease.input_id);
        if is_current {
            current.push((n, input));
        } else {
            late.push((n, input));
        }
    }
    current.sort_by_key(|(_, input)| input.id);
    // A failure or a returned input changes its call on its own (`fail`, `requeue_lost`), so
    // the calls are locked first, in id order; results that all succeeded leave them to
    // `end_many`, which locks them the same way, just before the commit, so a call many
    // workers report to is held for as short a time as can be.
    let all_succeeded = current
        .iter()
        .all(|(n, _)| matches!(reported[*n].outcome, Outcome::Succeeded { .. }));
    if !all_succeeded {
        lock_many(&mut tx, current.iter().map(|(_, i)| i.call_id.as_str())).await?;
    }
    // Attempts ended, per function, for the dashboard's statistics.
    let mut tallies = crate::stats::Tallies::default();
    let mut ends: Vec<(usize, End)> = Vec::new();
    let mut succeeded: Vec<(&Running, UnixMillis)> = Vec::new();
    for (n, input) in &current {
        let r = &reported[*n];
        let duration = r.now - input.started_at;
        let effect = match r.outcome {
            Outcome::Succeeded { output } => {
                succeeded.push((input, r.now));
                ends.push((
                    *n,
                    End {
                        id: input.id,
                        call_id: input.call_id.clone(),
                        from: InputState::Running,
                        to: InputState::Succeeded,
                        output: Some(output.to_string()),
                        error: None,
                        failures: input.failures,
                        lost: input.lost,
                    },
                ));
                "succeeded"
            }
            Outcome::Failed { error, retry } => {
                match fail(&mut tx, &mut specs, input, error, *retry, r.now).await? {
                    Some(end) => {
                        ends.push((*n, end));
                        "failed"
                    }
                    None => "retried",
                }
            }
            Outcome::Returned { error } => {
                match requeue_lost(&mut tx, input, error, r.now).await? {
                    Some(end) => {
                        ends.push((*n, end));
                        "failed"
                    }
                    None => "returned",
                }
            }
        };
        tallies.add(&input.app, &input.function, effect, duration);
        out[*n] = CompletionRow {
            recorded: true,
            call_finished: None,
            function: Some(format!("{}.{}", input.app, input.function)),
            duration_ms: Some(duration),
            effect,
        };
    }
    for chunk in succeeded.chunks(COMPLETE_CHUNK) {
        let mut q: QueryBuilder<Db> = QueryBuilder::new(
            "INSERT INTO attempts (input_id, attempt, call_id, idx, worker_id, outcome, started_at, finished_at, batch_size) ",
        );
        q.push_values(chunk, |mut b, (input, at)| {
            b.push_bind(input.id)
                .push_bind(input.attempt)
                .push_bind(input.call_id.as_str())
                .push_bind(input.index)
                .push_bind(input.worker_id.clone())
                .push("'succeeded'")
                .push_bind(input.started_at)
                .push_bind(*at)
                .push_bind(input.batch_size);
        });
        q.push(" ON CONFLICT (input_id, attempt) DO NOTHING");
        q.build().execute(&mut *tx).await.map_err(db_err)?;
    }
    let (positions, ends): (Vec<usize>, Vec<End>) = ends.into_iter().unzip();
    let shifted = end_many(&mut tx, &ends, now).await?;
    // A call that ended is reported with the last of its results in the group.
    for (n, end) in positions.iter().zip(&ends).rev() {
        if let Some(finished) = shifted.get(&end.call_id).and_then(|s| s.finished.clone()) {
            if !out
                .iter()
                .any(|r| r.call_finished.as_ref() == Some(&finished))
            {
                out[*n].call_finished = Some(finished);
            }
        }
    }
    for (n, mut input) in late {
        // The lease was lost: keep what the attempt said, but not as the input's result.
        let r = &reported[n];
        input.attempt = r.lease.attempt as i64;
        input.worker_id = Some(r.worker.to_string());
        let (name, error) = match r.outcome {
            Outcome::Succeeded { .. } => ("succeeded", None),
            Outcome::Failed { error, .. } => ("failed", Some(error)),
            Outcome::Returned { error } => ("lost", Some(error)),
        };
        attempt_record(&mut tx, &input, name, error, r.now, true).await?;
        out[n].function = Some(format!("{}.{}", input.app, input.function));
    }
    tallies.record(&mut tx, now).await?;
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
    for (r, row) in reported.iter().zip(out) {
        if let Some(Ok(rows)) = answers.get_mut(r.job) {
            rows.push(row);
        }
    }
    Ok(answers)
}

/// Extends the leases (the worker's sighting is `workers::touch`'s, written apart).
pub async fn heartbeat(conn: &mut Conn, p: LeaseHeartbeat) -> Result<Vec<Lease>, StoreError> {
    if p.leases.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = conn.begin().await.map_err(db_err)?;
    crate::dialect::relaxed_commit(&mut tx).await?;
    let mut leases = p.leases.clone();
    leases.sort_by_key(|l| l.input_id);
    leases.dedup();
    // One statement renews every lease still held. On PostgreSQL it skips rows another
    // transaction is changing (this worker's results being recorded, most often) rather than
    // wait behind it: those are looked at below, unlocked.
    let mut renewed = std::collections::HashSet::new();
    for chunk in leases.chunks(COMPLETE_CHUNK) {
        let mut q: QueryBuilder<Db> =
            QueryBuilder::new(format!("UPDATE inputs SET lease_expires_at = {LEAST}("));
        q.push_bind(p.now + p.lease_ms)
            .push(", deadline_at) WHERE id IN (SELECT id FROM inputs WHERE state = 'running' AND worker_id = ")
            .push_bind(p.worker_id.as_str());
        push_leases(&mut q, "id", chunk);
        q.push(format!(" ORDER BY id{SKIP_LOCKED}) RETURNING id, attempt"));
        for row in q.build().fetch_all(&mut *tx).await.map_err(db_err)? {
            renewed.insert(lease_of(&row)?);
        }
    }
    let skipped: Vec<Lease> = leases
        .iter()
        .filter(|l| !renewed.contains(l))
        .copied()
        .collect();
    let mut held = std::collections::HashSet::new();
    for chunk in skipped.chunks(COMPLETE_CHUNK) {
        // As last committed: a lease whose row was being changed is still held unless that
        // change ends it, and the next heartbeat renews it if not.
        let mut q: QueryBuilder<Db> = QueryBuilder::new(
            "SELECT id, attempt FROM inputs WHERE state = 'running' AND worker_id = ",
        );
        q.push_bind(p.worker_id.as_str());
        push_leases(&mut q, "id", chunk);
        for row in q.build().fetch_all(&mut *tx).await.map_err(db_err)? {
            held.insert(lease_of(&row)?);
        }
    }
    tx.commit().await.map_err(db_err)?;
    Ok(skipped.into_iter().filter(|l| !held.contains(l)).collect())
}

/// The lease a row of `inputs` with `id` and `attempt` holds.
fn lease_of(row: &DbRow) -> Result<Lease, StoreError> {
    Ok(Lease {
        input_id: row.try_get("id").map_err(db_err)?,
        attempt: row.try_get::<i64, _>("attempt").map_err(db_err)? as u32,
    })
}

/// ` AND (ID, attempt) IN (…)` for `leases`, `ID` being the column of the input's id.
fn push_leases(q: &mut QueryBuilder<'_, Db>, id: &str, leases: &[Lease]) {
    q.push(format!(" AND ({id}, attempt) IN ("));
    let mut list = q.separated(", ");
    for lease in leases {
        list.push("(")
            .push_bind_unseparated(lease.input_id)
            .push_unseparated(", ")
            .push_bind_unseparated(lease.attempt as i64)
            .push_unseparated(")");
    }
    q.push(")");
}

/// Gives back the leases of `rows` (locked, sorted by id): each is requeued, or fails once it
/// was lost too often. Returns the calls that ended.
async fn give_back(
    conn: &mut Conn,
    rows: &[DbRow],
    error: &InputError,
    now: UnixMillis,
) -> Result<Vec<(CallId, hopper_core::CallState)>, StoreError> {
    let inputs: Vec<Running> = rows.iter().map(running).collect::<Result<_, _>>()?;
    lock_many(conn, inputs.iter().map(|i| i.call_id.as_str())).await?;
    let mut ends = Vec::new();
    for input in &inputs {
        ends.extend(requeue_lost(conn, input, error, now).await?);
    }
    let shifted = end_many(conn, &ends, now).await?;
    Ok(shifted.into_values().filter_map(|s| s.finished).collect())
}

pub async fn rescue_expired(conn: &mut Conn, p: LeaseRescue) -> Result<RescueReport, StoreError> {
    let mut tx = conn.begin().await.map_err(db_err)?;
    // The oldest expired leases, skipping rows another transaction holds (so the reaper never
    // waits on a completion); then handled in id order, their calls locked in id order.
    let mut rows = crate::db::query(&format!(
        "SELECT {RUNNING_COLUMNS} FROM inputs WHERE state = 'running' AND lease_expires_at <= $1
         ORDER BY lease_expires_at LIMIT $2{SKIP_LOCKED}"
    ))
    .bind(p.now)
    .bind(p.limit as i64)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    rows.sort_by_key(|r| r.try_get::<i64, _>("id").unwrap_or(0));
    let inputs: Vec<(Running, Option<i64>)> = rows
        .iter()
        .map(|row| Ok((running(row)?, row.try_get("deadline_at").map_err(db_err)?)))
        .collect::<Result<_, StoreError>>()?;
    lock_many(&mut tx, inputs.iter().map(|(i, _)| i.call_id.as_str())).await?;
    let mut report = RescueReport::default();
    let mut specs = Specs::default();
    let mut tallies = crate::stats::Tallies::default();
    let mut ends = Vec::new();
    for (input, deadline) in &inputs {
        let duration = p.now - input.started_at;
        if deadline.is_some_and(|d| p.now >= d) {
            report.timed_out += 1;
            let error = deadline_passed();
            let end = fail(&mut tx, &mut specs, input, &error, true, p.now).await?;
            let effect = if end.is_some() { "failed" } else { "retried" };
            tallies.add(&input.app, &input.function, effect, duration);
            ends.extend(end);
        } else {
            report.requeued += 1;
            let error = InputError::new(
                "lease_lost",
                "the worker stopped heartbeating; the input runs again",
            );
            if let Some(end) = requeue_lost(&mut tx, input, &error, p.now).await? {
                tallies.add(&input.app, &input.function, "failed", duration);
                ends.push(end);
            }
        }
    }
    let shifted = end_many(&mut tx, &ends, p.now).await?;
    report
        .finished_calls
        .extend(shifted.into_values().filter_map(|s| s.finished));
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

pub async fn extend_all(conn: &mut Conn, p: LeaseExtend) -> Result<u64, StoreError> {
    let mut tx = conn.begin().await.map_err(db_err)?;
    let moved = crate::db::query(&format!(
        "UPDATE inputs SET lease_expires_at = {GREATEST}(lease_expires_at + $1, $2),
           deadline_at = deadline_at + $1
         WHERE state = 'running'"
    ))
    .bind(p.gap_ms)
    .bind(p.until_at_least)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?
    .rows_affected();
    tx.commit().await.map_err(db_err)?;
    Ok(moved)
}

pub async fn time_shift(conn: &mut Conn, p: TimeShift) -> Result<u64, StoreError> {
    let mut tx = conn.begin().await.map_err(db_err)?;
    let full_lease = p.now + p.lease_ms;
    let floor = if p.step_ms < 0 { full_lease } else { i64::MIN };
    let running = crate::db::query(&format!(
        "UPDATE inputs SET lease_expires_at = {LEAST}({GREATEST}(lease_expires_at + $1, $2), $3),
           deadline_at = {GREATEST}(deadline_at + $1, $2), started_at = started_at + $1
         WHERE state = 'running'"
    ))
    .bind(p.step_ms)
    .bind(floor)
    .bind(full_lease)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?
    .rows_affected();
    // Backoffs that had not ended before the step (`now - step` is then, on the new clock).
    let waiting = crate::db::query(
        "UPDATE inputs SET not_before = not_before + $1 WHERE state = 'pending' AND not_before > $2",
    )
    .bind(p.step_ms)
    .bind(p.now - p.step_ms)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?
    .rows_affected();
    crate::dialect::notify(&mut tx, "inputs").await?;
    tx.commit().await.map_err(db_err)?;
    Ok(running + waiting)
}

pub async fn worker_deregister(conn: &mut Conn, p: WorkerDeregister) -> Result<u64, StoreError> {
    let mut tx = conn.begin().await.map_err(db_err)?;
    // Inputs first, then calls, then the worker's row: the order every other transaction
    // locks in.
    let rows = crate::db::query(&format!(
        "SELECT {RUNNING_COLUMNS} FROM inputs WHERE state = 'running' AND worker_id = $1 ORDER BY id{LOCK_ROWS}"
    ))
    .bind(p.id.as_str())
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    let error = if p.died {
        InputError::new(
            "worker_lost",
            "the worker died while running the input; it goes back to the queue",
        )
    } else {
        InputError::new(
            "worker_stopped",
            "the worker stopped and handed the input back",
        )
    };
    let finished = give_back(&mut tx, &rows, &error, p.now).await?;
    crate::db::query("UPDATE workers SET stopped_at = $2, last_seen_at = $2 WHERE id = $1")
        .bind(p.id.as_str())
        .bind(p.now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    if !rows.is_empty() {
        crate::dialect::notify(&mut tx, "inputs").await?;
        crate::dialect::notify(&mut tx, "results").await?;
    }
    for (call, _) in &finished {
        crate::dialect::notify(&mut tx, &format!("call:{call}")).await?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(rows.len() as u64)
}

/// A call's attempts (ended ones, then running ones) by input and attempt, from
/// `attempts_by_call (call_id, idx, attempt)` and the inputs' `(call_id, idx)` key, merged in
/// order, so a page of a map of millions reads only that page. `$1` the call, `$2` the limit,
/// and with `by_index` `$3` one input.
/// The attempts of a call (`$1`), at most `$2`, by input and attempt: of one input (`$3`)
/// when `by_index`, of the inputs after an index (the next parameter) when `after`.
pub fn attempt_list_sql(by_index: bool, after: bool) -> String {
    let mut input = String::new();
    let mut n = 3;
    if by_index {
        input.push_str(&format!(" AND idx = ${n}"));
        n += 1;
    }
    if after {
        input.push_str(&format!(" AND idx > ${n}"));
    }
    format!(
        "SELECT idx, attempt, worker_id, outcome, started_at, finished_at, error, late, batch_size FROM attempts
         WHERE call_id = $1{input}
         UNION ALL
         SELECT idx, attempt, worker_id, 'running', started_at, NULL, NULL, 0, NULL FROM inputs
         WHERE call_id = $1{input} AND state = 'running'
         ORDER BY 1, 2 LIMIT $2"
    )
}

pub async fn attempt_list(pool: &DbPool, p: AttemptList) -> Result<Vec<AttemptRow>, StoreError> {
    let sql = attempt_list_sql(p.index.is_some(), p.after_index.is_some());
    let mut q = crate::db::query(&sql)
        .bind(p.call_id.as_str())
        .bind(p.limit as i64);
    if let Some(index) = p.index {
        q = q.bind(index);
    }
    if let Some(after) = p.after_index {
        q = q.bind(after);
    }
    let rows = crate::db::fetch_until(q, pool, errors_up_to(p.max_bytes))
        .await
        .map_err(db_err)?;
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
                batch_size: row
                    .try_get::<Option<i64>, _>("batch_size")
                    .map_err(db_err)?
                    .map(|b| b as u32),
            })
        })
        .collect()
}
