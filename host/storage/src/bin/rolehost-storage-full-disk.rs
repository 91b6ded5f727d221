//! Test helper for `tests/quota.rs`: fills a store until the file size limit (RLIMIT_FSIZE,
//! which fails writes the way a full disk does) stops it, then checks that the engine recovers.
//! Not part of the product.
//!
//! Usage: `rolehost-storage-full-disk <db-path>`. Prints one line per step: `full <code>`,
//! `read <ok|error>`, `delete <ok|error>`, `write-after <ok|error>`.

use rolehost_storage::blob::{BlobStore, Conditions, GetBlobOptions, PutBlobOptions};
use rolehost_storage::{AccountName, RedbStore, StorageOptions};

fn set_file_limit(bytes: libc::rlim_t) {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain libc calls with valid arguments; SIGXFSZ ignored makes an oversized write
    // fail with EFBIG instead of killing the process.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
}

fn outcome<T, E: std::fmt::Display>(r: Result<T, E>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("error {e}"),
    }
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: rolehost-storage-full-disk <db-path>");
    let options = StorageOptions {
        headroom_bytes: 0,
        ..StorageOptions::default()
    };
    let store = RedbStore::open(&path, options).expect("open");
    let acct = AccountName::new("full").expect("account");
    store
        .create_container(&acct, "box", vec![])
        .expect("container");
    for i in 0..8 {
        let body = vec![i as u8; 256 * 1024];
        store
            .put_blob(
                &acct,
                "box",
                &format!("keep-{i}"),
                &mut &body[..],
                PutBlobOptions::default(),
            )
            .expect("keep");
    }
    let len = std::fs::metadata(&path).expect("stat").len();
    set_file_limit((len + (4 << 20)) as libc::rlim_t);
    let mut code = "none".to_string();
    for i in 0..64 {
        let body = vec![7u8; 1 << 20];
        if let Err(e) = store.put_blob(
            &acct,
            "box",
            &format!("fill-{i}"),
            &mut &body[..],
            PutBlobOptions::default(),
        ) {
            code = e.code().to_string();
            break;
        }
    }
    println!("full {code}");
    let read = store.get_blob(&acct, "box", "keep-0", &GetBlobOptions::default());
    println!("read {}", outcome(read));
    let deleted = store.delete_blob(&acct, "box", "keep-1", &Conditions::default(), None);
    println!("delete {}", outcome(deleted));
    set_file_limit(libc::RLIM_INFINITY);
    let body = vec![9u8; 1 << 20];
    let after = store.put_blob(
        &acct,
        "box",
        "after",
        &mut &body[..],
        PutBlobOptions::default(),
    );
    println!("write-after {}", outcome(after));
}
