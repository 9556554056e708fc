//! Exit codes, the same for every command:
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success (for `get`/`run`: the call succeeded) |
//! | 1 | the call failed or was cancelled |
//! | 2 | bad usage or bad input (also any request the server refused as invalid) |
//! | 3 | the call did not end within `--timeout` (it goes on) |
//! | 4 | the server could not be reached, or failed |

use std::process::ExitCode;

use hopper_sdk::Error as ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Ok = 0,
    CallFailed = 1,
    Usage = 2,
    NotFinished = 3,
    Internal = 4,
}

impl From<Code> for ExitCode {
    fn from(code: Code) -> ExitCode {
        ExitCode::from(code as u8)
    }
}

/// An error that says which exit code it means.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Coded {
    pub code: Code,
    pub message: String,
}

pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Coded {
        code: Code::Usage,
        message: message.into(),
    }
    .into()
}

/// The exit code for an error: a [`Coded`] says its own; an API error is 2 when the server
/// refused the request (4xx) and 4 when it could not be reached or failed.
pub fn code_of(e: &anyhow::Error) -> Code {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<Coded>() {
            return c.code;
        }
        if let Some(api) = cause.downcast_ref::<ApiError>() {
            return match api {
                ApiError::Api { status, .. } if (400..500).contains(status) => Code::Usage,
                ApiError::File(_) => Code::Usage,
                ApiError::Corrupt(_) => Code::Internal,
                _ => Code::Internal,
            };
        }
    }
    Code::Internal
}
