//! An account's settings: small named values the engine keeps for the layers above it (the
//! REST door keeps each service's properties, CORS rules among them, here), opaque to it.

use crate::engine::SETTINGS;
use crate::{AccountName, RedbStore, StorageError};

/// Largest setting value: a service's properties with Azure's five CORS rules fit in a few KiB.
pub const MAX_SETTING_BYTES: usize = 64 * 1024;
/// Longest setting name.
pub const MAX_SETTING_NAME: usize = 64;

/// Settings, as any engine keeps them.
pub trait SettingsStore: Send + Sync {
    /// The value of `name` in `account`, if set.
    fn get_setting(
        &self,
        account: &AccountName,
        name: &str,
    ) -> Result<Option<Vec<u8>>, StorageError>;

    /// Sets `name` in `account` (at most [`MAX_SETTING_BYTES`]), durably.
    fn set_setting(
        &self,
        account: &AccountName,
        name: &str,
        value: Vec<u8>,
    ) -> Result<(), StorageError>;

    /// Removes every setting of `account` (its storage is purged).
    fn clear_settings(&self, account: &AccountName) -> Result<(), StorageError>;
}

/// Checks a setting's name and value length (every engine does before it stores one).
pub fn check_setting(name: &str, len: usize) -> Result<(), StorageError> {
    if name.is_empty() || name.len() > MAX_SETTING_NAME || name.contains('\0') {
        return Err(StorageError::Internal(format!(
            "setting name {name:?}: 1 to {MAX_SETTING_NAME} bytes"
        )));
    }
    if len > MAX_SETTING_BYTES {
        return Err(StorageError::Internal(format!(
            "setting {name}: {len} bytes, at most {MAX_SETTING_BYTES}"
        )));
    }
    Ok(())
}

impl SettingsStore for RedbStore {
    fn get_setting(
        &self,
        account: &AccountName,
        name: &str,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        check_setting(name, 0)?;
        let txn = self.engine.read()?;
        let t = txn.open_table(SETTINGS)?;
        Ok(t.get((account.as_str(), name))?.map(|v| v.value().to_vec()))
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
        self.engine
            .write(true, move |ctx| -> Result<(), StorageError> {
                ctx.txn
                    .open_table(SETTINGS)?
                    .insert((a.as_str(), n.as_str()), value.as_slice())?;
                Ok(())
            })
    }

    fn clear_settings(&self, account: &AccountName) -> Result<(), StorageError> {
        let a = account.as_str().to_owned();
        self.engine
            .write(true, move |ctx| -> Result<(), StorageError> {
                // Setting names cannot contain NUL, so ("a", "")..("a\0", "") is exactly a's.
                let end = format!("{a}\0");
                ctx.txn
                    .open_table(SETTINGS)?
                    .retain_in((a.as_str(), "")..(end.as_str(), ""), |_, _| false)?;
                Ok(())
            })
    }
}
