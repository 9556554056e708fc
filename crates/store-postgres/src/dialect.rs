//! What the shared SQL (`crates/store-sql/`) needs from PostgreSQL: its types, the few
//! phrases where the dialects differ (row locks for several servers), wake-ups, and how its
//! errors map.

use hopper_store::StoreError;

pub type Db = sqlx::Postgres;
pub type Conn = sqlx::postgres::PgConnection;
pub type DbPool = sqlx::PgPool;
pub type DbRow = sqlx::postgres::PgRow;

/// The smaller of two values.
pub const LEAST: &str = "LEAST";
/// A function version's timeout, from its spec JSON.
pub const TIMEOUT_MS: &str = "(f.spec::jsonb ->> 'timeout_ms')::BIGINT";
/// Several servers claim rows at once: each skips the rows another is claiming.
pub const SKIP_LOCKED: &str = " FOR UPDATE SKIP LOCKED";
/// Rows read to be changed are locked until commit, so another server cannot interleave.
pub const LOCK_ROWS: &str = " FOR UPDATE";
pub const LOCK_SCHEDULE: &str = " FOR UPDATE OF s";
/// PostgreSQL's `SUM` of `BIGINT` is `NUMERIC`.
pub const SUM_AS_BIGINT: &str = "::BIGINT";

/// The channel of `LISTEN/NOTIFY` wake-ups.
pub const CHANNEL: &str = "hopper_wakeups";

/// Queues a wake-up for every server; PostgreSQL delivers it when the transaction commits.
pub async fn notify(conn: &mut Conn, payload: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

pub fn db_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::Io(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_) => StoreError::Unavailable(e.to_string()),
        // Deadlocks, serialization failures, lock timeouts, and the server shutting down or
        // restarting: the operation changed nothing and may be retried.
        sqlx::Error::Database(db)
            if matches!(
                db.code().as_deref(),
                Some("40P01")
                    | Some("40001")
                    | Some("55P03")
                    | Some("57P01")
                    | Some("57P02")
                    | Some("57P03")
                    | Some("08006")
                    | Some("08003")
            ) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Database(e.to_string()),
    }
}
