//! `/v1/session`: the dashboard's sign-in. A browser cannot add an `Authorization` header to
//! page loads or to an `EventSource`, so the dashboard trades the token for an `HttpOnly`,
//! `SameSite=Strict` cookie holding it; the token check accepts either.
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

/// The cookie that holds the token (hex-encoded, so any token is a valid cookie value).
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
        hex_encode(&req.token)
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

/// The token in the request's cookie, if it has one.
pub fn token_from_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .and_then(|(_, value)| hex_decode(value))
}

fn hex_encode(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = text
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).ok().filter(|p| p.len() == 2)?;
            u8::from_str_radix(pair, 16).ok()
        })
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_carries_any_token_back() {
        let token = "s3cret; with=odd chars ✓";
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={}; c=d", hex_encode(token))).unwrap(),
        );
        assert_eq!(token_from_cookie(&headers).as_deref(), Some(token));
        headers.insert(header::COOKIE, HeaderValue::from_static("hopper_token=zz"));
        assert_eq!(token_from_cookie(&headers), None);
    }
}
