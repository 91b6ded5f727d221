//! The platform's capabilities, one module each (blob, queue, table, environment): a context
//! holding what the capability needs, its implementation of the WIT `Host` trait, and its
//! `add_to_linker`. Each is self-contained; [`add_to_linker`] wires all four. [`local_disk`]
//! enforces the local resources' quotas by shadowing WASI's filesystem.
//!
//! Architecture Invariant: a host function never panics or traps on guest input. Every bad
//! argument becomes a `storage-error` the guest can read; only the link's injected crashes trap.

pub mod blob;
pub mod environment;
pub mod local_disk;
pub mod outbound;
pub mod queue;
pub mod table;

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::types::{self, ErrorCode, StorageError};
use crate::link::CallError;

/// Store data that holds the capability contexts.
pub trait CapabilityView: Send + 'static {
    /// The contexts.
    fn capabilities(&mut self) -> &mut Capabilities;
}

/// Adds the four capabilities to `linker`.
pub fn add_to_linker<T: CapabilityView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    // `types` has no functions; its instance still has to exist for the others' types.
    types::add_to_linker::<T, HasSelf<blob::BlobCtx>>(linker, |t| &mut t.capabilities().blob)?;
    blob::add_to_linker(linker, |t| &mut t.capabilities().blob)?;
    queue::add_to_linker(linker, |t| &mut t.capabilities().queue)?;
    table::add_to_linker(linker, |t| &mut t.capabilities().table)?;
    environment::add_to_linker(linker, |t| &mut t.capabilities().environment)?;
    Ok(())
}

/// The capability contexts of one instance (part of its store data).
#[derive(Debug)]
pub struct Capabilities {
    /// Blob storage.
    pub blob: blob::BlobCtx,
    /// Queue storage.
    pub queue: queue::QueueCtx,
    /// Table storage.
    pub table: table::TableCtx,
    /// The environment.
    pub environment: environment::EnvironmentCtx,
}

/// A storage family error as the guest sees it.
pub(crate) trait FamilyError {
    fn code(&self) -> &'static str;
    fn status(&self) -> u16;
    fn failed_index(&self) -> Option<u32> {
        None
    }
}

macro_rules! family {
    ($($t:ty),*) => {$(
        impl FamilyError for $t {
            fn code(&self) -> &'static str { <$t>::code(self) }
            fn status(&self) -> u16 { <$t>::status(self) }
        }
    )*};
}
family!(rolehost_storage::BlobError, rolehost_storage::QueueError);

impl FamilyError for rolehost_storage::TableError {
    fn code(&self) -> &'static str {
        rolehost_storage::TableError::code(self)
    }
    fn status(&self) -> u16 {
        rolehost_storage::TableError::status(self)
    }
    fn failed_index(&self) -> Option<u32> {
        match self {
            rolehost_storage::TableError::BatchOperationFailed { index, .. } => {
                u32::try_from(*index).ok()
            }
            _ => None,
        }
    }
}

/// The WIT error for a failed call.
pub(crate) fn to_wit_error<E: FamilyError + std::fmt::Display>(e: CallError<E>) -> StorageError {
    match e {
        CallError::Service(e) => {
            let status = e.status();
            let code = error_code(e.code(), status);
            let message = if code == ErrorCode::InternalError {
                // Engine failures are logged in full on the host; the guest learns that it
                // failed, not the host's paths.
                tracing::error!(error = %e, "storage engine error");
                "the storage engine failed; the operation did not take effect".to_string()
            } else if code == ErrorCode::Timeout {
                // The database's connection was lost mid-operation: nor its address.
                tracing::warn!(error = %e, "storage operation's outcome unknown");
                "the storage database did not answer; the operation may or may not have \
                 taken effect"
                    .to_string()
            } else {
                e.to_string()
            };
            StorageError {
                code,
                status,
                message,
                failed_index: e.failed_index(),
            }
        }
        e @ CallError::Timeout { .. } => StorageError {
            code: ErrorCode::Timeout,
            status: 408,
            message: e.to_string(),
            failed_index: None,
        },
        e @ CallError::Internal { .. } => {
            tracing::error!(error = %e, "storage call failed");
            StorageError {
                code: ErrorCode::InternalError,
                status: 500,
                message: "internal error; the operation may not have taken effect".into(),
                failed_index: None,
            }
        }
    }
}

/// A guest argument the host refuses before it reaches storage.
pub(crate) fn invalid(code: ErrorCode, message: impl Into<String>) -> StorageError {
    StorageError {
        code,
        status: match code {
            ErrorCode::RequestBodyTooLarge | ErrorCode::RequestEntityTooLarge => 413,
            ErrorCode::ServerBusy => 503,
            ErrorCode::InsufficientAccountPermissions => 403,
            _ => 400,
        },
        message: message.into(),
        failed_index: None,
    }
}

/// Maps an Azure error code name to the WIT enum. 304 `ConditionNotMet` is `not-modified`.
pub(crate) fn error_code(code: &str, status: u16) -> ErrorCode {
    use ErrorCode as C;
    match code {
        "ConditionNotMet" if status == 304 => C::NotModified,
        "InvalidResourceName" => C::InvalidResourceName,
        "OutOfRangeInput" => C::OutOfRangeInput,
        "InvalidInput" => C::InvalidInput,
        "InvalidMetadata" => C::InvalidMetadata,
        "InvalidHeaderValue" => C::InvalidHeaderValue,
        "InvalidQueryParameterValue" => C::InvalidQueryParameterValue,
        "OutOfRangeQueryParameterValue" => C::OutOfRangeQueryParameterValue,
        "RequestBodyTooLarge" => C::RequestBodyTooLarge,
        "InternalError" => C::InternalError,
        "OperationTimedOut" => C::Timeout,
        "ServerBusy" => C::ServerBusy,
        "InsufficientAccountPermissions" => C::InsufficientAccountPermissions,
        "ContainerNotFound" => C::ContainerNotFound,
        "ContainerAlreadyExists" => C::ContainerAlreadyExists,
        "BlobNotFound" => C::BlobNotFound,
        "BlobAlreadyExists" => C::BlobAlreadyExists,
        "ConditionNotMet" => C::ConditionNotMet,
        "UnsatisfiableCondition" => C::UnsatisfiableCondition,
        "MultipleConditionHeadersNotSupported" => C::MultipleConditionHeadersNotSupported,
        "InvalidRange" => C::InvalidRange,
        "LeaseAlreadyPresent" => C::LeaseAlreadyPresent,
        "LeaseIdMismatchWithLeaseOperation" => C::LeaseIdMismatchWithLeaseOperation,
        "LeaseNotPresentWithLeaseOperation" => C::LeaseNotPresentWithLeaseOperation,
        "LeaseIsBreakingAndCannotBeAcquired" => C::LeaseIsBreakingAndCannotBeAcquired,
        "LeaseIsBreakingAndCannotBeChanged" => C::LeaseIsBreakingAndCannotBeChanged,
        "LeaseIsBrokenAndCannotBeRenewed" => C::LeaseIsBrokenAndCannotBeRenewed,
        "LeaseIdMissing" => C::LeaseIdMissing,
        "LeaseIdMismatchWithBlobOperation" => C::LeaseIdMismatchWithBlobOperation,
        "LeaseNotPresentWithBlobOperation" => C::LeaseNotPresentWithBlobOperation,
        "LeaseIdMismatchWithContainerOperation" => C::LeaseIdMismatchWithContainerOperation,
        "LeaseNotPresentWithContainerOperation" => C::LeaseNotPresentWithContainerOperation,
        "InvalidBlockList" => C::InvalidBlockList,
        "BlockCountExceedsLimit" => C::BlockCountExceedsLimit,
        "QueueNotFound" => C::QueueNotFound,
        "QueueAlreadyExists" => C::QueueAlreadyExists,
        "MessageNotFound" => C::MessageNotFound,
        "TableNotFound" => C::TableNotFound,
        "TableAlreadyExists" => C::TableAlreadyExists,
        "ResourceNotFound" => C::ResourceNotFound,
        "EntityAlreadyExists" => C::EntityAlreadyExists,
        "UpdateConditionNotSatisfied" => C::UpdateConditionNotSatisfied,
        "EntityTooLarge" => C::EntityTooLarge,
        "TooManyProperties" => C::TooManyProperties,
        "PropertyNameInvalid" => C::PropertyNameInvalid,
        "PropertyNameTooLong" => C::PropertyNameTooLong,
        "PropertyValueTooLarge" => C::PropertyValueTooLarge,
        "CommandsInBatchActOnDifferentPartitions" => C::CommandsInBatchActOnDifferentPartitions,
        "InvalidDuplicateRow" => C::InvalidDuplicateRow,
        "RequestEntityTooLarge" => C::RequestEntityTooLarge,
        other => {
            tracing::warn!(code = other, "storage error code without a WIT equivalent");
            C::InternalError
        }
    }
}

/// WIT list options to the engine's.
pub(crate) fn list_options(o: types::ListOptions) -> rolehost_storage::ListOptions {
    rolehost_storage::ListOptions {
        prefix: o.prefix,
        marker: o.marker,
        max_results: o.max_results,
        include_metadata: o.include_metadata,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code the storage engine can return (grep of `host/storage/src/error.rs`).
    const ENGINE_CODES: &[&str] = &[
        "BlobAlreadyExists",
        "BlobNotFound",
        "BlockCountExceedsLimit",
        "CommandsInBatchActOnDifferentPartitions",
        "ConditionNotMet",
        "ContainerAlreadyExists",
        "ContainerNotFound",
        "EntityAlreadyExists",
        "EntityTooLarge",
        "InvalidBlockList",
        "InvalidDuplicateRow",
        "InvalidHeaderValue",
        "InvalidInput",
        "InvalidMetadata",
        "InvalidQueryParameterValue",
        "InvalidRange",
        "InvalidResourceName",
        "LeaseAlreadyPresent",
        "LeaseIdMismatchWithBlobOperation",
        "LeaseIdMismatchWithContainerOperation",
        "LeaseIdMismatchWithLeaseOperation",
        "LeaseIdMissing",
        "LeaseIsBreakingAndCannotBeAcquired",
        "LeaseIsBreakingAndCannotBeChanged",
        "LeaseIsBrokenAndCannotBeRenewed",
        "LeaseNotPresentWithBlobOperation",
        "LeaseNotPresentWithContainerOperation",
        "LeaseNotPresentWithLeaseOperation",
        "MessageNotFound",
        "MultipleConditionHeadersNotSupported",
        "OperationTimedOut",
        "OutOfRangeInput",
        "OutOfRangeQueryParameterValue",
        "PropertyNameInvalid",
        "PropertyNameTooLong",
        "PropertyValueTooLarge",
        "QueueAlreadyExists",
        "QueueNotFound",
        "RequestBodyTooLarge",
        "RequestEntityTooLarge",
        "ResourceNotFound",
        "TableAlreadyExists",
        "TableNotFound",
        "TooManyProperties",
        "UnsatisfiableCondition",
        "UpdateConditionNotSatisfied",
    ];

    #[test]
    fn every_engine_code_has_a_wit_code() {
        for code in ENGINE_CODES {
            assert_ne!(
                error_code(code, 400),
                ErrorCode::InternalError,
                "{code} maps to internal-error"
            );
        }
        assert_eq!(error_code("ConditionNotMet", 304), ErrorCode::NotModified);
        assert_eq!(
            error_code("ConditionNotMet", 412),
            ErrorCode::ConditionNotMet
        );
        assert_eq!(error_code("SomethingNew", 400), ErrorCode::InternalError);
    }

    #[test]
    fn a_lost_commit_is_a_timeout_that_names_nothing_of_the_host() {
        let lost = rolehost_storage::StorageError::OutcomeUnknown {
            detail: "connection to 10.1.2.3:5432 reset".into(),
        };
        let e = to_wit_error(CallError::Service(rolehost_storage::QueueError::Storage(
            lost,
        )));
        assert_eq!(e.code, ErrorCode::Timeout);
        assert!(e.message.contains("may or may not"), "{}", e.message);
        assert!(!e.message.contains("10.1.2.3"), "{}", e.message);
    }
}
