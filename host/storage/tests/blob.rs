//! Blob service: every operation and error case.

mod common;

use std::io::Read;
use std::time::Duration;

use common::{Engine, code, on_every_engine};
use rolehost_storage::blob::*;
use rolehost_storage::{CHUNK_SIZE, ListOptions, Timestamp};

fn put(
    f: &common::Fixture<dyn common::Store>,
    name: &str,
    body: &[u8],
    options: PutBlobOptions,
) -> Result<BlobProperties, rolehost_storage::BlobError> {
    f.store
        .put_blob(&f.acct, "box", name, &mut &body[..], options)
}

fn read_all(
    f: &common::Fixture<dyn common::Store>,
    name: &str,
    options: &GetBlobOptions,
) -> Vec<u8> {
    let mut r = f.store.get_blob(&f.acct, "box", name, options).unwrap();
    let mut out = Vec::new();
    r.reader.read_to_end(&mut out).unwrap();
    assert_eq!(out.len() as u64, r.len);
    out
}

fn setup(engine: Engine) -> common::Fixture<dyn common::Store> {
    let f = engine.fixture();
    f.store.create_container(&f.acct, "box", vec![]).unwrap();
    f
}

fn containers(engine: Engine) {
    let f = setup(engine);
    let (s, a) = (&f.store, &f.acct);
    assert_eq!(
        code(s.create_container(a, "box", vec![])),
        "ContainerAlreadyExists"
    );
    assert_eq!(
        code(s.create_container(a, "Box", vec![])),
        "InvalidResourceName"
    );
    s.create_container(a, "box2", vec![("k".into(), "v".into())])
        .unwrap();
    let page = s
        .list_containers(
            a,
            &ListOptions {
                include_metadata: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        page.items
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["box", "box2"]
    );
    assert_eq!(page.items[1].metadata.len(), 1);
    let p = s.set_container_metadata(a, "box2", vec![], None).unwrap();
    assert!(p.metadata.is_empty());
    let props = s.get_container_properties(a, "box2", None).unwrap();
    assert_eq!(props.etag, p.etag);
    // Container conditions: only dates.
    assert_eq!(
        code(s.delete_container(a, "box2", &Conditions::if_match("x"), None)),
        "MultipleConditionHeadersNotSupported"
    );
    let later = Conditions {
        if_modified_since: Some(Timestamp::from_secs(1_900_000_000)),
        ..Default::default()
    };
    assert_eq!(
        code(s.delete_container(a, "box2", &later, None)),
        "ConditionNotMet"
    );
    // A leased container needs its lease id to be deleted.
    let lease = s
        .lease_container(
            a,
            "box2",
            LeaseAction::Acquire {
                duration: None,
                proposed_id: None,
            },
        )
        .unwrap();
    assert_eq!(
        code(s.delete_container(a, "box2", &Conditions::none(), None)),
        "LeaseIdMissing"
    );
    assert_eq!(
        code(s.delete_container(a, "box2", &Conditions::none(), Some("nope"))),
        "LeaseIdMismatchWithContainerOperation"
    );
    s.delete_container(a, "box2", &Conditions::none(), lease.lease_id.as_deref())
        .unwrap();
    assert_eq!(
        code(s.get_container_properties(a, "box2", None)),
        "ContainerNotFound"
    );
    assert_eq!(
        code(s.delete_container(a, "box2", &Conditions::none(), None)),
        "ContainerNotFound"
    );
}

fn put_get_properties_metadata_delete(engine: Engine) {
    let f = setup(engine);
    let (s, a) = (&f.store, &f.acct);
    let content = ContentSettings {
        content_type: Some("text/plain".into()),
        cache_control: Some("no-cache".into()),
        ..Default::default()
    };
    let p = put(
        &f,
        "a.txt",
        b"hello",
        PutBlobOptions {
            content,
            metadata: vec![("Owner".into(), "me".into())],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(p.size, 5);
    assert!(p.etag.starts_with("\"0x8D"));
    assert_eq!(
        p.content.content_md5,
        Some([
            0x5d, 0x41, 0x40, 0x2a, 0xbc, 0x4b, 0x2a, 0x76, 0xb9, 0x71, 0x9d, 0x91, 0x10, 0x17,
            0xc5, 0x92
        ])
    );
    assert_eq!(read_all(&f, "a.txt", &GetBlobOptions::default()), b"hello");
    let got = s
        .get_blob_properties(a, "box", "a.txt", &Conditions::none(), None)
        .unwrap();
    assert_eq!(got, p);
    // Default content type.
    let q = put(&f, "b.bin", b"", PutBlobOptions::default()).unwrap();
    assert_eq!(
        q.content.content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(read_all(&f, "b.bin", &GetBlobOptions::default()), b"");
    // Set metadata replaces all and makes a new ETag; properties not given are cleared.
    f.clock.advance(Duration::from_secs(2));
    let m = s
        .set_blob_metadata(
            a,
            "box",
            "a.txt",
            vec![("x".into(), "1".into())],
            &Conditions::none(),
            None,
        )
        .unwrap();
    assert_ne!(m.etag, p.etag);
    assert!(m.last_modified > p.last_modified);
    assert_eq!(m.metadata, vec![("x".to_string(), "1".to_string())]);
    let pr = s
        .set_blob_properties(
            a,
            "box",
            "a.txt",
            ContentSettings {
                content_language: Some("en".into()),
                ..Default::default()
            },
            &Conditions::none(),
            None,
        )
        .unwrap();
    assert_eq!(pr.content.cache_control, None);
    assert_eq!(
        pr.content.content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(pr.content.content_language.as_deref(), Some("en"));
    assert_eq!(
        code(s.set_blob_metadata(
            a,
            "box",
            "a.txt",
            vec![("1bad".into(), String::new())],
            &Conditions::none(),
            None
        )),
        "InvalidMetadata"
    );
    // Overwrite replaces content and all metadata, keeps the creation time.
    let o = put(&f, "a.txt", b"bye", PutBlobOptions::default()).unwrap();
    assert!(o.metadata.is_empty());
    assert_eq!(o.created, p.created);
    assert_eq!(read_all(&f, "a.txt", &GetBlobOptions::default()), b"bye");
    s.delete_blob(a, "box", "a.txt", &Conditions::none(), None)
        .unwrap();
    assert_eq!(
        code(s.delete_blob(a, "box", "a.txt", &Conditions::none(), None)),
        "BlobNotFound"
    );
    assert_eq!(
        code(
            s.get_blob(a, "box", "a.txt", &GetBlobOptions::default())
                .map(|r| r.properties)
        ),
        "BlobNotFound"
    );
    assert_eq!(
        code(
            s.get_blob(a, "nobox", "a.txt", &GetBlobOptions::default())
                .map(|r| r.properties)
        ),
        "ContainerNotFound"
    );
    assert_eq!(
        code(s.put_blob(a, "nobox", "x", &mut &b""[..], PutBlobOptions::default())),
        "ContainerNotFound"
    );
    assert_eq!(
        code(put(&f, "", b"", PutBlobOptions::default())),
        "OutOfRangeInput"
    );
}

fn conditional_writes_and_reads(engine: Engine) {
    let f = setup(engine);
    let (s, a) = (&f.store, &f.acct);
    let p = put(
        &f,
        "c",
        b"1",
        PutBlobOptions {
            conditions: Conditions::create_only(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        code(put(
            &f,
            "c",
            b"2",
            PutBlobOptions {
                conditions: Conditions::create_only(),
                ..Default::default()
            }
        )),
        "BlobAlreadyExists"
    );
    // Compare-and-swap: the first writer with the ETag wins, the second gets ConditionNotMet.
    let p2 = put(
        &f,
        "c",
        b"2",
        PutBlobOptions {
            conditions: Conditions::if_match(&p.etag),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        code(put(
            &f,
            "c",
            b"3",
            PutBlobOptions {
                conditions: Conditions::if_match(&p.etag),
                ..Default::default()
            }
        )),
        "ConditionNotMet"
    );
    assert_eq!(
        code(put(
            &f,
            "new",
            b"3",
            PutBlobOptions {
                conditions: Conditions::if_match("*"),
                ..Default::default()
            }
        )),
        "ConditionNotMet"
    );
    let any = Conditions {
        if_match: Some(ETagMatch::Any),
        ..Default::default()
    };
    assert_eq!(
        code(put(
            &f,
            "new",
            b"3",
            PutBlobOptions {
                conditions: any.clone(),
                ..Default::default()
            }
        )),
        "ConditionNotMet"
    );
    put(
        &f,
        "c",
        b"4",
        PutBlobOptions {
            conditions: any,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        code(s.delete_blob(a, "box", "c", &Conditions::if_match(&p2.etag), None)),
        "ConditionNotMet"
    );
    // Reads: 304 and 412 and 400.
    let cur = s
        .get_blob_properties(a, "box", "c", &Conditions::none(), None)
        .unwrap();
    let none_match = Conditions {
        if_none_match: Some(ETagMatch::Tag(cur.etag.clone())),
        ..Default::default()
    };
    let e = s
        .get_blob(
            a,
            "box",
            "c",
            &GetBlobOptions {
                conditions: none_match,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (304, "ConditionNotMet"));
    assert_eq!(
        code(s.get_blob_properties(a, "box", "c", &Conditions::if_match("\"other\""), None)),
        "ConditionNotMet"
    );
    assert_eq!(
        code(s.get_blob_properties(a, "box", "c", &Conditions::create_only(), None)),
        "UnsatisfiableCondition"
    );
    let since = Conditions {
        if_modified_since: Some(cur.last_modified),
        ..Default::default()
    };
    assert_eq!(
        s.get_blob_properties(a, "box", "c", &since, None)
            .unwrap_err()
            .status(),
        304
    );
    let both = Conditions {
        if_match: Some(ETagMatch::Tag(cur.etag)),
        if_none_match: Some(ETagMatch::Tag("x".into())),
        ..Default::default()
    };
    assert_eq!(
        code(s.delete_blob(a, "box", "c", &both, None)),
        "MultipleConditionHeadersNotSupported"
    );
}

fn ranged_reads(engine: Engine) {
    let f = setup(engine);
    let body: Vec<u8> = (0..3 * CHUNK_SIZE + 100).map(|i| (i % 251) as u8).collect();
    put(&f, "r", &body, PutBlobOptions::default()).unwrap();
    assert_eq!(read_all(&f, "r", &GetBlobOptions::default()), body);
    for (start, end) in [
        (0, Some(0)),
        (10, Some(20)),
        (CHUNK_SIZE as u64 - 5, Some(CHUNK_SIZE as u64 + 5)),
        (2 * CHUNK_SIZE as u64, None),
        (5, Some(u64::MAX)),
    ] {
        let got = read_all(
            &f,
            "r",
            &GetBlobOptions {
                range: Some(ByteRange { start, end }),
                ..Default::default()
            },
        );
        let e = end.map_or(body.len(), |e| {
            e.saturating_add(1).min(body.len() as u64) as usize
        });
        assert_eq!(got, &body[start as usize..e], "range {start}..{end:?}");
    }
    let past = GetBlobOptions {
        range: Some(ByteRange {
            start: body.len() as u64,
            end: None,
        }),
        ..Default::default()
    };
    assert_eq!(
        code(f.store.get_blob(&f.acct, "box", "r", &past).map(|r| r.len)),
        "InvalidRange"
    );
    // A reader keeps its snapshot while the blob is overwritten.
    let mut r = f
        .store
        .get_blob(&f.acct, "box", "r", &GetBlobOptions::default())
        .unwrap();
    put(&f, "r", b"replaced", PutBlobOptions::default()).unwrap();
    let mut out = Vec::new();
    r.reader.read_to_end(&mut out).unwrap();
    assert_eq!(out, body);
}

fn listing_with_prefix_delimiter_and_markers(engine: Engine) {
    let f = setup(engine);
    for name in ["a/1", "a/2", "a/b/3", "b", "c/x", "c/y", "d"] {
        put(
            &f,
            name,
            b"x",
            PutBlobOptions {
                metadata: vec![("n".into(), name.into())],
                ..Default::default()
            },
        )
        .unwrap();
    }
    let names = |page: &rolehost_storage::Page<BlobListItem>| -> Vec<String> {
        page.items
            .iter()
            .map(|i| match i {
                BlobListItem::Blob(b) => b.name.clone(),
                BlobListItem::Prefix(p) => format!("{p}*"),
            })
            .collect()
    };
    let list = |opts: ListOptions, delim: Option<&str>| {
        f.store.list_blobs(&f.acct, "box", &opts, delim).unwrap()
    };
    assert_eq!(
        names(&list(ListOptions::default(), None)),
        ["a/1", "a/2", "a/b/3", "b", "c/x", "c/y", "d"]
    );
    assert_eq!(
        names(&list(ListOptions::default(), Some("/"))),
        ["a/*", "b", "c/*", "d"]
    );
    assert_eq!(
        names(&list(
            ListOptions {
                prefix: Some("a/".into()),
                ..Default::default()
            },
            Some("/")
        )),
        ["a/1", "a/2", "a/b/*"]
    );
    // Pages of two, prefixes counted, until the marker is gone.
    let mut all = Vec::new();
    let mut marker = None;
    loop {
        let page = list(
            ListOptions {
                max_results: Some(2),
                marker: marker.clone(),
                ..Default::default()
            },
            Some("/"),
        );
        all.extend(names(&page));
        marker = page.next_marker;
        if marker.is_none() {
            break;
        }
    }
    assert_eq!(all, ["a/*", "b", "c/*", "d"]);
    let with_meta = list(
        ListOptions {
            include_metadata: true,
            prefix: Some("b".into()),
            ..Default::default()
        },
        None,
    );
    match &with_meta.items[0] {
        BlobListItem::Blob(b) => assert_eq!(b.metadata[0].1, "b"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        code(f.store.list_blobs(
            &f.acct,
            "box",
            &ListOptions {
                max_results: Some(0),
                ..Default::default()
            },
            None
        )),
        "OutOfRangeQueryParameterValue"
    );
}

fn leases_guard_writes_and_elect_a_leader(engine: Engine) {
    let f = setup(engine);
    let (s, a) = (&f.store, &f.acct);
    put(&f, "lock", b"", PutBlobOptions::default()).unwrap();
    let acquire = |d: Option<u32>, id: Option<&str>| {
        s.lease_blob(
            a,
            "box",
            "lock",
            LeaseAction::Acquire {
                duration: d,
                proposed_id: id.map(Into::into),
            },
        )
    };
    let l = acquire(Some(15), None).unwrap();
    let id = l.lease_id.clone().unwrap();
    // A second instance cannot take it.
    assert_eq!(code(acquire(Some(15), None)), "LeaseAlreadyPresent");
    assert_eq!(
        acquire(Some(30), Some(&id)).unwrap().lease_id.as_deref(),
        Some(id.as_str()),
        "same id re-acquires"
    );
    assert_eq!(code(acquire(Some(10), None)), "InvalidHeaderValue");
    // Writes need the id.
    assert_eq!(
        code(put(&f, "lock", b"x", PutBlobOptions::default())),
        "LeaseIdMissing"
    );
    assert_eq!(
        code(put(
            &f,
            "lock",
            b"x",
            PutBlobOptions {
                lease_id: Some("wrong".into()),
                ..Default::default()
            }
        )),
        "LeaseIdMismatchWithBlobOperation"
    );
    put(
        &f,
        "lock",
        b"x",
        PutBlobOptions {
            lease_id: Some(id.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let p = s
        .get_blob_properties(a, "box", "lock", &Conditions::none(), None)
        .unwrap();
    assert_eq!(
        (p.lease.state, p.lease.status, p.lease.duration),
        ("leased", "locked", Some("fixed")),
        "writes keep the lease"
    );
    assert_eq!(
        code(s.get_blob_properties(a, "box", "lock", &Conditions::none(), Some("wrong"))),
        "LeaseIdMismatchWithBlobOperation"
    );
    assert_eq!(
        code(put(
            &f,
            "free",
            b"x",
            PutBlobOptions {
                lease_id: Some(id.clone()),
                ..Default::default()
            }
        )),
        "LeaseNotPresentWithBlobOperation"
    );
    // It expires; the holder may renew while nobody else took it.
    f.clock.advance(Duration::from_secs(31));
    assert_eq!(
        s.get_blob_properties(a, "box", "lock", &Conditions::none(), None)
            .unwrap()
            .lease
            .state,
        "expired"
    );
    s.lease_blob(a, "box", "lock", LeaseAction::Renew { id: id.clone() })
        .unwrap();
    assert_eq!(
        code(s.lease_blob(a, "box", "lock", LeaseAction::Renew { id: "other".into() })),
        "LeaseIdMismatchWithLeaseOperation"
    );
    // Change, then break with a period: breaking, writes with the id still allowed.
    let new_id = "11111111-2222-3333-4444-555555555555".to_string();
    s.lease_blob(
        a,
        "box",
        "lock",
        LeaseAction::Change {
            id: id.clone(),
            proposed_id: new_id.clone(),
        },
    )
    .unwrap();
    let b = s
        .lease_blob(a, "box", "lock", LeaseAction::Break { period: Some(10) })
        .unwrap();
    assert_eq!(b.lease_time, Some(10));
    assert_eq!(
        code(acquire(Some(15), Some(&new_id))),
        "LeaseIsBreakingAndCannotBeAcquired"
    );
    assert_eq!(
        code(s.lease_blob(
            a,
            "box",
            "lock",
            LeaseAction::Change {
                id: new_id.clone(),
                proposed_id: id.clone()
            }
        )),
        "LeaseIsBreakingAndCannotBeChanged"
    );
    put(
        &f,
        "lock",
        b"y",
        PutBlobOptions {
            lease_id: Some(new_id.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    f.clock.advance(Duration::from_secs(10));
    assert_eq!(
        s.get_blob_properties(a, "box", "lock", &Conditions::none(), None)
            .unwrap()
            .lease
            .state,
        "broken"
    );
    assert_eq!(
        code(s.lease_blob(a, "box", "lock", LeaseAction::Renew { id: new_id.clone() })),
        "LeaseIsBrokenAndCannotBeRenewed"
    );
    put(&f, "lock", b"z", PutBlobOptions::default()).unwrap();
    // Another instance acquires now; release and the not-present errors.
    let l2 = acquire(None, None).unwrap();
    let id2 = l2.lease_id.unwrap();
    assert_eq!(
        s.get_blob_properties(a, "box", "lock", &Conditions::none(), None)
            .unwrap()
            .lease
            .duration,
        Some("infinite")
    );
    assert_eq!(
        code(s.lease_blob(a, "box", "lock", LeaseAction::Release { id: new_id })),
        "LeaseIdMismatchWithLeaseOperation"
    );
    assert_eq!(
        code(s.delete_blob(a, "box", "lock", &Conditions::none(), None)),
        "LeaseIdMissing"
    );
    s.lease_blob(a, "box", "lock", LeaseAction::Release { id: id2.clone() })
        .unwrap();
    assert_eq!(
        code(s.lease_blob(a, "box", "lock", LeaseAction::Release { id: id2 })),
        "LeaseNotPresentWithLeaseOperation"
    );
    assert_eq!(
        code(s.lease_blob(a, "box", "lock", LeaseAction::Break { period: None })),
        "LeaseNotPresentWithLeaseOperation"
    );
    // Infinite lease with no break period breaks at once.
    let l3 = acquire(None, None).unwrap().lease_id.unwrap();
    assert_eq!(
        s.lease_blob(a, "box", "lock", LeaseAction::Break { period: None })
            .unwrap()
            .lease_time,
        Some(0)
    );
    assert_eq!(
        code(s.lease_blob(
            a,
            "box",
            "lock",
            LeaseAction::Change {
                id: l3,
                proposed_id: "x".into()
            }
        )),
        "LeaseNotPresentWithLeaseOperation"
    );
    assert_eq!(
        code(s.lease_blob(a, "box", "nothing", LeaseAction::Break { period: None })),
        "BlobNotFound"
    );
    assert_eq!(
        code(s.lease_blob(a, "box", "lock", LeaseAction::Break { period: Some(61) })),
        "InvalidHeaderValue"
    );
}

fn staged_blocks(engine: Engine) {
    let f = setup(engine);
    let (s, a) = (&f.store, &f.acct);
    let block = |id: &[u8], data: &[u8]| s.put_block(a, "box", "big", id, &mut &data[..], None);
    block(b"b1", b"hello ").unwrap();
    block(b"b2", b"world").unwrap();
    block(b"b3", b"unused").unwrap();
    assert_eq!(code(block(b"long-id", b"x")), "InvalidQueryParameterValue");
    assert_eq!(code(block(b"", b"x")), "InvalidQueryParameterValue");
    assert_eq!(code(block(&[0; 65], b"x")), "InvalidQueryParameterValue");
    // Uncommitted blocks are invisible.
    assert_eq!(
        code(s.get_blob_properties(a, "box", "big", &Conditions::none(), None)),
        "BlobNotFound"
    );
    let list = s
        .get_block_list(a, "box", "big", BlockListType::All)
        .unwrap();
    assert_eq!(list.uncommitted.len(), 3);
    assert!(list.committed.is_empty());
    assert_eq!(
        code(s.put_block_list(
            a,
            "box",
            "big",
            &[BlockRef::Latest(b"zz".to_vec())],
            PutBlobOptions::default()
        )),
        "InvalidBlockList"
    );
    let p = s
        .put_block_list(
            a,
            "box",
            "big",
            &[
                BlockRef::Uncommitted(b"b1".to_vec()),
                BlockRef::Latest(b"b2".to_vec()),
            ],
            PutBlobOptions::default(),
        )
        .unwrap();
    assert_eq!(p.size, 11);
    assert_eq!(
        read_all(&f, "big", &GetBlobOptions::default()),
        b"hello world"
    );
    let list = s
        .get_block_list(a, "box", "big", BlockListType::All)
        .unwrap();
    assert_eq!(
        list.committed,
        vec![(b"b1".to_vec(), 6), (b"b2".to_vec(), 5)]
    );
    assert!(
        list.uncommitted.is_empty(),
        "uncommitted blocks are discarded on commit"
    );
    // Re-commit reusing a committed block plus a new one; the old one not listed goes away.
    block(b"b4", b"!").unwrap();
    s.put_block_list(
        a,
        "box",
        "big",
        &[
            BlockRef::Committed(b"b2".to_vec()),
            BlockRef::Uncommitted(b"b4".to_vec()),
        ],
        PutBlobOptions::default(),
    )
    .unwrap();
    assert_eq!(
        read_all(
            &f,
            "big",
            &GetBlobOptions {
                range: Some(ByteRange {
                    start: 2,
                    end: None
                }),
                ..Default::default()
            }
        ),
        b"rld!"
    );
    assert_eq!(
        code(s.put_block_list(
            a,
            "box",
            "big",
            &[BlockRef::Committed(b"b1".to_vec())],
            PutBlobOptions::default()
        )),
        "InvalidBlockList"
    );
    // Create-only applies to block lists too.
    block(b"b5", b"?").unwrap();
    let create_only = PutBlobOptions {
        conditions: Conditions::create_only(),
        ..Default::default()
    };
    assert_eq!(
        code(s.put_block_list(
            a,
            "box",
            "big",
            &[BlockRef::Latest(b"b5".to_vec())],
            create_only
        )),
        "BlobAlreadyExists"
    );
    let many: Vec<BlockRef> = (0..50_001)
        .map(|_| BlockRef::Latest(b"b5".to_vec()))
        .collect();
    assert_eq!(
        code(s.put_block_list(a, "box", "big", &many, PutBlobOptions::default())),
        "BlockCountExceedsLimit"
    );
    // Put Blob discards uncommitted blocks and leaves no committed list.
    put(&f, "big", b"flat", PutBlobOptions::default()).unwrap();
    let list = s
        .get_block_list(a, "box", "big", BlockListType::All)
        .unwrap();
    assert!(list.committed.is_empty() && list.uncommitted.is_empty());
    assert_eq!(
        code(s.get_block_list(a, "box", "none", BlockListType::All)),
        "BlobNotFound"
    );
}

fn large_blob_streams_through_chunks_and_survives_reopen(engine: Engine) {
    let f = setup(engine);
    let len = 5 * CHUNK_SIZE * 2 + 12_345; // spans two upload batches
    let mut body = std::io::Read::take(std::io::repeat(7), len as u64);
    let p = f
        .store
        .put_blob(&f.acct, "box", "big", &mut body, PutBlobOptions::default())
        .unwrap();
    assert_eq!(p.size, len as u64);
    let common::Fixture {
        store,
        dir,
        acct,
        db,
        ..
    } = f;
    drop(store);
    let store = engine.reopen(&dir, db.as_ref());
    let mut r = store
        .get_blob(&acct, "box", "big", &GetBlobOptions::default())
        .unwrap();
    let mut n = 0u64;
    let mut buf = vec![0; 100_000];
    loop {
        let k = r.reader.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        assert!(buf[..k].iter().all(|&b| b == 7));
        n += k as u64;
    }
    assert_eq!(n, len as u64);
    drop(dir);
}

fn a_failing_body_reader_leaves_nothing(engine: Engine) {
    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("client went away"));
            }
            let n = buf.len().min(self.0);
            self.0 -= n;
            Ok(n)
        }
    }
    let f = setup(engine);
    let e = f
        .store
        .put_blob(
            &f.acct,
            "box",
            "x",
            &mut Failing(3 * CHUNK_SIZE),
            PutBlobOptions::default(),
        )
        .unwrap_err();
    assert_eq!(e.code(), "InvalidInput");
    assert_eq!(
        code(
            f.store
                .get_blob_properties(&f.acct, "box", "x", &Conditions::none(), None)
        ),
        "BlobNotFound"
    );
}

fn container_acls_are_checked_kept_and_die_with_their_container(engine: Engine) {
    let f = setup(engine);
    let (s, a) = (&f.store, &f.acct);
    let (_, acl) = s.get_container_acl(a, "box", None).unwrap();
    assert_eq!(acl, ContainerAcl::default(), "private, no policies");
    let policy = |id: &str| AccessPolicy {
        id: id.into(),
        start: None,
        expiry: Some(Timestamp::from_secs(4_000_000_000)),
        permissions: "rl".into(),
    };
    let before = s.get_container_properties(a, "box", None).unwrap().etag;
    let acl = ContainerAcl {
        public_access: PublicAccess::Container,
        policies: vec![policy("readers")],
    };
    let after = s
        .set_container_acl(a, "box", acl.clone(), &Conditions::none(), None)
        .unwrap();
    assert_ne!(
        after.etag, before,
        "an ACL change is a change of the container"
    );
    assert_eq!(s.get_container_acl(a, "box", None).unwrap().1, acl);
    for bad in [
        (0..6).map(|i| policy(&format!("p{i}"))).collect::<Vec<_>>(),
        vec![policy("")],
        vec![policy(&"x".repeat(65))],
        vec![policy("twice"), policy("twice")],
        vec![AccessPolicy {
            permissions: "rz".into(),
            ..policy("p")
        }],
    ] {
        let e = s.set_container_acl(
            a,
            "box",
            ContainerAcl {
                public_access: PublicAccess::Off,
                policies: bad,
            },
            &Conditions::none(),
            None,
        );
        assert_eq!(code(e), "InvalidXmlDocument");
    }
    assert_eq!(
        s.get_container_acl(a, "box", None).unwrap().1,
        acl,
        "refused changes change nothing"
    );
    s.delete_container(a, "box", &Conditions::none(), None)
        .unwrap();
    assert_eq!(
        code(s.get_container_acl(a, "box", None)),
        "ContainerNotFound"
    );
    s.create_container(a, "box", vec![]).unwrap();
    assert_eq!(
        s.get_container_acl(a, "box", None).unwrap().1,
        ContainerAcl::default(),
        "a container made again starts private"
    );
}

fn settings_are_per_account_bounded_and_cleared(engine: Engine) {
    use rolehost_storage::settings::MAX_SETTING_BYTES;
    let f = engine.fixture();
    let other = rolehost_storage::AccountName::new("other").unwrap();
    f.store
        .set_setting(&f.acct, "properties/blob", b"mine".to_vec())
        .unwrap();
    assert_eq!(
        f.store.get_setting(&f.acct, "properties/blob").unwrap(),
        Some(b"mine".to_vec())
    );
    assert_eq!(
        f.store.get_setting(&other, "properties/blob").unwrap(),
        None
    );
    assert!(
        f.store
            .set_setting(&f.acct, "big", vec![0; MAX_SETTING_BYTES + 1])
            .is_err()
    );
    f.store.clear_settings(&f.acct).unwrap();
    assert_eq!(
        f.store.get_setting(&f.acct, "properties/blob").unwrap(),
        None
    );
}

fn copies_carry_content_properties_and_their_record(engine: Engine) {
    let f = setup(engine);
    let (s, a) = (&f.store, &f.acct);
    let other = rolehost_storage::AccountName::new("other").unwrap();
    s.create_container(&other, "dst", vec![]).unwrap();
    // Larger than a chunk, so the copy streams through several.
    let body: Vec<u8> = (0..CHUNK_SIZE * 2 + 17).map(|i| (i % 251) as u8).collect();
    let src = put(
        &f,
        "src",
        &body,
        PutBlobOptions {
            content: ContentSettings {
                content_type: Some("text/plain".into()),
                cache_control: Some("no-cache".into()),
                ..Default::default()
            },
            metadata: vec![("origin".into(), "here".into())],
            ..Default::default()
        },
    )
    .unwrap();
    let from = BlobRef {
        account: a,
        container: "box",
        blob: "src",
    };
    let to = BlobRef {
        account: &other,
        container: "dst",
        blob: "copy",
    };
    let options = |url: &str| CopyOptions {
        source_url: url.into(),
        ..Default::default()
    };
    let copied = s
        .copy_blob(from, to, options("http://h/acct/box/src"))
        .unwrap();
    assert_eq!(copied.size, body.len() as u64);
    assert_eq!(copied.content.content_type.as_deref(), Some("text/plain"));
    assert_eq!(copied.content.cache_control.as_deref(), Some("no-cache"));
    assert_eq!(copied.content.content_md5, src.content.content_md5);
    assert_eq!(
        copied.metadata, src.metadata,
        "the source's metadata by default"
    );
    assert_ne!(copied.etag, src.etag);
    let copy = copied.copy.clone().expect("the copy is recorded");
    assert_eq!(copy.source, "http://h/acct/box/src");
    assert_eq!(copy.bytes, body.len() as u64);
    assert_eq!(copy.id.len(), 36, "a GUID: {}", copy.id);
    let mut got = Vec::new();
    let mut r = s
        .get_blob(&other, "dst", "copy", &GetBlobOptions::default())
        .unwrap();
    r.reader.read_to_end(&mut got).unwrap();
    assert!(got == body, "the content is the source's");
    assert_eq!(r.properties.copy, Some(copy.clone()), "kept with the blob");
    // Listing shows it too.
    let page = s
        .list_blobs(&other, "dst", &ListOptions::default(), None)
        .unwrap();
    assert!(matches!(&page.items[0], BlobListItem::Blob(p) if p.copy == Some(copy.clone())));

    // Given metadata replaces the source's; the source's conditions hold the copy.
    let meta = CopyOptions {
        metadata: Some(vec![("mine".into(), "yes".into())]),
        ..options("u")
    };
    assert_eq!(
        s.copy_blob(from, to, meta).unwrap().metadata,
        vec![("mine".to_string(), "yes".to_string())]
    );
    let stale = CopyOptions {
        source_conditions: Conditions::if_match("\"0x8Dnope\""),
        ..options("u")
    };
    assert_eq!(code(s.copy_blob(from, to, stale)), "SourceConditionNotMet");
    let create_only = CopyOptions {
        conditions: Conditions::create_only(),
        ..options("u")
    };
    assert_eq!(
        code(s.copy_blob(from, to, create_only)),
        "BlobAlreadyExists"
    );
    let missing = BlobRef {
        blob: "nothing",
        ..from
    };
    assert_eq!(
        code(s.copy_blob(missing, to, options("u"))),
        "CannotVerifyCopySource"
    );
    assert_eq!(
        code(s.copy_blob(from, to, options(&"u".repeat(MAX_COPY_SOURCE_BYTES + 1)))),
        "InvalidHeaderValue"
    );
    // A leased destination needs its lease.
    s.lease_blob(
        &other,
        "dst",
        "copy",
        LeaseAction::Acquire {
            duration: None,
            proposed_id: Some("00000000-0000-0000-0000-000000000001".into()),
        },
    )
    .unwrap();
    assert_eq!(code(s.copy_blob(from, to, options("u"))), "LeaseIdMissing");
    let leased = CopyOptions {
        lease_id: Some("00000000-0000-0000-0000-000000000001".into()),
        ..options("u")
    };
    assert!(s.copy_blob(from, to, leased).is_ok());

    // A blob copied onto itself keeps its content.
    let itself = s
        .copy_blob(from, from, options("http://h/acct/box/src"))
        .unwrap();
    assert_eq!(itself.size, body.len() as u64);
    assert_eq!(read_all(&f, "src", &GetBlobOptions::default()), body);

    // Set Blob Properties and Put Blob forget the copy; Set Blob Metadata does not.
    s.set_blob_metadata(a, "box", "src", vec![], &Conditions::none(), None)
        .unwrap();
    assert!(
        s.get_blob_properties(a, "box", "src", &Conditions::none(), None)
            .unwrap()
            .copy
            .is_some()
    );
    s.set_blob_properties(
        a,
        "box",
        "src",
        ContentSettings::default(),
        &Conditions::none(),
        None,
    )
    .unwrap();
    assert!(
        s.get_blob_properties(a, "box", "src", &Conditions::none(), None)
            .unwrap()
            .copy
            .is_none()
    );
    s.copy_blob(from, from, options("x")).unwrap();
    put(&f, "src", b"new", PutBlobOptions::default()).unwrap();
    assert!(
        s.get_blob_properties(a, "box", "src", &Conditions::none(), None)
            .unwrap()
            .copy
            .is_none()
    );
}

on_every_engine!(
    containers,
    put_get_properties_metadata_delete,
    conditional_writes_and_reads,
    ranged_reads,
    listing_with_prefix_delimiter_and_markers,
    leases_guard_writes_and_elect_a_leader,
    staged_blocks,
    large_blob_streams_through_chunks_and_survives_reopen,
    a_failing_body_reader_leaves_nothing,
    container_acls_are_checked_kept_and_die_with_their_container,
    settings_are_per_account_bounded_and_cleared,
    copies_carry_content_properties_and_their_record,
);
