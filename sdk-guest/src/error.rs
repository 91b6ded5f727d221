//! The error of every storage call.

use std::fmt;

use crate::bindings::rolehost::platform::types;

/// Why a storage call failed: the Azure Storage error code (see [`ErrorCode`]), with the HTTP
/// status Azure would answer with and a message naming what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// The error code: match on it to decide what to do.
    pub code: ErrorCode,
    /// The HTTP status.
    pub status: u16,
    /// A message for people.
    pub message: String,
    /// In a failed table transaction: the index of the operation that failed.
    pub failed_index: Option<u32>,
}

/// The Azure Storage error codes, in the WIT contract's spelling (`ConditionNotMet` is
/// [`ErrorCode::ConditionNotMet`]). [`ErrorCode::Timeout`] means the call may or may not have
/// taken effect.
pub use types::ErrorCode;

impl Error {
    /// Whether a retry may succeed: timeouts, internal errors and "server busy". A 4xx answer
    /// (a missing queue, a failed condition) is never retried: it would fail the same way.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.code,
            ErrorCode::Timeout | ErrorCode::InternalError | ErrorCode::ServerBusy
        )
    }

    /// Whether this is a failed condition: someone else wrote first (blob `ConditionNotMet`,
    /// table `UpdateConditionNotSatisfied`) or a create-only write found the target there.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self.code,
            ErrorCode::ConditionNotMet
                | ErrorCode::UpdateConditionNotSatisfied
                | ErrorCode::BlobAlreadyExists
                | ErrorCode::EntityAlreadyExists
        )
    }

    /// Whether the thing named does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.code,
            ErrorCode::ContainerNotFound
                | ErrorCode::BlobNotFound
                | ErrorCode::QueueNotFound
                | ErrorCode::MessageNotFound
                | ErrorCode::TableNotFound
                | ErrorCode::ResourceNotFound
        )
    }

    /// An error made by the SDK itself (not returned by the host), e.g. a value that does not
    /// serialize to an entity.
    pub(crate) fn local(code: ErrorCode, message: impl Into<String>) -> Self {
        let status = match code {
            ErrorCode::Timeout => 408,
            ErrorCode::InternalError => 500,
            ErrorCode::ServerBusy => 503,
            _ => 400,
        };
        Error {
            code,
            status,
            message: message.into(),
            failed_index: None,
        }
    }
}

impl From<types::StorageError> for Error {
    fn from(e: types::StorageError) -> Self {
        Error {
            code: e.code,
            status: e.status,
            message: e.message,
            failed_index: e.failed_index,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({}): {}", self.code, self.status, self.message)?;
        if let Some(i) = self.failed_index {
            write!(f, " (operation {i} of the transaction)")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// The result of a storage call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
