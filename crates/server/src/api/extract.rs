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

/// Levels a request body may add around the values it carries (`{"results": [{"output": …}]}`).
const ENVELOPE_DEPTH: usize = 16;

/// An input as it came, checked: nested at most [`hopper_core::json::MAX_DEPTH`] levels, and
/// every integer in 64 bits (a larger one would be rounded to a float: refused, not changed).
/// Returns its JSON text, compact.
pub fn value(raw: &serde_json::value::RawValue, what: &str) -> Result<String, ApiError> {
    hopper_core::json::check_text(raw.get().as_bytes(), hopper_core::json::MAX_DEPTH).map_err(
        |e| {
            let why = match e {
                hopper_core::json::JsonLimit::TooDeep { .. } => format!(
                    "it nests deeper than inputs and outputs may, {} levels",
                    hopper_core::json::MAX_DEPTH
                ),
                big => big.to_string(),
            };
            ApiError::bad_request("invalid_input", format!("{what} is refused: {why}"))
        },
    )?;
    let parsed: serde_json::Value = serde_json::from_str(raw.get())
        .map_err(|e| ApiError::bad_request("invalid_json", format!("{what}: {e}")))?;
    Ok(parsed.to_string())
}

/// The media type a request's `Content-Type` names, lowercased, without its parameters
/// (`application/json` of `Application/JSON; charset=utf-8`); empty without one.
pub fn media_type(headers: &axum::http::HeaderMap) -> String {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Bytes allowed around the payload in a request body: ids, keys, field names.
pub const ENVELOPE_BYTES: usize = 64 * 1024;

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        // Only JSON: a web page can send text/plain or a form to any address without asking
        // first, but not application/json.
        let content_type = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let media = media_type(req.headers());
        if media != "application/json"
            && !(media.starts_with("application/") && media.ends_with("+json"))
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                if content_type.is_empty() {
                    "send the body as JSON with Content-Type: application/json".to_string()
                } else {
                    format!(
                        "the body's Content-Type is {content_type:?}; send JSON with Content-Type: application/json"
                    )
                },
            ));
        }
        let limit = state.config.max_payload_bytes + ENVELOPE_BYTES;
        // A body announced larger than the limit is refused before it is read.
        let announced = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the request body is over the inline limit of {} bytes (hopper serve --max-payload)",
                    state.config.max_payload_bytes
                ),
            ));
        }
        let timeout = state.config.request_timeout;
        let read = tokio::time::timeout(timeout, axum::body::to_bytes(req.into_body(), limit));
        let Ok(bytes) = read.await else {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within {}",
                    hopper_core::duration::format(timeout)
                ),
            ));
        };
        let bytes = bytes.map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the request body is over the inline limit of {} bytes (hopper serve --max-payload)",
                    state.config.max_payload_bytes
                ),
            )
        })?;
        // Values deeper than an input may be could not come back out of a lease: refused here,
        // with their place. (Each input and output is checked again on its own: `value`.)
        if let Err(hopper_core::json::JsonLimit::TooDeep { line, column, .. }) =
            hopper_core::json::check_text(&bytes, hopper_core::json::MAX_DEPTH + ENVELOPE_DEPTH)
        {
            return Err(ApiError::bad_request(
                "invalid_json",
                format!(
                    "the request body is refused: a value nests deeper than inputs and outputs may, {} levels (line {line}, column {column})",
                    hopper_core::json::MAX_DEPTH
                ),
            ));
        }
        // Every body is an object: serde would also read a struct from an array of its fields.
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err(ApiError::bad_request(
                "invalid_json",
                "the request body must be a JSON object",
            ));
        }
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
            .map_err(|e| {
                let query = parts.uri.query().unwrap_or_default();
                ApiError::bad_request("invalid_query", query_fault(query, &e.body_text()))
            })
    }
}

/// A query string's fault in words, from the deserializer's `text` about `query`: the
/// parameter, what it must be and the value given (`limit must be a whole number, not
/// "-1"`), or that it was given twice.
fn query_fault(query: &str, text: &str) -> String {
    let text = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(text);
    if let Some((field, _)) = text
        .strip_prefix("duplicate field `")
        .and_then(|rest| rest.split_once('`'))
    {
        return format!("the query parameter {field} is given more than once; give it once");
    }
    let Some((field, why)) = text.split_once(": ") else {
        return text.to_string();
    };
    let Some(value) = form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == field)
        .map(|(_, value)| value.into_owned())
    else {
        return text.to_string();
    };
    let expected = if why.contains("invalid digit") || why.contains("number too") {
        "a whole number (0 or more)"
    } else if why.contains("float") {
        "a number"
    } else if why.contains("`true` or `false`") {
        "true or false"
    } else {
        why
    };
    format!("{field} must be {expected}, not {value:?}")
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

/// Path parameters, with a rejection in the API's error shape (`invalid_path`): a segment that
/// is not UTF-8, or not the number the route expects, is named.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))
    }
}

#[cfg(test)]
mod query_fault_tests {
    use super::query_fault;

    #[test]
    fn a_bad_query_value_is_named_with_what_it_must_be() {
        let says = |query: &str, text: &str| query_fault(query, text);
        assert_eq!(
            says(
                "limit=-1",
                "Failed to deserialize query string: limit: invalid digit found in string"
            ),
            "limit must be a whole number (0 or more), not \"-1\""
        );
        assert_eq!(
            says(
                "limit=1&limit=2",
                "Failed to deserialize query string: duplicate field `limit`"
            ),
            "the query parameter limit is given more than once; give it once"
        );
        assert_eq!(
            says("wait=soon", "wait: invalid float literal"),
            "wait must be a number, not \"soon\""
        );
        assert_eq!(says("", "something else"), "something else");
    }
}
