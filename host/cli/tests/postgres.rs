//! A host whose storage is in PostgreSQL, through the real binary: `rolehost serve --storage
//! postgres://...` runs a worker, and `rolehost storage --storage postgres://...` in other
//! processes puts its work and reads its results while the host runs (a redb file would be
//! held by the host; a database is shared).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Host, service_dir};
use rolehost_storage_pg::scratch::ScratchDatabase;

#[test]
fn a_host_on_postgres_storage_works_and_other_processes_share_its_storage() {
    let db = ScratchDatabase::on_test_server();
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_with(
        &dir.path().join("host"),
        &["--storage".as_ref(), db.url().as_ref()],
    );
    let svc = service_dir(
        &dir.path().join("svc"),
        "[service]\nname = \"tally\"\n\
         [roles.Counter]\nkind = \"worker\"\ncomponent = \"{guest:counter}\"\ninstances = 2\n",
    );
    host.ok(&["deploy", &svc]);
    host.wait_running("tally", "Counter", 2);
    let storage = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_rolehost"))
            .args(["storage", "--storage", db.url(), "--account", "tally"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rolehost storage {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    storage(&["queue", "put", "increments", "votes", "--repeat", "20"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count = Command::new(env!("CARGO_BIN_EXE_rolehost"))
            .args(["storage", "--storage", db.url(), "--account", "tally"])
            .args(["blob", "get", "counters", "votes"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&count.stdout).trim() == "20" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the counter did not reach 20: {}{}",
            String::from_utf8_lossy(&count.stdout),
            host.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let queues = storage(&["queue", "list"]);
    assert!(queues.contains("increments"), "{queues}");
    // The host's own records point at the database, not at a file of its data directory.
    assert!(
        !dir.path().join("host").join("storage.redb").exists(),
        "the host made a redb file beside its PostgreSQL storage"
    );
}
