//! Hopper's embedded default store: one SQLite file in WAL mode.
//!
//! All writes go through one connection, owned by one thread (SQLite allows one writer at a
//! time, and queueing them here is cheaper than retrying on `SQLITE_BUSY`); reads run on a few
//! reader threads with read connections of their own, which WAL lets run beside the writer.
//! A store operation runs whole on its thread through rusqlite with cached prepared
//! statements ([`db`]), so it costs one hand-over between threads, not one per statement.
//! Commits are `synchronous = FULL`: an acknowledged call or result survives a power cut,
//! not only a crash (leases excepted: see [`threads`]).
//!
//! Writes are group-committed: the writer runs every write waiting in its queue in one
//! transaction (each in its own savepoint, so one failing write does not undo the others)
//! and answers them all after the one commit. Under load, one fsync serves many writes.
//!
//! # Layout
//! - [`migrate`]: the embedded migrations, applied at open under the write lock.
//! - [`db`]: rusqlite in the shape of the sqlx calls the shared SQL makes.
//! - [`threads`]: the writer and reader threads.
//! - `map`: database rows and errors into the store's types.
//! - `apps`, `calls`, `inputs`, `workers`, …: the SQL of the [`Store`] methods, by noun, and
//!   `store`: the [`Store`] implementation, both shared with the PostgreSQL backend.

#[path = "../../store-sql/apps.rs"]
mod apps;
#[path = "../../store-sql/blobs.rs"]
mod blobs;
#[path = "../../store-sql/calls.rs"]
mod calls;
pub mod db;
mod dialect;
#[path = "../../store-sql/inputs.rs"]
mod inputs;
#[path = "../../store-sql/limits.rs"]
mod limits;
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
#[path = "../../store-sql/store.rs"]
mod store;
pub mod threads;
#[path = "../../store-sql/workers.rs"]
mod workers;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hopper_store::*;
use rusqlite::config::DbConfig;
use rusqlite::OpenFlags;

use crate::db::Conn;
use crate::dialect::db_err;
use crate::threads::{Op, Readers, Writer};

/// The store type the shared `Store` implementation (`store-sql/store.rs`) is for.
type Backend = SqliteStore;

/// The SQLite implementation of [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    writer: Writer,
    readers: Readers,
    /// One server per file: only its own deploys change which versions are current.
    functions: Arc<FunctionCache>,
    /// Function versions' specs read so far.
    versions: Arc<VersionSpecs>,
}

/// How long a connection waits for another process's write lock before answering busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a connection to the file with the store's settings.
fn connect(path: &Path, write: bool) -> Result<Conn, StoreError> {
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = rusqlite::Connection::open_with_flags(path, flags).map_err(db_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db_err)?;
    // One plan per statement whatever values are bound: without this SQLite compiles a cached
    // statement again whenever a parameter it could plan by changes (a third of the writer's
    // time on the round trip). The store's partial indexes are on literal states.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(db_err)?;
    let pragmas = if write {
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF;
         PRAGMA temp_store = MEMORY; PRAGMA cache_size = -65536;"
    } else {
        "PRAGMA foreign_keys = OFF; PRAGMA temp_store = MEMORY; PRAGMA cache_size = -65536;"
    };
    conn.execute_batch(pragmas).map_err(db_err)?;
    Ok(Conn::new(conn))
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let path: PathBuf = path.to_path_buf();
        let first = path.clone();
        tokio::task::spawn_blocking(move || connect(&first, true).and_then(|c| migrate::apply(&c)))
            .await
            .map_err(|e| StoreError::Unavailable(format!("opening the store: {e}")))??;
        let write_path = path.clone();
        let writer = Writer::start(Arc::new(move || connect(&write_path, true)))?;
        let readers = Readers::start(Arc::new(move || connect(&path, false)))?;
        Ok(Self {
            writer,
            readers,
            functions: Arc::new(FunctionCache::enabled()),
            versions: Arc::default(),
        })
    }

    /// Stops the reader and writer threads once what was sent to them has run, closing their
    /// connections (the last to close checkpoints the write-ahead log into the file).
    pub async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }

    /// Runs a read of the shared SQL on a reader thread.
    async fn read<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c Conn) -> Op<'c, T> + Send + 'static,
    {
        self.readers.run(op).await
    }

    /// Runs a write in the writer's next group; answers once the group is durable.
    async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn) -> Op<'c, T> + Send + 'static,
    {
        self.writer.run(false, op).await
    }

    /// Creates a call: a spawn of one input without a key goes with the other such spawns of
    /// the writer's group into multi-row statements; any other, alone.
    async fn insert_call(&self, params: CallInsert) -> Result<CallInserted, StoreError> {
        let plain = params.idempotency_key.is_none()
            && params.rerun_of.is_none()
            && params.starts_at.is_none();
        if plain && params.inputs.len() == 1 && !params.accepting_inputs {
            return self.writer.spawn(params).await;
        }
        self.write(move |conn| Box::pin(calls::insert(conn, params)))
            .await
    }

    /// Runs a write that only records leases: a group of these alone commits without waiting
    /// for the disk (see [`threads`]).
    async fn write_lease<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn) -> Op<'c, T> + Send + 'static,
    {
        self.writer.run(true, op).await
    }

    /// Leases inputs: the writer's group already puts concurrent leases in one transaction.
    async fn lease_inputs(
        &self,
        params: InputLease,
        limits: Vec<(FunctionKey, hopper_core::limits::Limits)>,
    ) -> Result<LeaseBatch, StoreError> {
        let versions = self.versions.clone();
        self.write_lease(move |conn| Box::pin(inputs::lease(conn, params, limits, versions)))
            .await
    }

    /// Records a worker's results: the writer's group already puts concurrent batches in one
    /// transaction.
    async fn complete_inputs(
        &self,
        params: InputCompleteMany,
    ) -> Result<Vec<CompletionRow>, StoreError> {
        self.write(move |conn| {
            Box::pin(async move {
                let mut answers = inputs::complete_groups(conn, vec![params]).await?;
                answers.pop().unwrap_or_else(|| Ok(Vec::new()))
            })
        })
        .await
    }

    /// One server per file: nobody else sends wake-ups.
    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<Wakeup>> {
        None
    }

    /// One server per file: its clock is the only one.
    async fn clock(&self) -> Result<Option<hopper_core::UnixMillis>, StoreError> {
        Ok(None)
    }

    /// One server per file: it leads every role.
    async fn lead(&self, _role: &str) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Its connections are a writer thread and reader threads, not a pool.
    fn pool_connections(&self) -> Option<(u32, u32)> {
        None
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
        let path = dir.path().join("hopper.db");
        let (write, read) = (
            super::connect(&path, true).expect("a write connection"),
            super::connect(&path, false).expect("a read connection"),
        );
        crate::query_plans::check(&store, &write, &read).await;
        store.close().await;
    }
}
