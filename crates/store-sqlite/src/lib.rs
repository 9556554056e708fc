//! Hopper's embedded default store: one SQLite file in WAL mode.
//!
//! All writes go through one connection (SQLite allows one writer at a time, and queueing
//! them here is cheaper than retrying on `SQLITE_BUSY`); reads use a small pool of their own,
//! which WAL lets run beside the writer. Commits are `synchronous = FULL`: an acknowledged
//! call survives a power cut, not only a crash.
//!
//! Writes are group-committed: the [`writer`] task runs every write waiting in its queue in
//! one transaction (each in its own savepoint, so one failing write does not undo the others)
//! and answers them all after the one commit. Under load, one fsync serves many writes.
//!
//! # Layout
//! - [`migrate`]: the embedded migrations, applied at open under the write lock.
//! - `map`: database rows and errors into the store's types.
//! - `apps`, `calls`, `inputs`, `workers`: the [`Store`] methods, by the noun they start with.

#[path = "../../store-sql/apps.rs"]
mod apps;
#[path = "../../store-sql/calls.rs"]
mod calls;
mod dialect;
#[path = "../../store-sql/inputs.rs"]
mod inputs;
#[path = "../../store-sql/map.rs"]
mod map;
pub mod migrate;
#[cfg(test)]
#[path = "../../store-sql/query_plans.rs"]
mod query_plans;
#[path = "../../store-sql/schedules.rs"]
mod schedules;
#[path = "../../store-sql/secrets.rs"]
mod secrets;
#[path = "../../store-sql/snapshots.rs"]
mod snapshots;
#[path = "../../store-sql/stats.rs"]
mod stats;
#[path = "../../store-sql/workers.rs"]
mod workers;
mod writer;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use hopper_core::api::Lease;
use hopper_core::{CallId, WorkerId};
use hopper_store::*;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::dialect::db_err;

/// The SQLite implementation of [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    writer: writer::Writer,
    writer_pool: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(db_err)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(false)
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-65536");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await
            .map_err(db_err)?;
        migrate::apply(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.read_only(true))
            .await
            .map_err(db_err)?;
        Ok(Self {
            writer: writer::Writer::start(writer.clone()),
            writer_pool: writer,
            reader,
        })
    }

    /// Closes both pools, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer_pool.close().await;
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn app_deploy(&self, params: AppDeploy) -> Result<AppRow, StoreError> {
        self.writer
            .run(move |conn| Box::pin(apps::deploy(conn, params)))
            .await
    }

    async fn app_list(&self) -> Result<Vec<AppRow>, StoreError> {
        apps::list(&self.reader).await
    }

    async fn function_find(&self, params: FunctionFind) -> Result<Vec<FunctionRow>, StoreError> {
        apps::function_find(&self.reader, params).await
    }

    async fn function_versions(
        &self,
        function: &FunctionKey,
        limit: u32,
    ) -> Result<Vec<FunctionVersionRow>, StoreError> {
        apps::function_versions(&self.reader, function, limit).await
    }

    async fn call_insert(&self, params: CallInsert) -> Result<CallInserted, StoreError> {
        self.writer
            .run(move |conn| Box::pin(calls::insert(conn, params)))
            .await
    }

    async fn call_get(&self, id: &CallId) -> Result<Option<CallRow>, StoreError> {
        calls::get(&self.reader, id).await
    }

    async fn call_list(&self, params: CallList) -> Result<Vec<CallRow>, StoreError> {
        calls::list(&self.reader, params).await
    }

    async fn call_cancel(&self, params: CallCancel) -> Result<Option<CallRow>, StoreError> {
        self.writer
            .run(move |conn| Box::pin(calls::cancel(conn, params)))
            .await
    }

    async fn call_prune_finished(&self, params: CallPrune) -> Result<u64, StoreError> {
        self.writer
            .run(move |conn| Box::pin(calls::prune(conn, params)))
            .await
    }

    async fn input_append(&self, params: InputAppend) -> Result<CallRow, StoreError> {
        self.writer
            .run(move |conn| Box::pin(calls::append(conn, params)))
            .await
    }

    async fn input_results(&self, params: InputResults) -> Result<Vec<InputResultRow>, StoreError> {
        calls::results(&self.reader, params).await
    }

    async fn function_backlog(&self) -> Result<Vec<FunctionBacklog>, StoreError> {
        calls::backlog(&self.reader).await
    }

    async fn function_stats(&self, params: StatsList) -> Result<Vec<FunctionStatsRow>, StoreError> {
        stats::list(&self.reader, params).await
    }

    async fn input_get(
        &self,
        call_id: &CallId,
        index: i64,
    ) -> Result<Option<InputRow>, StoreError> {
        inputs::get(&self.reader, call_id, index).await
    }

    async fn input_first_many(&self, calls: &[CallId]) -> Result<Vec<InputRow>, StoreError> {
        inputs::first_many(&self.reader, calls).await
    }

    async fn input_lease_available(
        &self,
        params: InputLease,
    ) -> Result<Vec<LeasedRow>, StoreError> {
        self.writer
            .run(move |conn| Box::pin(inputs::lease(conn, params)))
            .await
    }

    async fn input_next_due(&self, functions: &[FunctionKey]) -> Result<Option<i64>, StoreError> {
        inputs::next_due(&self.reader, functions).await
    }

    async fn input_complete_many(
        &self,
        params: InputCompleteMany,
    ) -> Result<Vec<CompletionRow>, StoreError> {
        self.writer
            .run(move |conn| Box::pin(inputs::complete_many(conn, params)))
            .await
    }

    async fn lease_heartbeat(&self, params: LeaseHeartbeat) -> Result<Vec<Lease>, StoreError> {
        self.writer
            .run(move |conn| Box::pin(inputs::heartbeat(conn, params)))
            .await
    }

    async fn lease_rescue_expired(&self, params: LeaseRescue) -> Result<RescueReport, StoreError> {
        self.writer
            .run(move |conn| Box::pin(inputs::rescue_expired(conn, params)))
            .await
    }

    async fn attempt_list(&self, params: AttemptList) -> Result<Vec<AttemptRow>, StoreError> {
        inputs::attempt_list(&self.reader, params).await
    }

    async fn log_append_many(&self, lines: LogAppend) -> Result<(), StoreError> {
        self.writer
            .run(move |conn| Box::pin(workers::log_append_many(conn, lines)))
            .await
    }

    async fn log_list(&self, params: LogList) -> Result<Vec<LogRow>, StoreError> {
        workers::log_list(&self.reader, params).await
    }

    async fn worker_register(&self, params: WorkerRegisterParams) -> Result<(), StoreError> {
        self.writer
            .run(move |conn| Box::pin(workers::register(conn, params)))
            .await
    }

    async fn worker_deregister(&self, params: WorkerDeregister) -> Result<u64, StoreError> {
        self.writer
            .run(move |conn| Box::pin(inputs::worker_deregister(conn, params)))
            .await
    }

    async fn worker_touch(&self, id: &WorkerId, now: i64) -> Result<bool, StoreError> {
        let id = id.clone();
        self.writer
            .run(move |conn| Box::pin(async move { workers::touch(conn, &id, now).await }))
            .await
    }

    async fn schedule_list(&self) -> Result<Vec<ScheduleRow>, StoreError> {
        schedules::list(&self.reader).await
    }

    async fn schedule_due(&self, now: i64) -> Result<Vec<ScheduleRow>, StoreError> {
        schedules::due(&self.reader, now).await
    }

    async fn schedule_fire(&self, params: ScheduleFire) -> Result<FireOutcome, StoreError> {
        self.writer
            .run(move |conn| Box::pin(schedules::fire(conn, params)))
            .await
    }

    async fn schedule_pause(
        &self,
        params: SchedulePause,
    ) -> Result<Option<ScheduleRow>, StoreError> {
        self.writer
            .run(move |conn| Box::pin(schedules::pause(conn, params)))
            .await
    }

    async fn schedule_firings(
        &self,
        app: &str,
        name: &str,
        limit: u32,
    ) -> Result<Vec<FiringRow>, StoreError> {
        schedules::firings(&self.reader, app, name, limit).await
    }

    async fn call_list_finished(&self, params: CallsFinished) -> Result<Vec<CallRow>, StoreError> {
        calls::finished_since(&self.reader, params).await
    }

    async fn setting_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        calls::setting_get(&self.reader, key).await
    }

    async fn setting_put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.writer
            .run(move |conn| Box::pin(calls::setting_put(conn, key, value)))
            .await
    }

    async fn secret_put(&self, params: SecretPutParams) -> Result<SecretRow, StoreError> {
        self.writer
            .run(move |conn| Box::pin(secrets::put(conn, params)))
            .await
    }

    async fn secret_list(&self) -> Result<Vec<SecretRow>, StoreError> {
        secrets::list(&self.reader).await
    }

    async fn secret_get_many(&self, names: &[String]) -> Result<Vec<SecretRow>, StoreError> {
        secrets::get_many(&self.reader, names).await
    }

    async fn secret_delete(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.writer
            .run(move |conn| Box::pin(secrets::delete(conn, name)))
            .await
    }

    async fn snapshot_put(&self, params: SnapshotPut) -> Result<bool, StoreError> {
        self.writer
            .run(move |conn| Box::pin(snapshots::put(conn, params)))
            .await
    }

    async fn snapshot_info(&self, hash: &str) -> Result<Option<SnapshotRow>, StoreError> {
        snapshots::info(&self.reader, hash).await
    }

    async fn snapshot_get(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        snapshots::get(&self.reader, hash).await
    }

    async fn snapshot_prune(&self, params: SnapshotPrune) -> Result<u64, StoreError> {
        self.writer
            .run(move |conn| Box::pin(snapshots::prune(conn, params)))
            .await
    }

    async fn worker_list(&self, seen_after: i64) -> Result<Vec<WorkerRow>, StoreError> {
        workers::list(&self.reader, seen_after).await
    }
}

#[cfg(test)]
mod query_plan_test {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dashboard_queries_use_indexes_with_a_million_calls() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let store = super::SqliteStore::open(&dir.path().join("hopper.db"))
            .await
            .expect("open the store");
        crate::query_plans::check(&store, &store.writer_pool, &store.reader).await;
        store.close().await;
    }
}
