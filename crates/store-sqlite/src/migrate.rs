//! Migrations embedded in the binary, numbered as in every backend, applied in order at open.

use sqlx::{Executor, SqlitePool};

use crate::dialect::db_err;
use hopper_store::StoreError;

/// `(number, name, SQL)`, in order. The numbers and names are the same in every backend.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (2, "map", include_str!("../migrations/0002_map.sql")),
    (
        3,
        "schedules",
        include_str!("../migrations/0003_schedules.sql"),
    ),
    (4, "notify", include_str!("../migrations/0004_notify.sql")),
    (
        5,
        "log_caps",
        include_str!("../migrations/0005_log_caps.sql"),
    ),
    (
        6,
        "dashboard",
        include_str!("../migrations/0006_dashboard.sql"),
    ),
    (7, "faults", include_str!("../migrations/0007_faults.sql")),
    (8, "secrets", include_str!("../migrations/0008_secrets.sql")),
    (
        9,
        "snapshots",
        include_str!("../migrations/0009_snapshots.sql"),
    ),
];

/// Applies every migration not applied yet, each in its own transaction, under SQLite's write
/// lock (`BEGIN IMMEDIATE`), so two processes opening the same file cannot both apply one.
pub async fn apply(pool: &SqlitePool) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await.map_err(db_err)?;
    conn.execute(
        "CREATE TABLE IF NOT EXISTS hopper_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )
    .await
    .map_err(db_err)?;
    for (version, name, sql) in MIGRATIONS {
        conn.execute("BEGIN IMMEDIATE").await.map_err(db_err)?;
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT version FROM hopper_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_err)?;
        if applied.is_some() {
            conn.execute("COMMIT").await.map_err(db_err)?;
            continue;
        }
        let result = async {
            sqlx::raw_sql(sql).execute(&mut *conn).await?;
            sqlx::query("INSERT INTO hopper_migrations (version, name, applied_at) VALUES ($1, $2, CAST(strftime('%s','now') AS INTEGER) * 1000)")
                .bind(version)
                .bind(name)
                .execute(&mut *conn)
                .await?;
            Ok::<_, sqlx::Error>(())
        }
        .await;
        match result {
            Ok(()) => {
                conn.execute("COMMIT").await.map_err(db_err)?;
                tracing::info!(version, name, "applied migration");
            }
            Err(e) => {
                let _ = conn.execute("ROLLBACK").await;
                return Err(StoreError::Database(format!(
                    "migration {version:04}_{name} failed: {e}"
                )));
            }
        }
    }
    Ok(())
}
