//! `worker_*` and `log_*`: registered workers and the attempts' log lines.

use hopper_core::WorkerId;
use std::collections::HashMap;

use hopper_core::api::Lease;
use hopper_store::{
    LogAppend, LogInsert, LogList, LogRow, StoreError, WorkerRegisterParams, WorkerRow,
};
use sqlx::{Connection, Row};

use crate::dialect::{Conn, DbPool};

use crate::map::{corrupt, db_err, stream};

pub async fn register(conn: &mut Conn, p: WorkerRegisterParams) -> Result<(), StoreError> {
    let functions =
        serde_json::to_string(&p.functions).map_err(|e| corrupt("worker functions", e))?;
    sqlx::query(
        "INSERT INTO workers (id, host, pid, functions, concurrency, registered_at, last_seen_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(p.id.as_str())
    .bind(&p.host)
    .bind(p.pid as i64)
    .bind(functions)
    .bind(p.concurrency as i64)
    .bind(p.now)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub async fn touch(conn: &mut Conn, id: &WorkerId, now: i64) -> Result<bool, StoreError> {
    let n =
        sqlx::query("UPDATE workers SET last_seen_at = $2 WHERE id = $1 AND stopped_at IS NULL")
            .bind(id.as_str())
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?
            .rows_affected();
    Ok(n > 0)
}

/// Workers seen lately, each with its running inputs (counted through `inputs_by_worker`).
pub const LIST_SQL: &str =
    "SELECT w.id, w.host, w.pid, w.functions, w.concurrency, w.registered_at, w.last_seen_at, w.stopped_at,
            (SELECT COUNT(*) FROM inputs i WHERE i.state = 'running' AND i.worker_id = w.id) AS running
     FROM workers w WHERE w.last_seen_at > $1 OR w.stopped_at IS NULL ORDER BY w.registered_at, w.id";

pub async fn list(pool: &DbPool, seen_after: i64) -> Result<Vec<WorkerRow>, StoreError> {
    let rows = sqlx::query(LIST_SQL)
        .bind(seen_after)
        .fetch_all(pool)
        .await
        .map_err(db_err)?;
    rows.iter()
        .map(|row| {
            let id: String = row.try_get("id").map_err(db_err)?;
            let functions: String = row.try_get("functions").map_err(db_err)?;
            Ok(WorkerRow {
                id: id.parse().map_err(|e| corrupt("worker id", e))?,
                host: row.try_get("host").map_err(db_err)?,
                pid: row.try_get::<i64, _>("pid").map_err(db_err)? as u32,
                functions: serde_json::from_str(&functions)
                    .map_err(|e| corrupt("worker functions", e))?,
                concurrency: row.try_get::<i64, _>("concurrency").map_err(db_err)? as u32,
                running: row.try_get("running").map_err(db_err)?,
                registered_at: row.try_get("registered_at").map_err(db_err)?,
                last_seen_at: row.try_get("last_seen_at").map_err(db_err)?,
                stopped_at: row.try_get("stopped_at").map_err(db_err)?,
            })
        })
        .collect()
}

pub async fn log_append_many(conn: &mut Conn, p: LogAppend) -> Result<(), StoreError> {
    if p.lines.is_empty() {
        return Ok(());
    }
    let mut tx = conn.begin().await.map_err(db_err)?;
    let cap = p.max_lines_per_attempt as i64;
    // Lines already kept, and whether the marker was written, per attempt in this batch.
    let mut kept: HashMap<Lease, (i64, bool)> = HashMap::new();
    let mut rows: Vec<(&LogInsert, bool)> = Vec::with_capacity(p.lines.len());
    for line in &p.lines {
        let entry = match kept.entry(line.lease) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let row: Option<(i64, i64)> = sqlx::query_as(
                    "SELECT lines, dropped FROM log_counts WHERE input_id = $1 AND attempt = $2",
                )
                .bind(line.lease.input_id)
                .bind(line.lease.attempt as i64)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
                let (lines, dropped) = row.unwrap_or((0, 0));
                e.insert((lines, dropped > 0))
            }
        };
        if entry.0 < cap {
            entry.0 += 1;
            rows.push((line, false));
        } else if !entry.1 {
            entry.1 = true;
            rows.push((line, true));
        }
    }
    for (line, marker) in &rows {
        let (stream, text) = if *marker {
            ("system", format!("[hopper] this attempt's log reached its cap of {cap} lines; later lines are dropped"))
        } else {
            (line.stream.as_str(), line.line.clone())
        };
        sqlx::query(
            "INSERT INTO logs (call_id, idx, attempt, stream, ts, line)
             SELECT call_id, idx, $2, $3, $4, $5 FROM inputs WHERE id = $1",
        )
        .bind(line.lease.input_id)
        .bind(line.lease.attempt as i64)
        .bind(stream)
        .bind(line.ts)
        .bind(text)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    }
    for (lease, (lines, dropped)) in kept {
        sqlx::query(
            "INSERT INTO log_counts (input_id, attempt, lines, dropped) VALUES ($1, $2, $3, $4)
             ON CONFLICT (input_id, attempt) DO UPDATE SET lines = excluded.lines, dropped = excluded.dropped",
        )
        .bind(lease.input_id)
        .bind(lease.attempt as i64)
        .bind(lines)
        .bind(dropped as i64)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(())
}

pub const LOG_LIST_SQL: &str = "SELECT seq, idx, attempt, stream, ts, line FROM logs
     WHERE call_id = $1 AND seq > $2 AND ($3 IS NULL OR idx = $3) ORDER BY seq LIMIT $4";

pub async fn log_list(pool: &DbPool, p: LogList) -> Result<Vec<LogRow>, StoreError> {
    let rows = sqlx::query(LOG_LIST_SQL)
        .bind(p.call_id.as_str())
        .bind(p.after_seq)
        .bind(p.index)
        .bind(p.limit as i64)
        .fetch_all(pool)
        .await
        .map_err(db_err)?;
    rows.iter()
        .map(|row| {
            Ok(LogRow {
                seq: row.try_get("seq").map_err(db_err)?,
                index: row.try_get("idx").map_err(db_err)?,
                attempt: row.try_get::<i64, _>("attempt").map_err(db_err)? as u32,
                stream: stream(&row.try_get::<String, _>("stream").map_err(db_err)?)?,
                ts: row.try_get("ts").map_err(db_err)?,
                line: row.try_get("line").map_err(db_err)?,
            })
        })
        .collect()
}
