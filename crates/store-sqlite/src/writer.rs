//! The writer: one task that owns SQLite's single write connection and group-commits.
//!
//! Each write arrives as a job. The task takes every job waiting (up to [`MAX_GROUP`]), runs
//! them in one transaction — each inside its own savepoint, so a write that fails is undone
//! alone — commits once, and only then answers each job: nothing is acknowledged before it is
//! durable. A job alone in its group runs in its own transaction, committed before it
//! answers.
//!
//! A write that fails for a reason of the database's own (a full disk, an I/O error) may have
//! made SQLite roll the whole transaction back behind the driver's back, leaving the driver
//! believing a transaction is still open (a later "commit" would then only release a
//! savepoint of a transaction that never commits). So after such a failure the group is
//! answered with the error, and the connection is closed and replaced by a fresh one: the
//! next write starts clean, and the server recovers by itself once the cause is gone.

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use hopper_store::StoreError;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{Sqlite, SqliteConnection};
use sqlx::{Connection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use crate::dialect::db_err;

/// Most writes per transaction.
const MAX_GROUP: usize = 256;

/// What a job does once its group's commit is known.
type Deliver = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A job that ran: how to answer it, and whether its failure leaves the connection's state
/// unknown.
struct Ran {
    deliver: Deliver,
    /// The job's error, when it leaves the connection's state unknown.
    suspect: Option<StoreError>,
}

/// A write waiting for the writer.
trait Job: Send {
    /// Runs the write on the writer's connection, inside the group's transaction.
    fn run<'c>(self: Box<Self>, conn: &'c mut SqliteConnection) -> BoxFuture<'c, Ran>;
    /// Answers the job without running it.
    fn refuse(self: Box<Self>, error: StoreError);
}

struct Write<T, F> {
    op: F,
    answer: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Write<T, F>
where
    T: Send + 'static,
    F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, StoreError>>
        + Send
        + 'static,
{
    fn run<'c>(self: Box<Self>, conn: &'c mut SqliteConnection) -> BoxFuture<'c, Ran> {
        let Write { op, answer } = *self;
        Box::pin(async move {
            let result = op(conn).await;
            let suspect = match &result {
                Err(e) if leaves_state_unknown(e) => Some(e.clone()),
                _ => None,
            };
            Ran {
                deliver: Box::new(move |commit: Result<(), StoreError>| {
                    let _ = answer.send(commit.and(result));
                }),
                suspect,
            }
        })
    }

    fn refuse(self: Box<Self>, error: StoreError) {
        let _ = self.answer.send(Err(error));
    }
}

/// Errors after which SQLite may have rolled back more than the failing statement.
fn leaves_state_unknown(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Full(_)
            | StoreError::Unavailable(_)
            | StoreError::Contention(_)
            | StoreError::Database(_)
    )
}

#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::UnboundedSender<Box<dyn Job>>,
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
        let (answer, rx) = oneshot::channel::<Result<T, StoreError>>();
        self.jobs
            .send(Box::new(Write { op, answer }))
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        rx.await.map_err(|_| {
            StoreError::Unavailable("the write was not applied: the writer stopped".into())
        })?
    }
}

async fn write_loop(pool: SqlitePool, mut rx: mpsc::UnboundedReceiver<Box<dyn Job>>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let conn = match pool.acquire().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::error!(error = %e, writes = group.len(), "cannot get the write connection");
                refuse_all(group, &db_err(e));
                continue;
            }
        };
        let mut conn = conn;
        // A write that panics (a bug) must not stop every write after it: its group is
        // answered with an error (its callers' answers are dropped), and the writer goes on
        // with a fresh connection.
        let ran = std::panic::AssertUnwindSafe(run_group(&mut conn, group))
            .catch_unwind()
            .await;
        match ran {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "a write failed in the database; the write connection is replaced");
                close(conn).await;
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %message, "a write panicked; its group was not applied and the write connection is replaced");
                close(conn).await;
            }
        }
    }
}

/// Runs one group and answers every job in it. An error means the connection's state is
/// unknown: the caller closes it (the pool opens a fresh one for the next write).
async fn run_group(
    conn: &mut PoolConnection<Sqlite>,
    mut group: Vec<Box<dyn Job>>,
) -> Result<(), StoreError> {
    // A write alone commits in its own transaction: no savepoint round trips, which is what a
    // lone request's latency is made of.
    if group.len() == 1 {
        if let Some(job) = group.pop() {
            let ran = job.run(conn).await;
            (ran.deliver)(Ok(()));
            if let Some(e) = ran.suspect {
                return Err(e);
            }
        }
        return Ok(());
    }
    // IMMEDIATE takes the write lock now, waiting (busy_timeout) for another process's writer
    // rather than failing later when a read would upgrade to a write.
    let begun = conn.begin_with("BEGIN IMMEDIATE").await;
    let mut tx = match begun {
        Ok(tx) => tx,
        Err(e) => {
            let e = db_err(e);
            refuse_all(group, &e);
            return Err(e);
        }
    };
    let mut delivers = Vec::with_capacity(group.len());
    let mut jobs = group.into_iter();
    let mut broken = None;
    for job in jobs.by_ref() {
        let ran = job.run(&mut tx).await;
        delivers.push(ran.deliver);
        if ran.suspect.is_some() {
            broken = ran.suspect;
            break;
        }
    }
    let outcome = match broken {
        Some(e) => {
            drop(tx);
            Err(e)
        }
        None => tx.commit().await.map_err(db_err),
    };
    match outcome {
        Ok(()) => {
            for deliver in delivers {
                deliver(Ok(()));
            }
            Ok(())
        }
        Err(e) => {
            // Nothing of the group is durable: every job hears the error, none a success.
            for deliver in delivers {
                deliver(Err(e.clone()));
            }
            refuse_all(jobs.collect(), &e);
            Err(e)
        }
    }
}

/// Closes the write connection for good; the pool opens a fresh one for the next write.
async fn close(conn: PoolConnection<Sqlite>) {
    if let Err(e) = conn.detach().close_hard().await {
        tracing::debug!(error = %e, "closing the write connection");
    }
}

fn refuse_all(group: Vec<Box<dyn Job>>, error: &StoreError) {
    for job in group {
        job.refuse(error.clone());
    }
}
