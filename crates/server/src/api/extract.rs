//! Extractors whose rejections use the API's error shape.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::state::AppState;

/// A JSON body, read up to the server's payload limit (plus room for the envelope), with
/// malformed JSON reported by line and column.
pub struct ApiJson<T>(pub T);

/// Bytes allowed around the payload in a request body: ids, keys, field names.
pub const ENVELOPE_BYTES: usize = 64 * 1024;

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.config.max_payload_bytes + ENVELOPE_BYTES;
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!(
                        "the request body is over the inline limit of {} bytes",
                        state.config.max_payload_bytes
                    ),
                )
            })?;
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("the request body is not valid: {e}"),
            )
        })
    }
}

/// Query parameters, with a rejection in the API's error shape.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// A `wait` query parameter in seconds: at least 0, capped at `max` (a larger number, however
/// large, waits `max`).
pub fn wait_seconds(
    wait: Option<f64>,
    max: std::time::Duration,
) -> Result<std::time::Duration, ApiError> {
    match wait {
        None => Ok(std::time::Duration::ZERO),
        Some(s) if s.is_finite() && s >= 0.0 => {
            Ok(std::time::Duration::from_secs_f64(s.min(max.as_secs_f64())))
        }
        Some(s) => Err(ApiError::bad_request(
            "invalid_query",
            format!("wait must be a number of seconds >= 0, not {s}"),
        )),
    }
}
