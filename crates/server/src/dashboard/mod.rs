//! The web dashboard, served by `hopper serve` at `/`.
//!
//! One page and its script and style, embedded in the binary (no build step, nothing fetched
//! from the internet). The page holds no data: the script reads everything from the same
//! `/v1` API the CLI uses, signed in by the session cookie when the server has a token, and
//! re-reads the page shown whenever `/v1/events` says something changed. So what the
//! dashboard shows is exactly what the API allows that token to read.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::state::AppState;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");
const ICON: &str = include_str!("icon.svg");

/// The dashboard's pages (each answered with the same page; the script draws the one asked
/// for) and its assets.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(page))
        .route("/functions", get(page))
        .route("/functions/{name}", get(page))
        .route("/calls", get(page))
        .route("/calls/{id}", get(page))
        .route("/failed", get(page))
        .route("/workers", get(page))
        .route("/schedules", get(page))
        .route("/assets/{file}", get(asset))
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
        ],
        INDEX.replace("{{version}}", env!("CARGO_PKG_VERSION")),
    )
        .into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "app.css" => (STYLE, "text/css; charset=utf-8"),
        "icon.svg" => (ICON, "image/svg+xml"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}
