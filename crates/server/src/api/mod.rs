//! The HTTP API under `/v1`, plus `/healthz`, `/metrics` and the dashboard's pages.
//!
//! `router(state)` is apart from serving, so tests can call it without a socket.

pub mod apps;
pub mod blobs;
pub mod calls;
pub mod error;
pub mod events;
pub mod extract;
pub mod inputs;
pub mod maps;
pub mod query;
pub mod schedules;
pub mod secrets;
pub mod session;
pub mod snapshots;
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
        .route("/functions/{name}/calls/batch", post(calls::spawn_batch))
        .route("/functions/{name}/map", post(maps::map))
        .route("/calls/{id}/inputs", post(maps::append))
        .route("/calls/{id}/results", get(maps::results))
        .route("/calls", get(calls::list))
        .route("/calls/{id}", get(calls::get))
        .route("/calls/{id}/cancel", post(calls::cancel))
        .route("/calls/{id}/rerun", post(calls::rerun))
        .route("/inputs", get(inputs::list))
        .route("/inputs/rerun", post(inputs::rerun))
        .route("/calls/{id}/inputs/{index}", get(calls::input))
        .route("/calls/{id}/attempts", get(calls::attempts))
        .route("/calls/{id}/logs", get(calls::logs))
        .route("/calls/{id}/logs/stream", get(calls::log_stream))
        .route("/schedules", get(schedules::list))
        .route("/schedules/{name}", get(schedules::get))
        .route("/schedules/{name}/trigger", post(schedules::trigger))
        .route("/schedules/{name}/pause", post(schedules::pause))
        .route("/schedules/{name}/resume", post(schedules::resume))
        .route("/secrets", get(secrets::list))
        .route("/reseal", post(secrets::reseal))
        .route(
            "/secrets/{name}",
            get(secrets::get).put(secrets::put).delete(secrets::delete),
        )
        .route("/snapshots/{hash}", get(snapshots::get).put(snapshots::put))
        .route("/blobs", post(blobs::upload))
        .route("/blobs/{digest}", get(blobs::download))
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
        .route("/workers/{id}/starts", post(workers::starts))
        .route("/workers/{id}/snapshots/{hash}", get(workers::snapshot))
        .route("/workers/{id}/blobs", post(blobs::worker_upload))
        .route("/workers/{id}/blobs/{digest}", get(blobs::worker_download))
        .route_layer(middleware::from_fn(query::refuse_unknown))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_if_schema_ahead,
        ));
    // `/metrics` needs a token too when there are any (a `read` token is enough).
    let metrics = Router::new()
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn(query::refuse_unknown))
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    let probes = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/healthz", get(readyz))
        .route_layer(middleware::from_fn(query::refuse_unknown));
    Router::new()
        .merge(probes)
        .merge(metrics)
        .merge(crate::dashboard::router())
        .nest("/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard_browsers,
        ))
        .layer(middleware::from_fn(catch_panics))
        .layer(middleware::from_fn(count_requests))
        .with_state(state)
}

/// Counts and times every answered request by its route (`hopper_http_requests_total`,
/// `hopper_http_request_duration_seconds`); a path no route matched counts as `unmatched`.
async fn count_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().as_str().to_string();
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    crate::metrics::http_request(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// Most bytes of outputs and errors in one page of results: a page ends early, with its
/// cursor, at the result that brings it to this (and has at least one), so reading a call of
/// large outputs costs the server and the client bounded memory.
pub const PAGE_BYTES: usize = 16 * 1024 * 1024;

/// The bytes of these errors' JSON, as the store measures a page of them against
/// [`PAGE_BYTES`] (the same text: `code`, `message`, then `module` and `traceback` if any).
pub fn errors_bytes<'a>(
    errors: impl Iterator<Item = Option<&'a hopper_core::api::InputError>>,
) -> usize {
    errors
        .flatten()
        .map(|e| serde_json::to_string(e).map_or(0, |t| t.len()))
        .sum()
}

/// How long `/readyz` waits for the database to answer.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// `/livez`: 200 `{"ok": true}` while the process serves HTTP. It never asks the database, so
/// an orchestrator restarts a server only when it is stuck, not when its database is away.
async fn livez() -> Response {
    Json(serde_json::json!({ "ok": true })).into_response()
}

/// `/readyz`, and `/healthz` (the same): 200 `{"ok": true}` while this server takes work: its
/// database answered within [`READY_WITHIN`] with a schema this build knows, and it is not
/// shutting down. Otherwise 503 `{"ok": false, "error": {"code", "message"}}` with the code
/// `store_unavailable` (the database did not answer, or answered an error), `schema_too_new` or
/// `server_stopping`, so that a load balancer sends its requests elsewhere.
async fn readyz(State(state): State<AppState>) -> Response {
    let not_ready = |code: &str, message: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "ok": false,
                "error": { "code": code, "message": message },
            })),
        )
            .into_response()
    };
    if let Some(why) = state.schema_ahead() {
        return not_ready("schema_too_new", why);
    }
    if state.shutdown.is_cancelled() {
        return not_ready("server_stopping", "this server is shutting down".into());
    }
    match tokio::time::timeout(READY_WITHIN, state.store.schema_version()).await {
        Ok(Ok(found)) => match found.check() {
            Ok(()) => Json(serde_json::json!({ "ok": true })).into_response(),
            Err(e) => {
                state.schema_moved_ahead(&e);
                not_ready("schema_too_new", e.to_string())
            }
        },
        Ok(Err(e)) => not_ready("store_unavailable", e.to_string()),
        Err(_) => not_ready(
            "store_unavailable",
            format!(
                "the database did not answer within {} s",
                READY_WITHIN.as_secs()
            ),
        ),
    }
}

/// Refuses every `/v1` request while the database's schema is newer than this server.
async fn refuse_if_schema_ahead(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(why) = state.schema_ahead() {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "schema_too_new", why)
            .into_response();
    }
    next.run(req).await
}

/// What keeps web pages the user visits from driving a server on their machine: without a
/// token, a `Host` that is not a loopback name or address (DNS rebinding) is refused, and a
/// change (any method but GET and HEAD) from a page of another origin is refused whatever the
/// token (a browser sends `Origin` with every such request; other clients send none).
async fn guard_browsers(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    if !state.config.requires_token() {
        if let Some(host) = &host {
            if !host_allowed(host, &state.config.allow_hosts) {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden_host",
                    format!(
                        "this server has no token, so it answers only to loopback names (localhost, 127.0.0.1, [::1]), not to Host {host:?}; start it with --allow-host {} to add the name",
                        host_name(host)
                    ),
                )
                .into_response();
            }
        }
    }
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
    if changes {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            let scheme = match state.config.public_url.as_deref() {
                Some(u) if u.starts_with("https://") => "https",
                _ => "http",
            };
            let own = host
                .as_deref()
                .is_some_and(|h| same_origin(origin, scheme, h))
                || state
                    .config
                    .public_url
                    .as_deref()
                    .is_some_and(|u| u.trim_end_matches('/') == origin);
            if !own && !state.config.allow_origins.iter().any(|o| o == origin) {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden_origin",
                    format!(
                        "a page of {origin:?} may not change anything on this server; start it with --allow-origin {origin} to allow that site"
                    ),
                )
                .into_response();
            }
        }
    }
    next.run(req).await
}

/// A handler that panics (a bug) answers 500 in the API's error shape, with the panic in the
/// log, instead of dropping the connection.
async fn catch_panics(req: Request, next: Next) -> Response {
    use futures_util::FutureExt;
    let what = format!("{} {}", req.method(), req.uri().path());
    match std::panic::AssertUnwindSafe(next.run(req))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(panic) => {
            let message = hopper_core::panic_message(&*panic);
            tracing::error!(request = %what, panic = %message, "a request handler panicked");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; see the server's log",
            )
            .into_response()
        }
    }
}

/// The host part of a `Host` header value (`127.0.0.1:7433` → `127.0.0.1`, `[::1]:80` → `::1`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// Whether a tokenless server answers to `host`: a loopback name or address, or one listed.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = host_name(host).to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(&name) || a.eq_ignore_ascii_case(host))
}

/// Whether `origin` (`http://host:port`) is the origin of the server reached as `host` over
/// `served_scheme` (`http`, or `https` behind a TLS proxy named by `--public-url`).
fn same_origin(origin: &str, served_scheme: &str, host: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    if scheme != served_scheme {
        return false;
    }
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    let with_port = |h: &str| {
        if h.ends_with(']') || !h.contains(':') {
            format!("{h}{default_port}")
        } else {
            h.to_string()
        }
    };
    with_port(&rest.to_ascii_lowercase()) == with_port(&host.to_ascii_lowercase())
}

async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let text = crate::metrics::render(&state).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The document as this server applies it: a server without tokens asks for none, so its
/// document declares no security.
async fn openapi(State(state): State<AppState>) -> Response {
    if state.config.requires_token() {
        return ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response();
    }
    match serde_json::from_str::<serde_json::Value>(OPENAPI) {
        Ok(mut doc) => {
            if let Some(root) = doc.as_object_mut() {
                root.remove("security");
            }
            if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
                for ops in paths.values_mut().filter_map(|o| o.as_object_mut()) {
                    for op in ops.values_mut().filter_map(|o| o.as_object_mut()) {
                        op.remove("security");
                    }
                }
            }
            Json(doc).into_response()
        }
        Err(_) => ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response(),
    }
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

async fn method_not_allowed(method: Method, uri: axum::extract::OriginalUri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not take {method}; see /v1/openapi.json",
            uri.0.path()
        ),
    )
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint; the API is under /v1")
}

/// Whether the request's token may read calls (set by [`require_token`]; absent without
/// tokens, where everyone may). Answers to a token without `read` carry no outputs or errors.
#[derive(Debug, Clone, Copy)]
pub struct CanRead(pub bool);

impl CanRead {
    /// `call` as this caller may see it: without its output and error unless it can read.
    pub fn filter(
        caller: Option<axum::Extension<CanRead>>,
        mut call: hopper_core::api::CallView,
    ) -> hopper_core::api::CallView {
        if caller.is_some_and(|c| !c.0 .0) {
            call.output = None;
            call.error = None;
        }
        call
    }
}

/// The request's path as the client sent it (inside the `/v1` nest, `uri()` lacks the prefix).
fn full_path(req: &Request) -> String {
    req.extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| req.uri().path().to_string(), |u| u.0.path().to_string())
}

/// The scope a request needs. HEAD is a GET without the body: it needs what GET needs.
fn required_scope(method: &Method, path: &str) -> Scope {
    let path = path.strip_prefix("/v1").unwrap_or(path);
    let reads = matches!(*method, Method::GET | Method::HEAD);
    if path.starts_with("/workers") && !(reads && path == "/workers") {
        return Scope::Work;
    }
    if reads {
        return Scope::Read;
    }
    if path == "/apps"
        || path == "/reseal"
        || path.starts_with("/secrets")
        || path.starts_with("/snapshots")
        || path.ends_with("/pause")
        || path.ends_with("/resume")
    {
        return Scope::Admin;
    }
    Scope::Submit
}

/// With tokens configured, every request but the health checks (`/livez`, `/readyz`,
/// `/healthz`) and the dashboard's pages must carry
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
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110).
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .map(str::to_string);
    let (token, from_cookie) = match bearer {
        Some(token) => (token, false),
        None => match session::session_from_cookie(req.headers()) {
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
    let scopes = if from_cookie {
        state.config.scopes_of_session(&token)
    } else {
        state.config.scopes_of(&token)
    };
    let Some(scopes) = scopes else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the token is not valid",
        )
        .into_response();
    };
    let needed = required_scope(req.method(), req.uri().path());
    if scopes.contains(&Scope::Admin) || scopes.contains(&needed) {
        let can_read = scopes.contains(&Scope::Admin) || scopes.contains(&Scope::Read);
        let mut req = req;
        req.extensions_mut().insert(CanRead(can_read));
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
            full_path(&req),
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
            ("post", "/v1/functions/{name}/calls/batch"),
            ("post", "/v1/functions/{name}/map"),
            ("post", "/v1/calls/{id}/inputs"),
            ("get", "/v1/calls/{id}/results"),
            ("get", "/v1/calls"),
            ("get", "/v1/calls/{id}"),
            ("post", "/v1/calls/{id}/cancel"),
            ("post", "/v1/calls/{id}/rerun"),
            ("get", "/v1/inputs"),
            ("post", "/v1/inputs/rerun"),
            ("get", "/v1/calls/{id}/inputs/{index}"),
            ("get", "/v1/calls/{id}/attempts"),
            ("get", "/v1/calls/{id}/logs"),
            ("get", "/v1/calls/{id}/logs/stream"),
            ("get", "/v1/schedules"),
            ("get", "/v1/schedules/{name}"),
            ("post", "/v1/schedules/{name}/trigger"),
            ("post", "/v1/schedules/{name}/pause"),
            ("post", "/v1/schedules/{name}/resume"),
            ("get", "/v1/secrets"),
            ("get", "/v1/secrets/{name}"),
            ("put", "/v1/secrets/{name}"),
            ("delete", "/v1/secrets/{name}"),
            ("get", "/v1/snapshots/{hash}"),
            ("put", "/v1/snapshots/{hash}"),
            ("get", "/v1/workers/{id}/snapshots/{hash}"),
            ("post", "/v1/blobs"),
            ("get", "/v1/blobs/{digest}"),
            ("post", "/v1/workers/{id}/blobs"),
            ("get", "/v1/workers/{id}/blobs/{digest}"),
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
            ("post", "/v1/workers/{id}/starts"),
            ("post", "/v1/reseal"),
            ("get", "/livez"),
            ("get", "/readyz"),
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
