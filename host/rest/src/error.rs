//! What a request is answered when it fails: an Azure status, error code and message, in the
//! shape each service sends (XML for blob and queue, JSON for table).

use std::borrow::Cow;

use http::{HeaderName, HeaderValue, StatusCode};
use rolehost_storage::{BlobError, QueueError, StorageError, TableError};

/// A refused or failed request, as Azure would answer it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct RestError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The Azure error code (`x-ms-error-code`), what SDKs key off with the status.
    pub code: Cow<'static, str>,
    /// The message, for a person.
    pub message: String,
    /// Extra response headers (e.g. `x-ms-lease-time`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Azure's message for every authentication failure. It never says which part of a signature,
/// date or SAS was wrong: that would tell an attacker what to change.
pub const AUTH_FAILED: &str = "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.";

impl RestError {
    /// An error with this status, code and message.
    pub fn new(
        status: u16,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        RestError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: code.into(),
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// 403 AuthenticationFailed with Azure's message.
    pub fn auth_failed() -> Self {
        RestError::new(403, "AuthenticationFailed", AUTH_FAILED)
    }

    /// 403 with an authorization code (a SAS that does not grant what is asked).
    pub fn forbidden(code: &'static str, message: &str) -> Self {
        RestError::new(403, code, message)
    }

    /// 400 with a code naming what was wrong.
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        RestError::new(400, code, message)
    }

    /// 400 InvalidQueryParameterValue naming the parameter.
    pub fn bad_query(name: &str, why: impl std::fmt::Display) -> Self {
        RestError::bad(
            "InvalidQueryParameterValue",
            format!(
                "Value for one of the query parameters specified in the request URI is invalid: {name}: {why}"
            ),
        )
    }

    /// 400 OutOfRangeQueryParameterValue naming the parameter and its range.
    pub fn out_of_range(name: &str, range: &str) -> Self {
        RestError::bad(
            "OutOfRangeQueryParameterValue",
            format!(
                "One of the query parameters specified in the request URI is outside the permissible range: {name} must be {range}."
            ),
        )
    }

    /// 400 InvalidHeaderValue naming the header.
    pub fn bad_header(name: &str, why: impl std::fmt::Display) -> Self {
        RestError::bad(
            "InvalidHeaderValue",
            format!(
                "The value for one of the HTTP headers is not in the correct format: {name}: {why}"
            ),
        )
    }

    /// 400 InvalidXmlDocument / InvalidInput for a body that does not parse.
    pub fn bad_body(code: &'static str, why: impl std::fmt::Display) -> Self {
        RestError::bad(code, format!("The request body is not valid: {why}"))
    }

    /// 501 for an operation or feature the engine does not have.
    pub fn unsupported(feature: &str) -> Self {
        RestError::new(
            501,
            "NotImplemented",
            format!("rolehost does not support {feature}"),
        )
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// The message of an engine error as Azure words its messages: a sentence.
pub(crate) fn sentence(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    let mut c = s.chars();
    let mut out: String = match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => s,
    };
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

/// An engine failure is the host's fault: logged in full, answered without its details (a
/// client has no use for a database path).
fn engine_failure(e: &StorageError) -> RestError {
    tracing::error!(error = %e, "storage request failed inside the engine");
    match e {
        StorageError::BodyRead(_) => RestError::new(e.status(), e.code(), sentence(e)),
        StorageError::OutcomeUnknown { .. } => RestError::new(
            500,
            "OperationTimedOut",
            "The operation could not be completed within the permitted time. The operation may or may not have succeeded on the server side.",
        ),
        StorageError::Unavailable { .. } => RestError::new(
            503,
            "ServerBusy",
            "The server is currently unable to receive requests. Please retry your request.",
        ),
        _ => RestError::new(
            500,
            "InternalError",
            "The server encountered an internal error. Please retry the request.",
        ),
    }
}

impl From<StorageError> for RestError {
    fn from(e: StorageError) -> Self {
        engine_failure(&e)
    }
}

impl From<BlobError> for RestError {
    fn from(e: BlobError) -> Self {
        match &e {
            BlobError::Storage(s) => engine_failure(s),
            _ => RestError::new(e.status(), e.code(), sentence(&e)),
        }
    }
}

impl From<QueueError> for RestError {
    fn from(e: QueueError) -> Self {
        match &e {
            QueueError::Storage(s) => engine_failure(s),
            _ => RestError::new(e.status(), e.code(), sentence(&e)),
        }
    }
}

impl From<TableError> for RestError {
    fn from(e: TableError) -> Self {
        match &e {
            TableError::Storage(s) => engine_failure(s),
            TableError::BatchOperationFailed { source, .. } => match &**source {
                TableError::Storage(s) => engine_failure(s),
                _ => RestError::new(e.status(), e.code(), sentence(&e)),
            },
            _ => RestError::new(e.status(), e.code(), sentence(&e)),
        }
    }
}

impl From<rolehost_storage::NameError> for RestError {
    fn from(e: rolehost_storage::NameError) -> Self {
        RestError::new(400, e.code(), sentence(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_keep_their_code_and_status() {
        let e = RestError::from(QueueError::MessageNotFound);
        assert_eq!(e.status, 404);
        assert_eq!(e.code, "MessageNotFound");
        assert_eq!(e.message, "The specified message does not exist.");
        let e = RestError::from(BlobError::Storage(StorageError::Internal("path /x".into())));
        assert_eq!(e.status, 500);
        assert!(!e.message.contains("/x"), "no internals: {}", e.message);
        let e = RestError::from(QueueError::Storage(StorageError::OutcomeUnknown {
            detail: "connection to 10.1.2.3:5432 reset".into(),
        }));
        assert_eq!(e.status, 500);
        assert_eq!(e.code, "OperationTimedOut");
        assert!(!e.message.contains("10.1.2.3"), "{}", e.message);
    }
}
