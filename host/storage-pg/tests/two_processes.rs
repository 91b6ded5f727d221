//! Two processes on one database: a queue drained by both at once hands out each message once
//! and refuses stale receipts; entity group transactions racing from both stay all or
//! nothing; a blob lease taken in one is honoured by the other; a put in one wakes a watcher in
//! the other.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rolehost_storage::blob::{BlobStore, Conditions, PutBlobOptions};
use rolehost_storage::queue::{PutMessageOptions, QueueStore};
use rolehost_storage::table::{EdmValue, Entity, TableOp, TableStore};
use rolehost_storage::{AccountName, StorageOptions};
use rolehost_storage_pg::scratch::ScratchDatabase;
use rolehost_storage_pg::{PgOptions, PgStore};

const PEER: &str = env!("CARGO_BIN_EXE_rolehost-storage-pg-peer");

fn open(db: &ScratchDatabase) -> PgStore {
    PgStore::open(db.url(), &StorageOptions::default(), &PgOptions::default()).unwrap()
}

#[test]
fn two_processes_drain_one_queue_with_no_duplicates_and_stale_receipts_refused() {
    let db = ScratchDatabase::on_test_server();
    let store = open(&db);
    let a = AccountName::new("shared").unwrap();
    store.create_queue(&a, "work", vec![]).unwrap();
    const N: usize = 600;
    for i in 0..N {
        store
            .put_message(
                &a,
                "work",
                format!("m{i}").as_bytes(),
                PutMessageOptions::default(),
            )
            .unwrap();
    }
    let peers: Vec<_> = (0..2)
        .map(|_| {
            Command::new(PEER)
                .args(["drain", db.url(), "shared", "work"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut seen = Vec::new();
    let mut stale_checks = 0;
    for p in peers {
        let out = p.wait_with_output().unwrap();
        assert!(out.status.success(), "a peer failed: {:?}", out.status);
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            if line == "stale ok" {
                stale_checks += 1;
            } else {
                seen.push(line.to_string());
            }
        }
    }
    assert_eq!(stale_checks, 2, "each process checked a stale receipt");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "a message was handed out twice");
    assert_eq!(seen.len(), N, "every message was taken once");
    assert_eq!(
        store
            .get_queue_properties(&a, "work")
            .unwrap()
            .approximate_message_count,
        0
    );
}

#[test]
fn entity_group_transactions_racing_from_two_processes_stay_all_or_nothing() {
    let db = ScratchDatabase::on_test_server();
    let store = open(&db);
    let a = AccountName::new("shared").unwrap();
    store.create_table(&a, "Moves").unwrap();
    for (rk, n) in [("A", 1000i64), ("B", 0)] {
        store
            .execute(
                &a,
                "Moves",
                TableOp::Insert(Entity::new("p", rk).with("N", EdmValue::Int64(n))),
            )
            .unwrap();
    }
    let peers: Vec<_> = (0..2)
        .map(|_| {
            Command::new(PEER)
                .args(["batch", db.url(), "shared", "Moves", "150"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for p in peers {
        let out = p.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "done");
    }
    let n = |rk: &str| match store
        .get_entity(&a, "Moves", "p", rk, None)
        .unwrap()
        .properties
        .get("N")
    {
        Some(EdmValue::Int64(n)) => *n,
        other => panic!("{other:?}"),
    };
    let (na, nb) = (n("A"), n("B"));
    assert_eq!(
        na + nb,
        1000,
        "a transaction was applied in part: A={na} B={nb}"
    );
    assert!(nb > 0, "no transaction went through");
}

#[test]
fn a_blob_lease_held_in_one_process_is_honoured_in_the_other() {
    let db = ScratchDatabase::on_test_server();
    let store = open(&db);
    let a = AccountName::new("shared").unwrap();
    store.create_container(&a, "box", vec![]).unwrap();
    store
        .put_blob(
            &a,
            "box",
            "leader",
            &mut &b"v1"[..],
            PutBlobOptions::default(),
        )
        .unwrap();
    let mut peer = Command::new(PEER)
        .args(["lease", db.url(), "shared", "box", "leader"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut id = String::new();
    BufReader::new(peer.stdout.take().unwrap())
        .read_line(&mut id)
        .unwrap();
    let id = id.trim().to_string();
    assert!(!id.is_empty());
    let refused = store
        .put_blob(
            &a,
            "box",
            "leader",
            &mut &b"v2"[..],
            PutBlobOptions::default(),
        )
        .unwrap_err();
    assert_eq!(refused.code(), "LeaseIdMissing");
    let options = PutBlobOptions {
        lease_id: Some(id),
        ..PutBlobOptions::default()
    };
    store
        .put_blob(&a, "box", "leader", &mut &b"v2"[..], options)
        .unwrap();
    assert_eq!(
        store
            .delete_blob(&a, "box", "leader", &Conditions::none(), None)
            .unwrap_err()
            .code(),
        "LeaseIdMissing"
    );
    peer.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert!(peer.wait().unwrap().success());
}

#[test]
fn a_put_in_one_store_wakes_a_watcher_of_another() {
    let db = ScratchDatabase::on_test_server();
    let (watching, putting) = (open(&db), open(&db));
    let a = AccountName::new("shared").unwrap();
    putting.create_queue(&a, "jobs", vec![]).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let _watch = watching.watch_puts(Arc::new(move |account: &str, queue: &str| {
        let _ = tx.send((account.to_string(), queue.to_string()));
    }));
    // The listener connects on its own thread: give it a moment, then put until heard (a
    // hint sent before it listened is lost, as hints may be).
    let started = Instant::now();
    let heard = loop {
        putting
            .put_message(&a, "jobs", b"x", PutMessageOptions::default())
            .unwrap();
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(h) => break h,
            Err(_) if started.elapsed() < Duration::from_secs(20) => continue,
            Err(e) => panic!("no hint within 20 s: {e}"),
        }
    };
    assert_eq!(heard, ("shared".to_string(), "jobs".to_string()));
    // Dropping the watch forgets the watcher (its sender goes with it).
    drop(_watch);
    while rx.try_recv().is_ok() {}
    putting
        .put_message(&a, "jobs", b"y", PutMessageOptions::default())
        .unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(1)),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
    );
}
