//! Test helper for `tests/two_processes.rs`: the other process on a shared database. Not part
//! of the product.
//!
//! Usage:
//! - `rolehost-storage-pg-peer drain <url> <account> <queue>`: gets, deletes and prints message
//!   bodies (one per line) until the queue stays empty for a second; also prints `stale ok`
//!   once it has checked that a receipt replaced by a second get no longer deletes.
//! - `rolehost-storage-pg-peer batch <url> <account> <table> <rounds>`: runs entity group
//!   transactions that move one unit between two entities, printing `done` at the end.
//! - `rolehost-storage-pg-peer lease <url> <account> <container> <blob>`: takes a 60 s lease
//!   on the blob, prints its id, and holds it until stdin closes.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use rolehost_storage::blob::{BlobStore, LeaseAction};
use rolehost_storage::queue::QueueStore;
use rolehost_storage::table::{EdmValue, Entity, IfMatch, TableOp, TableStore, UpdateMode};
use rolehost_storage::{AccountName, StorageOptions};
use rolehost_storage_pg::{PgOptions, PgStore};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let store =
        PgStore::open(&args[2], &StorageOptions::default(), &PgOptions::default()).expect("open");
    let account = AccountName::new(args[3].clone()).expect("account");
    let mut out = std::io::stdout().lock();
    match args[1].as_str() {
        "drain" => {
            let queue = &args[4];
            let mut quiet = Instant::now();
            let mut checked_stale = false;
            while quiet.elapsed() < Duration::from_secs(1) {
                let got = store
                    .get_messages(&account, queue, 8, Duration::from_secs(60))
                    .expect("get");
                if got.is_empty() {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                quiet = Instant::now();
                for m in got {
                    if !checked_stale {
                        // Make the message visible again and take it anew: the first receipt
                        // is stale and must not delete it.
                        let u = store
                            .update_message(
                                &account,
                                queue,
                                &m.id,
                                &m.pop_receipt,
                                Duration::ZERO,
                                None,
                            )
                            .expect("update");
                        assert!(
                            store
                                .delete_message(&account, queue, &m.id, &m.pop_receipt)
                                .is_err(),
                            "a replaced receipt deleted the message"
                        );
                        store
                            .delete_message(&account, queue, &m.id, &u.pop_receipt)
                            .expect("delete with the new receipt");
                        checked_stale = true;
                        writeln!(out, "stale ok").expect("stdout");
                    } else if store
                        .delete_message(&account, queue, &m.id, &m.pop_receipt)
                        .is_err()
                    {
                        // Its visibility ran out and someone else took it: not ours.
                        continue;
                    }
                    writeln!(out, "{}", String::from_utf8_lossy(&m.body)).expect("stdout");
                }
            }
        }
        "batch" => {
            let (table, rounds): (&str, u32) = (&args[4], args[5].parse().expect("rounds"));
            for _ in 0..rounds {
                // Read both, move one unit from A to B with If-Match on both: all or nothing.
                let a = store
                    .get_entity(&account, table, "p", "A", None)
                    .expect("A");
                let b = store
                    .get_entity(&account, table, "p", "B", None)
                    .expect("B");
                let n = |e: &rolehost_storage::table::StoredEntity| match e.properties.get("N") {
                    Some(EdmValue::Int64(n)) => *n,
                    _ => panic!("N missing"),
                };
                let ops = vec![
                    TableOp::Update {
                        entity: Entity::new("p", "A").with("N", EdmValue::Int64(n(&a) - 1)),
                        mode: UpdateMode::Replace,
                        if_match: IfMatch::ETag(a.etag.clone()),
                    },
                    TableOp::Update {
                        entity: Entity::new("p", "B").with("N", EdmValue::Int64(n(&b) + 1)),
                        mode: UpdateMode::Replace,
                        if_match: IfMatch::ETag(b.etag.clone()),
                    },
                ];
                // A lost race is refused whole; the sum stays.
                let _ = store.submit_transaction(&account, table, ops);
            }
            writeln!(out, "done").expect("stdout");
        }
        "lease" => {
            let (container, blob) = (&args[4], &args[5]);
            let lease = store
                .lease_blob(
                    &account,
                    container,
                    blob,
                    LeaseAction::Acquire {
                        duration: Some(60),
                        proposed_id: None,
                    },
                )
                .expect("lease");
            writeln!(out, "{}", lease.lease_id.expect("an id")).expect("stdout");
            out.flush().expect("stdout");
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
        }
        other => panic!("unknown command {other}"),
    }
}
