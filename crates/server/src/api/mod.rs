//! The HTTP API under `/v1`, plus `/healthz`.
//!
//! `router(state)` is apart from serving, so tests can call it without a socket.

pub mod apps;
pub mod calls;
pub mod error;
pub mod extract;
pub mod maps;
pub mod schedules;
pub mod views;
pub mod workers;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use self::error::ApiError;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/apps", post(apps::deploy).get(apps::list))
        .route("/functions", get(apps::functions))
        .route("/functions/{name}", get(apps::function))
        .route("/functions/{name}/calls", post(calls::spawn))
        .route("/functions/{name}/map", post(maps::map))
        .route("/calls/{id}/inputs", post(maps::append))
        .route("/calls/{id}/results", get(maps::results))
        .route("/calls", get(calls::list))
        .route("/calls/{id}", get(calls::get))
        .route("/calls/{id}/cancel", post(calls::cancel))
        .route("/calls/{id}/attempts", get(calls::attempts))
        .route("/calls/{id}/logs", get(calls::logs))
        .route("/calls/{id}/logs/stream", get(calls::log_stream))
        .route("/schedules", get(schedules::list))
        .route("/schedules/{name}", get(schedules::get))
        .route("/schedules/{name}/trigger", post(schedules::trigger))
        .route("/schedules/{name}/pause", post(schedules::pause))
        .route("/schedules/{name}/resume", post(schedules::resume))
        .route("/notifications", get(notifications))
        .route("/openapi.json", get(openapi))
        .route("/workers", post(workers::register).get(workers::list))
        .route("/workers/{id}", axum::routing::delete(workers::deregister))
        .route("/workers/{id}/lease", post(workers::lease))
        .route("/workers/{id}/heartbeat", post(workers::heartbeat))
        .route("/workers/{id}/complete", post(workers::complete))
        .route("/workers/{id}/logs", post(workers::logs))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    // `/metrics` needs the token too when there is one (give it to the scraper).
    let metrics = Router::new()
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({ "ok": true })) }),
        )
        .merge(metrics)
        .nest("/v1", v1)
        .fallback(not_found)
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let text = crate::metrics::render(&state).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// Notification channels and how their deliveries go (targets redacted).
async fn notifications(
    State(state): State<AppState>,
) -> Result<Json<Vec<hopper_core::api::ChannelView>>, ApiError> {
    let channels = state.channels.lock().map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    })?;
    Ok(Json(channels.values().cloned().collect()))
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint; the API is under /v1")
}

/// With a token configured, every `/v1` request must carry `Authorization: Bearer <token>`.
async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.config.token.as_deref() else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => {
            next.run(req).await
        }
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the token is not valid",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this server requires a token: send Authorization: Bearer <token>",
        )
        .into_response(),
    }
}

/// Compares without stopping at the first difference, so timing does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::OPENAPI;

    #[test]
    fn the_openapi_document_describes_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.0.3");
        let paths = doc["paths"].as_object().unwrap();
        // The routes of `router()`, by method and path.
        let routes = [
            ("post", "/v1/apps"),
            ("get", "/v1/apps"),
            ("get", "/v1/functions"),
            ("get", "/v1/functions/{name}"),
            ("post", "/v1/functions/{name}/calls"),
            ("post", "/v1/functions/{name}/map"),
            ("post", "/v1/calls/{id}/inputs"),
            ("get", "/v1/calls/{id}/results"),
            ("get", "/v1/calls"),
            ("get", "/v1/calls/{id}"),
            ("post", "/v1/calls/{id}/cancel"),
            ("get", "/v1/calls/{id}/attempts"),
            ("get", "/v1/calls/{id}/logs"),
            ("get", "/v1/calls/{id}/logs/stream"),
            ("get", "/v1/schedules"),
            ("get", "/v1/schedules/{name}"),
            ("post", "/v1/schedules/{name}/trigger"),
            ("post", "/v1/schedules/{name}/pause"),
            ("post", "/v1/schedules/{name}/resume"),
            ("get", "/v1/notifications"),
            ("get", "/v1/openapi.json"),
            ("post", "/v1/workers"),
            ("get", "/v1/workers"),
            ("delete", "/v1/workers/{id}"),
            ("post", "/v1/workers/{id}/lease"),
            ("post", "/v1/workers/{id}/heartbeat"),
            ("post", "/v1/workers/{id}/complete"),
            ("post", "/v1/workers/{id}/logs"),
            ("get", "/healthz"),
            ("get", "/metrics"),
        ];
        for (method, path) in routes {
            assert!(
                paths.get(path).and_then(|p| p.get(method)).is_some(),
                "{method} {path} is not in openapi.json"
            );
        }
        let operations: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(
            operations,
            routes.len(),
            "openapi.json describes a route the router does not have"
        );
        let text = OPENAPI;
        for reference in text.split("#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap();
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "missing schema {name}"
            );
        }
    }
}
