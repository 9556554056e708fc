//! The HTTP API under `/v1`, plus `/healthz`, `/metrics` and the dashboard's pages.
//!
//! `router(state)` is apart from serving, so tests can call it without a socket.

pub mod apps;
pub mod calls;
pub mod error;
pub mod events;
pub mod extract;
pub mod maps;
pub mod schedules;
pub mod session;
pub mod stats;
pub mod views;
pub mod workers;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use self::error::ApiError;
use crate::config::Scope;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/apps", post(apps::deploy).get(apps::list))
        .route("/functions", get(apps::functions))
        .route("/functions/{name}", get(apps::function))
        .route("/functions/{name}/versions", get(apps::versions))
        .route("/functions/{name}/calls", post(calls::spawn))
        .route("/functions/{name}/map", post(maps::map))
        .route("/calls/{id}/inputs", post(maps::append))
        .route("/calls/{id}/results", get(maps::results))
        .route("/calls", get(calls::list))
        .route("/calls/{id}", get(calls::get))
        .route("/calls/{id}/cancel", post(calls::cancel))
        .route("/calls/{id}/rerun", post(calls::rerun))
        .route("/calls/{id}/inputs/{index}", get(calls::input))
        .route("/calls/{id}/attempts", get(calls::attempts))
        .route("/calls/{id}/logs", get(calls::logs))
        .route("/calls/{id}/logs/stream", get(calls::log_stream))
        .route("/schedules", get(schedules::list))
        .route("/schedules/{name}", get(schedules::get))
        .route("/schedules/{name}/trigger", post(schedules::trigger))
        .route("/schedules/{name}/pause", post(schedules::pause))
        .route("/schedules/{name}/resume", post(schedules::resume))
        .route("/notifications", get(notifications))
        .route("/stats", get(stats::stats))
        .route("/events", get(events::events))
        .route("/session", post(session::open).delete(session::close))
        .route("/openapi.json", get(openapi))
        .route("/workers", post(workers::register).get(workers::list))
        .route("/workers/{id}", axum::routing::delete(workers::deregister))
        .route("/workers/{id}/lease", post(workers::lease))
        .route("/workers/{id}/heartbeat", post(workers::heartbeat))
        .route("/workers/{id}/complete", post(workers::complete))
        .route("/workers/{id}/logs", post(workers::logs))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    // `/metrics` needs a token too when there are any (a `read` token is enough).
    let metrics = Router::new()
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({ "ok": true })) }),
        )
        .merge(metrics)
        .merge(crate::dashboard::router())
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

/// The scope a request needs.
fn required_scope(method: &Method, path: &str) -> Scope {
    let path = path.strip_prefix("/v1").unwrap_or(path);
    if path.starts_with("/workers") && !(method == Method::GET && path == "/workers") {
        return Scope::Work;
    }
    if method == Method::GET {
        return Scope::Read;
    }
    if path == "/apps" || path.ends_with("/pause") || path.ends_with("/resume") {
        return Scope::Admin;
    }
    Scope::Submit
}

/// With tokens configured, every request but `/healthz` and the dashboard's pages must carry
/// `Authorization: Bearer <token>` or the dashboard's session cookie (401 without a valid one),
/// of a token whose scopes allow it (403 otherwise).
async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // Inside the `/v1` nest the path has lost its prefix.
    let signing_in = matches!(req.uri().path(), "/session" | "/v1/session");
    if !state.config.requires_token() || signing_in {
        return next.run(req).await;
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let (token, from_cookie) = match bearer {
        Some(token) => (token, false),
        None => match session::token_from_cookie(req.headers()) {
            Some(token) => (token, true),
            None => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "this server requires a token: send Authorization: Bearer <token>",
                )
                .into_response()
            }
        },
    };
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
    if from_cookie && changes && !req.headers().contains_key(session::DASHBOARD_HEADER) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "a request signed in by cookie that changes something must send the {} header",
                session::DASHBOARD_HEADER
            ),
        )
        .into_response();
    }
    let Some(scopes) = state.config.scopes_of(&token) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the token is not valid",
        )
        .into_response();
    };
    let needed = required_scope(req.method(), req.uri().path());
    if scopes.contains(&Scope::Admin) || scopes.contains(&needed) {
        return next.run(req).await;
    }
    let have: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "this token has the scopes {}; {} {} needs {}",
            have.join(", "),
            req.method(),
            req.uri().path(),
            needed.as_str()
        ),
    )
    .into_response()
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
            ("get", "/v1/functions/{name}/versions"),
            ("post", "/v1/functions/{name}/calls"),
            ("post", "/v1/functions/{name}/map"),
            ("post", "/v1/calls/{id}/inputs"),
            ("get", "/v1/calls/{id}/results"),
            ("get", "/v1/calls"),
            ("get", "/v1/calls/{id}"),
            ("post", "/v1/calls/{id}/cancel"),
            ("post", "/v1/calls/{id}/rerun"),
            ("get", "/v1/calls/{id}/inputs/{index}"),
            ("get", "/v1/calls/{id}/attempts"),
            ("get", "/v1/calls/{id}/logs"),
            ("get", "/v1/calls/{id}/logs/stream"),
            ("get", "/v1/schedules"),
            ("get", "/v1/schedules/{name}"),
            ("post", "/v1/schedules/{name}/trigger"),
            ("post", "/v1/schedules/{name}/pause"),
            ("post", "/v1/schedules/{name}/resume"),
            ("get", "/v1/notifications"),
            ("get", "/v1/stats"),
            ("get", "/v1/events"),
            ("post", "/v1/session"),
            ("delete", "/v1/session"),
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
