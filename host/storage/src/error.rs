//! Typed errors: one enum per family (blob, queue, table), each carrying the Azure error code name
//! and HTTP status it maps to, plus [`StorageError`] for failures of the engine itself.
//!
//! Guest-visible failures (a missing queue, a stale pop receipt, a failed condition) are values of
//! the family enums. [`StorageError`] means the engine could not do its job (I/O, a corrupt
//! record, the committer gone): the operation was not acknowledged and nothing of it is visible.

use std::fmt;

pub use crate::quota::QuotaError;

/// The engine failed underneath an operation. Nothing of the operation was committed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The database reported an error (I/O, corruption its checksums detected, ...). What it
    /// said is kept as text, so no engine's error type leaks into the storage API.
    #[error("database error: {detail}")]
    Database {
        /// What the database said.
        detail: String,
        /// Whether it was an I/O failure (a full or failing disk): after one the engine opens
        /// the database again.
        io: bool,
    },
    /// A stored record could not be decoded.
    #[error("corrupt record in {table}: {detail}")]
    Corrupt {
        /// The redb table holding the record.
        table: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The group committer has stopped (the engine is shutting down or a previous commit failed
    /// hard). No further writes are accepted.
    #[error("the storage engine is shut down")]
    Closed,
    /// Reading the caller's request body failed.
    #[error("reading the request body failed: {0}")]
    BodyRead(#[source] std::io::Error),
    /// The commit carrying this operation failed; the operation is not acknowledged.
    #[error("the commit failed: {0}")]
    CommitFailed(std::sync::Arc<StorageError>),
    /// An operation panicked inside the committer; the whole batch was aborted.
    #[error("internal error: {0}")]
    Internal(String),
    /// The database file is not a storage database, or is damaged past what redb repairs.
    #[error(
        "{path} is damaged or is not a rolehost storage database ({detail}); restore it from a backup or move it away"
    )]
    Damaged {
        /// The file.
        path: String,
        /// What redb said.
        detail: String,
    },
    /// Another process has the database open.
    #[error("{0} is open in another process (is another rolehost using it?)")]
    InUse(String),
    /// The connection carrying the operation was lost before its outcome was known: it may
    /// or may not have taken effect (a networked engine whose server went away mid-commit, or
    /// could not be reached). Guests see `timeout`, never "did not happen".
    #[error(
        "the storage database did not answer; the operation may or may not have taken effect: {detail}"
    )]
    OutcomeUnknown {
        /// What failed.
        detail: String,
    },
    /// The database failed on I/O (a full or failing disk) and is not open again yet.
    #[error("the storage database {path} is unavailable after an I/O failure: {detail}")]
    Unavailable {
        /// The file.
        path: String,
        /// Why it is not open.
        detail: String,
    },
}

impl StorageError {
    /// The Azure error code for this failure.
    pub fn code(&self) -> &'static str {
        match self {
            StorageError::BodyRead(_) => "InvalidInput",
            StorageError::OutcomeUnknown { .. } => "OperationTimedOut",
            _ => "InternalError",
        }
    }

    /// The HTTP status it maps to.
    pub fn status(&self) -> u16 {
        match self {
            StorageError::BodyRead(_) => 400,
            _ => 500,
        }
    }
}

macro_rules! redb_into_storage {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self {
                let e = redb::Error::from(e);
                StorageError::Database {
                    io: matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo),
                    detail: e.to_string(),
                }
            }
        }
    )*};
}
redb_into_storage!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// What kind of name a [`NameError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A storage account.
    Account,
    /// A blob container.
    Container,
    /// A blob.
    Blob,
    /// A queue.
    Queue,
    /// A table.
    Table,
    /// A metadata name.
    Metadata,
    /// A PartitionKey or RowKey.
    Key,
    /// An entity property name.
    Property,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Account => "account",
            NameKind::Container => "container",
            NameKind::Blob => "blob",
            NameKind::Queue => "queue",
            NameKind::Table => "table",
            NameKind::Metadata => "metadata",
            NameKind::Key => "key",
            NameKind::Property => "property",
        })
    }
}

/// A name broke Azure Storage's naming rules (see [`crate::names`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name has characters or a shape the rules forbid (400 InvalidResourceName).
    #[error("invalid {kind} name {name:?}: {reason}")]
    Invalid {
        /// What was named.
        kind: NameKind,
        /// The offending name (truncated to 100 characters).
        name: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// The name is too short or too long (400 OutOfRangeInput).
    #[error("{kind} name {name:?} has length {len}, allowed {min}..={max}")]
    OutOfRange {
        /// What was named.
        kind: NameKind,
        /// The offending name (truncated to 100 characters).
        name: String,
        /// Its length in the unit the rule counts.
        len: usize,
        /// Minimum length.
        min: usize,
        /// Maximum length.
        max: usize,
    },
}

impl NameError {
    /// The Azure error code.
    pub fn code(&self) -> &'static str {
        match self {
            NameError::Invalid {
                kind: NameKind::Metadata,
                ..
            } => "InvalidMetadata",
            NameError::Invalid {
                kind: NameKind::Property,
                ..
            } => "PropertyNameInvalid",
            NameError::Invalid { .. } => "InvalidResourceName",
            NameError::OutOfRange {
                kind: NameKind::Metadata,
                ..
            } => "InvalidMetadata",
            NameError::OutOfRange {
                kind: NameKind::Property,
                ..
            } => "PropertyNameTooLong",
            NameError::OutOfRange { .. } => "OutOfRangeInput",
        }
    }
}

/// Declares `code()` and `status()` for a family enum from one table, so the mapping to Azure
/// codes is written once and read in one place.
macro_rules! error_codes {
    ($ty:ident { $($variant:ident => ($status:expr, $code:expr)),* $(,)? }) => {
        impl $ty {
            /// The Azure error code name (what SDKs key off, with the status).
            pub fn code(&self) -> &'static str {
                match self {
                    $ty::Name(e) => e.code(),
                    $ty::Storage(e) => e.code(),
                    $ty::Quota(e) => e.code(),
                    $($ty::$variant { .. } => $code,)*
                }
            }

            /// The HTTP status this error maps to.
            pub fn status(&self) -> u16 {
                match self {
                    $ty::Name(_) => 400,
                    $ty::Storage(e) => e.status(),
                    $ty::Quota(e) => e.status(),
                    $($ty::$variant { .. } => $status,)*
                }
            }
        }
    };
}

/// Errors of blob and container operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// A name broke the naming rules.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The engine failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The account's quota, or the host's headroom, would be exceeded; nothing was written.
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// The container does not exist.
    #[error("the specified container does not exist: {0}")]
    ContainerNotFound(String),
    /// Create Container on a name that exists.
    #[error("the specified container already exists: {0}")]
    ContainerAlreadyExists(String),
    /// The blob does not exist.
    #[error("the specified blob does not exist: {0}")]
    BlobNotFound(String),
    /// A create-only write (If-None-Match: *) found the blob there.
    #[error("the specified blob already exists: {0}")]
    BlobAlreadyExists(String),
    /// A precondition (If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since) failed.
    #[error("the condition specified using HTTP conditional header(s) is not met")]
    ConditionNotMet,
    /// A read's If-None-Match / If-Modified-Since says the caller's copy is current (304).
    #[error("not modified")]
    NotModified,
    /// If-None-Match: * on a read can never be satisfied.
    #[error("the condition specified is unsatisfiable (If-None-Match: * on a read)")]
    UnsatisfiableCondition,
    /// A write combined conditions that Azure does not support together.
    #[error("multiple condition headers are not supported: {0}")]
    MultipleConditionHeadersNotSupported(&'static str),
    /// The requested range starts past the end of the blob.
    #[error("the range specified is invalid for the current size of the resource ({0})")]
    InvalidRange(String),
    /// Acquire while another lease is active.
    #[error("there is already a lease present")]
    LeaseAlreadyPresent,
    /// A lease operation named a different lease id.
    #[error("the lease id specified did not match the lease id for the resource")]
    LeaseIdMismatchWithLeaseOperation,
    /// A lease operation on a resource with no lease.
    #[error("there is currently no lease on the resource")]
    LeaseNotPresentWithLeaseOperation,
    /// Acquire or renew while the lease is breaking.
    #[error("there is already a lease present, and it is breaking")]
    LeaseIsBreakingAndCannotBeAcquired,
    /// Change while the lease is breaking.
    #[error("the lease is breaking and cannot be changed")]
    LeaseIsBreakingAndCannotBeChanged,
    /// Renew after the lease was broken.
    #[error("the lease is broken and cannot be renewed")]
    LeaseIsBrokenAndCannotBeRenewed,
    /// A write on a leased blob without the lease id.
    #[error("there is currently a lease on the resource and no lease id was specified")]
    LeaseIdMissing,
    /// A blob operation named a lease id that is not the active one.
    #[error("the lease id specified did not match the lease id for the blob")]
    LeaseIdMismatchWithBlobOperation,
    /// A blob operation named a lease id but the blob has no active lease.
    #[error("there is currently no lease on the blob")]
    LeaseNotPresentWithBlobOperation,
    /// A container operation named a lease id that is not the active one.
    #[error("the lease id specified did not match the lease id for the container")]
    LeaseIdMismatchWithContainerOperation,
    /// A container operation named a lease id but the container has no active lease.
    #[error("there is currently no lease on the container")]
    LeaseNotPresentWithContainerOperation,
    /// A lease duration or break period out of range.
    #[error("invalid lease parameter: {0}")]
    InvalidLeaseParameter(&'static str),
    /// A block id that is empty, longer than 64 bytes, or of another length than the blob's blocks.
    #[error("invalid block id: {0}")]
    InvalidBlockId(&'static str),
    /// Put Block List named a block that does not exist.
    #[error("the specified block list is invalid: {0}")]
    InvalidBlockList(String),
    /// Too many committed (50,000) or uncommitted (100,000) blocks.
    #[error("the block count exceeds the limit: {0}")]
    BlockCountExceedsLimit(&'static str),
    /// A body larger than the operation allows.
    #[error("the request body is too large: {size} bytes, limit {limit}")]
    RequestEntityTooLarge {
        /// Bytes received (at least).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A parameter out of its range (e.g. maxresults).
    #[error("{param} is out of range: {reason}")]
    OutOfRangeQueryParameterValue {
        /// The parameter.
        param: &'static str,
        /// Its allowed range.
        reason: &'static str,
    },
    /// An access control list that breaks Azure's rules (too many policies, a bad id).
    #[error("the access policies are not valid: {0}")]
    InvalidAcl(String),
    /// A copy's source blob could not be read (it or its container does not exist).
    #[error("{0}")]
    CannotVerifyCopySource(String),
    /// A copy's source conditions (`x-ms-source-if-*`) failed.
    #[error("the source condition specified using HTTP conditional header(s) is not met")]
    SourceConditionNotMet,
    /// A copy source URL longer than [`crate::blob::MAX_COPY_SOURCE_BYTES`].
    #[error("the copy source is too long: {0} bytes")]
    CopySourceTooLong(usize),
}

error_codes!(BlobError {
    InvalidAcl => (400, "InvalidXmlDocument"),
    CannotVerifyCopySource => (404, "CannotVerifyCopySource"),
    SourceConditionNotMet => (412, "SourceConditionNotMet"),
    CopySourceTooLong => (400, "InvalidHeaderValue"),
    ContainerNotFound => (404, "ContainerNotFound"),
    ContainerAlreadyExists => (409, "ContainerAlreadyExists"),
    BlobNotFound => (404, "BlobNotFound"),
    BlobAlreadyExists => (409, "BlobAlreadyExists"),
    ConditionNotMet => (412, "ConditionNotMet"),
    NotModified => (304, "ConditionNotMet"),
    UnsatisfiableCondition => (400, "UnsatisfiableCondition"),
    MultipleConditionHeadersNotSupported => (400, "MultipleConditionHeadersNotSupported"),
    InvalidRange => (416, "InvalidRange"),
    LeaseAlreadyPresent => (409, "LeaseAlreadyPresent"),
    LeaseIdMismatchWithLeaseOperation => (409, "LeaseIdMismatchWithLeaseOperation"),
    LeaseNotPresentWithLeaseOperation => (409, "LeaseNotPresentWithLeaseOperation"),
    LeaseIsBreakingAndCannotBeAcquired => (409, "LeaseIsBreakingAndCannotBeAcquired"),
    LeaseIsBreakingAndCannotBeChanged => (409, "LeaseIsBreakingAndCannotBeChanged"),
    LeaseIsBrokenAndCannotBeRenewed => (409, "LeaseIsBrokenAndCannotBeRenewed"),
    LeaseIdMissing => (412, "LeaseIdMissing"),
    LeaseIdMismatchWithBlobOperation => (412, "LeaseIdMismatchWithBlobOperation"),
    LeaseNotPresentWithBlobOperation => (412, "LeaseNotPresentWithBlobOperation"),
    LeaseIdMismatchWithContainerOperation => (412, "LeaseIdMismatchWithContainerOperation"),
    LeaseNotPresentWithContainerOperation => (412, "LeaseNotPresentWithContainerOperation"),
    InvalidLeaseParameter => (400, "InvalidHeaderValue"),
    InvalidBlockId => (400, "InvalidQueryParameterValue"),
    InvalidBlockList => (400, "InvalidBlockList"),
    BlockCountExceedsLimit => (409, "BlockCountExceedsLimit"),
    RequestEntityTooLarge => (413, "RequestEntityTooLarge"),
    OutOfRangeQueryParameterValue => (400, "OutOfRangeQueryParameterValue"),
});

/// Errors of queue and message operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// A name broke the naming rules.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The engine failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The account's quota, or the host's headroom, would be exceeded; nothing was written.
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// The queue does not exist.
    #[error("the specified queue does not exist: {0}")]
    QueueNotFound(String),
    /// Create Queue on a name that exists with other metadata.
    #[error("the specified queue already exists with different metadata: {0}")]
    QueueAlreadyExists(String),
    /// The message is gone, or the pop receipt is stale (someone else holds the message now).
    #[error("the specified message does not exist")]
    MessageNotFound,
    /// A message larger than the service's limit.
    #[error(
        "the request body is too large and exceeds the maximum permissible limit ({size} > {max} bytes)"
    )]
    RequestBodyTooLarge {
        /// The message size in bytes.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// A parameter outside its allowed range.
    #[error("{param} is out of range: {reason}")]
    OutOfRangeQueryParameterValue {
        /// The parameter.
        param: &'static str,
        /// Its allowed range.
        reason: &'static str,
    },
    /// A parameter that is in range but inconsistent with another.
    #[error("{param} is invalid: {reason}")]
    InvalidQueryParameterValue {
        /// The parameter.
        param: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// Stored access policies that break Azure's rules (too many, a bad id or permission).
    #[error("the access policies are not valid: {0}")]
    InvalidAcl(String),
}

error_codes!(QueueError {
    InvalidAcl => (400, "InvalidXmlDocument"),
    QueueNotFound => (404, "QueueNotFound"),
    QueueAlreadyExists => (409, "QueueAlreadyExists"),
    MessageNotFound => (404, "MessageNotFound"),
    RequestBodyTooLarge => (413, "RequestBodyTooLarge"),
    OutOfRangeQueryParameterValue => (400, "OutOfRangeQueryParameterValue"),
    InvalidQueryParameterValue => (400, "InvalidQueryParameterValue"),
});

/// Errors of table and entity operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// A name broke the naming rules.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The engine failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The account's quota, or the host's headroom, would be exceeded; nothing was written.
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// The table does not exist.
    #[error("the table specified does not exist: {0}")]
    TableNotFound(String),
    /// Create Table on a name that exists (names compare case-insensitively).
    #[error("the table specified already exists: {0}")]
    TableAlreadyExists(String),
    /// Insert on a (PartitionKey, RowKey) that exists.
    #[error("the specified entity already exists")]
    EntityAlreadyExists,
    /// The entity does not exist.
    #[error("the specified resource does not exist")]
    ResourceNotFound,
    /// If-Match named another ETag than the entity's.
    #[error("the update condition specified in the request was not satisfied")]
    UpdateConditionNotSatisfied,
    /// A property value over 64 KiB.
    #[error("the property {0:?} is larger than 64 KiB")]
    PropertyValueTooLarge(String),
    /// The entity is over 1 MiB.
    #[error("the entity is larger than 1 MiB ({0} bytes)")]
    EntityTooLarge(usize),
    /// More than 252 custom properties.
    #[error("the entity has {0} properties, at most 252 are allowed")]
    TooManyProperties(usize),
    /// A value the Edm type does not allow (e.g. a DateTime before 1601).
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// A `$filter`, `$select`, `$top` or continuation token that cannot be parsed or is out of range.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// A batch with more than 100 operations, or none.
    #[error("the batch has {0} operations; 1..=100 are allowed")]
    InvalidBatchSize(usize),
    /// A batch whose operations name more than one PartitionKey.
    #[error("all commands in a batch must operate on the same partition")]
    CommandsInBatchActOnDifferentPartitions,
    /// A batch that names one entity twice.
    #[error("the batch names the entity (RowKey {0:?}) more than once")]
    InvalidDuplicateRow(String),
    /// One operation of a batch failed; nothing of the batch was applied.
    #[error("{index}:{source}")]
    BatchOperationFailed {
        /// The index of the failing operation.
        index: usize,
        /// Why it failed.
        source: Box<TableError>,
    },
    /// Stored access policies that break Azure's rules (too many, a bad id or permission).
    #[error("the access policies are not valid: {0}")]
    InvalidAcl(String),
}

impl TableError {
    /// The Azure error code name.
    pub fn code(&self) -> &'static str {
        match self {
            TableError::Name(e) => e.code(),
            TableError::Storage(e) => e.code(),
            TableError::Quota(e) => e.code(),
            TableError::TableNotFound(_) => "TableNotFound",
            TableError::TableAlreadyExists(_) => "TableAlreadyExists",
            TableError::EntityAlreadyExists => "EntityAlreadyExists",
            TableError::ResourceNotFound => "ResourceNotFound",
            TableError::UpdateConditionNotSatisfied => "UpdateConditionNotSatisfied",
            TableError::PropertyValueTooLarge(_) => "PropertyValueTooLarge",
            TableError::EntityTooLarge(_) => "EntityTooLarge",
            TableError::TooManyProperties(_) => "TooManyProperties",
            TableError::InvalidValue(_) | TableError::InvalidQuery(_) => "InvalidInput",
            TableError::InvalidBatchSize(_) => "InvalidInput",
            TableError::CommandsInBatchActOnDifferentPartitions => {
                "CommandsInBatchActOnDifferentPartitions"
            }
            TableError::InvalidDuplicateRow(_) => "InvalidDuplicateRow",
            TableError::InvalidAcl(_) => "InvalidXmlDocument",
            TableError::BatchOperationFailed { source, .. } => source.code(),
        }
    }

    /// The HTTP status it maps to.
    pub fn status(&self) -> u16 {
        match self {
            TableError::Name(_) => 400,
            TableError::Storage(e) => e.status(),
            TableError::Quota(e) => e.status(),
            TableError::TableNotFound(_) | TableError::ResourceNotFound => 404,
            TableError::TableAlreadyExists(_) | TableError::EntityAlreadyExists => 409,
            TableError::UpdateConditionNotSatisfied => 412,
            TableError::BatchOperationFailed { source, .. } => source.status(),
            _ => 400,
        }
    }
}

/// Errors that can come out of any family: lets the committer tell an engine failure (abort the
/// whole batch) from an operation's own refusal (it wrote nothing; the batch goes on).
pub(crate) trait FamilyError: From<StorageError> + Send + 'static {
    fn is_engine_failure(&self) -> bool;
}

macro_rules! family_error {
    ($($t:ty),*) => {$(
        impl FamilyError for $t {
            fn is_engine_failure(&self) -> bool {
                matches!(self, Self::Storage(_))
            }
        }
    )*};
}
family_error!(BlobError, QueueError, TableError);

/// Only refunds are charged where the error type is [`StorageError`], and they are never
/// refused; should one be, it is an internal error.
impl From<QuotaError> for StorageError {
    fn from(e: QuotaError) -> Self {
        StorageError::Internal(e.to_string())
    }
}

impl FamilyError for StorageError {
    fn is_engine_failure(&self) -> bool {
        true
    }
}

macro_rules! redb_into_family {
    ($fam:ty: $($t:ty),*) => {$(
        impl From<$t> for $fam {
            fn from(e: $t) -> Self {
                <$fam>::Storage(StorageError::from(e))
            }
        }
    )*};
}
redb_into_family!(BlobError: redb::StorageError, redb::TableError);
redb_into_family!(QueueError: redb::StorageError, redb::TableError);
redb_into_family!(TableError: redb::StorageError, redb::TableError);
