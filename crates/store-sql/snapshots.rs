//! `snapshot_*`: code snapshots, content-addressed, kept while a version needs them.

use crate::db::Row;
use hopper_store::{SnapshotPrune, SnapshotPut, SnapshotRow, StoreError};

use crate::dialect::{Conn, DbPool};

use crate::map::db_err;

pub async fn put(conn: &mut Conn, p: SnapshotPut) -> Result<bool, StoreError> {
    let done = crate::db::query(
        "INSERT INTO snapshots (hash, bytes, size, files, unpacked_bytes, created_at)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (hash) DO NOTHING",
    )
    .bind(&p.hash)
    .bind(&p.bytes)
    .bind(p.bytes.len() as i64)
    .bind(p.files as i64)
    .bind(p.unpacked_bytes as i64)
    .bind(p.now)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(done.rows_affected() > 0)
}

pub async fn info(pool: &DbPool, hash: &str) -> Result<Option<SnapshotRow>, StoreError> {
    let row = crate::db::query(
        "SELECT hash, size, files, unpacked_bytes, created_at FROM snapshots WHERE hash = $1",
    )
    .bind(hash)
    .fetch_optional(pool)
    .await
    .map_err(db_err)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let int = |name: &str| -> Result<u64, StoreError> {
        Ok(row.try_get::<i64, _>(name).map_err(db_err)?.max(0) as u64)
    };
    Ok(Some(SnapshotRow {
        hash: row.try_get("hash").map_err(db_err)?,
        size: int("size")?,
        files: int("files")?,
        unpacked_bytes: int("unpacked_bytes")?,
        created_at: row.try_get("created_at").map_err(db_err)?,
    }))
}

pub async fn get(pool: &DbPool, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
    crate::db::query_scalar("SELECT bytes FROM snapshots WHERE hash = $1")
        .bind(hash)
        .fetch_optional(pool)
        .await
        .map_err(db_err)
}

pub async fn prune(conn: &mut Conn, p: SnapshotPrune) -> Result<u64, StoreError> {
    let done = crate::db::query(
        "DELETE FROM snapshots WHERE created_at < $1 AND hash NOT IN (
           SELECT v.snapshot FROM app_versions v JOIN apps a ON a.name = v.app
            WHERE v.snapshot IS NOT NULL AND v.version > a.version - $2
           UNION
           SELECT v.snapshot FROM app_versions v
             JOIN calls c ON c.app = v.app AND c.version = v.version
            WHERE v.snapshot IS NOT NULL AND c.state IN ('pending', 'running'))",
    )
    .bind(p.created_before)
    .bind(p.keep_versions as i64)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(done.rows_affected())
}
