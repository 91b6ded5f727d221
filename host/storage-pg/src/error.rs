//! How PostgreSQL's failures become the storage API's: a lost connection is an unknown
//! outcome, never "did not happen"; anything else the server said is a database error with its
//! text. No `postgres` type leaves this crate.

use postgres::error::SqlState;
use rolehost_storage::quota::QuotaError;
use rolehost_storage::{BlobError, QueueError, StorageError, TableError};

/// A failure of the client, kept until the caller says what it means.
#[derive(Debug)]
pub struct PgError(pub postgres::Error);

impl From<postgres::Error> for PgError {
    fn from(e: postgres::Error) -> Self {
        PgError(e)
    }
}

impl PgError {
    /// Whether a racing writer made the same key first.
    pub fn is_unique_violation(&self) -> bool {
        self.0.code() == Some(&SqlState::UNIQUE_VIOLATION)
    }

    /// Whether running the operation again may succeed: a racing writer made the key first,
    /// or the server broke a deadlock or a serialization conflict by aborting us.
    pub fn is_race(&self) -> bool {
        self.is_unique_violation()
            || self.0.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
            || self.0.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
    }
}

/// [`StorageError::OutcomeUnknown`] saying `detail`.
pub fn outcome_unknown(detail: String) -> StorageError {
    StorageError::OutcomeUnknown { detail }
}

/// States in which the server is going away or not accepting work: the statement may have
/// run, or not.
fn server_going_away(code: &SqlState) -> bool {
    [
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::CONNECTION_FAILURE,
        SqlState::CONNECTION_EXCEPTION,
        SqlState::CONNECTION_DOES_NOT_EXIST,
        SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
        SqlState::SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION,
        SqlState::TRANSACTION_RESOLUTION_UNKNOWN,
    ]
    .contains(code)
}

impl From<PgError> for StorageError {
    fn from(PgError(e): PgError) -> Self {
        match e.as_db_error() {
            Some(db) if !server_going_away(db.code()) => StorageError::Database {
                detail: format!("{}: {}", db.code().code(), db.message()),
                io: matches!(
                    db.code(),
                    &SqlState::DISK_FULL | &SqlState::IO_ERROR | &SqlState::DATA_CORRUPTED
                ),
            },
            // The connection broke (or the server is shutting down) with the statement in
            // flight: whether it, or the commit, took effect is unknown.
            _ => outcome_unknown(e.to_string()),
        }
    }
}

macro_rules! family_from_pg {
    ($($t:ty),*) => {$(
        impl From<PgError> for $t {
            fn from(e: PgError) -> Self {
                <$t>::Storage(StorageError::from(e))
            }
        }
    )*};
}
family_from_pg!(BlobError, QueueError, TableError);

/// A record that does not decode.
pub fn corrupt(table: &'static str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt {
        table,
        detail: e.to_string(),
    }
}

/// How one attempt at an operation that may race another writer ended: for good, or beaten
/// to a key (a unique violation, a deadlock, a serialization failure), to run again.
pub(crate) enum Attempt<E> {
    /// It failed for good.
    Failed(E),
    /// A racing writer got in the way.
    Race,
}

impl<E: From<StorageError>> From<PgError> for Attempt<E> {
    fn from(e: PgError) -> Self {
        if e.is_race() {
            Attempt::Race
        } else {
            Attempt::Failed(E::from(e.into()))
        }
    }
}

impl<E: From<StorageError>> From<StorageError> for Attempt<E> {
    fn from(e: StorageError) -> Self {
        Attempt::Failed(e.into())
    }
}

macro_rules! attempt_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Attempt<$t> {
            fn from(e: $t) -> Self {
                Attempt::Failed(e)
            }
        }
        impl From<QuotaError> for Attempt<$t> {
            fn from(e: QuotaError) -> Self {
                Attempt::Failed(e.into())
            }
        }
    )*};
}
attempt_from!(BlobError, TableError);

/// Most times an operation runs while racing writers keep beating it to a key.
pub const MAX_ATTEMPTS: usize = 4;

/// Runs `attempt` until a racing writer no longer beats it (at most [`MAX_ATTEMPTS`] times);
/// `what` names what kept changing if they always do.
pub(crate) fn retried<T, E: From<StorageError>>(
    what: &str,
    mut attempt: impl FnMut() -> Result<T, Attempt<E>>,
) -> Result<T, E> {
    for _ in 0..MAX_ATTEMPTS {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(Attempt::Failed(e)) => return Err(e),
            Err(Attempt::Race) => continue,
        }
    }
    Err(StorageError::Internal(format!(
        "racing writers kept changing {what}; gave up after {MAX_ATTEMPTS} attempts"
    ))
    .into())
}
