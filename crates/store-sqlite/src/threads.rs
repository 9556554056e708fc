//! The threads that own SQLite's connections: one writer that group-commits, and a few
//! readers. A store operation — every statement of it — runs on one of them synchronously,
//! so it costs one hand-over from the async side and one answer back.
//!
//! # Writes
//! The writer takes every job waiting (up to [`MAX_GROUP`]), runs them in one transaction —
//! each inside its own savepoint, so a write that fails is undone alone — commits once, and
//! only then answers each job: nothing is acknowledged before it is durable. A group made
//! only of lease writes (see [`Writer::run`]'s `lease`) commits with `synchronous = NORMAL`:
//! in WAL mode that commit is atomic and survives the process being killed, and is made
//! durable by the next `synchronous = FULL` commit (which syncs the whole log) or
//! checkpoint; a power cut can only lose leases, which sends their inputs back to the queue.
//!
//! A write that fails for a reason of the database's own (a full disk, an I/O error) may have
//! made SQLite roll the whole transaction back, so after such a failure, a failed commit or a
//! panic, the group is answered with the error and the connection is closed and opened anew:
//! the next write starts clean, and the server recovers by itself once the cause is gone.

use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Arc, Mutex};

use futures_util::future::LocalBoxFuture;
use hopper_store::{CallInsert, CallInserted, StoreError};
use tokio::sync::oneshot;

use crate::db::{run_now, Conn};
use crate::dialect::db_err;

/// Most writes per transaction.
const MAX_GROUP: usize = 256;

/// Read connections, each on its own thread.
const READERS: usize = 4;

/// A store operation on a connection: a future that never waits (see [`crate::db`]).
pub type Op<'c, T> = LocalBoxFuture<'c, Result<T, StoreError>>;

/// Opens a connection (on the thread that will own it).
pub type Open = Arc<dyn Fn() -> Result<Conn, StoreError> + Send + Sync>;

fn stalled() -> StoreError {
    StoreError::Database("a store operation waited on its connection's thread".into())
}

fn closed() -> StoreError {
    StoreError::Unavailable("the store is closed".into())
}

/// What a job does once its group's commit is known.
type Deliver = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A job that ran: how to answer it, and whether its failure leaves the connection's state
/// unknown.
struct Ran {
    deliver: Deliver,
    suspect: Option<StoreError>,
}

/// A write waiting for the writer, or the order to stop.
enum Message {
    Write(Box<dyn Job>),
    /// A spawn of one input without an idempotency key: the spawns of a group are written
    /// together, by multi-row statements.
    Spawn(
        Box<CallInsert>,
        oneshot::Sender<Result<CallInserted, StoreError>>,
    ),
    Close(oneshot::Sender<()>),
}

trait Job: Send {
    /// Runs the write inside the group's transaction.
    fn run(self: Box<Self>, conn: &mut Conn) -> Ran;
    /// Answers the job without running it.
    fn refuse(self: Box<Self>, error: StoreError);
    /// Whether losing the write in a power cut only sends inputs back to the queue.
    fn lease(&self) -> bool;
}

struct Write<T, F> {
    op: F,
    lease: bool,
    answer: oneshot::Sender<Result<T, StoreError>>,
}

/// Runs a write in a savepoint of its own, so one that fails is undone alone.
fn in_savepoint<T>(
    conn: &mut Conn,
    write: impl FnOnce(&mut Conn) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    if let Err(e) = conn.exec(&["SAVEPOINT hopper_job"]) {
        return Err(db_err(e));
    }
    let result = write(conn);
    let end: &[&str] = match &result {
        Ok(_) => &["RELEASE hopper_job"],
        Err(_) => &["ROLLBACK TO hopper_job", "RELEASE hopper_job"],
    };
    match conn.exec(end) {
        Ok(()) => result,
        Err(e) => result.and(Err(db_err(e))),
    }
}

/// The error, when it leaves the connection's state unknown.
fn suspect<T>(result: &Result<T, StoreError>) -> Option<StoreError> {
    match result {
        Err(e) if leaves_state_unknown(e) => Some(e.clone()),
        _ => None,
    }
}

impl<T, F> Job for Write<T, F>
where
    T: Send + 'static,
    F: for<'c> FnOnce(&'c mut Conn) -> Op<'c, T> + Send + 'static,
{
    fn run(self: Box<Self>, conn: &mut Conn) -> Ran {
        let Write { op, answer, .. } = *self;
        let result = in_savepoint(conn, |conn| {
            run_now(op(conn)).unwrap_or_else(|| Err(stalled()))
        });
        let suspect = suspect(&result);
        Ran {
            deliver: Box::new(move |commit: Result<(), StoreError>| {
                let _ = answer.send(commit.and(result));
            }),
            suspect,
        }
    }

    fn refuse(self: Box<Self>, error: StoreError) {
        let _ = self.answer.send(Err(error));
    }

    fn lease(&self) -> bool {
        self.lease
    }
}

/// The plain spawns of a group, written as one: the calls by one multi-row statement, their
/// inputs by another (see `calls::insert_many`).
struct Spawns(
    Vec<(
        CallInsert,
        oneshot::Sender<Result<CallInserted, StoreError>>,
    )>,
);

impl Job for Spawns {
    fn run(self: Box<Self>, conn: &mut Conn) -> Ran {
        let (calls, answers): (Vec<_>, Vec<_>) = self.0.into_iter().unzip();
        let result = in_savepoint(conn, |conn| {
            run_now(crate::calls::insert_many(conn, calls)).unwrap_or_else(|| Err(stalled()))
        });
        let suspect = suspect(&result);
        Ran {
            deliver: Box::new(
                move |commit: Result<(), StoreError>| match commit.and(result) {
                    Ok(inserted) => {
                        for (answer, call) in answers.into_iter().zip(inserted) {
                            let _ = answer.send(Ok(call));
                        }
                    }
                    Err(e) => {
                        for answer in answers {
                            let _ = answer.send(Err(e.clone()));
                        }
                    }
                },
            ),
            suspect,
        }
    }

    fn refuse(self: Box<Self>, error: StoreError) {
        for (_, answer) in self.0 {
            let _ = answer.send(Err(error.clone()));
        }
    }

    fn lease(&self) -> bool {
        false
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

/// The async side's handle on the writer thread.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Message>,
}

impl Writer {
    /// Starts the writer thread; `open` makes its connection (again after a failure).
    pub fn start(open: Open) -> Result<Self, StoreError> {
        let (jobs, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("hopper-sqlite-writer".into())
            .spawn(move || write_loop(open, rx))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer: {e}")))?;
        Ok(Self { jobs })
    }

    /// Runs `op` in the next group and returns its result once the group has committed.
    /// `lease`: the write only records leases (see the module's documentation).
    pub async fn run<T, F>(&self, lease: bool, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn) -> Op<'c, T> + Send + 'static,
    {
        let (answer, rx) = oneshot::channel::<Result<T, StoreError>>();
        self.jobs
            .send(Message::Write(Box::new(Write { op, lease, answer })))
            .map_err(|_| closed())?;
        rx.await.map_err(|_| {
            StoreError::Unavailable("the write was not applied: the writer stopped".into())
        })?
    }

    /// Creates a call of one input without an idempotency key, written with the other such
    /// spawns of its group by multi-row statements; answers once the group has committed.
    pub async fn spawn(&self, call: CallInsert) -> Result<CallInserted, StoreError> {
        let (answer, rx) = oneshot::channel();
        self.jobs
            .send(Message::Spawn(Box::new(call), answer))
            .map_err(|_| closed())?;
        rx.await.map_err(|_| {
            StoreError::Unavailable("the write was not applied: the writer stopped".into())
        })?
    }

    /// Closes the write connection once the writes sent before have run.
    pub async fn close(&self) {
        let (done, rx) = oneshot::channel();
        if self.jobs.send(Message::Close(done)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// The write connection and its current `synchronous` setting.
struct Writing {
    conn: Conn,
    relaxed: bool,
}

fn write_loop(open: Open, rx: mpsc::Receiver<Message>) {
    let mut writing: Option<Writing> = None;
    let mut closing = None;
    while let Ok(first) = rx.recv() {
        let mut group: Vec<Box<dyn Job>> = Vec::new();
        let mut spawns = Vec::new();
        for message in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match message {
                Message::Write(job) => group.push(job),
                Message::Spawn(call, answer) => spawns.push((*call, answer)),
                Message::Close(done) => {
                    closing = Some(done);
                    break;
                }
            }
            if group.len() + spawns.len() >= MAX_GROUP {
                break;
            }
        }
        if !spawns.is_empty() {
            group.push(Box::new(Spawns(spawns)));
        }
        if !group.is_empty() {
            let mut current = match writing.take() {
                Some(w) => w,
                None => match open() {
                    Ok(conn) => Writing {
                        conn,
                        relaxed: false,
                    },
                    Err(e) => {
                        tracing::error!(error = %e, writes = group.len(), "cannot open the write connection");
                        refuse_all(group, &e);
                        continue;
                    }
                },
            };
            // A write that panics (a bug) must not stop every write after it: its group is
            // answered with an error (its callers' answers are dropped), and the writer goes
            // on with a fresh connection.
            match std::panic::catch_unwind(AssertUnwindSafe(|| run_group(&mut current, group))) {
                Ok(Ok(())) => writing = Some(current),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "a write failed in the database; the write connection is replaced");
                }
                Err(panic) => {
                    let message = hopper_core::panic_message(&*panic);
                    tracing::error!(panic = %message, "a write panicked; its group was not applied and the write connection is replaced");
                }
            }
        }
        if let Some(done) = closing.take() {
            drop(writing.take());
            let _ = done.send(());
            return;
        }
    }
}

/// Runs one group and answers every job in it. An error means the connection's state is
/// unknown: the caller drops it.
fn run_group(w: &mut Writing, group: Vec<Box<dyn Job>>) -> Result<(), StoreError> {
    let relaxed = group.iter().all(|j| j.lease());
    if relaxed != w.relaxed {
        let pragma = if relaxed {
            "PRAGMA synchronous = NORMAL"
        } else {
            "PRAGMA synchronous = FULL"
        };
        // A pragma acts when it is compiled: never from the statement cache.
        if let Err(e) = w.conn.raw().execute_batch(pragma) {
            let e = db_err(e);
            refuse_all(group, &e);
            return Err(e);
        }
        w.relaxed = relaxed;
    }
    // IMMEDIATE takes the write lock now, waiting (busy_timeout) for another process's writer
    // rather than failing later when a read would upgrade to a write.
    if let Err(e) = w.conn.exec(&["BEGIN IMMEDIATE"]) {
        let e = db_err(e);
        refuse_all(group, &e);
        return Err(e);
    }
    let mut delivers = Vec::with_capacity(group.len());
    let mut jobs = group.into_iter();
    let mut broken = None;
    for job in jobs.by_ref() {
        let ran = job.run(&mut w.conn);
        delivers.push(ran.deliver);
        if ran.suspect.is_some() {
            broken = ran.suspect;
            break;
        }
    }
    let outcome = match broken {
        Some(e) => Err(e),
        None => w.conn.exec(&["COMMIT"]).map_err(db_err),
    };
    match outcome {
        Ok(()) => {
            for deliver in delivers {
                deliver(Ok(()));
            }
            Ok(())
        }
        Err(e) => {
            if !w.conn.raw().is_autocommit() {
                if let Err(rollback) = w.conn.exec(&["ROLLBACK"]) {
                    tracing::debug!(error = %rollback, "rolling back a failed group");
                }
            }
            // Nothing of the group is durable: every job hears the error, none a success.
            for deliver in delivers {
                deliver(Err(e.clone()));
            }
            refuse_all(jobs.collect(), &e);
            Err(e)
        }
    }
}

fn refuse_all(group: Vec<Box<dyn Job>>, error: &StoreError) {
    for job in group {
        job.refuse(error.clone());
    }
}

/// A read waiting for a reader.
type Read = Box<dyn FnOnce(&Conn) + Send>;

/// The async side's handle on the reader threads.
#[derive(Clone)]
pub struct Readers {
    jobs: Arc<Mutex<Option<mpsc::Sender<Read>>>>,
    threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
}

impl Readers {
    /// Starts the reader threads, each opening its connection with `open`.
    pub fn start(open: Open) -> Result<Self, StoreError> {
        let (jobs, rx) = mpsc::channel::<Read>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for n in 0..READERS {
            let conn = open()?;
            let rx = rx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("hopper-sqlite-reader-{n}"))
                .spawn(move || loop {
                    let next = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    match next {
                        Ok(read) => read(&conn),
                        Err(_) => return,
                    }
                })
                .map_err(|e| StoreError::Unavailable(format!("cannot start a reader: {e}")))?;
            threads.push(thread);
        }
        Ok(Self {
            jobs: Arc::new(Mutex::new(Some(jobs))),
            threads: Arc::new(Mutex::new(threads)),
        })
    }

    /// Runs `op` on a read connection.
    pub async fn run<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c Conn) -> Op<'c, T> + Send + 'static,
    {
        let (answer, rx) = oneshot::channel::<Result<T, StoreError>>();
        let read: Read = Box::new(move |conn| {
            let _ = answer.send(run_now(op(conn)).unwrap_or_else(|| Err(stalled())));
        });
        let sent = match self.jobs.lock() {
            Ok(jobs) => jobs.as_ref().map(|jobs| jobs.send(read).is_ok()),
            Err(_) => None,
        };
        if sent != Some(true) {
            return Err(closed());
        }
        rx.await
            .map_err(|_| StoreError::Unavailable("the read stopped".into()))?
    }

    /// Stops the readers once the reads sent before have run, closing their connections.
    pub async fn close(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        let threads = match self.threads.lock() {
            Ok(mut threads) => std::mem::take(&mut *threads),
            Err(_) => Vec::new(),
        };
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}
