//! The writer: one task that owns SQLite's single write connection and group-commits.
//!
//! Each write arrives as a job. The task takes every job waiting (up to [`MAX_GROUP`]), runs
//! them in one transaction — each inside its own savepoint, so a write that fails is undone
//! alone — commits once, and only then answers each job: nothing is acknowledged before it is
//! durable. A job alone in its group runs in its own transaction, committed before it
//! answers. A job whose group could not start or commit is answered with `Unavailable`.

use futures_util::future::BoxFuture;
use hopper_store::StoreError;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use crate::dialect::db_err;

/// Most writes per transaction.
const MAX_GROUP: usize = 256;

/// What a job does once its group's commit is known.
type Deliver = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A write: runs on the writer's connection, inside the group's transaction.
type Job = Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Deliver> + Send>;

#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Writer {
    /// Starts the writer task on `pool` (a pool of one connection).
    pub fn start(pool: SqlitePool) -> Self {
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(pool, rx));
        Self { jobs }
    }

    /// Runs `op` in the next group and returns its result once the group has committed.
    /// `op` opens its own (nested) transaction, which becomes a savepoint of the group's.
    pub async fn run<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, StoreError>>();
        let job: Job = Box::new(move |conn| {
            Box::pin(async move {
                let result = op(conn).await;
                Box::new(move |commit: Result<(), StoreError>| {
                    let _ = tx.send(commit.and(result));
                }) as Deliver
            })
        });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        rx.await.map_err(|_| {
            StoreError::Unavailable(
                "the write was not applied: the database could not start a transaction".into(),
            )
        })?
    }
}

async fn write_loop(pool: SqlitePool, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        // Dropping a job unanswered tells its caller the write was not applied.
        let mut conn = match pool.acquire().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::error!(error = %e, writes = group.len(), "cannot get the write connection");
                continue;
            }
        };
        // A write alone commits in its own transaction: no savepoint round trips, which is
        // what a lone request's latency is made of.
        if group.len() == 1 {
            if let Some(job) = group.pop() {
                let deliver = job(&mut conn).await;
                deliver(Ok(()));
            }
            continue;
        }
        // IMMEDIATE takes the write lock now, waiting (busy_timeout) for another process's
        // writer rather than failing later when a read would upgrade to a write.
        let mut tx = match conn.begin_with("BEGIN IMMEDIATE").await {
            Ok(tx) => tx,
            Err(e) => {
                tracing::error!(error = %e, writes = group.len(), "cannot begin a write transaction");
                continue;
            }
        };
        let mut delivers = Vec::with_capacity(group.len());
        for job in group {
            delivers.push(job(&mut tx).await);
        }
        let committed = tx.commit().await.map_err(db_err);
        if let Err(e) = &committed {
            tracing::error!(error = %e, writes = delivers.len(), "a write transaction failed to commit");
        }
        for deliver in delivers {
            deliver(committed.clone());
        }
    }
}
