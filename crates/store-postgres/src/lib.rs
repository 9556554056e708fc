//! Hopper's scale-out store: one PostgreSQL database shared by any number of `hopper serve`
//! processes.
//!
//! The SQL is the SQLite store's, in PostgreSQL's dialect, with what several servers need:
//! leases are claimed with `FOR UPDATE SKIP LOCKED`, so servers never wait on each other's
//! rows; migrations run under an advisory lock, so servers starting together do not race;
//! deadlocks and connection loss map to `Unavailable` (the operation changed nothing and is
//! retried by the caller). Every write is its own transaction on a pooled connection.
//!
//! # Layout
//! - [`migrate`]: the embedded migrations, numbered as in every backend.
//! - `map`: database rows and errors into the store's types.
//! - `apps`, `calls`, `inputs`, `schedules`, `workers`: the [`Store`] methods, by noun.

#[path = "../../store-sql/apps.rs"]
mod apps;
#[path = "../../store-sql/blobs.rs"]
mod blobs;
#[path = "../../store-sql/calls.rs"]
mod calls;
mod db;
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
#[path = "../../store-sql/workers.rs"]
mod workers;

use std::str::FromStr;
use std::time::Duration;

use futures_util::future::BoxFuture;
use hopper_store::*;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use crate::dialect::db_err;

/// The store type the shared `Store` implementation (`store-sql/store.rs`) is for.
type Backend = PgStore;

/// The PostgreSQL implementation of [`Store`].
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The pool with the wake-up publisher, for writes.
    writes: Writes,
    /// Spawns, leases and workers' results for their group writers (see [`group_writer`]).
    spawns: Jobs<CallInsert, CallInserted>,
    leases: Jobs<InputLease, LeaseBatch>,
    completions: Jobs<InputCompleteMany, Vec<CompletionRow>>,
    /// A pool of one connection for `LISTEN`, apart so closing `pool` does not wait on it.
    listen_pool: PgPool,
    listener: std::sync::Arc<tokio::task::AbortHandle>,
    wakeups: tokio::sync::broadcast::Sender<Wakeup>,
    publisher_task: std::sync::Arc<tokio::task::AbortHandle>,
    /// A connection of its own holding this process's advisory locks (one per role led), so
    /// they last exactly as long as the process's session.
    leader: std::sync::Arc<tokio::sync::Mutex<Leader>>,
    options: PgConnectOptions,
    /// The schema the tables live in, if one was given.
    schema: Option<String>,
    /// Functions found, kept a second at most (another server's deploy clears it).
    functions: std::sync::Arc<FunctionCache>,
    /// Function versions' specs read so far.
    versions: std::sync::Arc<VersionSpecs>,
}

#[derive(Default)]
struct Leader {
    conn: Option<PgConnection>,
    roles: Vec<String>,
}

/// A stable advisory-lock key for a role name in a schema (FNV-1a). Advisory locks belong to
/// the whole database: the schema keeps clusters in different schemas of one database apart.
fn lock_key(schema: Option<&str>, role: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("hopper:{}:{role}", schema.unwrap_or("")).bytes() {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// How to connect. Its `Debug` shows the URL without its password.
#[derive(Clone)]
pub struct PgConfig {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    /// Most connections in the pool. Default 16.
    pub max_connections: u32,
    /// Tables live in this schema (created if missing). Default none: the connection's
    /// `search_path`.
    pub schema: Option<String>,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &without_password(&self.url))
            .field("max_connections", &self.max_connections)
            .field("schema", &self.schema)
            .finish()
    }
}

/// `url` with the password in its user part, if any, replaced by `***`.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user, host)) => {
            let name = user.split_once(':').map_or(user, |(name, _)| name);
            format!("{scheme}://{name}:***@{host}{path}")
        }
        None => url.to_string(),
    }
}

impl PgStore {
    /// Connects and applies pending migrations (under an advisory lock).
    pub async fn open(config: &PgConfig) -> Result<Self, StoreError> {
        let mut options = PgConnectOptions::from_str(&config.url).map_err(|e| {
            StoreError::Unavailable(format!(
                "invalid database URL: {}",
                e.to_string().replace(&config.url, "…")
            ))
        })?;
        if let Some(schema) = &config.schema {
            options = options.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(db_err)?;
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(db_err)?;
        if let Some(schema) = &config.schema {
            sqlx::query(&format!(
                "CREATE SCHEMA IF NOT EXISTS \"{}\"",
                schema.replace('"', "")
            ))
            .execute(&pool)
            .await
            .map_err(db_err)?;
        }
        migrate::apply(&pool).await?;
        let (wakeups, _) = tokio::sync::broadcast::channel(1_024);
        let mut listener = sqlx::postgres::PgListener::connect_with(&listen_pool)
            .await
            .map_err(db_err)?;
        listener.listen(dialect::CHANNEL).await.map_err(db_err)?;
        // Each server keeps the functions it found for a second at most (see FunctionCache).
        let functions = std::sync::Arc::new(FunctionCache::shared(Duration::from_secs(1)));
        let task = tokio::spawn(listen(listener, wakeups.clone(), functions.clone()));
        let (publisher, queued) = tokio::sync::mpsc::unbounded_channel();
        let publisher_task = tokio::spawn(publish(options.clone(), queued));
        let writes = Writes {
            pool: pool.clone(),
            publisher,
        };
        let versions: std::sync::Arc<VersionSpecs> = std::sync::Arc::default();
        let spawns = group_writer(
            writes.clone(),
            GROUP_WRITERS,
            SPAWN_GROUP,
            |_| 1,
            |conn, calls| {
                Box::pin(async move {
                    let rows = calls::insert_many(conn, calls).await?;
                    Ok(rows.into_iter().map(Ok).collect())
                })
            },
        );
        let leases = {
            let versions = versions.clone();
            group_writer(
                writes.clone(),
                GROUP_WRITERS,
                LEASE_GROUP,
                |job: &InputLease| job.max as usize,
                move |conn, jobs| {
                    let jobs = jobs.into_iter().map(|job| (job, Vec::new())).collect();
                    let versions = versions.clone();
                    Box::pin(async move {
                        let batches = inputs::lease_many(conn, jobs, versions).await?;
                        Ok(batches.into_iter().map(Ok).collect())
                    })
                },
            )
        };
        let completions = group_writer(
            writes.clone(),
            GROUP_WRITERS,
            COMPLETE_GROUP,
            |job: &InputCompleteMany| job.results.len(),
            |conn, jobs| Box::pin(inputs::complete_groups(conn, jobs)),
        );
        Ok(Self {
            pool,
            listen_pool,
            listener: std::sync::Arc::new(task.abort_handle()),
            wakeups,
            leader: std::sync::Arc::default(),
            writes,
            spawns,
            leases,
            completions,
            publisher_task: std::sync::Arc::new(publisher_task.abort_handle()),
            options,
            schema: config.schema.clone(),
            functions,
            versions,
        })
    }

    pub async fn close(&self) {
        self.listener.abort();
        self.publisher_task.abort();
        self.pool.close().await;
        self.listen_pool.close().await;
    }

    /// Drops a schema and everything in it (for benchmarks and tests that made their own).
    pub async fn drop_schema(url: &str, schema: &str) -> Result<(), StoreError> {
        use sqlx::Connection;
        let mut conn = PgConnection::connect(url).await.map_err(db_err)?;
        sqlx::query(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            schema.replace('"', "")
        ))
        .execute(&mut conn)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Runs one write on a pooled connection (see [`Writes::write`]).
    async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        self.writes.write(op).await
    }
}

/// What a write needs: the pool, and where committed writes' wake-ups go.
#[derive(Clone)]
struct Writes {
    pool: PgPool,
    publisher: tokio::sync::mpsc::UnboundedSender<Vec<String>>,
}

impl Writes {
    /// Runs one write on a pooled connection; the write opens and commits its own
    /// transaction. A write PostgreSQL aborted for a deadlock or a serialization failure
    /// changed nothing and runs again here (a few times, after short waits), rather than
    /// failing its request.
    async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T, StoreError>>,
    {
        let mut wait = Duration::from_millis(5);
        for _ in 0..WRITE_TRIES - 1 {
            let mut conn = self.pool.acquire().await.map_err(db_err)?;
            match self.run_write(&op, &mut conn).await {
                Err(StoreError::Contention(e)) => {
                    tracing::debug!(error = %e, "write aborted by contention; running it again");
                    drop(conn);
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                done => return done,
            }
        }
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        self.run_write(&op, &mut conn).await
    }

    /// Runs one try of a write, collecting the wake-ups it asks for; once it has committed,
    /// hands them to the publisher.
    async fn run_write<T, F>(&self, op: &F, conn: &mut PgConnection) -> Result<T, StoreError>
    where
        F: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T, StoreError>>,
    {
        let (done, wakeups) = dialect::WAKEUPS
            .scope(std::cell::RefCell::default(), async {
                let done = op(conn).await;
                (done, dialect::WAKEUPS.with(|w| w.take()))
            })
            .await;
        if done.is_ok() && !wakeups.is_empty() {
            let _ = self.publisher.send(wakeups);
        }
        done
    }
}

/// A job waiting to be written with others of its kind, and who waits for its answer.
type Job<J, A> = (J, tokio::sync::oneshot::Sender<Result<A, StoreError>>);

/// Where a kind of job goes to be written together with the others arriving at once.
type Jobs<J, A> = tokio::sync::mpsc::UnboundedSender<Job<J, A>>;

/// Groups of one kind being written at once.
const GROUP_WRITERS: usize = 4;

/// Spawns written together in one transaction, at most.
const SPAWN_GROUP: usize = 500;
/// Inputs leased in one transaction, at most (a lease asks for its worker's free slots).
const LEASE_GROUP: usize = 1_000;
/// Results recorded in one transaction, at most.
const COMPLETE_GROUP: usize = 1_000;

/// Starts a group writer and answers where its jobs go: concurrent jobs of one kind (spawns,
/// leases, workers' results) are written together, one transaction per group of at most
/// `most` (by `weight`), in multi-row statements where `write` has them, so a job costs a
/// share of a commit and of its round trips, not whole ones. What arrives while every writer
/// is busy joins the next group; a job arriving alone is written at once. `write` answers each
/// job of a group in order. A group whose transaction a statement refused (a job's data) is
/// written again job by job, so that job alone fails; any other error (the database is away,
/// a commit whose outcome is unknown) fails the whole group, and nothing is written twice.
fn group_writer<J, A, W>(
    writes: Writes,
    writers: usize,
    most: usize,
    weight: fn(&J) -> usize,
    write: W,
) -> Jobs<J, A>
where
    J: Clone + Send + Sync + 'static,
    A: Send + 'static,
    W: for<'c> Fn(
            &'c mut PgConnection,
            Vec<J>,
        ) -> BoxFuture<'c, Result<Vec<Result<A, StoreError>>, StoreError>>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let (jobs, mut queued) = tokio::sync::mpsc::unbounded_channel::<Job<J, A>>();
    tokio::spawn(async move {
        let writers = std::sync::Arc::new(tokio::sync::Semaphore::new(writers));
        while let Some(first) = queued.recv().await {
            let Ok(writer) = writers.clone().acquire_owned().await else {
                return;
            };
            let mut filled = weight(&first.0);
            let mut group = vec![first];
            while filled < most {
                match queued.try_recv() {
                    Ok(job) => {
                        filled += weight(&job.0);
                        group.push(job);
                    }
                    Err(_) => break,
                }
            }
            let writes = writes.clone();
            let write = write.clone();
            tokio::spawn(async move {
                let (jobs, answers): (Vec<J>, Vec<_>) = group.into_iter().unzip();
                let alone = jobs.len() == 1;
                let group = jobs.clone();
                let write_group = write.clone();
                let written = writes
                    .write(move |conn| write_group(conn, group.clone()))
                    .await;
                match written {
                    Ok(rows) => {
                        for (answer, row) in answers.into_iter().zip(rows) {
                            let _ = answer.send(row);
                        }
                    }
                    // A statement refused one job's data and the group's transaction rolled
                    // back whole: each job is written alone, so only that job fails.
                    Err(StoreError::Database(e)) if !alone => {
                        tracing::debug!(error = %e, "a group's write failed; writing its jobs one by one");
                        for (job, answer) in jobs.into_iter().zip(answers) {
                            let write = write.clone();
                            let written = writes
                                .write(move |conn| write(conn, vec![job.clone()]))
                                .await
                                .and_then(|mut rows| {
                                    rows.pop().unwrap_or_else(|| {
                                        Err(StoreError::Database("a job went unanswered".into()))
                                    })
                                });
                            let _ = answer.send(written);
                        }
                    }
                    Err(e) => {
                        for answer in answers {
                            let _ = answer.send(Err(e.clone()));
                        }
                    }
                }
                drop(writer);
            });
        }
    });
    jobs
}

/// Hands `job` to a group writer and waits for its answer. A job is never written again
/// here: its group may have committed it.
async fn grouped<J, A>(jobs: &Jobs<J, A>, job: J) -> Result<A, StoreError> {
    let (answer, answered) = tokio::sync::oneshot::channel();
    if jobs.send((job, answer)).is_err() {
        return Err(StoreError::Unavailable("the group writer stopped".into()));
    }
    answered.await.unwrap_or_else(|_| {
        Err(StoreError::Unavailable(
            "the group writer stopped before answering".into(),
        ))
    })
}

/// Tries of a write that PostgreSQL keeps aborting for contention.
const WRITE_TRIES: u32 = 5;

/// Largest `NOTIFY` payload sent (PostgreSQL takes up to 8,000 bytes).
const MAX_NOTICE: usize = 7_900;

/// Sends the wake-ups committed writes asked for to every server, on a connection of its own
/// and outside any data transaction: what is queued while one notice is sent goes together in
/// the next, distinct payloads once, joined by newlines. A notice that cannot be sent (the
/// database is away) is dropped: waiters on other servers look again by themselves.
async fn publish(
    options: PgConnectOptions,
    mut queued: tokio::sync::mpsc::UnboundedReceiver<Vec<String>>,
) {
    use sqlx::Connection;
    let mut conn: Option<PgConnection> = None;
    let mut warned = false;
    while let Some(first) = queued.recv().await {
        let mut payloads = first;
        while let Ok(more) = queued.try_recv() {
            payloads.extend(more);
        }
        let payloads = coalesce(payloads);
        let sent = async {
            if conn.is_none() {
                conn = Some(PgConnection::connect_with(&options).await?);
            }
            let Some(c) = conn.as_mut() else {
                return Ok(());
            };
            for notice in pack(&payloads) {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(dialect::CHANNEL)
                    .bind(notice)
                    .execute(&mut *c)
                    .await?;
            }
            Ok::<_, sqlx::Error>(())
        }
        .await;
        match sent {
            Ok(()) => warned = false,
            Err(e) => {
                conn = None;
                if !warned {
                    tracing::warn!(error = %e, "cannot send wake-ups to the other servers; they look for work by themselves meanwhile");
                    warned = true;
                }
            }
        }
    }
}

/// Distinct wake-ups once each, with the new inputs of each function added up into one
/// `inputs:N:APP:FUNCTION`.
fn coalesce(payloads: Vec<String>) -> std::collections::BTreeSet<String> {
    let mut inputs: std::collections::BTreeMap<(String, String), usize> = Default::default();
    let mut others = std::collections::BTreeSet::new();
    for payload in payloads {
        match parse_inputs(&payload) {
            Some((function, n)) => {
                *inputs.entry((function.app, function.function)).or_default() += n
            }
            None => {
                others.insert(payload);
            }
        }
    }
    for ((app, function), n) in inputs {
        others.insert(calls::inputs_notice(&app, &function, n));
    }
    others
}

/// The function and count of an `inputs:N:APP:FUNCTION` wake-up.
fn parse_inputs(payload: &str) -> Option<(FunctionKey, usize)> {
    let mut parts = payload.splitn(4, ':');
    let ("inputs", Some(n), Some(app), Some(function)) =
        (parts.next()?, parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let function = FunctionKey {
        app: app.to_string(),
        function: function.to_string(),
    };
    Some((function, n.parse().ok()?))
}

/// `payloads` joined by newlines into notices of at most [`MAX_NOTICE`] bytes.
fn pack(payloads: &std::collections::BTreeSet<String>) -> Vec<String> {
    let mut notices = Vec::new();
    let mut current = String::new();
    for p in payloads {
        if !current.is_empty() && current.len() + 1 + p.len() > MAX_NOTICE {
            notices.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(p);
    }
    if !current.is_empty() {
        notices.push(current);
    }
    notices
}

/// Forwards `NOTIFY`s from every server to this process's waiters. `PgListener` reconnects
/// by itself after a lost connection; wake-ups sent meanwhile are lost, which only delays
/// waiters until their next timed check.
async fn listen(
    mut listener: sqlx::postgres::PgListener,
    wakeups: tokio::sync::broadcast::Sender<Wakeup>,
    functions: std::sync::Arc<FunctionCache>,
) {
    loop {
        match listener.recv().await {
            Ok(n) => {
                for payload in n.payload().split('\n') {
                    let wakeup = match payload {
                        "deploy" => {
                            functions.clear();
                            None
                        }
                        "inputs" => Some(Wakeup::Inputs),
                        "results" => Some(Wakeup::Results),
                        other => match other.split_once(':') {
                            Some(("inputs", _)) => parse_inputs(other)
                                .map(|(function, count)| Wakeup::InputsOf { function, count }),
                            Some(("call", id)) => id.parse().ok().map(Wakeup::CallFinished),
                            Some(("cancel", id)) => id.parse().ok().map(Wakeup::CallCancelled),
                            _ => None,
                        },
                    };
                    if let Some(w) = wakeup {
                        let _ = wakeups.send(w);
                    }
                }
            }
            Err(e) => {
                // A deploy's notice may be among those lost.
                functions.clear();
                tracing::warn!(error = %e, "lost the PostgreSQL notification channel; reconnecting");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

impl PgStore {
    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<Wakeup>> {
        Some(self.wakeups.subscribe())
    }

    /// The pool's connections, open and idle (see [`Store::connections`]).
    fn pool_connections(&self) -> Option<(u32, u32)> {
        Some((self.pool.size(), self.pool.num_idle() as u32))
    }

    /// The database's clock (see [`Store::database_now`]).
    async fn clock(&self) -> Result<Option<hopper_core::UnixMillis>, StoreError> {
        let ms: i64 =
            sqlx::query_scalar("SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT")
                .fetch_one(&self.pool)
                .await
                .map_err(db_err)?;
        Ok(Some(ms))
    }

    /// Takes or checks the lead for a role (see [`Store::leader_try`]).
    async fn lead(&self, role: &str) -> Result<bool, StoreError> {
        use sqlx::Connection;
        let mut leader = self.leader.lock().await;
        if leader.roles.iter().any(|r| r == role) {
            // Still ours while the session lives: check the connection.
            let alive = match leader.conn.as_mut() {
                Some(conn) => conn.ping().await.is_ok(),
                None => false,
            };
            if alive {
                return Ok(true);
            }
            leader.conn = None;
            leader.roles.clear();
        }
        if leader.conn.is_none() {
            leader.conn = Some(
                PgConnection::connect_with(&self.options)
                    .await
                    .map_err(db_err)?,
            );
        }
        let Some(conn) = leader.conn.as_mut() else {
            return Ok(false);
        };
        let taken: bool = match sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(lock_key(self.schema.as_deref(), role))
            .fetch_one(conn)
            .await
        {
            Ok(taken) => taken,
            Err(e) => {
                // A connection lost with the database (a restart, a failover) is replaced at
                // the next try; any lead it held went with it.
                leader.conn = None;
                leader.roles.clear();
                return Err(db_err(e));
            }
        };
        if taken {
            leader.roles.push(role.to_string());
        }
        Ok(taken)
    }

    /// Runs a read of the shared SQL on the pool.
    async fn read<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(&'c PgPool) -> BoxFuture<'c, Result<T, StoreError>>,
    {
        op(&self.pool).await
    }

    /// Creates a call: a spawn of one input without an idempotency key is written with the
    /// others arriving at once (see [`group_writer`]); any other in a transaction of its own.
    async fn insert_call(&self, params: CallInsert) -> Result<CallInserted, StoreError> {
        let plain = params.idempotency_key.is_none()
            && params.rerun_of.is_none()
            && params.starts_at.is_none()
            && params.inputs.len() == 1
            && !params.accepting_inputs;
        if plain {
            return grouped(&self.spawns, params).await;
        }
        self.write(move |conn| Box::pin(calls::insert(conn, params.clone())))
            .await
    }

    /// Leases inputs: a lease of functions without limits, whose inputs have no keys or
    /// priorities, is written with the others arriving at once (see [`group_writer`]); any
    /// other, whose claim locks its functions' limiter rows, in a transaction of its own.
    async fn lease_inputs(
        &self,
        params: InputLease,
        limits: Vec<(FunctionKey, hopper_core::limits::Limits)>,
    ) -> Result<LeaseBatch, StoreError> {
        if limits.is_empty() && !params.functions.iter().any(|f| self.versions.ranked(f)) {
            return grouped(&self.leases, params).await;
        }
        let versions = self.versions.clone();
        self.write(move |conn| {
            Box::pin(inputs::lease(
                conn,
                params.clone(),
                limits.clone(),
                versions.clone(),
            ))
        })
        .await
    }

    /// Records a worker's results together with other workers' arriving at once (see
    /// [`group_writer`]).
    async fn complete_inputs(
        &self,
        params: InputCompleteMany,
    ) -> Result<Vec<CompletionRow>, StoreError> {
        grouped(&self.completions, params).await
    }

    /// Runs a write that only records leases or a worker's sighting. Leases and heartbeats
    /// ask for their commit not to wait for the WAL's flush themselves
    /// (`dialect::relaxed_commit`), so a call's row many workers lease from is held for as
    /// short a time as can be; a crash of the database loses at most the last of them, which
    /// sends their inputs back to the queue, and a later durable commit flushes them all.
    async fn write_lease<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        self.write(op).await
    }
}

#[cfg(test)]
mod query_plan_test {
    /// Against the database `HOPPER_TEST_POSTGRES` names, in a schema of its own, dropped
    /// after; skipped without it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dashboard_queries_use_indexes_with_a_million_calls() {
        let Ok(url) = std::env::var("HOPPER_TEST_POSTGRES") else {
            println!("SKIP dashboard_queries_use_indexes_with_a_million_calls: HOPPER_TEST_POSTGRES is not set");
            return;
        };
        let schema = format!("hopper_plans_{}", hopper_core::ids::random_hex());
        let store = super::PgStore::open(&super::PgConfig {
            url: url.clone(),
            max_connections: 4,
            schema: Some(schema.clone()),
        })
        .await
        .expect("open the store");
        crate::query_plans::check(&store, &store.pool, &store.pool).await;
        store.close().await;
        super::PgStore::drop_schema(&url, &schema)
            .await
            .expect("drop the test schema");
    }
}

#[cfg(test)]
mod next_due_test {
    use sqlx::Row;

    /// The read of when a worker's next input is due (one per lease request) stops at the
    /// first pending input of each function whatever the planner's statistics say: here the
    /// tables were filled after their last `ANALYZE`, as a queue filling faster than
    /// autovacuum looks is. Before, the planner took the walk for one row and counted every
    /// pending input: 3.7 ms per lease request with 10,000 queued.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_next_due_read_stops_at_the_first_pending_input() {
        let Ok(url) = std::env::var("HOPPER_TEST_POSTGRES") else {
            println!("SKIP the_next_due_read_stops_at_the_first_pending_input: HOPPER_TEST_POSTGRES is not set");
            return;
        };
        let schema = format!("hopper_due_{}", hopper_core::ids::random_hex());
        let store = super::PgStore::open(&super::PgConfig {
            url: url.clone(),
            max_connections: 2,
            schema: Some(schema.clone()),
        })
        .await
        .expect("open the store");
        // Empty tables, analyzed; then 200,000 calls, 2,000 of them pending, one function's.
        sqlx::query("ANALYZE")
            .execute(&store.pool)
            .await
            .expect("analyze");
        for statement in crate::dialect::plans::fill(200_000, crate::query_plans::T0)
            .into_iter()
            .take(2)
        {
            sqlx::query(&statement)
                .execute(&store.pool)
                .await
                .expect("fill");
        }
        let mut q = sqlx::QueryBuilder::new("EXPLAIN (ANALYZE, FORMAT JSON) ");
        let f3 = hopper_store::FunctionKey {
            app: "app1".into(),
            function: "f3".into(),
        };
        crate::inputs::push_next_due_query(&mut q, &[f3]);
        let plan: serde_json::Value = q
            .build()
            .fetch_one(&store.pool)
            .await
            .expect("explain")
            .try_get(0)
            .expect("the plan");
        let mut read = Vec::new();
        rows_read(&plan, &mut read);
        store.close().await;
        super::PgStore::drop_schema(&url, &schema)
            .await
            .expect("drop the test schema");
        assert!(
            !read.is_empty() && read.iter().all(|n| *n <= 1.0),
            "rows read from inputs by each walk: {read:?} in {plan:#}"
        );
    }

    /// The rows each node of `plan` read from `inputs`.
    fn rows_read(plan: &serde_json::Value, out: &mut Vec<f64>) {
        match plan {
            serde_json::Value::Object(node) => {
                if node.get("Relation Name").and_then(|r| r.as_str()) == Some("inputs") {
                    out.extend(node.get("Actual Rows").and_then(|r| r.as_f64()));
                }
                node.values().for_each(|v| rows_read(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| rows_read(v, out)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod redaction_tests {
    #[test]
    fn debug_of_a_config_shows_no_password() {
        let config = super::PgConfig {
            url: "postgres://hopper:p4ss@db.example.com:5432/hopper?sslmode=require".into(),
            max_connections: 1,
            schema: None,
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("p4ss"), "{shown}");
        assert!(
            shown.contains("postgres://hopper:***@db.example.com:5432/hopper"),
            "{shown}"
        );
    }
}
