//! The writer the SIGKILL tests kill: several threads write to a store and print one line per
//! acknowledged write until the process is killed. Used by each engine's crash-writer binary;
//! not part of the product's API.
//!
//! Lines: `q <name>` (a message body), `e <rowkey>`, `b <name> <len>`.

use std::io::Write;
use std::sync::Arc;

use crate::blob::PutBlobOptions;
use crate::queue::PutMessageOptions;
use crate::table::{EdmValue, Entity, TableOp};
use crate::{AccountName, Backend};

/// The byte at `i` of blob `name`'s content: checkable without storing the content anywhere.
pub fn pattern(name: &str, i: usize) -> u8 {
    (name.len() + i * 31 % 251) as u8
}

/// Writes to `store` from four threads, printing each acknowledged write, until killed.
pub fn write_until_killed(store: Arc<dyn Backend>, run: &str) {
    let acct = AccountName::new("crash").expect("account");
    let _ = store.create_queue(&acct, "acks", vec![]);
    let _ = store.create_container(&acct, "blobs", vec![]);
    let _ = store.create_table(&acct, "Rows");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (store, acct, run) = (store.clone(), acct.clone(), run.to_string());
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
