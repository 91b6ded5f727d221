//! Shared test setup: a store on a temp file with a manual clock.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::sync::Arc;

use rolehost_storage::{AccountName, ManualClock, RedbStore, StorageOptions, Timestamp};

pub(crate) struct Fixture {
    pub store: RedbStore,
    pub clock: ManualClock,
    pub acct: AccountName,
    pub dir: tempfile::TempDir,
}

pub(crate) fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Timestamp::from_secs(1_800_000_000));
    let options = StorageOptions {
        clock: Arc::new(clock.clone()),
        id_seed: Some(7),
        ..StorageOptions::default()
    };
    let store = RedbStore::open(dir.path().join("s.redb"), options).unwrap();
    Fixture {
        store,
        clock,
        acct: AccountName::new("acct").unwrap(),
        dir,
    }
}

/// The Azure code of an error result.
pub(crate) fn code<T: std::fmt::Debug, E: CodeOf>(r: Result<T, E>) -> &'static str {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code_of(),
    }
}

pub(crate) trait CodeOf {
    fn code_of(&self) -> &'static str;
}
impl CodeOf for rolehost_storage::BlobError {
    fn code_of(&self) -> &'static str {
        self.code()
    }
}
impl CodeOf for rolehost_storage::QueueError {
    fn code_of(&self) -> &'static str {
        self.code()
    }
}
impl CodeOf for rolehost_storage::TableError {
    fn code_of(&self) -> &'static str {
        self.code()
    }
}
