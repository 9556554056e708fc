//! The API's one error type: a status, a stable `code` and a message for people. Internal
//! details are logged, never sent to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hopper_core::api::{ErrorBody, ErrorDetail};
use hopper_store::{Missing, StoreError};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 503 `server_stopping`: the server is shutting down; the request may be sent again
    /// (to it once restarted, or to another server).
    pub fn stopping() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_stopping",
            "the server is stopping; try again",
        )
    }

    pub fn payload_too_large(what: &str, size: usize, limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("{what} is {size} bytes, over the inline limit of {limit} bytes (hopper serve --max-payload)"),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::IdempotencyConflict { .. } => {
                Self::new(StatusCode::CONFLICT, "idempotency_conflict", e.to_string())
            }
            StoreError::NotFound { what, message } => {
                let code = match what {
                    Missing::Call => "unknown_call",
                    Missing::Function => "unknown_function",
                    Missing::Schedule => "unknown_schedule",
                    Missing::Input => "unknown_input",
                    Missing::Worker => "unknown_worker",
                };
                Self::new(StatusCode::NOT_FOUND, code, message)
            }
            StoreError::Full(_) => {
                tracing::error!(error = %e, "the database's disk is full");
                Self::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "storage_full",
                    "the server's disk is full: nothing was written; free space and try again",
                )
            }
            StoreError::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::Unavailable(_) | StoreError::Contention(_) => {
                tracing::warn!(error = %e, "store unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the database is unavailable; try again",
                )
            }
            StoreError::SchemaTooNew { .. } => {
                tracing::error!(error = %e, "the database's schema is newer than this server");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "schema_too_new",
                    "this server is older than the database's schema (another server upgraded it): it takes no work; send requests to an upgraded server",
                )
            }
            StoreError::Corrupt(_) | StoreError::Database(_) => {
                tracing::error!(error = %e, "store error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the server's log",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}
