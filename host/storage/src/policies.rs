//! Stored access policies of queues and tables (containers keep theirs in their ACL): read,
//! replaced and removed with their queue or table, in [`SIGNED_IDENTIFIERS`].

use crate::StorageError;
use crate::blob::AccessPolicy;
use crate::engine::{SIGNED_IDENTIFIERS, WriteCtx, decode, encode};

/// What a queue's or a table's policies are kept under.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Queue,
    Table,
}

impl Kind {
    fn key(self) -> &'static str {
        match self {
            Kind::Queue => "queue",
            Kind::Table => "table",
        }
    }
}

/// The policies of `name` (none if never set).
pub(crate) fn read(
    txn: &redb::ReadTransaction,
    a: &str,
    kind: Kind,
    name: &str,
) -> Result<Vec<AccessPolicy>, StorageError> {
    let t = txn.open_table(SIGNED_IDENTIFIERS)?;
    match t.get((a, kind.key(), name))? {
        Some(v) => decode("signed_identifiers", v.value()),
        None => Ok(Vec::new()),
    }
}

/// Replaces the policies of `name`. Bounded by [`crate::blob::MAX_ACCESS_POLICIES`] of
/// bounded size, checked by the caller: not charged to the quota, like a container's ACL.
pub(crate) fn write(
    ctx: &WriteCtx<'_>,
    a: &str,
    kind: Kind,
    name: &str,
    policies: &[AccessPolicy],
) -> Result<(), StorageError> {
    let mut t = ctx.txn.open_table(SIGNED_IDENTIFIERS)?;
    if policies.is_empty() {
        t.remove((a, kind.key(), name))?;
    } else {
        t.insert((a, kind.key(), name), encode(&policies).as_slice())?;
    }
    Ok(())
}

/// Removes the policies of `name` (its queue or table is being deleted).
pub(crate) fn remove(
    ctx: &WriteCtx<'_>,
    a: &str,
    kind: Kind,
    name: &str,
) -> Result<(), StorageError> {
    ctx.txn
        .open_table(SIGNED_IDENTIFIERS)?
        .remove((a, kind.key(), name))?;
    Ok(())
}
