//! Test helper for `tests/crash.rs`: writes to a redb store from several threads and prints one
//! line per acknowledged write, until it is killed. Not part of the product.
//!
//! Usage: `rolehost-storage-crash-writer <db-path> <run-id>`

use std::sync::Arc;

use rolehost_storage::{RedbStore, StorageOptions};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (path, run) = (&args[1], &args[2]);
    let store = Arc::new(RedbStore::open(path, StorageOptions::default()).expect("open"));
    rolehost_storage::crash_writer::write_until_killed(store, run);
}
