//! Durability of the redb engine under SIGKILL (the check is `crash_check`, shared with the
//! PostgreSQL engine's crash test).

mod crash_check;

use std::sync::Arc;

use rolehost_storage::{RedbStore, StorageOptions};

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    crash_check::acknowledged_writes_survive_sigkill(
        std::path::Path::new(env!("CARGO_BIN_EXE_rolehost-storage-crash-writer")),
        path.to_str().unwrap(),
        || {
            Arc::new(
                RedbStore::open(&path, StorageOptions::default())
                    .unwrap_or_else(|e| panic!("reopen after a kill: {e}")),
            )
        },
    );
}
