//! Shared test setup: a store with a manual clock, on either engine.
//!
//! The conformance suite: a test written as `fn name(e: Engine)` and listed in
//! [`on_every_engine!`] runs once on redb (a temp file) and once on PostgreSQL (a database of
//! its own on the test server `scripts/test` starts), with the same assertions.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::sync::Arc;

use rolehost_storage::{
    AccountName, Backend, ManualClock, RedbStore, StorageError, StorageOptions, Timestamp,
};
use rolehost_storage_pg::scratch::ScratchDatabase;
use rolehost_storage_pg::{PgOptions, PgStore};

/// What the suite needs of an engine: all of it.
pub(crate) trait Store: Backend {}
impl<T: Backend> Store for T {}

pub(crate) struct Fixture<S: ?Sized = RedbStore> {
    pub store: Arc<S>,
    pub clock: ManualClock,
    pub acct: AccountName,
    pub dir: tempfile::TempDir,
    /// The PostgreSQL database, dropped after the store.
    pub db: Option<ScratchDatabase>,
}

/// The engine a conformance test runs on.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Engine {
    Redb,
    Postgres,
}

fn manual_options() -> (ManualClock, StorageOptions) {
    let clock = ManualClock::new(Timestamp::from_secs(1_800_000_000));
    let options = StorageOptions {
        clock: Arc::new(clock.clone()),
        id_seed: Some(7),
        ..StorageOptions::default()
    };
    (clock, options)
}

impl Engine {
    /// A new, empty store on this engine, with a manual clock.
    pub(crate) fn fixture(self) -> Fixture<dyn Store> {
        let (clock, options) = manual_options();
        self.fixture_with(clock, options)
    }

    /// A new, empty store on this engine opened with `options`.
    pub(crate) fn fixture_with(
        self,
        clock: ManualClock,
        options: StorageOptions,
    ) -> Fixture<dyn Store> {
        let dir = tempfile::tempdir().unwrap();
        let (store, db) = self.open(&dir, &options).unwrap();
        Fixture {
            store,
            clock,
            acct: AccountName::new("acct").unwrap(),
            dir,
            db,
        }
    }

    /// Opens a new store on this engine (in `dir` for redb, a new database for PostgreSQL).
    pub(crate) fn open(
        self,
        dir: &tempfile::TempDir,
        options: &StorageOptions,
    ) -> Result<(Arc<dyn Store>, Option<ScratchDatabase>), StorageError> {
        match self {
            Engine::Redb => Ok((
                Arc::new(RedbStore::open(dir.path().join("s.redb"), options.clone())?),
                None,
            )),
            Engine::Postgres => {
                let db = ScratchDatabase::on_test_server();
                let pg = PgOptions {
                    max_clock_skew: None,
                    ..PgOptions::default()
                };
                let store = PgStore::open(db.url(), options, &pg)?;
                Ok((Arc::new(store), Some(db)))
            }
        }
    }
}

impl Engine {
    /// Opens the store of `dir` or `db` again (the one it had must be dropped first), with
    /// the default options.
    pub(crate) fn reopen(
        self,
        dir: &tempfile::TempDir,
        db: Option<&ScratchDatabase>,
    ) -> Arc<dyn Store> {
        match (self, db) {
            (Engine::Postgres, Some(db)) => {
                let pg = PgOptions {
                    max_clock_skew: None,
                    ..PgOptions::default()
                };
                Arc::new(PgStore::open(db.url(), &StorageOptions::default(), &pg).unwrap())
            }
            _ => Arc::new(
                RedbStore::open(dir.path().join("s.redb"), StorageOptions::default()).unwrap(),
            ),
        }
    }
}

/// Runs each listed `fn name(e: Engine)` as `on_redb::name` and `on_postgres::name`.
#[allow(unused_macros, reason = "each test binary uses a different part")]
macro_rules! on_every_engine {
    ($($name:ident),* $(,)?) => {
        mod on_redb {
            $(#[test] fn $name() { super::$name(crate::common::Engine::Redb) })*
        }
        mod on_postgres {
            $(#[test] fn $name() { super::$name(crate::common::Engine::Postgres) })*
        }
    };
}
#[allow(unused_imports, reason = "each test binary uses a different part")]
pub(crate) use on_every_engine;

pub(crate) fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (clock, options) = manual_options();
    let store = Arc::new(RedbStore::open(dir.path().join("s.redb"), options).unwrap());
    Fixture {
        store,
        clock,
        acct: AccountName::new("acct").unwrap(),
        dir,
        db: None,
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
