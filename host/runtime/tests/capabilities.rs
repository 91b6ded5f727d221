//! The host side of each capability, called directly (no Wasm): argument checks, conversions,
//! error codes, the long poll, and fault injection on the link.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rolehost_runtime::bindings::blob::{self as wblob, Host as _};
use rolehost_runtime::bindings::queue::{self as wqueue, Host as _};
use rolehost_runtime::bindings::table::{self as wtable, Host as _};
use rolehost_runtime::bindings::types::{Conditions, ErrorCode, EtagMatch};
use rolehost_runtime::capability::blob::BlobCtx;
use rolehost_runtime::capability::queue::{QueueCtx, QueueWakers};
use rolehost_runtime::capability::table::TableCtx;
use rolehost_runtime::link::{CallInfo, Fault, FaultPlan, InjectedCrash, Link};
use rolehost_runtime::stop::stop_signal;
use rolehost_storage::queue::QueueStore;
use rolehost_storage::{AccountName, Backend, RedbStore, StorageOptions};

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<RedbStore>,
    account: AccountName,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(RedbStore::open(dir.path().join("s.redb"), StorageOptions::default()).unwrap());
    Fixture {
        _dir: dir,
        store,
        account: AccountName::new("acct").unwrap(),
    }
}

impl Fixture {
    fn link(&self) -> Link {
        let backend: Arc<dyn Backend> = self.store.clone();
        Link::new(backend, self.account.clone(), Arc::from("Test_IN_0"))
    }
}

fn no_conditions() -> Conditions {
    Conditions {
        if_match: None,
        if_none_match: None,
        if_modified_since: None,
        if_unmodified_since: None,
    }
}

fn put_options(conditions: Conditions) -> wblob::PutOptions {
    wblob::PutOptions {
        content: wblob::ContentSettings {
            content_type: None,
            content_encoding: None,
            content_language: None,
            content_disposition: None,
            cache_control: None,
            content_md5: None,
        },
        metadata: Vec::new(),
        conditions,
        lease_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_reads_in_bounded_chunks_and_writes_conditionally() {
    let f = fixture();
    let mut b = BlobCtx::new(f.link());
    b.create_container("ccc".into(), Vec::new())
        .await
        .unwrap()
        .unwrap();
    let data: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let props = b
        .put_blob(
            "ccc".into(),
            "big".into(),
            data.clone(),
            put_options(no_conditions()),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(props.size, data.len() as u64);

    // A read asking for everything gets at most 4 MiB; the rest comes at the next offset.
    let first = b
        .read_blob(
            "ccc".into(),
            "big".into(),
            0,
            u64::MAX,
            no_conditions(),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.data.len(), 4 * 1024 * 1024);
    let pinned = Conditions {
        if_match: Some(EtagMatch::Tag(first.properties.etag.clone())),
        ..no_conditions()
    };
    let second = b
        .read_blob(
            "ccc".into(),
            "big".into(),
            first.data.len() as u64,
            u64::MAX,
            pinned,
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.offset, 4 * 1024 * 1024);
    assert_eq!([first.data, second.data].concat(), data);

    // Past the end: invalid-range. An empty blob reads as empty at offset 0.
    let err = b
        .read_blob(
            "ccc".into(),
            "big".into(),
            data.len() as u64 + 1,
            10,
            no_conditions(),
            None,
        )
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidRange);
    b.put_blob(
        "ccc".into(),
        "empty".into(),
        Vec::new(),
        put_options(no_conditions()),
    )
    .await
    .unwrap()
    .unwrap();
    let empty = b
        .read_blob("ccc".into(), "empty".into(), 0, 10, no_conditions(), None)
        .await
        .unwrap()
        .unwrap();
    assert!(empty.data.is_empty());

    // Compare-and-swap: a stale ETag loses, create-only finds the blob there.
    let stale = Conditions {
        if_match: Some(EtagMatch::Tag("\"0x0\"".into())),
        ..no_conditions()
    };
    let err = b
        .put_blob(
            "ccc".into(),
            "big".into(),
            b"x".to_vec(),
            put_options(stale),
        )
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!((err.code, err.status), (ErrorCode::ConditionNotMet, 412));
    let create_only = Conditions {
        if_none_match: Some(EtagMatch::Any),
        ..no_conditions()
    };
    let err = b
        .put_blob(
            "ccc".into(),
            "big".into(),
            b"x".to_vec(),
            put_options(create_only),
        )
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::BlobAlreadyExists);

    // Bad arguments become errors, never traps.
    let mut bad_md5 = put_options(no_conditions());
    bad_md5.content.content_md5 = Some(vec![1, 2, 3]);
    let err = b
        .put_blob("ccc".into(), "x".into(), b"x".to_vec(), bad_md5)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidInput);
    let err = b
        .put_block(
            "ccc".into(),
            "x".into(),
            b"id".to_vec(),
            vec![0; 4 * 1024 * 1024 + 1],
            None,
        )
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        (err.code, err.status),
        (ErrorCode::RequestBodyTooLarge, 413)
    );
    let err = b
        .read_blob("nope".into(), "x".into(), 0, 1, no_conditions(), None)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ContainerNotFound);
    let err = b
        .create_container("Bad_Name".into(), Vec::new())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidResourceName);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_commit_atomically() {
    let f = fixture();
    let mut b = BlobCtx::new(f.link());
    b.create_container("ccc".into(), Vec::new())
        .await
        .unwrap()
        .unwrap();
    for (id, part) in [(b"b1", b"hello "), (b"b2", b"world!")] {
        b.put_block("ccc".into(), "doc".into(), id.to_vec(), part.to_vec(), None)
            .await
            .unwrap()
            .unwrap();
    }
    let err = b
        .read_blob("ccc".into(), "doc".into(), 0, 100, no_conditions(), None)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        err.code,
        ErrorCode::BlobNotFound,
        "nothing visible before the commit"
    );
    let blocks = vec![
        wblob::BlockRef::Uncommitted(b"b1".to_vec()),
        wblob::BlockRef::Latest(b"b2".to_vec()),
    ];
    b.put_block_list(
        "ccc".into(),
        "doc".into(),
        blocks,
        put_options(no_conditions()),
    )
    .await
    .unwrap()
    .unwrap();
    let read = b
        .read_blob("ccc".into(), "doc".into(), 0, 100, no_conditions(), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.data, b"hello world!");
}

fn queue_ctx(
    f: &Fixture,
    wakers: &Arc<QueueWakers>,
) -> (QueueCtx, rolehost_runtime::stop::StopHandle) {
    let (handle, signal) = stop_signal();
    (QueueCtx::new(f.link(), wakers.clone(), signal), handle)
}

fn standard() -> wqueue::PutOptions {
    wqueue::PutOptions {
        visibility_delay_seconds: 0,
        ttl: wqueue::MessageTtl::Standard,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_messages_wakes_on_put_and_returns_early_on_stop() {
    let f = fixture();
    let wakers = Arc::new(QueueWakers::default());
    let (mut waiter, waiter_stop) = queue_ctx(&f, &wakers);
    let (mut putter, _putter_stop) = queue_ctx(&f, &wakers);
    putter
        .create_queue("qqq".into(), Vec::new())
        .await
        .unwrap()
        .unwrap();

    // Present message: at once.
    putter
        .put_message("qqq".into(), b"one".to_vec(), standard())
        .await
        .unwrap()
        .unwrap();
    let got = waiter
        .wait_for_messages("qqq".into(), 1, 30, 10_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got[0].body, b"one");
    assert_eq!(got[0].dequeue_count, 1);

    // A put from another instance wakes the waiter.
    let wait = tokio::spawn(async move {
        let started = Instant::now();
        let got = waiter
            .wait_for_messages("qqq".into(), 1, 30, 30_000)
            .await
            .unwrap()
            .unwrap();
        (got, started.elapsed(), waiter)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    putter
        .put_message("qqq".into(), b"two".to_vec(), standard())
        .await
        .unwrap()
        .unwrap();
    let (got, took, mut waiter) = wait.await.unwrap();
    assert_eq!(got[0].body, b"two");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // An empty queue: a stop request ends a 60 s wait early, with no messages.
    let wait = tokio::spawn(async move {
        let started = Instant::now();
        let got = waiter
            .wait_for_messages("qqq".into(), 1, 30, 60_000)
            .await
            .unwrap()
            .unwrap();
        (got, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    waiter_stop.request();
    let (got, took) = wait.await.unwrap();
    assert!(got.is_empty());
    assert!(took < Duration::from_secs(5), "{took:?}");

    // Out-of-range wait and stale receipts are errors.
    let err = putter
        .wait_for_messages("qqq".into(), 1, 30, 60_001)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::OutOfRangeQueryParameterValue);
    putter
        .put_message("qqq".into(), b"three".to_vec(), standard())
        .await
        .unwrap()
        .unwrap();
    let m = putter
        .get_messages("qqq".into(), 1, 1)
        .await
        .unwrap()
        .unwrap()
        .remove(0);
    let updated = putter
        .update_message("qqq".into(), m.id.clone(), m.pop_receipt.clone(), 30, None)
        .await
        .unwrap()
        .unwrap();
    let err = putter
        .delete_message("qqq".into(), m.id.clone(), m.pop_receipt)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!((err.code, err.status), (ErrorCode::MessageNotFound, 404));
    putter
        .delete_message("qqq".into(), m.id, updated.pop_receipt)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_values_round_trip_and_transactions_name_the_failing_operation() {
    let f = fixture();
    let mut t = TableCtx::new(f.link());
    t.create_table("Orders".into()).await.unwrap().unwrap();
    let prop = |name: &str, value: wtable::EdmValue| wtable::Property {
        name: name.into(),
        value,
    };
    let entity = |rk: &str, props: Vec<wtable::Property>| wtable::Entity {
        partition_key: "p".into(),
        row_key: rk.into(),
        properties: props,
    };
    let values = vec![
        prop("Text", wtable::EdmValue::Text("hi".into())),
        prop("Small", wtable::EdmValue::Int32(-3)),
        prop("Big", wtable::EdmValue::Int64(1 << 40)),
        prop("Ratio", wtable::EdmValue::Double(0.25)),
        prop("Flag", wtable::EdmValue::Boolean(true)),
        prop("When", wtable::EdmValue::DateTime(1_700_000_000_000_000)),
        prop(
            "Id",
            wtable::EdmValue::Guid("c9da6455-213d-42c9-9a79-3e9149a57833".into()),
        ),
        prop("Raw", wtable::EdmValue::Binary(vec![0, 1, 255])),
    ];
    let etag = t
        .execute(
            "Orders".into(),
            wtable::Operation::Insert(entity("r1", values.clone())),
        )
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let got = t
        .get_entity("Orders".into(), "p".into(), "r1".into(), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.etag, etag);
    let mut expected = values;
    expected.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(format!("{:?}", got.properties), format!("{expected:?}"));

    let dup = entity(
        "r2",
        vec![
            prop("A", wtable::EdmValue::Int32(1)),
            prop("A", wtable::EdmValue::Int32(2)),
        ],
    );
    let err = t
        .execute("Orders".into(), wtable::Operation::Insert(dup))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidInput);

    let ops = vec![
        wtable::Operation::Insert(entity("r3", Vec::new())),
        wtable::Operation::Insert(entity("r1", Vec::new())),
    ];
    let err = t
        .submit_transaction("Orders".into(), ops)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::EntityAlreadyExists);
    assert_eq!(err.failed_index, Some(1));
    let err = t
        .get_entity("Orders".into(), "p".into(), "r3".into(), None)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ResourceNotFound, "all or nothing");
    let err = t
        .query_entities(
            "Orders".into(),
            wtable::Query {
                filter: Some("Small eq".into()),
                select: None,
                top: None,
                continuation: None,
            },
        )
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidInput);
}

/// Applies one fault to the calls whose operation matches, and records every call.
struct Plan {
    operation: &'static str,
    fault: Fault,
    seen: Mutex<Vec<CallInfo>>,
}

impl FaultPlan for Plan {
    fn fault(&self, call: &CallInfo) -> Fault {
        self.seen.lock().unwrap().push(call.clone());
        if call.operation == self.operation {
            self.fault
        } else {
            Fault::None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_loses_requests_and_responses_and_crashes_instances_on_demand() {
    for fault in [
        Fault::LoseRequest,
        Fault::LoseResponse,
        Fault::CrashBefore,
        Fault::CrashAfter,
    ] {
        let f = fixture();
        f.store.create_queue(&f.account, "qqq", Vec::new()).unwrap();
        let plan = Arc::new(Plan {
            operation: "queue.put-message",
            fault,
            seen: Mutex::new(Vec::new()),
        });
        let (_stop, signal) = stop_signal();
        let link = f.link().with_faults(plan.clone());
        let mut q = QueueCtx::new(link, Arc::new(QueueWakers::default()), signal);
        let outcome = q.put_message("qqq".into(), b"m".to_vec(), standard()).await;
        let happened = f
            .store
            .get_queue_properties(&f.account, "qqq")
            .unwrap()
            .approximate_message_count
            == 1;
        match fault {
            Fault::LoseRequest | Fault::LoseResponse => {
                let err = outcome.unwrap().unwrap_err();
                assert_eq!(err.code, ErrorCode::Timeout, "{fault:?}");
                assert_eq!(happened, fault == Fault::LoseResponse, "{fault:?}");
            }
            Fault::CrashBefore | Fault::CrashAfter => {
                let trap = outcome.unwrap_err();
                let crash = trap
                    .downcast_ref::<InjectedCrash>()
                    .expect("an injected crash");
                assert_eq!(crash.operation, "queue.put-message");
                assert_eq!(happened, fault == Fault::CrashAfter, "{fault:?}");
            }
            Fault::None | Fault::ExpireVisibility => unreachable!(),
        }
        let seen = plan.seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(&*seen[0].instance, "Test_IN_0");
        assert_eq!(seen[0].target, "qqq");
    }
}

#[tokio::test]
async fn an_expired_visibility_makes_the_message_visible_again_and_its_receipt_stale() {
    let f = fixture();
    f.store
        .create_queue(&f.account, "vqueue", Vec::new())
        .unwrap();
    let plan = Arc::new(Plan {
        operation: "queue.get-messages",
        fault: Fault::ExpireVisibility,
        seen: Mutex::new(Vec::new()),
    });
    let (_stop, signal) = stop_signal();
    let mut q = QueueCtx::new(
        f.link().with_faults(plan.clone()),
        Arc::new(QueueWakers::default()),
        signal,
    );
    q.put_message("vqueue".into(), b"m".to_vec(), standard())
        .await
        .unwrap()
        .unwrap();
    let got = q
        .get_messages("vqueue".into(), 1, 30)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1, "the get itself is delivered");
    // Visible again at once: another reader gets it, with the dequeue count of a redelivery.
    let again = f
        .store
        .get_messages(&f.account, "vqueue", 1, std::time::Duration::from_secs(30))
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, got[0].id);
    assert_eq!(again[0].dequeue_count, 2);
    // The first reader's receipt no longer matches.
    assert!(
        f.store
            .delete_message(&f.account, "vqueue", &got[0].id, &got[0].pop_receipt)
            .is_err()
    );
}
