//! Test helper for `tests/crash.rs`: writes to a PostgreSQL store from several threads and
//! prints one line per acknowledged write, until it is killed. Not part of the product.
//!
//! Usage: `rolehost-storage-pg-crash-writer <url> <run-id>`

use std::sync::Arc;

use rolehost_storage::StorageOptions;
use rolehost_storage_pg::{PgOptions, PgStore};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, run) = (&args[1], &args[2]);
    let store =
        PgStore::open(url, &StorageOptions::default(), &PgOptions::default()).expect("open");
    rolehost_storage::crash_writer::write_until_killed(Arc::new(store), run);
}
