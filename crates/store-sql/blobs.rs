//! `blob_*`: byte strings stored apart from the payloads that refer to them, as chunks
//! written one transaction each (or as an object outside the database, recorded in
//! `blob_objects` while it is nobody's), made a blob by one last row, and kept while a call
//! refers to them.

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
    let mut tx = conn.begin().await.map_err(db_err)?;
    // Uploads of the same new bytes may finish at once: one inserts, the others replace.
    let new = insert(&mut tx, &p).await?;
    let kept = new || replace(&mut tx, &p).await?;
    if let (true, Some(location)) = (kept, &p.location) {
        // A blob's now: no longer an upload under way.
        crate::db::query("DELETE FROM blob_objects WHERE location = $1")
            .bind(location)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
    }
    if let Some(call) = &p.call {
        claim_one(&mut tx, call, &p.digest, p.now).await?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(new)
}

/// Writes the blob's row for this upload, unless the digest has one: whether it did.
async fn insert(tx: &mut Conn, p: &BlobFinish) -> Result<bool, StoreError> {
    let inserted = crate::db::query(
        "INSERT INTO blobs (digest, upload, size, created_at, location) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (digest) DO NOTHING",
    )
    .bind(&p.digest)
    .bind(&p.upload)
    .bind(p.size as i64)
    .bind(p.now)
    .bind(p.location.as_deref())
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(inserted.rows_affected() > 0)
}

/// A blob stored already (the same bytes uploaded before): this upload's copy, just checked
/// against the digest, takes the stored one's place, so an upload repairs a copy damaged or
/// lost since; and the blob's grace starts again, as for a new upload (the spawn that will
/// refer to it may be on its way). The stored copy goes (its chunks now, its object to the
/// pruner, after the grace: a download may be reading it). Replaced only if no other upload
/// replaced it meanwhile (checked by the row's upload); after a few such races this copy
/// goes instead (its chunks now; its object, still recorded as an upload's, to the pruner).
/// Whether this copy is the blob's.
async fn replace(tx: &mut Conn, p: &BlobFinish) -> Result<bool, StoreError> {
    for _ in 0..5 {
        let stored = crate::db::query("SELECT upload, location FROM blobs WHERE digest = $1")
            .bind(&p.digest)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        let Some(row) = stored else {
            // Pruned meanwhile: this copy is the blob.
            if insert(tx, p).await? {
                return Ok(true);
            }
            continue;
        };
        let old_upload: String = row.try_get("upload").map_err(db_err)?;
        let old_location: Option<String> = row.try_get("location").map_err(db_err)?;
        if old_upload == p.upload {
            return Ok(true);
        }
        let done = crate::db::query(
            "UPDATE blobs SET upload = $2, location = $3,
                    created_at = CASE WHEN created_at < $4 THEN $4 ELSE created_at END
              WHERE digest = $1 AND upload = $5",
        )
        .bind(&p.digest)
        .bind(&p.upload)
        .bind(p.location.as_deref())
        .bind(p.now)
        .bind(&old_upload)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if done.rows_affected() > 0 {
            match old_location {
                Some(old) => object_leaves(tx, &old, p.now).await?,
                None => discard(tx, old_upload).await?,
            }
            return Ok(true);
        }
    }
    if p.location.is_none() {
        discard(tx, p.upload.clone()).await?;
    }
    Ok(false)
}

/// Records that the object at `location` is nobody's blob (from `since`): the pruner deletes
/// it once it is past the grace.
async fn object_leaves(conn: &mut Conn, location: &str, since: i64) -> Result<(), StoreError> {
    crate::db::query(
        "INSERT INTO blob_objects (location, created_at) VALUES ($1, $2)
         ON CONFLICT (location) DO NOTHING",
    )
    .bind(location)
    .bind(since)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub async fn object_begin(conn: &mut Conn, location: String, now: i64) -> Result<(), StoreError> {
    object_leaves(conn, &location, now).await
}

pub async fn objects_due(
    pool: &DbPool,
    before: i64,
    limit: u32,
) -> Result<Vec<String>, StoreError> {
    crate::db::query_scalar(
        "SELECT location FROM blob_objects WHERE created_at < $1 ORDER BY created_at LIMIT $2",
    )
    .bind(before)
    .bind(limit as i64)
    .fetch_all(pool)
    .await
    .map_err(db_err)
}

pub async fn object_gone(conn: &mut Conn, location: String) -> Result<(), StoreError> {
    crate::db::query("DELETE FROM blob_objects WHERE location = $1")
        .bind(&location)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(())
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
    let mut tx = conn.begin().await.map_err(db_err)?;
    // References of calls pruned (or never inserted: a spawn that failed after its claim).
    crate::db::query(
        "DELETE FROM blob_refs WHERE created_at < $1
            AND NOT EXISTS (SELECT 1 FROM calls c WHERE c.id = blob_refs.call_id)",
    )
    .bind(p.created_before)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    // The blobs nobody refers to, decided once: their chunks go with them, and their objects
    // to the pruner's list (all in this transaction, so a crash loses none of them).
    let gone = crate::db::query(
        "DELETE FROM blobs WHERE created_at < $1
            AND NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.digest = blobs.digest)
         RETURNING upload, location",
    )
    .bind(p.created_before)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    for row in &gone {
        match row
            .try_get::<Option<String>, _>("location")
            .map_err(db_err)?
        {
            Some(location) => object_leaves(&mut tx, &location, 0).await?,
            None => discard(&mut tx, row.try_get("upload").map_err(db_err)?).await?,
        }
    }
    // Uploads that never finished (the client or the server went away mid-way).
    crate::db::query(
        "DELETE FROM blob_chunks WHERE created_at < $1
            AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.upload = blob_chunks.upload)",
    )
    .bind(p.created_before)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(gone.len() as u64)
}
