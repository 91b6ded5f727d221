//! Durability of the PostgreSQL engine under SIGKILL: a real writer process talking to a real
//! server is killed at random moments, many times; every write it acknowledged is in the
//! database and every blob present is whole.

#[path = "../../storage/tests/crash_check/mod.rs"]
mod crash_check;

use std::sync::Arc;

use rolehost_storage::StorageOptions;
use rolehost_storage_pg::scratch::ScratchDatabase;
use rolehost_storage_pg::{PgOptions, PgStore};

#[test]
fn acknowledged_writes_survive_sigkill() {
    let db = ScratchDatabase::on_test_server();
    crash_check::acknowledged_writes_survive_sigkill(
        std::path::Path::new(env!("CARGO_BIN_EXE_rolehost-storage-pg-crash-writer")),
        db.url(),
        || {
            Arc::new(
                PgStore::open(db.url(), &StorageOptions::default(), &PgOptions::default())
                    .unwrap_or_else(|e| panic!("open after a kill: {e}")),
            )
        },
    );
}
