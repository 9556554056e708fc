//! What the shared SQL (`crates/store-sql/`) needs from PostgreSQL: its types, the few
//! phrases where the dialects differ (row locks for several servers), wake-ups, and how its
//! errors map.

use hopper_store::StoreError;

pub type Db = sqlx::Postgres;
pub type Conn = sqlx::postgres::PgConnection;
pub type DbPool = sqlx::PgPool;
pub type DbRow = sqlx::postgres::PgRow;

/// The larger of two values.
pub const GREATEST: &str = "GREATEST";
/// The smaller of two values.
pub const LEAST: &str = "LEAST";
/// A function version's timeout, from its spec JSON.
pub const TIMEOUT_MS: &str = "(f.spec::jsonb ->> 'timeout_ms')::BIGINT";
/// Several servers claim rows at once: each skips the rows another is claiming.
pub const SKIP_LOCKED: &str = " FOR UPDATE SKIP LOCKED";
/// Rows read to be changed are locked until commit, so another server cannot interleave.
pub const LOCK_ROWS: &str = " FOR UPDATE";
pub const LOCK_SCHEDULE: &str = " FOR UPDATE OF s";
/// PostgreSQL's `SUM` of `BIGINT` is `NUMERIC`.
pub const SUM_AS_BIGINT: &str = "::BIGINT";

/// The channel of `LISTEN/NOTIFY` wake-ups.
pub const CHANNEL: &str = "hopper_wakeups";

tokio::task_local! {
    /// Wake-ups the write running in this task asked for: published to the other servers
    /// after it commits (see `PgStore::write`), never inside it.
    pub static WAKEUPS: std::cell::RefCell<Vec<String>>;
}

/// Asks for a wake-up of every server once the current write commits. A `NOTIFY` inside the
/// data transaction would take PostgreSQL's one notification lock through the commit and its
/// WAL flush, so commits that notify would run one at a time; the wake-ups go instead to
/// one publisher per process, which sends them coalesced on a connection of its own.
pub fn notify(_conn: &mut Conn, payload: &str) -> std::future::Ready<Result<(), StoreError>> {
    let _ = WAKEUPS.try_with(|w| w.borrow_mut().push(payload.to_string()));
    std::future::ready(Ok(()))
}

/// Lets the current transaction commit without waiting for its WAL to reach the disk: for
/// writes whose loss in a crash of the database only sends inputs back to the queue (leases,
/// heartbeats). A later durable commit flushes it with everything before it.
pub async fn relaxed_commit(conn: &mut Conn) -> Result<(), StoreError> {
    sqlx::query("SET LOCAL synchronous_commit TO OFF")
        .execute(conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

pub fn db_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::Io(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_) => StoreError::Unavailable(e.to_string()),
        // Deadlocks and serialization failures: the transaction was rolled back whole and
        // runs again (`PgStore::write`).
        sqlx::Error::Database(db)
            if matches!(db.code().as_deref(), Some("40P01") | Some("40001")) =>
        {
            StoreError::Contention(e.to_string())
        }
        // Lock timeouts, and the server shutting down or restarting: the operation changed
        // nothing and may be retried.
        sqlx::Error::Database(db)
            if matches!(
                db.code().as_deref(),
                Some("55P03")
                    | Some("57P01")
                    | Some("57P02")
                    | Some("57P03")
                    | Some("08006")
                    | Some("08003")
            ) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        // disk_full, insufficient_resources: nothing was written.
        sqlx::Error::Database(db)
            if matches!(db.code().as_deref(), Some("53100") | Some("53000")) =>
        {
            StoreError::Full(e.to_string())
        }
        _ => StoreError::Database(e.to_string()),
    }
}

/// How PostgreSQL fills and plans for the query-plan test (`store-sql/query_plans.rs`).
#[cfg(test)]
pub mod plans {
    use hopper_core::stats::SLOT_MS;
    use sqlx::Row;

    pub use crate::query_plans::Allow;

    pub const EXPLAIN: &str = "EXPLAIN ";

    /// The same fixture as SQLite's (see there), then `ANALYZE`, as autovacuum would.
    pub fn fill(calls: i64, t0: i64) -> Vec<String> {
        let end = t0 + calls * 10;
        vec![
            format!(
                "INSERT INTO calls (id, app, function, version, origin, state, n_total, n_pending, n_running,
                                    n_succeeded, n_failed, n_cancelled, created_at, finished_at)
                 SELECT 'hc-' || lpad(i::text, 26, '0'), 'app' || (i % 2), 'f' || (i % 4), 1,
                        CASE WHEN i % 20 = 0 THEN 'map' WHEN i % 50 = 1 THEN 'schedule' ELSE 'spawn' END,
                        s, 1, (s = 'pending')::int, (s = 'running')::int, (s = 'succeeded')::int,
                        (s = 'failed')::int, (s = 'cancelled')::int,
                        {t0} + i * 10, CASE WHEN s IN ('pending', 'running') THEN NULL ELSE {t0} + i * 10 + 5 END
                 FROM (SELECT i, CASE WHEN i % 100 < 90 THEN 'succeeded' WHEN i % 100 < 95 THEN 'failed'
                                      WHEN i % 100 < 98 THEN 'cancelled' WHEN i % 100 < 99 THEN 'running'
                                      ELSE 'pending' END AS s FROM generate_series(0, {last}::bigint) i) n",
                last = calls - 1
            ),
            "INSERT INTO inputs (call_id, idx, app, function, version, state, input, output, not_before,
                                 started_at, finished_at, attempt)
             SELECT id, 0, app, function, 1, state, '{\"n\": 1}', CASE WHEN state = 'succeeded' THEN '2' END,
                    created_at, created_at, finished_at, 1 FROM calls"
                .into(),
            "INSERT INTO attempts (input_id, attempt, call_id, idx, worker_id, outcome, started_at, finished_at)
             SELECT id, 1, call_id, 0, 'hw-00000000000000000000000001', state, started_at, finished_at
             FROM inputs WHERE finished_at IS NOT NULL"
                .into(),
            "INSERT INTO logs (call_id, idx, attempt, stream, ts, line)
             SELECT call_id, 0, 1, 'stdout', started_at, 'working on it' FROM inputs"
                .into(),
            format!(
                "INSERT INTO function_stats (app, function, slot, succeeded, failed, h05)
                 SELECT 'app' || (f % 2), 'f' || f, slot, 90, 5, 95
                 FROM generate_series({first}::bigint, {end}::bigint, {SLOT_MS}::bigint) slot,
                      generate_series(0, 3) f",
                first = end - 86_400_000,
            ),
            "ANALYZE".into(),
        ]
    }

    pub fn lines(rows: Vec<super::DbRow>) -> Vec<String> {
        rows.iter()
            .map(|r| r.get::<String, _>("QUERY PLAN"))
            .collect()
    }

    /// No `Seq Scan` of a table but the small one allowed. PostgreSQL's planner may sort the
    /// few rows an index search found (a bitmap scan, then a top-N sort); that is fine.
    pub fn assert_indexed(what: &str, plan: &[String], allow: Allow) {
        for line in plan {
            let bad = match &allow {
                Allow::SmallTable { table, alias } => {
                    line.contains("Seq Scan on")
                        && !line.contains(&format!("Seq Scan on {table} {alias}"))
                        && !line.contains(&format!("Seq Scan on {table} "))
                }
                Allow::Nothing | Allow::WalkInOrder | Allow::SortFew => {
                    line.contains("Seq Scan on")
                }
            };
            assert!(!bad, "{what}: `{line}` in the plan {plan:#?}");
        }
    }

    /// A statement over `functions` functions' pending inputs (a lease, the next due time) is
    /// one index scan of `inputs_pending` per function, and what it sorts is at most `max`
    /// rows of each; never a bitmap of every pending input of the functions, sorted whole.
    /// `functions`, a small table, may be scanned.
    pub fn assert_walks_per_function(what: &str, plan: &[String], functions: usize, max: u32) {
        let scans = plan
            .iter()
            .filter(|l| l.contains(" using inputs_pending "))
            .count();
        assert_eq!(
            scans, functions,
            "{what}: scans of inputs_pending in {plan:#?}"
        );
        // Each function's walk, and its probe for a keyed or prioritized input.
        let few = functions as u64 * (u64::from(max) + 1);
        for line in plan {
            let sorted = line.contains("Sort  (")
                && line
                    .split("rows=")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .and_then(|r| r.parse::<u64>().ok())
                    .is_none_or(|rows| rows > few);
            // A function's timeout is read from the small table of functions.
            let scanned = line.contains("Seq Scan") && !line.contains("Seq Scan on functions ");
            let bad = scanned || line.contains("Bitmap") || sorted;
            assert!(!bad, "{what}: `{line}` in the plan {plan:#?}");
        }
    }
}
