//! What the shared SQL (`crates/store-sql/`) needs from SQLite: its types, the few phrases
//! where the dialects differ, and how its errors map.

use hopper_store::StoreError;

pub type Db = crate::db::Sqlite;
pub type Conn = crate::db::Conn;
/// Reads get a read connection of their own, on a reader thread.
pub type DbPool = crate::db::Conn;
pub type DbRow = crate::db::SqliteRow;

/// The larger of two values.
pub const GREATEST: &str = "MAX";
/// The smaller of two values.
pub const LEAST: &str = "MIN";
/// A function version's timeout, from its spec JSON.
pub const TIMEOUT_MS: &str = "json_extract(f.spec, '$.timeout_ms')";
/// One writer at a time: rows need no locks.
pub const SKIP_LOCKED: &str = "";
pub const LOCK_ROWS: &str = "";
pub const LOCK_SCHEDULE: &str = "";
/// SQLite's `SUM` of integers is an integer already.
pub const SUM_AS_BIGINT: &str = "";

/// One server per file: there is nobody else to wake.
pub fn notify(_conn: &mut Conn, _payload: &str) -> std::future::Ready<Result<(), StoreError>> {
    std::future::ready(Ok(()))
}

/// The writer commits a group of leases alone without waiting for the disk already (see
/// `threads`): nothing to change in the transaction.
pub fn relaxed_commit(_conn: &mut Conn) -> std::future::Ready<Result<(), StoreError>> {
    std::future::ready(Ok(()))
}

/// Maps a SQLite error to the store's error: busy, locked and I/O faults are `Unavailable`
/// (retryable), a full disk is `Full`.
pub fn db_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match &e {
        rusqlite::Error::SqliteFailure(failure, _) => match failure.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::CannotOpen => {
                StoreError::Unavailable(e.to_string())
            }
            // SQLITE_FULL: the disk (or the file's size limit) is full.
            ErrorCode::DiskFull => StoreError::Full(e.to_string()),
            // SQLITE_IOERR and its extended codes (a failed write or fsync): the write is undone.
            ErrorCode::SystemIoFailure => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Database(e.to_string()),
        },
        _ => StoreError::Database(e.to_string()),
    }
}

/// How SQLite fills and plans for the query-plan test (`store-sql/query_plans.rs`).
#[cfg(test)]
pub mod plans {
    use crate::db::Row;
    use hopper_core::stats::SLOT_MS;

    pub use crate::query_plans::Allow;

    pub const EXPLAIN: &str = "EXPLAIN QUERY PLAN ";

    /// The fixture: calls of 4 functions in 2 apps, 10 ms apart, mostly ended (90%
    /// succeeded, 5% failed, 3% cancelled), 5% maps and 2% from schedules, each with its input,
    /// an attempt and a log line; 24 hours of statistics slots up to the last call.
    pub fn fill(calls: i64, t0: i64) -> Vec<String> {
        let end = t0 + calls * 10;
        vec![
            format!(
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last})
                 INSERT INTO calls (id, app, function, version, origin, state, n_total, n_pending, n_running,
                                    n_succeeded, n_failed, n_cancelled, created_at, finished_at)
                 SELECT printf('hc-%026d', i), 'app' || (i % 2), 'f' || (i % 4), 1,
                        CASE WHEN i % 20 = 0 THEN 'map' WHEN i % 50 = 1 THEN 'schedule' ELSE 'spawn' END,
                        s, 1, s = 'pending', s = 'running', s = 'succeeded', s = 'failed', s = 'cancelled',
                        {t0} + i * 10, CASE WHEN s IN ('pending', 'running') THEN NULL ELSE {t0} + i * 10 + 5 END
                 FROM (SELECT i, CASE WHEN i % 100 < 90 THEN 'succeeded' WHEN i % 100 < 95 THEN 'failed'
                                      WHEN i % 100 < 98 THEN 'cancelled' WHEN i % 100 < 99 THEN 'running'
                                      ELSE 'pending' END AS s FROM n)",
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
                "WITH RECURSIVE s(slot) AS (SELECT {first} UNION ALL SELECT slot + {SLOT_MS} FROM s WHERE slot < {end})
                 INSERT INTO function_stats (app, function, slot, succeeded, failed, h05)
                 SELECT 'app' || (f % 2), 'f' || f, slot, 90, 5, 95 FROM s,
                        (SELECT 0 AS f UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3)",
                first = end - 86_400_000,
            ),
        ]
    }

    pub fn lines(rows: Vec<super::DbRow>) -> Vec<String> {
        rows.iter()
            .map(|r| r.try_get::<String, _>("detail").unwrap_or_default())
            .collect()
    }

    /// `SCAN t [USING INDEX i]` reads a whole table or index, `SEARCH` a range of one;
    /// `USE TEMP B-TREE` sorts.
    pub fn assert_indexed(what: &str, plan: &[String], allow: Allow) {
        for line in plan {
            let bad = match &allow {
                Allow::Nothing => line.starts_with("SCAN ") || line.contains("TEMP B-TREE"),
                Allow::WalkInOrder => {
                    (line.starts_with("SCAN ") && !line.contains(" USING "))
                        || line.contains("TEMP B-TREE")
                }
                Allow::SortFew => line.starts_with("SCAN "),
                Allow::SmallTable { table, alias } => {
                    line.starts_with("SCAN ")
                        && *line != format!("SCAN {table}")
                        && *line != format!("SCAN {alias}")
                }
            };
            assert!(!bad, "{what}: `{line}` in the plan {plan:#?}");
        }
    }

    /// A statement over `functions` functions' pending inputs (a lease, the next due time) is
    /// one search of `inputs_pending` per function, the union of those read in turn (`SCAN
    /// due…`, `SCAN head`, `SCAN heads`) and sorted once at most; never `MULTI-INDEX OR`, which finds every
    /// pending input of the functions and sorts them all.
    pub fn assert_walks_per_function(what: &str, plan: &[String], functions: usize, _max: u32) {
        let searches = plan
            .iter()
            .filter(|l| l.starts_with("SEARCH ") && l.contains("INDEX inputs_pending "))
            .count();
        assert_eq!(
            searches, functions,
            "{what}: searches of inputs_pending in {plan:#?}"
        );
        let sorts = plan.iter().filter(|l| l.contains("TEMP B-TREE")).count();
        assert!(sorts <= 1, "{what}: {sorts} sorts in {plan:#?}");
        for line in plan {
            let scanned = line.strip_prefix("SCAN ").unwrap_or("heads");
            let bad = line.contains("MULTI-INDEX OR")
                || !(scanned.starts_with("due")
                    || scanned.starts_with("probe")
                    || scanned.starts_with("head"));
            assert!(!bad, "{what}: `{line}` in the plan {plan:#?}");
        }
    }
}
