//! `blob_*`: byte strings stored apart from the payloads that refer to them, as chunks
//! written one transaction each, made a blob by one last row, and kept while a call refers
//! to them.

use crate::db::{Connection, Row};
use hopper_core::CallId;
use hopper_store::{BlobChunk, BlobFinish, BlobPrune, BlobRow, StoreError};

use crate::dialect::{Conn, DbPool};
use crate::map::db_err;

pub async fn chunk_put(conn: &mut Conn, p: BlobChunk) -> Result<(), StoreError> {
    // Without waiting for the disk: a chunk lost in a crash only fails an upload that was never
    // acknowledged, and the upload's last write (`finish`, durable) flushes every chunk before
    // it.
    let mut tx = conn.begin().await.map_err(db_err)?;
    crate::dialect::relaxed_commit(&mut tx).await?;
    crate::db::query(
        "INSERT INTO blob_chunks (upload, seq, data, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (upload, seq) DO NOTHING",
    )
    .bind(&p.upload)
    .bind(p.seq)
    .bind(p.data.as_slice())
    .bind(p.now)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(())
}

pub async fn finish(conn: &mut Conn, p: BlobFinish) -> Result<bool, StoreError> {
    let done = crate::db::query(
        "INSERT INTO blobs (digest, upload, size, created_at, location) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (digest) DO NOTHING",
    )
    .bind(&p.digest)
    .bind(&p.upload)
    .bind(p.size as i64)
    .bind(p.now)
    .bind(p.location.as_deref())
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    let new = done.rows_affected() > 0;
    if !new {
        // Stored already (the same bytes uploaded before): this upload's copy goes, and the
        // stored blob's grace starts again, as for a new upload (the spawn that will refer to
        // it may be on its way).
        discard(conn, p.upload.clone()).await?;
        crate::db::query("UPDATE blobs SET created_at = $2 WHERE digest = $1 AND created_at < $2")
            .bind(&p.digest)
            .bind(p.now)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
    }
    if let Some(call) = &p.call {
        claim_one(conn, call, &p.digest, p.now).await?;
    }
    Ok(new)
}

pub async fn discard(conn: &mut Conn, upload: String) -> Result<(), StoreError> {
    crate::db::query("DELETE FROM blob_chunks WHERE upload = $1")
        .bind(&upload)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

async fn claim_one(
    conn: &mut Conn,
    call: &CallId,
    digest: &str,
    now: i64,
) -> Result<(), StoreError> {
    crate::db::query(
        "INSERT INTO blob_refs (digest, call_id, created_at) VALUES ($1, $2, $3)
         ON CONFLICT (digest, call_id) DO NOTHING",
    )
    .bind(digest)
    .bind(call.as_str())
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub async fn claim(
    conn: &mut Conn,
    call: CallId,
    digests: Vec<String>,
    now: i64,
) -> Result<(), StoreError> {
    for digest in &digests {
        claim_one(conn, &call, digest, now).await?;
    }
    Ok(())
}

pub async fn info(pool: &DbPool, digest: &str) -> Result<Option<BlobRow>, StoreError> {
    let row = crate::db::query(
        "SELECT b.digest, b.size, b.created_at, b.location,
                (SELECT COUNT(*) FROM blob_chunks c WHERE c.upload = b.upload) AS chunks
           FROM blobs b WHERE b.digest = $1",
    )
    .bind(digest)
    .fetch_optional(pool)
    .await
    .map_err(db_err)?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(BlobRow {
        digest: row.try_get("digest").map_err(db_err)?,
        size: row.try_get::<i64, _>("size").map_err(db_err)?.max(0) as u64,
        chunks: row.try_get("chunks").map_err(db_err)?,
        created_at: row.try_get("created_at").map_err(db_err)?,
        location: row.try_get("location").map_err(db_err)?,
    }))
}

pub async fn locations(pool: &DbPool, locations: Vec<String>) -> Result<Vec<String>, StoreError> {
    let mut known = Vec::new();
    for location in locations {
        let named: Option<String> =
            crate::db::query_scalar("SELECT location FROM blobs WHERE location = $1 LIMIT 1")
                .bind(&location)
                .fetch_optional(pool)
                .await
                .map_err(db_err)?;
        known.extend(named);
    }
    Ok(known)
}

pub async fn chunk(pool: &DbPool, digest: &str, seq: i64) -> Result<Option<Vec<u8>>, StoreError> {
    crate::db::query_scalar(
        "SELECT c.data FROM blobs b JOIN blob_chunks c ON c.upload = b.upload
          WHERE b.digest = $1 AND c.seq = $2",
    )
    .bind(digest)
    .bind(seq)
    .fetch_optional(pool)
    .await
    .map_err(db_err)
}

pub async fn prune(conn: &mut Conn, p: BlobPrune) -> Result<u64, StoreError> {
    // References of calls pruned (or never inserted: a spawn that failed after its claim).
    crate::db::query(
        "DELETE FROM blob_refs WHERE created_at < $1
            AND NOT EXISTS (SELECT 1 FROM calls c WHERE c.id = blob_refs.call_id)",
    )
    .bind(p.created_before)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    let unreferenced = "SELECT upload FROM blobs b WHERE b.created_at < $1
        AND NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.digest = b.digest)";
    crate::db::query(&format!(
        "DELETE FROM blob_chunks WHERE upload IN ({unreferenced})"
    ))
    .bind(p.created_before)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    let done = crate::db::query(
        "DELETE FROM blobs WHERE created_at < $1
            AND NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.digest = blobs.digest)",
    )
    .bind(p.created_before)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    // Uploads that never finished (the client or the server went away mid-way).
    crate::db::query(
        "DELETE FROM blob_chunks WHERE created_at < $1
            AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.upload = blob_chunks.upload)",
    )
    .bind(p.created_before)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(done.rows_affected())
}
