//! `/v1/blobs`: byte strings stored apart from the inputs and outputs that refer to them
//! (`{"$blob": "sha256:…", "size": N}`, see [`hopper_core::blob`]). Uploads and downloads
//! stream: the server holds one chunk (1 MiB) of a blob at a time, whatever its size, or, with
//! `--blobs s3://…`, the parts of its object on their way to the bucket
//! ([`crate::objects`]).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use hopper_core::blob::{self, BlobRef, Kind};
use hopper_core::CallId;
use hopper_store::{BlobChunk, BlobFinish};
use serde::Deserialize;
use sha2::Digest;

use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery};
use crate::state::AppState;

/// `POST /v1/blobs`: the body's bytes, as `application/octet-stream`, stored as a blob. 201
/// with the reference to put in a payload (`{"$blob": "sha256:…", "size": N}`), or 200 when
/// the same bytes were stored already. Over `--max-blob`: 413, and nothing is kept.
pub async fn upload(
    State(state): State<AppState>,
    req: Request,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    receive(&state, req, None).await
}

#[derive(Deserialize)]
pub struct WorkerUploadQuery {
    /// The call whose output refers to the blob: it is kept as long as the call is.
    call: String,
}

/// `POST /v1/workers/{id}/blobs?call=ID`: a worker's upload of (part of) an output of `call`.
pub async fn worker_upload(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<WorkerUploadQuery>,
    headers: HeaderMap,
    req: Request,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let id = super::workers::parse_worker(&id)?;
    super::workers::known_worker(&state, &id, &headers).await?;
    let call = super::calls::parse_id(&q.call)?;
    receive(&state, req, Some(call)).await
}

/// `GET /v1/blobs/{digest}`: a blob's bytes (`application/octet-stream`, with its length).
pub async fn download(
    State(state): State<AppState>,
    ApiPath(digest): ApiPath<String>,
) -> Result<Response, ApiError> {
    send(&state, digest).await
}

/// `GET /v1/workers/{id}/blobs/{digest}`: a blob an input the worker leased refers to.
pub async fn worker_download(
    State(state): State<AppState>,
    ApiPath((id, digest)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = super::workers::parse_worker(&id)?;
    super::workers::known_worker(&state, &id, &headers).await?;
    send(&state, digest).await
}

async fn receive(
    state: &AppState,
    req: Request,
    call: Option<CallId>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let media = super::extract::media_type(req.headers());
    // Not a type a web page may send without asking first (a form, text/plain).
    if media != "application/octet-stream" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the blob's bytes as they are, with Content-Type: application/octet-stream",
        ));
    }
    let limit = state.config.max_blob_bytes;
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = announced.filter(|n| *n > limit) {
        return Err(too_large(n.to_string(), limit));
    }
    let upload = uuid::Uuid::new_v4().simple().to_string();
    if let Some(objects) = &state.config.blobs {
        // Recorded before its first byte: whatever happens to this upload, the pruner finds
        // its object.
        state
            .store
            .blob_object_begin(&objects.location(&upload), state.now())
            .await?;
    }
    let mut sink = match &state.config.blobs {
        Some(objects) => Sink::Object(objects.upload(&upload)),
        None => Sink::Chunks {
            upload: upload.clone(),
            pending: Vec::with_capacity(blob::CHUNK),
            seq: 0,
        },
    };
    let taken = take(state, req, &mut sink, limit).await;
    let taken = match taken {
        Ok(taken) => sink.finish(state).await.map(|location| (taken, location)),
        Err(refused) => Err(refused),
    };
    let ((digest, size), location) = match taken {
        Ok(done) => done,
        Err(refused) => {
            // Nothing of a refused or broken-off upload is kept.
            sink_dropped(state, &upload).await;
            return Err(refused);
        }
    };
    let finished = state
        .store
        .blob_finish(BlobFinish {
            upload,
            digest: digest.clone(),
            size,
            location: location.clone(),
            call,
            now: state.now(),
        })
        .await;
    let new = match finished {
        Ok(new) => new,
        Err(e) => {
            if let Some(location) = &location {
                drop_object(state, location).await;
            }
            return Err(e.into());
        }
    };
    let reference = BlobRef {
        digest,
        size,
        kind: Kind::Bytes,
        at: String::new(),
    };
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(reference.to_value())))
}

fn too_large(size: String, limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!(
            "the blob is {size} bytes, over the limit of {limit} bytes (hopper serve --max-blob)"
        ),
    )
}

/// Where an upload's bytes go: chunk rows of the database, or an object in a bucket.
enum Sink {
    Chunks {
        upload: String,
        pending: Vec<u8>,
        seq: i64,
    },
    Object(crate::objects::Upload),
    /// Finished or abandoned.
    Done,
}

impl Sink {
    async fn put(&mut self, state: &AppState, piece: axum::body::Bytes) -> Result<(), ApiError> {
        match self {
            Sink::Chunks {
                upload,
                pending,
                seq,
            } => {
                let mut rest = &piece[..];
                while !rest.is_empty() {
                    let room = (blob::CHUNK - pending.len()).min(rest.len());
                    pending.extend_from_slice(&rest[..room]);
                    rest = &rest[room..];
                    if pending.len() == blob::CHUNK {
                        let data = std::mem::replace(pending, Vec::with_capacity(blob::CHUNK));
                        write_chunk(state, upload, *seq, data).await?;
                        *seq += 1;
                    }
                }
                Ok(())
            }
            Sink::Object(object) => object.put(piece).await.map_err(bucket_unavailable),
            Sink::Done => Ok(()),
        }
    }

    /// Writes what is left: the object's URL, for an object.
    async fn finish(&mut self, state: &AppState) -> Result<Option<String>, ApiError> {
        match std::mem::replace(self, Sink::Done) {
            Sink::Chunks {
                upload,
                pending,
                seq,
            } => {
                if !pending.is_empty() {
                    write_chunk(state, &upload, seq, pending).await?;
                }
                Ok(None)
            }
            Sink::Object(object) => {
                let location = object.location().to_string();
                object.finish().await.map_err(bucket_unavailable)?;
                Ok(Some(location))
            }
            Sink::Done => Ok(None),
        }
    }

    /// Drops what was sent of an upload that will not finish (its chunks go with
    /// [`sink_dropped`]).
    async fn abandon(&mut self) {
        if let Sink::Object(object) = std::mem::replace(self, Sink::Done) {
            object.abort().await;
        }
    }
}

/// Deletes what a refused or broken-off upload wrote: its chunks, or its object.
async fn sink_dropped(state: &AppState, upload: &str) {
    match &state.config.blobs {
        Some(objects) => drop_object(state, &objects.location(upload)).await,
        None => {
            if let Err(e) = state.store.blob_discard(upload).await {
                tracing::warn!(error = %e, "cannot drop the chunks of an upload that did not finish; the pruner will");
            }
        }
    }
}

/// Deletes the object of an upload that is not kept, and forgets it; left to the pruner if
/// either fails.
async fn drop_object(state: &AppState, location: &str) {
    let Some(objects) = &state.config.blobs else {
        return;
    };
    let dropped = match objects.delete(location).await {
        Ok(()) => state
            .store
            .blob_object_gone(location)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    if let Err(e) = dropped {
        tracing::warn!(error = %e, "cannot delete the object of a blob upload that is not kept; the pruner will");
    }
}

fn bucket_unavailable(why: String) -> ApiError {
    tracing::warn!(error = %why, "the blob store did not take an upload");
    // A full disk under `--blobs files`: said as the database's is, not as an outage.
    if why.contains("os error 28") {
        return ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "storage_full",
            "the server's disk is full: the blob was not stored; free space and try again",
        );
    }
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "blob_store_unavailable",
        format!("the blob was not stored: {why}; try again"),
    )
}

/// Reads an upload's body into `sink`, hashing it: its digest and size. On an error, what
/// the sink sent is dropped.
async fn take(
    state: &AppState,
    req: Request,
    sink: &mut Sink,
    limit: u64,
) -> Result<(String, u64), ApiError> {
    let taken = take_into(state, req, sink, limit).await;
    if taken.is_err() {
        sink.abandon().await;
    }
    taken
}

async fn take_into(
    state: &AppState,
    req: Request,
    sink: &mut Sink,
    limit: u64,
) -> Result<(String, u64), ApiError> {
    let mut body = req.into_body().into_data_stream();
    let mut hasher = sha2::Sha256::new();
    let mut size = 0u64;
    // Each piece must come within the request timeout; the whole may take as long as it needs.
    let idle = state.config.request_timeout;
    loop {
        let piece = tokio::time::timeout(idle, body.next()).await.map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the blob's bytes stopped coming for {} after {size} bytes",
                    hopper_core::duration::format(idle)
                ),
            )
        })?;
        let Some(piece) = piece else { break };
        let piece = piece.map_err(|e| {
            ApiError::bad_request(
                "invalid_body",
                format!("the blob's upload broke off after {size} bytes: {e}"),
            )
        })?;
        size += piece.len() as u64;
        if size > limit {
            return Err(too_large(format!("{size} or more"), limit));
        }
        hasher.update(&piece);
        sink.put(state, piece).await?;
    }
    Ok((format!("sha256:{:x}", hasher.finalize()), size))
}

async fn write_chunk(
    state: &AppState,
    upload: &str,
    seq: i64,
    data: Vec<u8>,
) -> Result<(), ApiError> {
    state
        .store
        .blob_chunk_put(BlobChunk {
            upload: upload.to_string(),
            seq,
            data: std::sync::Arc::new(data),
            now: state.now(),
        })
        .await?;
    Ok(())
}

async fn send(state: &AppState, digest: String) -> Result<Response, ApiError> {
    check_digest(&digest)?;
    let info = state
        .store
        .blob_info(&digest)
        .await?
        .ok_or_else(|| unknown(&digest))?;
    if let Some(location) = &info.location {
        return send_object(state, &digest, location, info.size).await;
    }
    // Every chunk but the last is full: a count that does not fit the size is a blob
    // damaged in the database, said before any byte is sent.
    let expected = info.size.div_ceil(blob::CHUNK as u64) as i64;
    if info.chunks != expected {
        tracing::error!(blob = %digest, chunks = info.chunks, expected, "a stored blob lacks chunks");
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "blob_corrupt",
            format!(
                "blob {digest} is damaged: {} of its {expected} chunks are stored",
                info.chunks
            ),
        ));
    }
    let store = state.store.clone();
    let chunks = info.chunks;
    // One chunk read at a time, as the client takes them; a chunk gone missing ends the body
    // short of its length, which the client sees as a broken download.
    let stream = futures_util::stream::unfold(0i64, move |seq| {
        let store = store.clone();
        let digest = digest.clone();
        async move {
            if seq >= chunks {
                return None;
            }
            let piece = match store.blob_chunk(&digest, seq).await {
                Ok(Some(data)) => Ok(axum::body::Bytes::from(data)),
                Ok(None) => Err(std::io::Error::other(format!(
                    "chunk {seq} of blob {digest} is missing"
                ))),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            let next = if piece.is_ok() { seq + 1 } else { chunks };
            Some((piece, next))
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, info.size.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// A blob kept in a bucket: its object, streamed as the bucket sends it.
async fn send_object(
    state: &AppState,
    digest: &str,
    location: &str,
    size: u64,
) -> Result<Response, ApiError> {
    let in_data = location.starts_with(&format!("{}/", crate::objects::FOLDER_URL));
    let read = match (&state.config.data_dir, &state.config.blobs) {
        (Some(data), _) if in_data => {
            crate::objects::read_in_folder(&data.join("blobs"), location, size).await
        }
        (_, Some(objects)) => objects.read(location, size).await,
        (_, None) => {
            return Err(elsewhere(format!(
                "blob {digest} is kept at {location}, and this server keeps blobs in the database (--blobs database): start it with the --blobs it was stored under, or upload its bytes again"
            )))
        }
    };
    let body = match read {
        Ok(body) => body,
        Err(crate::objects::ReadError::Damaged(why)) => {
            tracing::error!(blob = %digest, error = %why, "a stored blob's object is damaged");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "blob_corrupt",
                format!("blob {digest} is damaged: {why}"),
            ));
        }
        Err(crate::objects::ReadError::Elsewhere(why)) => {
            return Err(elsewhere(format!(
                "blob {digest} cannot be read here: {why}"
            )));
        }
        Err(crate::objects::ReadError::Unavailable(why)) => {
            tracing::warn!(blob = %digest, error = %why, "cannot read a blob's object");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "blob_store_unavailable",
                format!("blob {digest} cannot be read now: {why}"),
            ));
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// A blob kept where this server does not look: said at once, not as an outage to wait out.
fn elsewhere(why: String) -> ApiError {
    tracing::error!(error = %why, "a blob is kept outside this server's --blobs");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "blob_unreachable", why)
}

fn check_digest(digest: &str) -> Result<(), ApiError> {
    if blob::is_digest(digest) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_blob",
            format!("{digest:?} is not a blob digest (sha256: and 64 lowercase hex digits)"),
        ))
    }
}

fn unknown(digest: &str) -> ApiError {
    ApiError::not_found(
        "unknown_blob",
        format!("no blob {digest} is stored; upload it with POST /v1/blobs"),
    )
}

/// The blobs a payload (`text`, the JSON as stored) refers to, checked: each must be stored
/// with the size the reference gives. `what` names the payload in errors (`the input`,
/// `calls[3].input`). Returns their digests, for the call to claim.
pub async fn check_refs(state: &AppState, text: &str, what: &str) -> Result<Vec<String>, ApiError> {
    if !blob::may_refer(text) {
        return Ok(Vec::new());
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("{what}: {e}")))?;
    let refs =
        blob::refs(&value, what).map_err(|why| ApiError::bad_request("invalid_blob", why))?;
    let mut sizes: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for r in refs {
        let stored = match sizes.get(&r.digest) {
            Some(size) => *size,
            None => {
                let info = state.store.blob_info(&r.digest).await?.ok_or_else(|| {
                    ApiError::bad_request(
                        "unknown_blob",
                        format!(
                            "{} refers to blob {} which is not stored: upload it first with POST /v1/blobs",
                            r.at, r.digest
                        ),
                    )
                })?;
                sizes.insert(r.digest.clone(), info.size);
                info.size
            }
        };
        if stored != r.size {
            return Err(ApiError::bad_request(
                "invalid_blob",
                format!(
                    "{} gives blob {} a size of {} bytes; it holds {stored}",
                    r.at, r.digest, r.size
                ),
            ));
        }
    }
    let digests: Vec<String> = sizes.into_keys().collect();
    Ok(digests)
}

/// The blobs `payloads` refer to, checked ([`check_refs`]; `what(i)` names payload `i`),
/// each once.
pub async fn checked_refs(
    state: &AppState,
    payloads: &[String],
    what: impl Fn(usize) -> String,
) -> Result<Vec<String>, ApiError> {
    let mut digests = Vec::new();
    for (i, text) in payloads.iter().enumerate() {
        for digest in check_refs(state, text, &what(i)).await? {
            if !digests.contains(&digest) {
                digests.push(digest);
            }
        }
    }
    Ok(digests)
}

/// Records that `call` refers to these blobs, before the call or its inputs are written: a
/// blob is never pruned from under a call that was acknowledged.
pub async fn claim(state: &AppState, call: &CallId, digests: Vec<String>) -> Result<(), ApiError> {
    if !digests.is_empty() {
        state.store.blob_claim(call, digests, state.now()).await?;
    }
    Ok(())
}

/// [`checked_refs`], then [`claim`] for `call`.
pub async fn claim_refs(
    state: &AppState,
    call: &CallId,
    payloads: &[String],
    what: impl Fn(usize) -> String,
) -> Result<(), ApiError> {
    let digests = checked_refs(state, payloads, what).await?;
    claim(state, call, digests).await
}
