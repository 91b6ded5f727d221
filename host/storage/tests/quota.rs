//! Quotas, headroom and recovery from a full disk: a tenant is refused before it grows past
//! its quota, the host's headroom is never taken, deletes always go through, the usage kept is
//! what a recount of the data finds, and a write failing on I/O does not leave the engine
//! refusing every later one.

mod common;

use common::{Engine, on_every_engine};

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use rolehost_storage::blob::{BlobStore, BlockRef, Conditions, GetBlobOptions, PutBlobOptions};
use rolehost_storage::queue::{MessageTtl, PutMessageOptions, QueueStore};
use rolehost_storage::table::{EdmValue, Entity, IfMatch, TableOp, TableStore, UpdateMode};
use rolehost_storage::{
    AccountName, AccountQuota, Accounts, Backend, ManualClock, RedbStore, Resource, StorageOptions,
    Timestamp,
    quota::{ITEM_BYTES, free_bytes},
};

fn store_with(dir: &std::path::Path, quota: AccountQuota, headroom: u64) -> RedbStore {
    let options = StorageOptions {
        default_quota: quota,
        headroom_bytes: headroom,
        ..StorageOptions::default()
    };
    RedbStore::open(dir.join("s.redb"), options).unwrap()
}

/// A store on `engine` whose accounts have `quota` unless told otherwise.
fn store_on(
    engine: Engine,
    dir: &tempfile::TempDir,
    quota: AccountQuota,
) -> (
    Arc<dyn common::Store>,
    Option<rolehost_storage_pg::scratch::ScratchDatabase>,
) {
    let options = StorageOptions {
        default_quota: quota,
        headroom_bytes: 0,
        ..StorageOptions::default()
    };
    engine.open(dir, &options).unwrap()
}

fn acct() -> AccountName {
    AccountName::new("tenant").unwrap()
}

fn put(
    s: &dyn Backend,
    a: &AccountName,
    c: &str,
    b: &str,
    len: usize,
) -> Result<(), rolehost_storage::BlobError> {
    let body = vec![b'x'; len];
    s.put_blob(a, c, b, &mut &body[..], PutBlobOptions::default())
        .map(drop)
}

fn bytes_over_the_quota_are_refused_with_azures_code_and_deletes_make_room(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let quota = AccountQuota::HOST_DEFAULT.with(Resource::Bytes, 1 << 20);
    let (store, _db) = store_on(engine, &dir, quota);
    let s = &*store;
    let a = acct();
    s.create_container(&a, "box", vec![]).unwrap();
    put(s, &a, "box", "one", 600 * 1024).unwrap();
    let e = put(s, &a, "box", "two", 600 * 1024).unwrap_err();
    assert_eq!(
        (e.code(), e.status()),
        ("InsufficientAccountPermissions", 403)
    );
    let msg = e.to_string();
    assert!(
        msg.contains("tenant") && msg.contains("max-mb") && msg.contains("1048576"),
        "{msg}"
    );
    // Nothing of the refused write is there, and the usage did not move.
    assert_eq!(
        common::code(s.get_blob(&a, "box", "two", &GetBlobOptions::default())),
        "BlobNotFound"
    );
    let used = s.usage(&a).unwrap().get(Resource::Bytes);
    assert!(used < 700 * 1024, "{used}");
    // Replacing the blob by a smaller one is a shrink: admitted at the quota.
    put(s, &a, "box", "one", 100 * 1024).unwrap();
    put(s, &a, "box", "two", 600 * 1024).unwrap();
    s.delete_blob(&a, "box", "one", &Conditions::default(), None)
        .unwrap();
    s.delete_blob(&a, "box", "two", &Conditions::default(), None)
        .unwrap();
    s.delete_container(&a, "box", &Conditions::default(), None)
        .unwrap();
    assert!(
        s.usage(&a).unwrap().get(Resource::Bytes) == 0,
        "{:?}",
        s.usage(&a)
    );
}

fn an_upload_larger_than_the_room_is_refused_while_it_streams_and_refunded(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let quota = AccountQuota::HOST_DEFAULT.with(Resource::Bytes, 20 << 20);
    let (store, _db) = store_on(engine, &dir, quota);
    let s = &*store;
    let a = acct();
    s.create_container(&a, "box", vec![]).unwrap();
    let before = s.usage(&a).unwrap();
    // 64 MiB from a reader that counts what was taken from it.
    struct Counting(u64);
    impl std::io::Read for Counting {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min((64u64 << 20).saturating_sub(self.0) as usize);
            buf[..n].fill(1);
            self.0 += n as u64;
            Ok(n)
        }
    }
    let mut body = Counting(0);
    let e = s
        .put_blob(&a, "box", "big", &mut body, PutBlobOptions::default())
        .unwrap_err();
    assert_eq!(e.code(), "InsufficientAccountPermissions", "{e}");
    assert!(
        body.0 < 40 << 20,
        "refused while streaming, after {} bytes",
        body.0
    );
    assert_eq!(
        s.usage(&a).unwrap(),
        before,
        "the streamed chunks were refunded"
    );
    // And the same for blocks.
    let mut body = Counting(0);
    let e = s
        .put_block(&a, "box", "big", b"b1", &mut body, None)
        .unwrap_err();
    assert_eq!(e.code(), "InsufficientAccountPermissions", "{e}");
    assert_eq!(s.usage(&a).unwrap(), before);
}

fn each_count_is_bounded_and_named(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let quota = AccountQuota::HOST_DEFAULT
        .with(Resource::Containers, 2)
        .with(Resource::Blobs, 2)
        .with(Resource::Queues, 1)
        .with(Resource::Messages, 3)
        .with(Resource::Tables, 1)
        .with(Resource::Entities, 2);
    let (store, _db) = store_on(engine, &dir, quota);
    let s = &*store;
    let a = acct();
    let refused = |code: &str, msg: String, what: &str| {
        assert_eq!(code, "InsufficientAccountPermissions", "{msg}");
        assert!(msg.contains(&format!("max-{what}")), "{msg}");
    };
    s.create_container(&a, "box1", vec![]).unwrap();
    s.create_container(&a, "box2", vec![]).unwrap();
    let e = s.create_container(&a, "box3", vec![]).unwrap_err();
    refused(e.code(), e.to_string(), "containers");
    put(s, &a, "box1", "a", 1).unwrap();
    put(s, &a, "box1", "b", 1).unwrap();
    put(s, &a, "box1", "a", 10).unwrap(); // a replace is no new blob
    let e = put(s, &a, "box2", "c", 1).unwrap_err();
    refused(e.code(), e.to_string(), "blobs");
    s.create_queue(&a, "que1", vec![]).unwrap();
    let e = s.create_queue(&a, "que2", vec![]).unwrap_err();
    refused(e.code(), e.to_string(), "queues");
    for _ in 0..3 {
        s.put_message(&a, "que1", b"m", PutMessageOptions::default())
            .unwrap();
    }
    let e = s
        .put_message(&a, "que1", b"m", PutMessageOptions::default())
        .unwrap_err();
    refused(e.code(), e.to_string(), "messages");
    let got = s
        .get_messages(&a, "que1", 1, Duration::from_secs(30))
        .unwrap();
    s.delete_message(&a, "que1", &got[0].id, &got[0].pop_receipt)
        .unwrap();
    s.put_message(&a, "que1", b"m", PutMessageOptions::default())
        .unwrap();
    s.create_table(&a, "Tab1").unwrap();
    let e = s.create_table(&a, "Tab2").unwrap_err();
    refused(e.code(), e.to_string(), "tables");
    let ins = |rk: &str| TableOp::Insert(Entity::new("p", rk).with("v", EdmValue::Int32(1)));
    s.submit_transaction(&a, "Tab1", vec![ins("1"), ins("2")])
        .unwrap();
    let e = s.execute(&a, "Tab1", ins("3")).unwrap_err();
    refused(e.code(), e.to_string(), "entities");
    // A transaction that deletes one and inserts one stays within the count.
    let del = TableOp::Delete {
        partition_key: "p".into(),
        row_key: "1".into(),
        if_match: IfMatch::Any,
    };
    s.submit_transaction(&a, "Tab1", vec![del, ins("3")])
        .unwrap();
    // Deleting everything is always allowed and leaves nothing counted.
    s.delete_table(&a, "Tab1").unwrap();
    s.delete_queue(&a, "que1").unwrap();
    s.delete_container(&a, "box1", &Conditions::default(), None)
        .unwrap();
    s.delete_container(&a, "box2", &Conditions::default(), None)
        .unwrap();
    assert_eq!(s.usage(&a).unwrap(), Default::default());
}

fn a_quota_set_for_one_account_leaves_the_others_on_the_default(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _db) = store_on(engine, &dir, AccountQuota::HOST_DEFAULT);
    let s = &*store;
    let (small, other) = (acct(), AccountName::new("other").unwrap());
    s.set_quota(
        &small,
        Some(AccountQuota::HOST_DEFAULT.with(Resource::Queues, 0)),
    );
    let e = s.create_queue(&small, "que", vec![]).unwrap_err();
    assert_eq!(e.code(), "InsufficientAccountPermissions");
    s.create_queue(&other, "que", vec![]).unwrap();
    // The host's own account has no quota.
    let host = AccountName::host();
    assert_eq!(s.quota(&host), AccountQuota::UNLIMITED);
    s.set_quota(&small, None);
    s.create_queue(&small, "que", vec![]).unwrap();
}

#[test]
fn the_hosts_headroom_is_never_taken_and_deletes_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let a = acct();
    {
        let s = store_with(dir.path(), AccountQuota::HOST_DEFAULT, 0);
        s.create_container(&a, "box", vec![]).unwrap();
        put(&s, &a, "box", "kept", 4096).unwrap();
        s.create_queue(&a, "que", vec![]).unwrap();
    }
    // A headroom above what is free: the disk is "full" for this store.
    let free = free_bytes(dir.path()).unwrap();
    let s = store_with(dir.path(), AccountQuota::HOST_DEFAULT, free + (1 << 30));
    let e = put(&s, &a, "box", "more", 10).unwrap_err();
    assert_eq!((e.code(), e.status()), ("ServerBusy", 503), "{e}");
    assert!(e.to_string().contains("nearly full"), "{e}");
    let e = s
        .put_message(&a, "que", b"m", PutMessageOptions::default())
        .unwrap_err();
    assert_eq!(e.code(), "ServerBusy");
    // The host's own account is held to it as well.
    let e = s
        .create_queue(&AccountName::host(), "snapshots", vec![])
        .unwrap_err();
    assert_eq!(e.code(), "ServerBusy");
    s.delete_blob(&a, "box", "kept", &Conditions::default(), None)
        .unwrap();
    s.delete_queue(&a, "que").unwrap();
    s.delete_container(&a, "box", &Conditions::default(), None)
        .unwrap();
    // Room for 64 MiB more: a 256 MiB upload stops on the way.
    drop(s);
    let free = free_bytes(dir.path()).unwrap();
    let s = store_with(
        dir.path(),
        AccountQuota::HOST_DEFAULT,
        free.saturating_sub(64 << 20),
    );
    s.create_container(&a, "box", vec![]).unwrap();
    let body = vec![3u8; 256 << 20];
    let e = s
        .put_blob(&a, "box", "big", &mut &body[..], PutBlobOptions::default())
        .unwrap_err();
    assert_eq!(e.code(), "ServerBusy", "{e}");
    put(&s, &a, "box", "small", 1 << 20).unwrap();
}

#[test]
fn a_full_disk_fails_the_write_then_the_engine_reopens_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let out = Command::new(env!("CARGO_BIN_EXE_rolehost-storage-full-disk"))
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("full InternalError"),
        "{stdout}"
    );
    assert_eq!(lines.get(1).copied(), Some("read ok"), "{stdout}");
    assert_eq!(
        lines.get(2).copied(),
        Some("delete ok"),
        "the culprit can delete at once: {stdout}"
    );
    assert_eq!(lines.get(3).copied(), Some("write-after ok"), "{stdout}");
    // Everything acknowledged is there, and the usage kept is what a recount finds.
    let s = RedbStore::open(&path, StorageOptions::default()).unwrap();
    let a = AccountName::new("full").unwrap();
    for i in [0, 2, 3, 4, 5, 6, 7] {
        let r = s
            .get_blob(&a, "box", &format!("keep-{i}"), &GetBlobOptions::default())
            .unwrap();
        assert_eq!(r.properties.size, 256 * 1024);
    }
    let kept = s.usage(&a).unwrap();
    s.recount_usage().unwrap();
    assert_eq!(s.usage(&a).unwrap(), kept);
}

#[test]
fn a_database_without_usage_is_counted_at_open() {
    // Usage of a database is dropped (as one made before usage was kept would lack it); the
    // next open counts it from the data.
    let dir = tempfile::tempdir().unwrap();
    let a = acct();
    let kept = {
        let s = store_with(dir.path(), AccountQuota::HOST_DEFAULT, 0);
        s.create_container(&a, "box", vec![("k".into(), "v".into())])
            .unwrap();
        put(&s, &a, "box", "b", 1000).unwrap();
        s.create_table(&a, "Tab").unwrap();
        s.usage(&a).unwrap()
    };
    assert_eq!(kept.get(Resource::Blobs), 1);
    assert_eq!(
        kept.get(Resource::Bytes),
        3 * ITEM_BYTES + (3 + 2) + (1 + 16 + 1000) + 3
    );
    {
        let db = redb::Database::create(dir.path().join("s.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
            let mut meta = txn.open_table(meta).unwrap();
            meta.retain(|k, _| !k.starts_with("usage")).unwrap();
        }
        txn.commit().unwrap();
    }
    let s = store_with(dir.path(), AccountQuota::HOST_DEFAULT, 0);
    assert_eq!(s.usage(&a).unwrap(), kept);
}

// ---- The usage kept matches a recount after any sequence of operations.

#[derive(Debug, Clone)]
enum Op {
    Container(u8),
    DropContainer(u8),
    Put { c: u8, b: u8, len: u16 },
    Meta { c: u8, b: u8, len: u8 },
    Block { c: u8, b: u8, id: u8, len: u16 },
    Commit { c: u8, b: u8, ids: Vec<u8> },
    DeleteBlob { c: u8, b: u8 },
    Queue(u8),
    DropQueue(u8),
    Message { q: u8, len: u8, ttl: bool },
    Take(u8),
    Update { q: u8, len: u8 },
    Clear(u8),
    Table(u8),
    DropTable(u8),
    Entity { t: u8, rk: u8, len: u8, merge: bool },
    DeleteEntity { t: u8, rk: u8 },
    Advance,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..2).prop_map(Op::Container),
        (0u8..2).prop_map(Op::DropContainer),
        (0u8..2, 0u8..3, 0u16..3000).prop_map(|(c, b, len)| Op::Put { c, b, len }),
        (0u8..2, 0u8..3, 0u8..40).prop_map(|(c, b, len)| Op::Meta { c, b, len }),
        (0u8..2, 0u8..3, 0u8..3, 0u16..2000).prop_map(|(c, b, id, len)| Op::Block {
            c,
            b,
            id,
            len
        }),
        (0u8..2, 0u8..3, proptest::collection::vec(0u8..3, 0..4))
            .prop_map(|(c, b, ids)| Op::Commit { c, b, ids }),
        (0u8..2, 0u8..3).prop_map(|(c, b)| Op::DeleteBlob { c, b }),
        (0u8..2).prop_map(Op::Queue),
        (0u8..2).prop_map(Op::DropQueue),
        (0u8..2, 0u8..200, any::<bool>()).prop_map(|(q, len, ttl)| Op::Message { q, len, ttl }),
        (0u8..2).prop_map(Op::Take),
        (0u8..2, 0u8..200).prop_map(|(q, len)| Op::Update { q, len }),
        (0u8..2).prop_map(Op::Clear),
        (0u8..2).prop_map(Op::Table),
        (0u8..2).prop_map(Op::DropTable),
        (0u8..2, 0u8..3, 0u8..100, any::<bool>()).prop_map(|(t, rk, len, merge)| Op::Entity {
            t,
            rk,
            len,
            merge
        }),
        (0u8..2, 0u8..3).prop_map(|(t, rk)| Op::DeleteEntity { t, rk }),
        Just(Op::Advance),
    ]
}

fn run(s: &dyn Backend, clock: &ManualClock, a: &AccountName, op: Op) {
    let c = |i: u8| format!("box{i}");
    let b = |i: u8| format!("b{i}");
    let q = |i: u8| format!("que{i}");
    let t = |i: u8| format!("Tab{i}");
    // Refusals (missing containers and the like) are part of the exploration: their results
    // are ignored, their effect on usage is what is checked.
    match op {
        Op::Container(i) => drop(s.create_container(a, &c(i), vec![("m".into(), "v".into())])),
        Op::DropContainer(i) => drop(s.delete_container(a, &c(i), &Conditions::default(), None)),
        Op::Put { c: ci, b: bi, len } => drop(put(s, a, &c(ci), &b(bi), len as usize)),
        Op::Meta { c: ci, b: bi, len } => drop(s.set_blob_metadata(
            a,
            &c(ci),
            &b(bi),
            vec![("k".into(), "v".repeat(len as usize))],
            &Conditions::default(),
            None,
        )),
        Op::Block {
            c: ci,
            b: bi,
            id,
            len,
        } => {
            let body = vec![1u8; len as usize];
            drop(s.put_block(a, &c(ci), &b(bi), &[id], &mut &body[..], None))
        }
        Op::Commit { c: ci, b: bi, ids } => {
            let list: Vec<BlockRef> = ids.into_iter().map(|i| BlockRef::Latest(vec![i])).collect();
            drop(s.put_block_list(a, &c(ci), &b(bi), &list, PutBlobOptions::default()))
        }
        Op::DeleteBlob { c: ci, b: bi } => {
            drop(s.delete_blob(a, &c(ci), &b(bi), &Conditions::default(), None))
        }
        Op::Queue(i) => drop(s.create_queue(a, &q(i), vec![])),
        Op::DropQueue(i) => drop(s.delete_queue(a, &q(i))),
        Op::Message { q: qi, len, ttl } => {
            let options = PutMessageOptions {
                ttl: if ttl {
                    MessageTtl::After(Duration::from_secs(2))
                } else {
                    MessageTtl::Default
                },
                ..PutMessageOptions::default()
            };
            drop(s.put_message(a, &q(qi), &vec![b'm'; len as usize], options))
        }
        Op::Take(qi) => {
            if let Ok(got) = s.get_messages(a, &q(qi), 2, Duration::from_secs(1)) {
                for m in got.iter().take(1) {
                    drop(s.delete_message(a, &q(qi), &m.id, &m.pop_receipt));
                }
            }
        }
        Op::Update { q: qi, len } => {
            if let Ok(got) = s.get_messages(a, &q(qi), 1, Duration::from_secs(1)) {
                for m in got {
                    let body = vec![b'u'; len as usize];
                    drop(s.update_message(
                        a,
                        &q(qi),
                        &m.id,
                        &m.pop_receipt,
                        Duration::ZERO,
                        Some(&body),
                    ));
                }
            }
        }
        Op::Clear(qi) => drop(s.clear_messages(a, &q(qi))),
        Op::Table(i) => drop(s.create_table(a, &t(i))),
        Op::DropTable(i) => drop(s.delete_table(a, &t(i))),
        Op::Entity {
            t: ti,
            rk,
            len,
            merge,
        } => {
            let e = Entity::new("p", rk.to_string())
                .with("v", EdmValue::String("e".repeat(len as usize)));
            let mode = if merge {
                UpdateMode::Merge
            } else {
                UpdateMode::Replace
            };
            drop(s.execute(a, &t(ti), TableOp::Upsert { entity: e, mode }))
        }
        Op::DeleteEntity { t: ti, rk } => drop(s.execute(
            a,
            &t(ti),
            TableOp::Delete {
                partition_key: "p".into(),
                row_key: rk.to_string(),
                if_match: IfMatch::Any,
            },
        )),
        Op::Advance => clock.advance(Duration::from_secs(3)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_usage_kept_is_what_a_recount_finds(ops in proptest::collection::vec(op(), 1..50)) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(Timestamp::from_secs(1_800_000_000));
        let options = StorageOptions {
            clock: Arc::new(clock.clone()),
            headroom_bytes: 0,
            ..StorageOptions::default()
        };
        let s = RedbStore::open(dir.path().join("s.redb"), options).unwrap();
        let (a, other) = (acct(), AccountName::new("other").unwrap());
        s.create_queue(&other, "untouched", vec![]).unwrap();
        let other_usage = s.usage(&other).unwrap();
        for op in ops {
            run(&s, &clock, &a, op);
        }
        let kept = s.usage(&a).unwrap();
        s.recount_usage().unwrap();
        prop_assert_eq!(s.usage(&a).unwrap(), kept);
        prop_assert_eq!(s.usage(&other).unwrap(), other_usage);
    }

    /// The same on PostgreSQL: what the engine keeps in its usage shards is what the data
    /// holds. Each case is a fresh pair of accounts on one database.
    #[test]
    fn the_usage_kept_on_postgres_is_what_its_data_holds(ops in proptest::collection::vec(op(), 1..50)) {
        let (pg, clock) = postgres_store();
        let n = NEXT_ACCOUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let a = AccountName::new(format!("tenant{n}")).unwrap();
        let other = AccountName::new(format!("other{n}")).unwrap();
        pg.create_queue(&other, "untouched", vec![]).unwrap();
        let other_usage = pg.usage(&other).unwrap();
        for op in ops {
            run(pg, clock, &a, op);
        }
        prop_assert_eq!(pg.usage(&a).unwrap(), pg.counted_usage(&a).unwrap());
        prop_assert_eq!(pg.usage(&other).unwrap(), other_usage);
    }
}

static NEXT_ACCOUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One PostgreSQL store (on a database of its own) for every case of this binary.
fn postgres_store() -> (&'static rolehost_storage_pg::PgStore, &'static ManualClock) {
    use rolehost_storage_pg::scratch::ScratchDatabase;
    static STORE: std::sync::OnceLock<(
        ScratchDatabase,
        rolehost_storage_pg::PgStore,
        ManualClock,
    )> = std::sync::OnceLock::new();
    let (_, store, clock) = STORE.get_or_init(|| {
        let db = ScratchDatabase::on_test_server();
        let clock = ManualClock::new(Timestamp::from_secs(1_800_000_000));
        let options = StorageOptions {
            clock: Arc::new(clock.clone()),
            ..StorageOptions::default()
        };
        let pg = rolehost_storage_pg::PgOptions {
            max_clock_skew: None,
            ..Default::default()
        };
        let store = rolehost_storage_pg::PgStore::open(db.url(), &options, &pg).unwrap();
        (db, store, clock)
    });
    (store, clock)
}

on_every_engine!(
    bytes_over_the_quota_are_refused_with_azures_code_and_deletes_make_room,
    an_upload_larger_than_the_room_is_refused_while_it_streams_and_refunded,
    each_count_is_bounded_and_named,
    a_quota_set_for_one_account_leaves_the_others_on_the_default,
);
