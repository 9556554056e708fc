//! Query parameters a route does not take are refused (400 `invalid_query`, naming the
//! parameter and the closest one the route takes), as bodies refuse unknown fields: a
//! misspelt filter (`GET /v1/calls?stat=failed`) must never widen what a request reads, or
//! what a script then re-runs. What each route takes is read from the OpenAPI document, so
//! the documentation and the server cannot disagree.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// `(method, route)` → the query parameters the route takes, as `openapi.json` lists them.
static TAKEN: LazyLock<HashMap<(String, String), Vec<String>>> =
    LazyLock::new(|| taken(super::OPENAPI));

/// The query parameters of every operation in an OpenAPI `document`, by upper-case method
/// and path template (`("GET", "/v1/calls/{id}")`).
fn taken(document: &str) -> HashMap<(String, String), Vec<String>> {
    let Ok(document) = serde_json::from_str::<serde_json::Value>(document) else {
        return HashMap::new();
    };
    let mut routes = HashMap::new();
    for (path, operations) in document["paths"].as_object().into_iter().flatten() {
        for (method, operation) in operations.as_object().into_iter().flatten() {
            let names = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query")
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect();
            routes.insert((method.to_ascii_uppercase(), path.clone()), names);
        }
    }
    routes
}

/// Middleware (a route layer, so the matched route is known): refuses a request whose query
/// names a parameter its route does not take. Routes the document does not describe (the
/// dashboard's pages) are let through.
pub async fn refuse_unknown(req: Request, next: Next) -> Response {
    match unknown(&req) {
        Some(refused) => refused.into_response(),
        None => next.run(req).await,
    }
}

fn unknown(req: &Request) -> Option<ApiError> {
    let query = req.uri().query()?;
    let route = req.extensions().get::<MatchedPath>()?.as_str();
    // HEAD is answered as GET is, parameters included.
    let method = match req.method().as_str() {
        "HEAD" => "GET",
        other => other,
    };
    let takes = TAKEN.get(&(method.to_string(), route.to_string()))?;
    let name = form_urlencoded::parse(query.as_bytes())
        .map(|(name, _)| name)
        .find(|name| !takes.iter().any(|t| t == name))?;
    let hint = hopper_core::suggest::closest(&name, takes)
        .map(|c| format!("; did you mean {c}?"))
        .unwrap_or_default();
    let known = if takes.is_empty() {
        "it takes none".to_string()
    } else {
        format!("it takes {}", takes.join(", "))
    };
    Some(ApiError::bad_request(
        "invalid_query",
        format!("{method} {route} does not take the query parameter {name:?}{hint} ({known})"),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_with_query_parameters_is_read_from_the_document() {
        let taken = super::taken(super::super::OPENAPI);
        let calls = &taken[&("GET".to_string(), "/v1/calls".to_string())];
        assert!(calls.iter().any(|p| p == "state") && calls.iter().any(|p| p == "since"));
        let spawn = &taken[&("POST".to_string(), "/v1/functions/{name}/calls".to_string())];
        assert_eq!(spawn, &["wait".to_string()]);
        assert!(taken[&("GET".to_string(), "/healthz".to_string())].is_empty());
    }
}
