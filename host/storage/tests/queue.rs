//! Queue service: every operation and error case.

mod common;

use std::time::Duration;

use common::{Engine, code, on_every_engine};
use rolehost_storage::queue::{CreateQueueOutcome, MessageTtl, PutMessageOptions};
use rolehost_storage::{AccountName, ListOptions};

const S: Duration = Duration::from_secs(1);

fn create_delete_list_and_metadata(e: Engine) {
    let f = e.fixture();
    let (s, a) = (&f.store, &f.acct);
    assert_eq!(
        s.create_queue(a, "que1", vec![]).unwrap(),
        CreateQueueOutcome::Created
    );
    assert_eq!(
        s.create_queue(a, "que1", vec![]).unwrap(),
        CreateQueueOutcome::AlreadyExists
    );
    assert_eq!(
        code(s.create_queue(a, "que1", vec![("k".into(), "v".into())])),
        "QueueAlreadyExists"
    );
    assert_eq!(
        code(s.create_queue(a, "Bad_Name", vec![])),
        "InvalidResourceName"
    );
    s.create_queue(a, "que2", vec![("k".into(), "v".into())])
        .unwrap();
    s.create_queue(a, "other", vec![]).unwrap();
    let page = s
        .list_queues(
            a,
            &ListOptions {
                prefix: Some("que".into()),
                include_metadata: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        page.items
            .iter()
            .map(|q| q.name.as_str())
            .collect::<Vec<_>>(),
        ["que1", "que2"]
    );
    assert_eq!(
        page.items[1].metadata,
        vec![("k".to_string(), "v".to_string())]
    );
    let p1 = s
        .list_queues(
            a,
            &ListOptions {
                max_results: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(p1.items.len(), 2);
    let p2 = s
        .list_queues(
            a,
            &ListOptions {
                marker: p1.next_marker.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(p2.items.len(), 1);
    assert_eq!(p2.next_marker, None);
    assert_eq!(
        code(s.list_queues(
            a,
            &ListOptions {
                max_results: Some(0),
                ..Default::default()
            }
        )),
        "OutOfRangeQueryParameterValue"
    );
    s.set_queue_metadata(a, "que1", vec![("x".into(), "1".into())])
        .unwrap();
    assert_eq!(
        s.get_queue_properties(a, "que1").unwrap().metadata[0].0,
        "x"
    );
    s.delete_queue(a, "que1").unwrap();
    assert_eq!(code(s.delete_queue(a, "que1")), "QueueNotFound");
    assert_eq!(code(s.get_queue_properties(a, "que1")), "QueueNotFound");
    assert_eq!(
        code(s.put_message(a, "que1", b"x", PutMessageOptions::default())),
        "QueueNotFound"
    );
}

fn accounts_are_isolated(e: Engine) {
    let f = e.fixture();
    let other = AccountName::new("other").unwrap();
    f.store.create_queue(&f.acct, "que", vec![]).unwrap();
    f.store
        .put_message(&f.acct, "que", b"secret", PutMessageOptions::default())
        .unwrap();
    assert_eq!(
        code(f.store.get_messages(&other, "que", 1, S)),
        "QueueNotFound"
    );
    assert!(
        f.store
            .list_queues(&other, &ListOptions::default())
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(AccountName::new("A").unwrap_err().code(), "OutOfRangeInput");
}

fn get_hides_bumps_count_and_redelivers_after_timeout(e: Engine) {
    let f = e.fixture();
    let (s, a) = (&f.store, &f.acct);
    s.create_queue(a, "que", vec![]).unwrap();
    for i in 0..5 {
        s.put_message(
            a,
            "que",
            format!("m{i}").as_bytes(),
            PutMessageOptions::default(),
        )
        .unwrap();
    }
    let got = s.get_messages(a, "que", 3, 30 * S).unwrap();
    assert_eq!(
        got.iter().map(|m| m.body.clone()).collect::<Vec<_>>(),
        [b"m0".to_vec(), b"m1".to_vec(), b"m2".to_vec()],
        "first delivery is FIFO"
    );
    assert!(got.iter().all(|m| m.dequeue_count == 1));
    // Peek sees only the visible two and changes nothing.
    let peek = s.peek_messages(a, "que", 32).unwrap();
    assert_eq!(peek.len(), 2);
    assert_eq!(s.peek_messages(a, "que", 32).unwrap(), peek);
    assert_eq!(
        s.get_queue_properties(a, "que")
            .unwrap()
            .approximate_message_count,
        5
    );
    f.clock.advance(31 * S);
    let again = s.get_messages(a, "que", 32, 30 * S).unwrap();
    assert_eq!(again.len(), 5);
    let m0 = again.iter().find(|m| m.id == got[0].id).unwrap();
    assert_eq!(m0.dequeue_count, 2);
    assert_ne!(m0.pop_receipt, got[0].pop_receipt);
    // The stale receipt no longer deletes: someone else holds the message now.
    assert_eq!(
        code(s.delete_message(a, "que", &got[0].id, &got[0].pop_receipt)),
        "MessageNotFound"
    );
    s.delete_message(a, "que", &m0.id, &m0.pop_receipt).unwrap();
    assert_eq!(
        code(s.delete_message(a, "que", &m0.id, &m0.pop_receipt)),
        "MessageNotFound"
    );
    assert_eq!(
        code(s.delete_message(a, "que", "garbage", "x")),
        "MessageNotFound"
    );
    assert!(
        s.get_messages(a, "que", 1, S).unwrap().is_empty(),
        "all others are invisible"
    );
}

fn expired_receipt_still_deletes_if_nobody_took_the_message(e: Engine) {
    let f = e.fixture();
    let (s, a) = (&f.store, &f.acct);
    s.create_queue(a, "que", vec![]).unwrap();
    s.put_message(a, "que", b"x", PutMessageOptions::default())
        .unwrap();
    let m = s.get_messages(a, "que", 1, S).unwrap().remove(0);
    f.clock.advance(10 * S);
    s.delete_message(a, "que", &m.id, &m.pop_receipt).unwrap();
    assert_eq!(
        s.get_queue_properties(a, "que")
            .unwrap()
            .approximate_message_count,
        0
    );
}

fn update_extends_or_shortens_visibility_and_replaces_content(e: Engine) {
    let f = e.fixture();
    let (s, a) = (&f.store, &f.acct);
    s.create_queue(a, "que", vec![]).unwrap();
    s.put_message(a, "que", b"v1", PutMessageOptions::default())
        .unwrap();
    let m = s.get_messages(a, "que", 1, 10 * S).unwrap().remove(0);
    let u = s
        .update_message(a, "que", &m.id, &m.pop_receipt, 60 * S, Some(b"v2"))
        .unwrap();
    assert_eq!(
        code(s.update_message(a, "que", &m.id, &m.pop_receipt, S, None)),
        "MessageNotFound"
    );
    f.clock.advance(30 * S);
    assert!(
        s.get_messages(a, "que", 1, S).unwrap().is_empty(),
        "extended past the first timeout"
    );
    let u2 = s
        .update_message(a, "que", &m.id, &u.pop_receipt, Duration::ZERO, None)
        .unwrap();
    assert_eq!(u2.time_next_visible, f.clock_now());
    let again = s.get_messages(a, "que", 1, S).unwrap().remove(0);
    assert_eq!(again.body, b"v2");
    assert_eq!(
        again.dequeue_count, 2,
        "update does not change the dequeue count"
    );
    assert_eq!(
        code(s.update_message(a, "que", &m.id, &again.pop_receipt, 8 * 24 * 3600 * S, None)),
        "OutOfRangeQueryParameterValue"
    );
}

trait Now {
    fn clock_now(&self) -> rolehost_storage::Timestamp;
}
impl<S: ?Sized> Now for common::Fixture<S> {
    fn clock_now(&self) -> rolehost_storage::Timestamp {
        use rolehost_storage::Clock;
        self.clock.now()
    }
}

fn put_options_limits_and_ttl(e: Engine) {
    let f = e.fixture();
    let (s, a) = (&f.store, &f.acct);
    s.create_queue(a, "que", vec![]).unwrap();
    assert_eq!(
        code(s.put_message(
            a,
            "que",
            &vec![0; 8 * 1024 + 1],
            PutMessageOptions::default()
        )),
        "RequestBodyTooLarge"
    );
    s.put_message(a, "que", &vec![0; 8 * 1024], PutMessageOptions::default())
        .unwrap();
    s.clear_messages(a, "que").unwrap();
    let bad = |delay: u32, ttl: MessageTtl| {
        code(s.put_message(
            a,
            "que",
            b"x",
            PutMessageOptions {
                visibility_delay: delay * S,
                ttl,
            },
        ))
    };
    assert_eq!(
        bad(8 * 24 * 3600, MessageTtl::Never),
        "OutOfRangeQueryParameterValue"
    );
    assert_eq!(
        bad(10, MessageTtl::After(10 * S)),
        "InvalidQueryParameterValue"
    );
    assert_eq!(
        bad(0, MessageTtl::After(Duration::from_millis(500))),
        "OutOfRangeQueryParameterValue"
    );
    assert_eq!(
        code(s.get_messages(a, "que", 0, S)),
        "OutOfRangeQueryParameterValue"
    );
    assert_eq!(
        code(s.get_messages(a, "que", 33, S)),
        "OutOfRangeQueryParameterValue"
    );
    assert_eq!(
        code(s.get_messages(a, "que", 1, Duration::ZERO)),
        "OutOfRangeQueryParameterValue"
    );
    assert_eq!(
        code(s.peek_messages(a, "que", 0)),
        "OutOfRangeQueryParameterValue"
    );

    // A delayed message appears only after its delay.
    s.put_message(
        a,
        "que",
        b"later",
        PutMessageOptions {
            visibility_delay: 5 * S,
            ttl: MessageTtl::Default,
        },
    )
    .unwrap();
    assert!(s.get_messages(a, "que", 1, S).unwrap().is_empty());
    f.clock.advance(5 * S);
    assert_eq!(s.get_messages(a, "que", 1, S).unwrap()[0].body, b"later");
    s.clear_messages(a, "que").unwrap();

    // Expiry: a short TTL vanishes, a never-expiring one stays.
    let short = s
        .put_message(
            a,
            "que",
            b"short",
            PutMessageOptions {
                ttl: MessageTtl::After(2 * S),
                ..Default::default()
            },
        )
        .unwrap();
    let never = s
        .put_message(
            a,
            "que",
            b"never",
            PutMessageOptions {
                ttl: MessageTtl::Never,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(short.expiration_time.is_some() && never.expiration_time.is_none());
    f.clock.advance(365 * 24 * 3600 * S);
    assert_eq!(s.peek_messages(a, "que", 32).unwrap().len(), 1);
    let got = s.get_messages(a, "que", 32, S).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, b"never");
    assert_eq!(
        s.get_queue_properties(a, "que")
            .unwrap()
            .approximate_message_count,
        1,
        "the expired one was purged"
    );
    s.clear_messages(a, "que").unwrap();
    assert_eq!(
        s.get_queue_properties(a, "que")
            .unwrap()
            .approximate_message_count,
        0
    );
    assert!(s.peek_messages(a, "que", 32).unwrap().is_empty());
}

fn configurable_message_limit(e: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let opts = rolehost_storage::StorageOptions {
        queue_message_max_bytes: 64 * 1024,
        ..Default::default()
    };
    let (s, _db) = e.open(&dir, &opts).unwrap();
    let a = AccountName::new("acct").unwrap();
    s.create_queue(&a, "que", vec![]).unwrap();
    s.put_message(&a, "que", &vec![1; 64 * 1024], PutMessageOptions::default())
        .unwrap();
    assert_eq!(
        code(s.put_message(
            &a,
            "que",
            &vec![1; 64 * 1024 + 1],
            PutMessageOptions::default()
        )),
        "RequestBodyTooLarge"
    );
    let too_big = rolehost_storage::StorageOptions {
        queue_message_max_bytes: 64 * 1024 + 1,
        ..Default::default()
    };
    let other = tempfile::tempdir().unwrap();
    assert!(e.open(&other, &too_big).is_err());
}

fn concurrent_workers_each_message_once_with_group_commit(e: Engine) {
    let f = e.fixture();
    let s = f.store.clone();
    s.create_queue(&f.acct, "que", vec![]).unwrap();
    for i in 0..400u32 {
        s.put_message(
            &f.acct,
            "que",
            &i.to_le_bytes(),
            PutMessageOptions::default(),
        )
        .unwrap();
    }
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (s, a) = (s.clone(), f.acct.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                loop {
                    let msgs = s.get_messages(&a, "que", 4, 60 * S).unwrap();
                    if msgs.is_empty() {
                        return seen;
                    }
                    for m in msgs {
                        s.delete_message(&a, "que", &m.id, &m.pop_receipt).unwrap();
                        seen.push(u32::from_le_bytes(m.body.try_into().unwrap()));
                    }
                }
            })
        })
        .collect();
    let mut all: Vec<u32> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..400).collect::<Vec<_>>());
}

fn queue_access_policies_are_checked_kept_and_die_with_their_queue(e: Engine) {
    use rolehost_storage::blob::AccessPolicy;
    let f = e.fixture();
    let (s, a) = (&f.store, &f.acct);
    let policy = |id: &str, perms: &str| AccessPolicy {
        id: id.into(),
        start: None,
        expiry: None,
        permissions: perms.into(),
    };
    assert_eq!(code(s.get_queue_acl(a, "nope")), "QueueNotFound");
    assert_eq!(code(s.set_queue_acl(a, "nope", vec![])), "QueueNotFound");
    s.create_queue(a, "pol", vec![]).unwrap();
    assert!(s.get_queue_acl(a, "pol").unwrap().is_empty());
    s.set_queue_acl(a, "pol", vec![policy("readers", "rp")])
        .unwrap();
    assert_eq!(
        s.get_queue_acl(a, "pol").unwrap(),
        vec![policy("readers", "rp")]
    );
    for bad in [
        (0..6)
            .map(|i| policy(&format!("p{i}"), "r"))
            .collect::<Vec<_>>(),
        vec![policy("", "r")],
        vec![policy("x", "w")],
        vec![policy("twice", "r"), policy("twice", "a")],
    ] {
        assert_eq!(code(s.set_queue_acl(a, "pol", bad)), "InvalidXmlDocument");
    }
    assert_eq!(
        s.get_queue_acl(a, "pol").unwrap().len(),
        1,
        "refusals change nothing"
    );
    let other = AccountName::new("other").unwrap();
    s.create_queue(&other, "pol", vec![]).unwrap();
    assert!(
        s.get_queue_acl(&other, "pol").unwrap().is_empty(),
        "per account"
    );
    s.delete_queue(a, "pol").unwrap();
    s.create_queue(a, "pol", vec![]).unwrap();
    assert!(
        s.get_queue_acl(a, "pol").unwrap().is_empty(),
        "a new queue starts with none"
    );
}

/// Waits for an answer given to a `_then` callback.
fn answered<T: Send + 'static>(
    call: impl FnOnce(rolehost_storage::queue::Answer<T>),
) -> Result<T, rolehost_storage::QueueError> {
    let (tx, rx) = std::sync::mpsc::channel();
    call(Box::new(move |r| tx.send(r).unwrap()));
    rx.recv_timeout(Duration::from_secs(10))
        .expect("every operation is answered")
}

fn operations_answered_through_callbacks_match_the_blocking_ones(e: Engine) {
    let f = e.fixture();
    let (s, a) = (&f.store, &f.acct);
    s.create_queue(a, "cbq", vec![]).unwrap();
    answered(|d| s.put_message_then(a, "cbq", b"one", PutMessageOptions::default(), d)).unwrap();
    let got = answered(|d| s.get_messages_then(a, "cbq", 1, 30 * S, d)).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, b"one");
    assert_eq!(got[0].dequeue_count, 1);
    answered(|d| s.delete_message_then(a, "cbq", &got[0].id, &got[0].pop_receipt, d)).unwrap();
    assert_eq!(
        s.get_queue_properties(a, "cbq")
            .unwrap()
            .approximate_message_count,
        0
    );
    // Refusals are answered too: the checks made before queueing, and those made in the
    // commit.
    let big = vec![b'x'; 70 * 1024];
    assert_eq!(
        code(answered(|d| s.put_message_then(
            a,
            "cbq",
            &big,
            PutMessageOptions::default(),
            d
        ))),
        "RequestBodyTooLarge"
    );
    assert_eq!(
        code(answered(|d| s.put_message_then(
            a,
            "none",
            b"x",
            PutMessageOptions::default(),
            d
        ))),
        "QueueNotFound"
    );
    assert_eq!(
        code(answered(|d| s.delete_message_then(
            a,
            "cbq",
            &got[0].id,
            &got[0].pop_receipt,
            d
        ))),
        "MessageNotFound"
    );
    assert_eq!(
        code(answered(|d| s.get_messages_then(a, "cbq", 33, 30 * S, d))),
        "OutOfRangeQueryParameterValue"
    );
}

fn each_account_has_its_own_message_size_limit(e: Engine) {
    use rolehost_storage::AccountOptions;
    let f = e.fixture();
    let (s, a) = (&f.store, &f.acct);
    let other = AccountName::new("other").unwrap();
    for acct in [a, &other] {
        s.create_queue(acct, "sized", vec![]).unwrap();
    }
    let small = AccountOptions {
        queue_message_max_bytes: 100,
    };
    s.set_account_options(a, Some(small)).unwrap();
    let put = |acct: &AccountName, n: usize| {
        s.put_message(acct, "sized", &vec![b'x'; n], PutMessageOptions::default())
    };
    assert_eq!(code(put(a, 101)), "RequestBodyTooLarge");
    put(a, 100).unwrap();
    put(&other, 1000).unwrap();
    assert_eq!(s.queue_message_max_bytes(a), 100);
    // Update Message is held to the same limit.
    let m = s.get_messages(a, "sized", 1, 30 * S).unwrap().remove(0);
    assert_eq!(
        code(s.update_message(a, "sized", &m.id, &m.pop_receipt, S, Some(&[b'y'; 101]))),
        "RequestBodyTooLarge"
    );
    assert!(
        s.set_account_options(
            a,
            Some(AccountOptions {
                queue_message_max_bytes: 0
            })
        )
        .is_err()
    );
    assert_eq!(
        s.queue_message_max_bytes(a),
        100,
        "a refused setting changes nothing"
    );
    s.set_account_options(a, None).unwrap();
    put(a, 1000).unwrap();
}

on_every_engine!(
    create_delete_list_and_metadata,
    accounts_are_isolated,
    get_hides_bumps_count_and_redelivers_after_timeout,
    expired_receipt_still_deletes_if_nobody_took_the_message,
    update_extends_or_shortens_visibility_and_replaces_content,
    put_options_limits_and_ttl,
    configurable_message_limit,
    concurrent_workers_each_message_once_with_group_commit,
    queue_access_policies_are_checked_kept_and_die_with_their_queue,
    operations_answered_through_callbacks_match_the_blocking_ones,
    each_account_has_its_own_message_size_limit,
);
