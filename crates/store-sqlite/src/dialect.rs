//! What the shared SQL (`crates/store-sql/`) needs from SQLite: its types, the few phrases
//! where the dialects differ, and how its errors map.

use hopper_store::StoreError;

pub type Db = sqlx::Sqlite;
pub type Conn = sqlx::sqlite::SqliteConnection;
pub type DbPool = sqlx::SqlitePool;
pub type DbRow = sqlx::sqlite::SqliteRow;

/// The smaller of two values.
pub const LEAST: &str = "MIN";
/// A function version's timeout, from its spec JSON.
pub const TIMEOUT_MS: &str = "json_extract(f.spec, '$.timeout_ms')";
/// One writer at a time: rows need no locks.
pub const SKIP_LOCKED: &str = "";
pub const LOCK_ROWS: &str = "";
pub const LOCK_SCHEDULE: &str = "";
/// SQLite's `SUM` of integers is an integer already.
pub const SUM_AS_BIGINT: &str = "";

/// One server per file: there is nobody else to wake.
pub async fn notify(_conn: &mut Conn, _payload: &str) -> Result<(), StoreError> {
    Ok(())
}

/// Maps a sqlx error to the store's error: busy and I/O faults are `Unavailable` (retryable).
pub fn db_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            StoreError::Unavailable(e.to_string())
        }
        sqlx::Error::Database(db)
            if matches!(db.code().as_deref(), Some("5") | Some("6") | Some("517")) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Database(e.to_string()),
    }
}
