//! Settings (the REST door's service properties) and stored access policies of queues and
//! tables, as the redb engine keeps them.

use rolehost_storage::blob::AccessPolicy;
use rolehost_storage::settings::{SettingsStore, check_setting};
use rolehost_storage::{AccountName, StorageError};

use crate::PgStore;
use crate::error::{PgError, corrupt};
use crate::pool::Session;

impl SettingsStore for PgStore {
    fn get_setting(
        &self,
        account: &AccountName,
        name: &str,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        check_setting(name, 0)?;
        let (a, n) = (account.as_str().to_owned(), name.to_owned());
        self.pool.run(move |c| -> Result<_, StorageError> {
            let row = c.auto()?.query_opt(
                "SELECT value FROM rh_settings WHERE account = $1 AND name = $2",
                &[&a, &n],
            )?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn set_setting(
        &self,
        account: &AccountName,
        name: &str,
        value: Vec<u8>,
    ) -> Result<(), StorageError> {
        check_setting(name, value.len())?;
        let (a, n) = (account.as_str().to_owned(), name.to_owned());
        // Bounded (a handful of names of at most 64 KiB per account): not charged to the quota.
        self.pool.run(move |c| -> Result<_, StorageError> {
            c.auto()?.execute(
                "INSERT INTO rh_settings (account, name, value) VALUES ($1, $2, $3)
                 ON CONFLICT (account, name) DO UPDATE SET value = EXCLUDED.value",
                &[&a, &n, &value],
            )?;
            Ok(())
        })
    }

    fn clear_settings(&self, account: &AccountName) -> Result<(), StorageError> {
        let a = account.as_str().to_owned();
        self.pool.run(move |c| -> Result<_, StorageError> {
            c.auto()?
                .execute("DELETE FROM rh_settings WHERE account = $1", &[&a])?;
            Ok(())
        })
    }
}

/// What a queue's or a table's stored access policies are kept under.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PolicyKind {
    Queue,
    Table,
}

impl PolicyKind {
    fn key(self) -> &'static str {
        match self {
            PolicyKind::Queue => "queue",
            PolicyKind::Table => "table",
        }
    }
}

/// The policies of `name` (none if never set).
pub(crate) fn read_policies(
    s: &mut Session<'_>,
    a: &str,
    kind: PolicyKind,
    name: &str,
) -> Result<Vec<AccessPolicy>, StorageError> {
    let row = s.query_opt(
        "SELECT policies FROM rh_policies WHERE account = $1 AND kind = $2 AND name = $3",
        &[&a, &kind.key(), &name],
    )?;
    match row {
        Some(r) => {
            let bytes: Vec<u8> = r.get(0);
            postcard::from_bytes(&bytes).map_err(|e| corrupt("rh_policies", e))
        }
        None => Ok(Vec::new()),
    }
}

/// Replaces the policies of `name` (bounded by `MAX_ACCESS_POLICIES`, checked by the caller:
/// not charged to the quota, as in redb).
pub(crate) fn write_policies(
    s: &mut Session<'_>,
    a: &str,
    kind: PolicyKind,
    name: &str,
    policies: &[AccessPolicy],
) -> Result<(), PgError> {
    if policies.is_empty() {
        remove_policies(s, a, kind, name)
    } else {
        let bytes = postcard::to_allocvec(policies).unwrap_or_default();
        s.execute(
            "INSERT INTO rh_policies (account, kind, name, policies) VALUES ($1, $2, $3, $4)
             ON CONFLICT (account, kind, name) DO UPDATE SET policies = EXCLUDED.policies",
            &[&a, &kind.key(), &name, &bytes],
        )?;
        Ok(())
    }
}

/// Removes the policies of `name` (its queue or table is being deleted).
pub(crate) fn remove_policies(
    s: &mut Session<'_>,
    a: &str,
    kind: PolicyKind,
    name: &str,
) -> Result<(), PgError> {
    s.execute(
        "DELETE FROM rh_policies WHERE account = $1 AND kind = $2 AND name = $3",
        &[&a, &kind.key(), &name],
    )?;
    Ok(())
}
