//! Migrations embedded in the binary, numbered and named as in every backend, applied in
//! order at open under an advisory lock.

use sqlx::{Executor, PgPool};

use crate::dialect::db_err;
use hopper_store::{SchemaVersion, StoreError};

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
    (
        10,
        "map_clients",
        include_str!("../migrations/0010_map_clients.sql"),
    ),
    (
        11,
        "reruns_and_delays",
        include_str!("../migrations/0011_reruns_and_delays.sql"),
    ),
    (
        12,
        "queue_controls",
        include_str!("../migrations/0012_queue_controls.sql"),
    ),
    (
        13,
        "placement",
        include_str!("../migrations/0013_placement.sql"),
    ),
    (14, "blobs", include_str!("../migrations/0014_blobs.sql")),
];

/// Arbitrary key of the advisory lock that serialises migrations across servers.
const LOCK_KEY: i64 = 0x686f_7070_6572;

/// Applies every migration not applied yet, each in its own transaction, while holding a
/// session advisory lock, so servers starting together apply each migration once.
pub async fn apply(pool: &PgPool) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await.map_err(db_err)?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    let result = async {
        conn.execute(
            "CREATE TABLE IF NOT EXISTS hopper_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .await?;
        // A database a newer Hopper migrated is refused before anything is written to it.
        let newest: Option<(i64, String)> = sqlx::query_as(
            "SELECT version, name FROM hopper_migrations ORDER BY version DESC LIMIT 1",
        )
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((applied, applied_name)) = newest {
            if let Err(e) = schema(applied, applied_name).check() {
                return Ok(Err(e));
            }
        }
        for (version, name, sql) in MIGRATIONS {
            let applied: Option<i64> = sqlx::query_scalar("SELECT version FROM hopper_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *conn)
                .await?;
            if applied.is_some() {
                continue;
            }
            conn.execute("BEGIN").await?;
            let step = async {
                sqlx::raw_sql(sql).execute(&mut *conn).await?;
                sqlx::query(
                    "INSERT INTO hopper_migrations (version, name, applied_at) VALUES ($1, $2, (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT)",
                )
                .bind(version)
                .bind(name)
                .execute(&mut *conn)
                .await?;
                Ok::<_, sqlx::Error>(())
            }
            .await;
            match step {
                Ok(()) => {
                    conn.execute("COMMIT").await?;
                    tracing::info!(version, name, "applied migration");
                }
                Err(e) => {
                    let _ = conn.execute("ROLLBACK").await;
                    return Err::<Result<(), StoreError>, _>(e);
                }
            }
        }
        Ok(Ok(()))
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await;
    result.map_err(|e| StoreError::Database(format!("migration failed: {e}")))?
}

/// The schema `applied` (the database's newest migration) against this build's newest.
pub fn schema(applied: i64, applied_name: String) -> SchemaVersion {
    SchemaVersion::of(applied, applied_name, MIGRATIONS)
}
