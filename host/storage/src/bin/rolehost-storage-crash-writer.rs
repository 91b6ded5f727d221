//! Test helper for `tests/crash.rs`: writes to a store from several threads and prints one line
//! per acknowledged write, until it is killed. Not part of the product.
//!
//! Usage: `rolehost-storage-crash-writer <db-path> <run-id>`
//! Lines: `q <name>` (message body), `e <rowkey>`, `b <name> <len>`.

use std::io::Write;
use std::sync::Arc;

use rolehost_storage::blob::{BlobStore, PutBlobOptions};
use rolehost_storage::queue::{PutMessageOptions, QueueStore};
use rolehost_storage::table::{EdmValue, Entity, TableOp, TableStore};
use rolehost_storage::{AccountName, RedbStore, StorageOptions};

/// The byte at `i` of blob content: checkable without storing the content anywhere.
fn pattern(name: &str, i: usize) -> u8 {
    (name.len() + i * 31 % 251) as u8
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (path, run) = (&args[1], &args[2]);
    let store = Arc::new(RedbStore::open(path, StorageOptions::default()).expect("open"));
    let acct = AccountName::new("crash").expect("account");
    let _ = store.create_queue(&acct, "acks", vec![]);
    let _ = store.create_container(&acct, "blobs", vec![]);
    let _ = store.create_table(&acct, "Rows");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (store, acct, run) = (store.clone(), acct.clone(), run.clone());
            std::thread::spawn(move || {
                let out = std::io::stdout();
                for i in 0.. {
                    let name = format!("{run}-{t}-{i}");
                    let line = match i % 3 {
                        0 => {
                            store
                                .put_message(
                                    &acct,
                                    "acks",
                                    name.as_bytes(),
                                    PutMessageOptions::default(),
                                )
                                .expect("put");
                            format!("q {name}")
                        }
                        1 => {
                            let e = Entity::new("p", name.clone())
                                .with("V", EdmValue::String(name.clone()));
                            store
                                .execute(&acct, "Rows", TableOp::Insert(e))
                                .expect("insert");
                            format!("e {name}")
                        }
                        _ => {
                            // Every few blobs spans several chunks, to crash mid-stream too.
                            let len = if i % 5 == 2 {
                                2_500_000
                            } else {
                                1000 + i % 7000
                            };
                            let body: Vec<u8> = (0..len).map(|k| pattern(&name, k)).collect();
                            store
                                .put_blob(
                                    &acct,
                                    "blobs",
                                    &name,
                                    &mut &body[..],
                                    PutBlobOptions::default(),
                                )
                                .expect("put blob");
                            format!("b {name} {len}")
                        }
                    };
                    let mut out = out.lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}
