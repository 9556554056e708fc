//! `/v1/session`: the dashboard's sign-in. A browser cannot add an `Authorization` header to
//! page loads or to an `EventSource`, so the dashboard trades the token for an `HttpOnly`,
//! `SameSite=Strict` cookie; the token check accepts either. The cookie holds a value derived
//! from the token (a hash), never the token itself: a browser sends cookies to every port of
//! a host, so another app on `localhost` may see it, and it must not learn the token from it
//! (the value works only as this dashboard's cookie).
//!
//! A request authenticated by the cookie that changes something must also carry the
//! [`DASHBOARD_HEADER`], which a cross-site form cannot send, so another site cannot make a
//! signed-in browser cancel calls.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::ApiError;
use super::extract::ApiJson;
use crate::state::AppState;

/// The cookie that holds the session: [`session_value`] of the token.
pub const COOKIE: &str = "hopper_token";
/// Sent by the dashboard with every request that changes something.
pub const DASHBOARD_HEADER: &str = "x-hopper-dashboard";
/// How long a sign-in lasts: 30 days.
const MAX_AGE_S: u64 = 30 * 24 * 3600;

#[derive(Deserialize)]
pub struct SessionRequest {
    token: String,
}

/// Checks the token and sets the cookie; 401 for a token the server does not know.
pub async fn open(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<SessionRequest>,
) -> Result<Response, ApiError> {
    if state.config.requires_token() && state.config.scopes_of(&req.token).is_none() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the token is not valid",
        ));
    }
    let secure = if state
        .config
        .public_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"))
    {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={MAX_AGE_S}{secure}",
        session_value(&req.token)
    );
    Ok(with_cookie(&cookie))
}

/// Signs out: clears the cookie.
pub async fn close() -> Response {
    with_cookie(&format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
    ))
}

fn with_cookie(cookie: &str) -> Response {
    match HeaderValue::from_str(cookie) {
        Ok(value) => (StatusCode::NO_CONTENT, [(header::SET_COOKIE, value)]).into_response(),
        Err(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
        .into_response(),
    }
}

/// The session value of a token, as the cookie holds it.
pub fn session_value(token: &str) -> String {
    hopper_core::ids::derived_hex("hopper dashboard session", token)
}

/// The session value in the request's cookie, if it has one.
pub fn session_from_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_holds_a_value_derived_from_the_token_not_the_token() {
        let token = "s3cret; with=odd chars ✓";
        let value = session_value(token);
        assert!(!value.contains("s3cret"));
        assert_eq!(value, session_value(token), "the same on every server");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={value}; c=d")).unwrap(),
        );
        assert_eq!(session_from_cookie(&headers), Some(value));
    }
}
