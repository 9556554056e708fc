//! `worker_*` and `log_*`: registered workers and the attempts' log lines.

use hopper_core::WorkerId;
use std::collections::HashMap;

use crate::db::{Connection, QueryBuilder, Row};
use hopper_core::api::{Lease, LogStream};
use hopper_store::{LogAppend, LogList, LogRow, StoreError, WorkerRegisterParams, WorkerRow};

use crate::dialect::{Conn, Db, DbPool};

use crate::map::{corrupt, db_err, stream};

pub async fn register(conn: &mut Conn, p: WorkerRegisterParams) -> Result<(), StoreError> {
    let functions =
        serde_json::to_string(&p.functions).map_err(|e| corrupt("worker functions", e))?;
    let machine = p
        .machine
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| corrupt("worker machine", e))?;
    crate::db::query(
        "INSERT INTO workers (id, host, pid, functions, concurrency, registered_at, last_seen_at, secret, machine)
         VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8)",
    )
    .bind(p.id.as_str())
    .bind(without_nul(&p.host))
    .bind(p.pid as i64)
    .bind(functions)
    .bind(p.concurrency as i64)
    .bind(p.now)
    .bind(&p.secret_hash)
    .bind(machine)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub async fn touch(conn: &mut Conn, id: &WorkerId, now: i64) -> Result<bool, StoreError> {
    let n = crate::db::query(
        "UPDATE workers SET last_seen_at = $2 WHERE id = $1 AND stopped_at IS NULL",
    )
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
    "SELECT w.id, w.host, w.pid, w.functions, w.concurrency, w.registered_at, w.last_seen_at, w.stopped_at, w.secret, w.machine,
            (SELECT COUNT(*) FROM inputs i WHERE i.state = 'running' AND i.worker_id = w.id) AS running
     FROM workers w WHERE w.last_seen_at > $1 OR w.stopped_at IS NULL ORDER BY w.registered_at, w.id";

pub async fn list(pool: &DbPool, seen_after: i64) -> Result<Vec<WorkerRow>, StoreError> {
    let rows = crate::db::query(LIST_SQL)
        .bind(seen_after)
        .fetch_all(pool)
        .await
        .map_err(db_err)?;
    rows.iter()
        .map(|row| {
            let id: String = row.try_get("id").map_err(db_err)?;
            let functions: String = row.try_get("functions").map_err(db_err)?;
            let machine: Option<String> = row.try_get("machine").map_err(db_err)?;
            Ok(WorkerRow {
                machine: machine
                    .map(|m| serde_json::from_str(&m))
                    .transpose()
                    .map_err(|e| corrupt("worker machine", e))?,
                secret_hash: row.try_get("secret").map_err(db_err)?,
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

/// `system` lines an attempt keeps past its cap (a worker's note of the lines it dropped).
const SYSTEM_PAST_CAP: i64 = 8;

/// Rows per multi-row statement of [`log_append_many`] (6 parameters a line).
const LOG_CHUNK: usize = 500;

/// Appends a batch of lines in a few multi-row statements: one read of the attempts' counts
/// and their inputs, one insert of the lines (in order), one upsert of the counts.
pub async fn log_append_many(conn: &mut Conn, p: LogAppend) -> Result<(), StoreError> {
    if p.lines.is_empty() {
        return Ok(());
    }
    let mut tx = conn.begin().await.map_err(db_err)?;
    let cap = p.max_lines_per_attempt as i64;
    let mut input_ids: Vec<i64> = p.lines.iter().map(|l| l.lease.input_id).collect();
    input_ids.sort_unstable();
    input_ids.dedup();
    // Each input's call and index (a worker may log only to leases it holds or held), and each
    // attempt's lines kept so far.
    let current = crate::inputs::read_many(&mut tx, &input_ids).await?;
    let mut leases: Vec<Lease> = p.lines.iter().map(|l| l.lease).collect();
    leases.sort_by_key(|l| (l.input_id, l.attempt));
    leases.dedup();
    crate::inputs::check_holder(&mut tx, p.worker_id.as_str(), &leases, &current).await?;
    let mut inputs: HashMap<i64, (String, i64)> = HashMap::new();
    for (id, row) in &current {
        inputs.insert(
            *id,
            (
                row.try_get("call_id").map_err(db_err)?,
                row.try_get("idx").map_err(db_err)?,
            ),
        );
    }
    let mut counted: HashMap<Lease, (i64, bool)> = HashMap::new();
    for chunk in input_ids.chunks(LOG_CHUNK) {
        let mut q: QueryBuilder<Db> = QueryBuilder::new(
            "SELECT input_id, attempt, lines, dropped FROM log_counts WHERE input_id IN (",
        );
        let mut ids = q.separated(", ");
        for id in chunk {
            ids.push_bind(*id);
        }
        q.push(")");
        for row in q.build().fetch_all(&mut *tx).await.map_err(db_err)? {
            let lease = Lease {
                input_id: row.try_get("input_id").map_err(db_err)?,
                attempt: row.try_get::<i64, _>("attempt").map_err(db_err)? as u32,
            };
            let dropped: i64 = row.try_get("dropped").map_err(db_err)?;
            counted.insert(lease, (row.try_get("lines").map_err(db_err)?, dropped > 0));
        }
    }
    // Lines already kept, and whether the marker was written, per attempt in this batch.
    let mut kept: HashMap<Lease, (i64, bool)> = HashMap::new();
    let marker = format!(
        "[hopper] this attempt's log reached its cap of {cap} lines; later lines are dropped"
    );
    // (call, index, attempt, stream, ts, text), in the batch's order. A NUL character, which
    // PostgreSQL cannot store in text, becomes U+FFFD on every backend alike.
    let texts: Vec<std::borrow::Cow<str>> = p.lines.iter().map(|l| without_nul(&l.line)).collect();
    let mut rows: Vec<(&str, i64, i64, &str, i64, &str)> = Vec::with_capacity(p.lines.len());
    for (line, text) in p.lines.iter().zip(&texts) {
        let Some((call, index)) = inputs.get(&line.lease.input_id) else {
            continue; // the input is gone (pruned)
        };
        let entry = kept
            .entry(line.lease)
            .or_insert_with(|| counted.get(&line.lease).copied().unwrap_or((0, false)));
        let attempt = line.lease.attempt as i64;
        // A worker that drops lines past the cap itself says so in a `system` line: a few of
        // those are kept past it.
        let room = if line.stream == LogStream::System {
            cap + SYSTEM_PAST_CAP
        } else {
            cap
        };
        if entry.0 < room {
            entry.0 += 1;
            rows.push((call, *index, attempt, line.stream.as_str(), line.ts, text));
        } else if !entry.1 {
            entry.1 = true;
            rows.push((call, *index, attempt, "system", line.ts, &marker));
        }
    }
    for chunk in rows.chunks(LOG_CHUNK) {
        let mut q: QueryBuilder<Db> =
            QueryBuilder::new("INSERT INTO logs (call_id, idx, attempt, stream, ts, line) ");
        q.push_values(chunk, |mut b, (call, index, attempt, stream, ts, text)| {
            b.push_bind(*call)
                .push_bind(*index)
                .push_bind(*attempt)
                .push_bind(*stream)
                .push_bind(*ts)
                .push_bind(*text);
        });
        q.build().execute(&mut *tx).await.map_err(db_err)?;
    }
    let counts: Vec<(Lease, (i64, bool))> = kept.into_iter().collect();
    for chunk in counts.chunks(LOG_CHUNK) {
        let mut q: QueryBuilder<Db> =
            QueryBuilder::new("INSERT INTO log_counts (input_id, attempt, lines, dropped) ");
        q.push_values(chunk, |mut b, (lease, (lines, dropped))| {
            b.push_bind(lease.input_id)
                .push_bind(lease.attempt as i64)
                .push_bind(*lines)
                .push_bind(*dropped as i64);
        });
        q.push(
            " ON CONFLICT (input_id, attempt) DO UPDATE SET lines = excluded.lines, dropped = excluded.dropped",
        );
        q.build().execute(&mut *tx).await.map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(())
}

pub const LOG_LIST_SQL: &str = "SELECT seq, idx, attempt, stream, ts, line FROM logs
     WHERE call_id = $1 AND seq > $2 AND ($3 IS NULL OR idx = $3) ORDER BY seq LIMIT $4";

pub async fn log_list(pool: &DbPool, p: LogList) -> Result<Vec<LogRow>, StoreError> {
    let mut bytes = 0usize;
    let bound = p.max_bytes.unwrap_or(usize::MAX);
    let rows = crate::db::fetch_until(
        crate::db::query(LOG_LIST_SQL)
            .bind(p.call_id.as_str())
            .bind(p.after_seq)
            .bind(p.index)
            .bind(p.limit as i64),
        pool,
        |row| {
            let line = row.try_get::<String, _>("line").map_or(0, |l| l.len());
            bytes = bytes.saturating_add(line);
            bytes >= bound
        },
    )
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

/// `text` with every NUL character replaced by U+FFFD (PostgreSQL's text cannot hold NUL).
pub fn without_nul(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}
