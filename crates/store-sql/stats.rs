//! `function_stats`: attempts ended per function and 10-second slot, with their durations.
//!
//! Written inside the transactions that end attempts (completions, rescues), after their other
//! writes and in key order, so on PostgreSQL two such transactions lock the same rows in the
//! same order and cannot deadlock.

use std::collections::BTreeMap;

use crate::db::{QueryBuilder, Row};
use hopper_core::stats::{slot_of, Tally, BUCKETS};
use hopper_core::UnixMillis;
use hopper_store::{FunctionStatsRow, StatsList, StoreError};

use crate::dialect::{Conn, Db, DbPool, GREATEST};
use crate::map::db_err;

/// Histogram columns, `h00` to `h15`.
fn bucket_columns() -> Vec<String> {
    (0..BUCKETS).map(|i| format!("h{i:02}")).collect()
}

/// Tallies of one transaction, by function.
#[derive(Default)]
pub struct Tallies(BTreeMap<(String, String), Tally>);

impl Tallies {
    /// Counts an attempt of `app.function` that ended with `effect` after `duration_ms`.
    pub fn add(&mut self, app: &str, function: &str, effect: &str, duration_ms: i64) {
        self.0
            .entry((app.to_string(), function.to_string()))
            .or_default()
            .add(effect, duration_ms);
    }

    /// Adds the tallies to the slot of `now`.
    pub async fn record(self, conn: &mut Conn, now: UnixMillis) -> Result<(), StoreError> {
        let tallies: Vec<_> = self.0.into_iter().filter(|(_, t)| !t.is_empty()).collect();
        if tallies.is_empty() {
            return Ok(());
        }
        let columns = bucket_columns();
        let mut q: QueryBuilder<Db> = QueryBuilder::new(format!(
            "INSERT INTO function_stats (app, function, slot, succeeded, failed, retried, max_ms, {}) ",
            columns.join(", ")
        ));
        let slot = slot_of(now);
        q.push_values(&tallies, |mut b, ((app, function), t)| {
            b.push_bind(app.clone())
                .push_bind(function.clone())
                .push_bind(slot)
                .push_bind(t.succeeded)
                .push_bind(t.failed)
                .push_bind(t.retried)
                .push_bind(t.max_ms);
            for count in t.durations {
                b.push_bind(count);
            }
        });
        let sums: Vec<String> = ["succeeded", "failed", "retried"]
            .iter()
            .map(|c| c.to_string())
            .chain(columns)
            .map(|c| format!("{c} = function_stats.{c} + excluded.{c}"))
            .collect();
        q.push(format!(
            " ON CONFLICT (app, function, slot) DO UPDATE SET {}, max_ms = {GREATEST}(function_stats.max_ms, excluded.max_ms)",
            sums.join(", ")
        ));
        q.build().execute(&mut *conn).await.map_err(db_err)?;
        Ok(())
    }
}

pub async fn list(pool: &DbPool, p: StatsList) -> Result<Vec<FunctionStatsRow>, StoreError> {
    let columns = bucket_columns();
    let mut q = QueryBuilder::new("");
    push_list_query(&mut q, &p);
    let rows = q.build().fetch_all(pool).await.map_err(db_err)?;
    rows.iter()
        .map(|row| {
            let mut tally = Tally {
                succeeded: row.try_get("succeeded").map_err(db_err)?,
                failed: row.try_get("failed").map_err(db_err)?,
                retried: row.try_get("retried").map_err(db_err)?,
                durations: [0; BUCKETS],
                max_ms: row.try_get("max_ms").map_err(db_err)?,
            };
            for (i, column) in columns.iter().enumerate() {
                tally.durations[i] = row.try_get(column.as_str()).map_err(db_err)?;
            }
            Ok(FunctionStatsRow {
                app: row.try_get("app").map_err(db_err)?,
                function: row.try_get("function").map_err(db_err)?,
                slot: row.try_get("slot").map_err(db_err)?,
                tally,
            })
        })
        .collect()
}

/// Slots since a time: a range of `function_stats_by_slot`, or of the primary key for one
/// function.
pub fn push_list_query<'a>(q: &mut QueryBuilder<'a, Db>, p: &'a StatsList) {
    let columns = bucket_columns();
    q.push(format!(
        "SELECT app, function, slot, succeeded, failed, retried, max_ms, {} FROM function_stats WHERE slot >= ",
        columns.join(", ")
    ));
    q.push_bind(p.since);
    if let Some(app) = &p.app {
        q.push(" AND app = ").push_bind(app);
        if let Some(function) = &p.function {
            q.push(" AND function = ").push_bind(function);
        }
    }
    q.push(" ORDER BY slot");
}

/// Removes slots that started before `before` (with the calls of that age).
pub async fn prune(conn: &mut Conn, before: UnixMillis) -> Result<(), StoreError> {
    crate::db::query("DELETE FROM function_stats WHERE slot < $1")
        .bind(before)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(())
}
