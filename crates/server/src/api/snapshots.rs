//! `/v1/snapshots`: code snapshots, stored under their SHA-256 before the deploy that names
//! them. A worker fetches one through `GET /v1/workers/{id}/snapshots/{hash}`.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hopper_core::api::SnapshotView;
use hopper_store::{SnapshotPut, SnapshotRow};

use super::error::ApiError;
use super::extract::ApiPath;
use super::views;
use crate::state::AppState;

/// `PUT /v1/snapshots/{hash}`: the gzip-compressed tar whose SHA-256 is `hash`, as
/// `application/gzip` (or `application/octet-stream`). 201 when new, 200 when it was stored
/// already; 400 when the bytes do not hash to `hash` or are not a snapshot.
pub async fn put(
    State(state): State<AppState>,
    ApiPath(hash): ApiPath<String>,
    req: Request,
) -> Result<(StatusCode, Json<SnapshotView>), ApiError> {
    check_hash(&hash)?;
    let content_type = super::extract::media_type(req.headers());
    if !matches!(
        content_type.as_str(),
        "application/gzip" | "application/octet-stream"
    ) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the snapshot as Content-Type: application/gzip",
        ));
    }
    let limit = state.config.max_bundle_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("a snapshot may be at most {limit} bytes (hopper serve --max-bundle)"),
        )
    };
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let timeout = state.config.request_timeout;
    let read = tokio::time::timeout(
        timeout,
        axum::body::to_bytes(req.into_body(), limit as usize),
    );
    let bytes = read
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the snapshot did not arrive within {}",
                    hopper_core::duration::format(timeout)
                ),
            )
        })?
        .map_err(|_| too_large())?;
    let got = hopper_worker::snapshot::hash(&bytes);
    if got != hash {
        return Err(ApiError::bad_request(
            "invalid_snapshot",
            format!("the body hashes to {got}, not {hash}"),
        ));
    }
    if let Some(row) = state.store.snapshot_info(&hash).await? {
        return Ok((StatusCode::OK, Json(view(&row))));
    }
    let row = store(&state, &hash, bytes.to_vec()).await?;
    tracing::info!(snapshot = %hash, files = row.files, bytes = row.size, "snapshot stored");
    Ok((StatusCode::CREATED, Json(view(&row))))
}

/// Checks a snapshot that hashes to `hash` (see [`hopper_worker::snapshot::inspect`]) and
/// stores it; the stored row.
pub async fn store(state: &AppState, hash: &str, bytes: Vec<u8>) -> Result<SnapshotRow, ApiError> {
    let limit = state.config.max_bundle_bytes;
    let (contents, bytes) = tokio::task::spawn_blocking(move || {
        hopper_worker::snapshot::inspect(&bytes, limit).map(|c| (c, bytes))
    })
    .await
    .map_err(|e| ApiError::bad_request("invalid_snapshot", e.to_string()))?
    .map_err(|e| {
        ApiError::bad_request("invalid_snapshot", format!("the snapshot is refused: {e}"))
    })?;
    state
        .store
        .snapshot_put(SnapshotPut {
            hash: hash.to_string(),
            bytes,
            files: contents.files,
            unpacked_bytes: contents.bytes,
            now: state.now(),
        })
        .await?;
    state
        .store
        .snapshot_info(hash)
        .await?
        .ok_or_else(|| unknown(hash))
}

/// `GET /v1/snapshots/{hash}`: whether a snapshot is stored, and what it holds (not its bytes).
pub async fn get(
    State(state): State<AppState>,
    ApiPath(hash): ApiPath<String>,
) -> Result<Json<SnapshotView>, ApiError> {
    check_hash(&hash)?;
    let row = state
        .store
        .snapshot_info(&hash)
        .await?
        .ok_or_else(|| unknown(&hash))?;
    Ok(Json(view(&row)))
}

/// The bytes of a snapshot, for a worker (the route checks that it is one).
pub async fn bytes(state: &AppState, hash: &str) -> Result<Response, ApiError> {
    check_hash(hash)?;
    let bytes = state
        .store
        .snapshot_get(hash)
        .await?
        .ok_or_else(|| unknown(hash))?;
    Ok(([(header::CONTENT_TYPE, "application/gzip")], bytes).into_response())
}

fn check_hash(hash: &str) -> Result<(), ApiError> {
    if hopper_worker::snapshot::is_hash(hash) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_snapshot",
            format!("{hash:?} is not a snapshot hash (sha256: and 64 lowercase hex digits)"),
        ))
    }
}

pub fn unknown(hash: &str) -> ApiError {
    ApiError::not_found(
        "unknown_snapshot",
        format!("no snapshot {hash} is stored; upload it first with PUT /v1/snapshots/{hash}"),
    )
}

pub fn view(row: &SnapshotRow) -> SnapshotView {
    SnapshotView {
        hash: row.hash.clone(),
        size: row.size,
        files: row.files,
        unpacked_bytes: row.unpacked_bytes,
        created_at: views::time(row.created_at),
    }
}
