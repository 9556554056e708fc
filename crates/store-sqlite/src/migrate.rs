//! Migrations embedded in the binary, numbered as in every backend, applied in order at open.

use crate::db::Conn;
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

/// Applies every migration not applied yet, each in its own transaction, under SQLite's write
/// lock (`BEGIN IMMEDIATE`), so two processes opening the same file cannot both apply one.
pub fn apply(conn: &Conn) -> Result<(), StoreError> {
    let conn = conn.raw();
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS hopper_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )
    .map_err(db_err)?;
    // A database a newer Hopper migrated is refused before anything is written to it.
    let newest: Option<(i64, String)> = conn
        .query_row(
            "SELECT version, name FROM hopper_migrations ORDER BY version DESC LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(db_err)?;
    if let Some((applied, applied_name)) = newest {
        schema(applied, applied_name).check()?;
    }
    for (version, name, sql) in MIGRATIONS {
        conn.execute_batch("BEGIN IMMEDIATE").map_err(db_err)?;
        let applied = conn
            .query_row(
                "SELECT count(*) FROM hopper_migrations WHERE version = ?1",
                [version],
                |row| row.get::<_, i64>(0),
            )
            .map_err(db_err);
        let step = match applied {
            Ok(0) => conn.execute_batch(sql).and_then(|()| {
                conn.execute(
                    "INSERT INTO hopper_migrations (version, name, applied_at) VALUES (?1, ?2, CAST(strftime('%s','now') AS INTEGER) * 1000)",
                    rusqlite::params![version, name],
                )
            }),
            Ok(_) => {
                conn.execute_batch("COMMIT").map_err(db_err)?;
                continue;
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        };
        match step.and_then(|_| conn.execute_batch("COMMIT")) {
            Ok(()) => tracing::info!(version, name, "applied migration"),
            Err(e) => {
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                return Err(StoreError::Database(format!(
                    "migration {version:04}_{name} failed: {e}"
                )));
            }
        }
    }
    Ok(())
}

/// The schema `applied` (the database's newest migration) against this build's newest.
pub fn schema(applied: i64, applied_name: String) -> SchemaVersion {
    SchemaVersion::of(applied, applied_name, MIGRATIONS)
}
